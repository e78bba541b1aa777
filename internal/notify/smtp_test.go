package notify

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
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

	"encoding/base64"

	"github.com/pumi-lab/pumi/internal/testnet"
)

// The real peer: Debian's python3-aiosmtpd, run with the system Python
// (/usr/bin/python3; a pyenv python3 earlier in PATH may lack the module).
const python = "/usr/bin/python3"

const (
	testUser = "pumi@lab.example"
	testPass = "abcd efgh ijkl mnop" // app-password shaped
)

func requireAiosmtpd(t *testing.T) {
	t.Helper()
	testnet.Require(t, python)
	if out, err := exec.Command(python, "-c", "import aiosmtpd").CombinedOutput(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("python3-aiosmtpd missing (CI must install it: see .ci/run): %v %s", err, out)
		}
		t.Skipf("python3-aiosmtpd missing: %v %s", err, out)
	}
}

// testCert writes a self-signed certificate for 127.0.0.1/localhost and
// returns the paths and the PEM (which the Mailer is told to trust).
func testCert(t *testing.T) (certFile, keyFile, certPEM string) {
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

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

type smtpServer struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	outdir string
	done   chan error
}

type serverOpts struct {
	onlyMech    string
	implicitTLS bool
}

// startSMTP runs testdata/smtpd.py on 127.0.0.1:port and waits for READY.
func startSMTP(t *testing.T, port int, certFile, keyFile, outdir string, o serverOpts) *smtpServer {
	t.Helper()
	args := []string{"testdata/smtpd.py", "--port", strconv.Itoa(port), "--cert", certFile, "--key", keyFile,
		"--user", testUser, "--password", testPass, "--outdir", outdir}
	if o.onlyMech != "" {
		args = append(args, "--only-mech", o.onlyMech)
	}
	if o.implicitTLS {
		args = append(args, "--implicit-tls")
	}
	cmd := exec.Command(python, args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &smtpServer{t: t, cmd: cmd, stdin: stdin, outdir: outdir, done: make(chan error, 1)}
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
	t.Cleanup(s.stop)
	if !<-ready {
		t.Fatalf("smtpd.py did not start: %s", stderr.String())
	}
	return s
}

// stop ends the server: stdin EOF makes it exit; Kill (our own child, by
// its process) if it does not.
func (s *smtpServer) stop() {
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

type received struct {
	Meta struct {
		MailFrom string   `json:"mail_from"`
		RcptTos  []string `json:"rcpt_tos"`
		Login    string   `json:"login"`
		TLS      bool     `json:"tls"`
	}
	Msg *mail.Message
	Raw []byte
}

func inbox(t *testing.T, dir string) []received {
	t.Helper()
	names, _ := filepath.Glob(filepath.Join(dir, "*.eml"))
	var out []received
	for _, n := range names {
		var r received
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

type part struct {
	contentType, filename string
	body                  []byte
}

// parts decodes a multipart/mixed message into its leaf parts.
func parts(t *testing.T, m *mail.Message) []part {
	t.Helper()
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || !strings.HasPrefix(mt, "multipart/") {
		t.Fatalf("Content-Type %q: %v", m.Header.Get("Content-Type"), err)
	}
	var out []part
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
			out = append(out, part{contentType: ct, filename: dp["filename"], body: b})
		}
	}
	walk(m.Body, params["boundary"])
	return out
}

func testMailer(port int, caPEM string) Mailer {
	return Mailer{Host: "127.0.0.1", Port: port, Username: testUser, Password: testPass,
		From: "pumi <pumi@lab.example>", To: []string{"admin@lab.example", "it@lab.example"},
		CACertPEM: caPEM, Timeout: 20 * time.Second}
}

func sampleReport() Report {
	start := time.Date(2026, 11, 28, 2, 0, 0, 0, time.UTC)
	return Report{RunID: "42", Schedule: "room B Saturday", Action: "restore", Image: "LAB-2026-img",
		Started: start, Finished: start.Add(72 * time.Minute),
		Seats: []SeatReport{
			{Seat: "B-01", Room: "B", MAC: "52:54:00:00:00:01", Outcome: OutcomeVerified, Attempts: 1, Started: start, Finished: start.Add(20 * time.Minute), Bytes: 40 << 30},
			{Seat: "B-02", Room: "B", MAC: "52:54:00:00:00:02", Outcome: OutcomeFailed, Reason: "host key changed", Attempts: 3, Started: start, Finished: start.Add(72 * time.Minute), Bytes: 40 << 30},
		}}
}

// TestSendReportSTARTTLS: the report reaches a real SMTP server over
// STARTTLS with AUTH (PLAIN), to both recipients, with its attachment intact.
func TestSendReportSTARTTLS(t *testing.T) {
	requireAiosmtpd(t)
	certFile, keyFile, caPEM := testCert(t)
	port, outdir := freePort(t), t.TempDir()
	startSMTP(t, port, certFile, keyFile, outdir, serverOpts{onlyMech: "PLAIN"})

	logData := append([]byte("02:00:01 B-01 pending -> powering (wol)\n"), 0, 0xff, 0xfe, '\n')
	msg := sampleReport().Message(logData)
	if err := testMailer(port, caPEM).Send(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	got := inbox(t, outdir)
	if len(got) != 1 {
		t.Fatalf("server received %d messages, want 1", len(got))
	}
	r := got[0]
	if !r.Meta.TLS || r.Meta.Login != testUser || r.Meta.MailFrom != "pumi@lab.example" ||
		strings.Join(r.Meta.RcptTos, ",") != "admin@lab.example,it@lab.example" {
		t.Fatalf("envelope %+v", r.Meta)
	}
	dec := new(mime.WordDecoder)
	subj, _ := dec.DecodeHeader(r.Msg.Header.Get("Subject"))
	if subj != msg.Subject || !strings.Contains(subj, "1/2 verified") {
		t.Errorf("Subject %q, want %q", subj, msg.Subject)
	}
	if id := r.Msg.Header.Get("Message-Id"); id != "<run-42-report.pumi@lab.example>" {
		t.Errorf("Message-ID %q", id)
	}
	ps := parts(t, r.Msg)
	var text, att *part
	for i := range ps {
		switch {
		case ps[i].filename != "":
			att = &ps[i]
		case ps[i].contentType == "text/plain":
			text = &ps[i]
		}
	}
	if text == nil || !strings.Contains(string(text.body), "host key changed") || !strings.Contains(string(text.body), "B-02") {
		t.Fatalf("text part missing or wrong: %+v", ps)
	}
	if att == nil || att.filename != "run-42.log" || !bytes.Equal(att.body, logData) {
		t.Fatalf("attachment missing or changed: %+v", att)
	}
}

// TestSendLoginOnly: a server offering only AUTH LOGIN (like Exchange
// Online) still gets the login.
func TestSendLoginOnly(t *testing.T) {
	requireAiosmtpd(t)
	certFile, keyFile, caPEM := testCert(t)
	port, outdir := freePort(t), t.TempDir()
	startSMTP(t, port, certFile, keyFile, outdir, serverOpts{onlyMech: "LOGIN"})
	if err := testMailer(port, caPEM).Send(context.Background(), Message{Subject: "login only", Text: "x"}); err != nil {
		t.Fatal(err)
	}
	if got := inbox(t, outdir); len(got) != 1 || got[0].Meta.Login != testUser {
		t.Fatalf("received %+v", got)
	}
}

// TestSendImplicitTLS: tls mode (port 465 style) against the same server
// speaking TLS from the first byte.
func TestSendImplicitTLS(t *testing.T) {
	requireAiosmtpd(t)
	certFile, keyFile, caPEM := testCert(t)
	port, outdir := freePort(t), t.TempDir()
	startSMTP(t, port, certFile, keyFile, outdir, serverOpts{implicitTLS: true})
	m := testMailer(port, caPEM)
	m.TLS = ImplicitTLS
	if err := m.Send(context.Background(), Message{Subject: "implicit", Text: "x"}); err != nil {
		t.Fatal(err)
	}
	if got := inbox(t, outdir); len(got) != 1 || !got[0].Meta.TLS {
		t.Fatalf("received %+v", got)
	}
}

func TestSendErrors(t *testing.T) {
	requireAiosmtpd(t)
	certFile, keyFile, caPEM := testCert(t)
	port, outdir := freePort(t), t.TempDir()
	startSMTP(t, port, certFile, keyFile, outdir, serverOpts{})
	ctx := context.Background()

	m := testMailer(port, caPEM)
	m.Password = "wrong password"
	err := m.Send(ctx, Message{Subject: "x", Text: "x"})
	if !errors.Is(err, ErrLogin) || !strings.Contains(err.Error(), "app password") || strings.Contains(err.Error(), "wrong password") {
		t.Errorf("wrong password: %v", err)
	}

	m = testMailer(port, "") // the self-signed certificate is not trusted
	err = m.Send(ctx, Message{Subject: "x", Text: "x"})
	if !errors.Is(err, ErrTLS) || !strings.Contains(err.Error(), "not trusted") {
		t.Errorf("untrusted certificate: %v", err)
	}

	m = testMailer(freePort(t), caPEM) // nobody listens there
	err = m.Send(ctx, Message{Subject: "x", Text: "x"})
	if !errors.Is(err, ErrUnreachable) {
		t.Errorf("server down: %v", err)
	}
	if n := len(inbox(t, outdir)); n != 0 {
		t.Fatalf("server received %d messages from failed sends", n)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestOutboxServerDownThenUp: with the server down the report stays queued
// and is retried; once the server is up it is delivered exactly once, and
// queueing the same report again does not send it again.
func TestOutboxServerDownThenUp(t *testing.T) {
	requireAiosmtpd(t)
	certFile, keyFile, caPEM := testCert(t)
	port, outdir, boxdir := freePort(t), t.TempDir(), t.TempDir()
	ob, err := OpenOutbox(boxdir, testMailer(port, caPEM), nil)
	if err != nil {
		t.Fatal(err)
	}
	ob.MinBackoff, ob.MaxBackoff = 20*time.Millisecond, 200*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runDone := make(chan error, 1)
	go func() { runDone <- ob.Run(ctx) }()

	msg := sampleReport().Message([]byte("log\n"))
	id, err := ob.Enqueue(ctx, msg)
	if err != nil || id != "run-42-report" {
		t.Fatalf("Enqueue = %q, %v", id, err)
	}
	waitFor(t, "two failed attempts while the server is down", func() bool {
		p, _ := ob.Pending()
		return len(p) == 1 && p[0].Attempts >= 2 && strings.Contains(p[0].LastError, "cannot reach")
	})
	if _, err := os.Stat(filepath.Join(boxdir, "queue", id+".json")); err != nil {
		t.Fatalf("queued file gone while the server is down: %v", err)
	}

	startSMTP(t, port, certFile, keyFile, outdir, serverOpts{})
	waitFor(t, "delivery after the server came back", func() bool {
		p, _ := ob.Pending()
		return len(p) == 0 && len(inbox(t, outdir)) >= 1
	})
	if _, err := os.Stat(filepath.Join(boxdir, "sent", id)); err != nil {
		t.Fatalf("no sent marker: %v", err)
	}
	// The runs engine queues the same report again (e.g. after a power cut).
	if again, err := ob.Enqueue(ctx, msg); err != nil || again != id {
		t.Fatalf("re-Enqueue = %q, %v", again, err)
	}
	if n, err := ob.Flush(ctx); n != 0 || err != nil {
		t.Fatalf("Flush after delivery sent %d, %v", n, err)
	}
	cancel()
	<-runDone
	if got := inbox(t, outdir); len(got) != 1 {
		t.Fatalf("server received %d copies, want exactly 1", len(got))
	}
}

// TestOutboxCrashAfterAcceptNoResend: a crash after the sent marker was
// written but before the queue file was removed must not resend.
func TestOutboxCrashAfterAcceptNoResend(t *testing.T) {
	requireAiosmtpd(t)
	certFile, keyFile, caPEM := testCert(t)
	port, outdir, boxdir := freePort(t), t.TempDir(), t.TempDir()
	startSMTP(t, port, certFile, keyFile, outdir, serverOpts{})
	ctx := context.Background()
	ob, err := OpenOutbox(boxdir, testMailer(port, caPEM), nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := ob.Enqueue(ctx, Message{ID: "run-7-report", Subject: "r7", Text: "t"})
	if err != nil {
		t.Fatal(err)
	}
	qf := filepath.Join(boxdir, "queue", id+".json")
	saved, err := os.ReadFile(qf)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := ob.Flush(ctx); n != 1 || err != nil {
		t.Fatalf("Flush = %d, %v", n, err)
	}
	// Put the queue file back: the state a crash between the two steps leaves.
	if err := os.WriteFile(qf, saved, 0o600); err != nil {
		t.Fatal(err)
	}
	ob2, err := OpenOutbox(boxdir, testMailer(port, caPEM), nil) // "restart"
	if err != nil {
		t.Fatal(err)
	}
	if n, err := ob2.Flush(ctx); n != 0 || err != nil {
		t.Fatalf("Flush after crash = %d, %v", n, err)
	}
	if _, err := os.Stat(qf); !os.IsNotExist(err) {
		t.Fatalf("queue file still there: %v", err)
	}
	if got := inbox(t, outdir); len(got) != 1 {
		t.Fatalf("server received %d copies, want 1", len(got))
	}
}
