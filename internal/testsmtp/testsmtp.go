// Package testsmtp runs a real SMTP server for tests: Debian's
// python3-aiosmtpd driven by smtpd.py (STARTTLS or implicit TLS, AUTH for one
// user, every message written to a folder), with a self-signed certificate
// made per test. It is used only by tests, like internal/testnet.
package testsmtp

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/testnet"
)

//go:embed smtpd.py
var script []byte

// Python is Debian's interpreter, which has python3-aiosmtpd (a pyenv
// python3 earlier in PATH may lack the module).
const Python = "/usr/bin/python3"

// The one login the server accepts (an app-password shaped secret).
const (
	User     = "pumi@lab.example"
	Password = "abcd efgh ijkl mnop"
)

// Require skips the test outside CI, and fails it in CI, when aiosmtpd is
// missing.
func Require(t testing.TB) {
	t.Helper()
	testnet.Require(t, Python)
	if out, err := exec.Command(Python, "-c", "import aiosmtpd").CombinedOutput(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("python3-aiosmtpd missing (CI must install it: see .ci/run): %v %s", err, out)
		}
		t.Skipf("python3-aiosmtpd missing: %v %s", err, out)
	}
}

// Cert writes a self-signed certificate for 127.0.0.1/localhost and returns
// the paths and the PEM (which the client under test is told to trust).
func Cert(t testing.TB) (certFile, keyFile, certPEM string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "pumi test smtp"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, []byte(certPEM), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, certPEM
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Opts vary the server.
type Opts struct {
	OnlyMech    string // offer only this AUTH mechanism (e.g. "LOGIN", as Exchange does)
	ImplicitTLS bool   // TLS from the first byte (port 465 style) instead of STARTTLS
	// NS runs the server on that namespace's loopback instead of the
	// test's own (for an appliance process running inside NS).
	NS *testnet.NS
}

// Server is a running smtpd.py.
type Server struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan error
}

// Start runs the server on 127.0.0.1:port, writing messages to outdir, and
// waits until it accepts connections. It stops when the test ends.
func Start(t testing.TB, port int, certFile, keyFile, outdir string, o Opts) *Server {
	t.Helper()
	prog := filepath.Join(t.TempDir(), "smtpd.py")
	if err := os.WriteFile(prog, script, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{prog, "--port", strconv.Itoa(port), "--cert", certFile, "--key", keyFile,
		"--user", User, "--password", Password, "--outdir", outdir}
	if o.OnlyMech != "" {
		args = append(args, "--only-mech", o.OnlyMech)
	}
	if o.ImplicitTLS {
		args = append(args, "--implicit-tls")
	}
	cmd := exec.Command(Python, args...)
	if o.NS != nil {
		cmd = o.NS.Command(context.Background(), Python, args...)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr testnet.LockedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &Server{cmd: cmd, stdin: stdin, done: make(chan error, 1)}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		ok := false
		for sc.Scan() {
			if sc.Text() == "READY" && !ok {
				ok = true
				ready <- true
			}
		}
		if !ok {
			ready <- false
		}
		s.done <- cmd.Wait()
	}()
	t.Cleanup(s.Stop)
	if !<-ready {
		t.Fatalf("smtpd.py did not start: %s", stderr.String())
	}
	return s
}

// Stop ends the server: stdin EOF makes it exit; it is killed (our own
// child, by its process) if it does not.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	s.stdin.Close()
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

// Received is one message the server accepted, with how it arrived.
type Received struct {
	Meta struct {
		MailFrom string   `json:"mail_from"`
		RcptTos  []string `json:"rcpt_tos"`
		Login    string   `json:"login"`
		TLS      bool     `json:"tls"`
	}
	Msg *mail.Message
	Raw []byte
}

// Inbox reads the messages the server wrote to dir (whole files only: it
// renames them into place).
func Inbox(t testing.TB, dir string) []Received {
	t.Helper()
	names, _ := filepath.Glob(filepath.Join(dir, "*.eml"))
	var out []Received
	for _, n := range names {
		var r Received
		raw, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		meta, err := os.ReadFile(strings.TrimSuffix(n, ".eml") + ".json")
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(meta, &r.Meta); err != nil {
			t.Fatal(err)
		}
		r.Raw = raw
		if r.Msg, err = mail.ReadMessage(bytes.NewReader(raw)); err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		out = append(out, r)
	}
	return out
}

// Part is one leaf of a multipart message, decoded.
type Part struct {
	ContentType, Filename string
	Body                  []byte
}

// Parts decodes a multipart message into its leaf parts.
func Parts(t testing.TB, m *mail.Message) []Part {
	t.Helper()
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || !strings.HasPrefix(mt, "multipart/") {
		t.Fatalf("Content-Type %q: %v", m.Header.Get("Content-Type"), err)
	}
	var out []Part
	var walk func(r io.Reader, boundary string)
	walk = func(r io.Reader, boundary string) {
		mr := multipart.NewReader(r, boundary)
		for {
			p, err := mr.NextRawPart()
			if err == io.EOF {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			ct, ps, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
			if strings.HasPrefix(ct, "multipart/") {
				walk(p, ps["boundary"])
				continue
			}
			var body io.Reader = p
			switch strings.ToLower(p.Header.Get("Content-Transfer-Encoding")) {
			case "base64":
				body = base64.NewDecoder(base64.StdEncoding, p)
			case "quoted-printable":
				body = quotedprintable.NewReader(p)
			}
			b, err := io.ReadAll(body)
			if err != nil {
				t.Fatal(err)
			}
			_, dp, _ := mime.ParseMediaType(p.Header.Get("Content-Disposition"))
			out = append(out, Part{ContentType: ct, Filename: dp["filename"], Body: b})
		}
	}
	walk(m.Body, params["boundary"])
	return out
}
