package netboot

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/pin/tftp/v3"

	"github.com/pumi-lab/pumi/assets"
	"github.com/pumi-lab/pumi/internal/testnet"
)

// The main goroutine keeps the process's main thread for itself, so no test
// goroutine can run testnet's NS.Do on it: a goroutine that ends while locked
// into a namespace wedges its thread there (Go never ends the main thread),
// the whole process then shows up in `ip netns pids`, and the namespace
// cleanup kills the test binary.
func init() { runtime.LockOSThread() }

func TestCleanTFTPPath(t *testing.T) {
	good := map[string]string{
		"bootx64.efi":                    "bootx64.efi",
		"/bootx64.efi":                   "bootx64.efi",
		"//bootx64.efi":                  "bootx64.efi",
		"52-54-00-ab-cd-ef/bootx64.efi":  "bootx64.efi",
		"/52:54:00:AB:CD:EF/bootx64.efi": "bootx64.efi",
		"5254.00ab.cdef/undionly.kpxe":   "undionly.kpxe",
		"ipxe/bootx64.efi":               "ipxe/bootx64.efi", // not a MAC: kept
		"a-b.c_d~e":                      "a-b.c_d~e",
	}
	for in, want := range good {
		got, err := cleanTFTPPath(in)
		if err != nil || got != want {
			t.Errorf("cleanTFTPPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	bad := []string{
		"", "/", "///", ".", "..", "../etc/passwd", "/../etc/passwd", "a/../../b", "a/./b", "a//b", "dir/",
		"52-54-00-ab-cd-ef/../bootx64.efi", "52-54-00-ab-cd-ef/",
		`\bootx64.efi`, `..\..\windows\system.ini`, `boot\x64\wdsnbp.com`,
		"boot\x00x64.efi", "bootx64.efi\x00", "boot\nx64.efi", "\x7f", "\xff\xfe",
		strings.Repeat("a", tftpMaxNameLen+1),
	}
	for _, in := range bad {
		if got, err := cleanTFTPPath(in); err == nil {
			t.Errorf("cleanTFTPPath(%q) = %q, want an error", in, got)
		}
	}
}

// FuzzCleanTFTPPath: whatever a client sends, cleanTFTPPath never panics and
// never returns a path that could leave the served tree.
func FuzzCleanTFTPPath(f *testing.F) {
	for _, s := range []string{"bootx64.efi", "/bootx64.efi", "52-54-00-ab-cd-ef/bootx64.efi", "../x", `a\b`, "a\x00b", "//a//b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		p, err := cleanTFTPPath(name)
		if err != nil {
			return
		}
		if !fs.ValidPath(p) || p == "." {
			t.Fatalf("cleanTFTPPath(%q) = %q: not a valid fs path", name, p)
		}
		if strings.ContainsAny(p, "\\\x00") || len(p) > tftpMaxNameLen {
			t.Fatalf("cleanTFTPPath(%q) = %q: forbidden content", name, p)
		}
		for _, el := range strings.Split(p, "/") {
			if el == ".." {
				t.Fatalf("cleanTFTPPath(%q) = %q: escapes", name, p)
			}
		}
		if !strings.HasSuffix(name, p) {
			t.Fatalf("cleanTFTPPath(%q) = %q: not a suffix of the request", name, p)
		}
	})
}

// logSink collects the JSON log lines of a server under test.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// records returns the log records whose msg is msg.
func (l *logSink) records(t *testing.T, msg string) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(l.buf.Bytes()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// wait returns the records with msg once there are at least n of them. The
// server logs a transfer after the client's last ACK arrives, i.e. possibly
// after the client has returned, hence the wait.
func (l *logSink) wait(t *testing.T, msg string, n int) []map[string]any {
	t.Helper()
	for i := 0; ; i++ {
		recs := l.records(t, msg)
		if len(recs) >= n || i == 1000 {
			return recs
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startTFTP serves files on a loopback port and stops the server when the
// test ends; it returns the server's address.
func startTFTP(t *testing.T, files fs.FS) (string, *logSink) {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	sink := &logSink{}
	srv := NewTFTP(files, slog.New(slog.NewJSONHandler(sink, &slog.HandlerOptions{Level: slog.LevelDebug})))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, conn) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve returned %v after cancel, want nil", err)
		}
	})
	return conn.LocalAddr().String(), sink
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// fetch downloads name with the pin/tftp client, asking for blksize (0: no
// option) and tsize; it returns the content and the announced tsize (-1: none).
func fetch(t *testing.T, addr, name string, blksize int) ([]byte, int64, error) {
	t.Helper()
	c, err := tftp.NewClient(addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetTimeout(2 * time.Second)
	c.SetRetries(3)
	if blksize != 0 {
		c.SetBlockSize(blksize)
	}
	c.RequestTSize(true)
	wt, err := c.Receive(name, "octet")
	if err != nil {
		return nil, -1, err
	}
	size := int64(-1)
	if n, ok := wt.(tftp.IncomingTransfer).Size(); ok {
		size = n
	}
	var buf bytes.Buffer
	if _, err := wt.WriteTo(&buf); err != nil {
		return nil, size, err
	}
	return buf.Bytes(), size, nil
}

func TestTFTPServesFiles(t *testing.T) {
	ipxe, err := fs.ReadFile(assets.IPXE(), "bootx64.efi")
	if err != nil {
		t.Fatal(err)
	}
	odd := randomBytes(t, 3*1468) // an exact multiple of the block: needs the empty last block
	files := fstest.MapFS{
		"bootx64.efi":  {Data: ipxe},
		"exact.bin":    {Data: odd},
		"empty.bin":    {Data: nil},
		"dir/deep.bin": {Data: []byte("deep")},
	}
	addr, logs := startTFTP(t, files)
	cases := []struct {
		name string
		want []byte
	}{
		{"bootx64.efi", ipxe},
		{"/bootx64.efi", ipxe},
		{"52-54-00-ab-cd-ef/bootx64.efi", ipxe},
		{"exact.bin", odd},
		{"empty.bin", nil},
		{"dir/deep.bin", []byte("deep")},
	}
	for _, c := range cases {
		got, size, err := fetch(t, addr, c.name, 1468)
		if err != nil {
			t.Errorf("get %q: %v", c.name, err)
			continue
		}
		if sha256.Sum256(got) != sha256.Sum256(c.want) {
			t.Errorf("get %q: %d bytes, content differs from the %d served", c.name, len(got), len(c.want))
		}
		// pin/tftp v3.2.0 drops a tsize of 0 from its OACK, so an empty
		// file is announced without tsize.
		if want := int64(len(c.want)); size != want && !(want == 0 && size == -1) {
			t.Errorf("get %q: tsize %d, want %d", c.name, size, want)
		}
	}
	// One log line per transfer, with what was sent and how.
	done := logs.wait(t, "tftp: transfer done", len(cases))
	if len(done) != len(cases) {
		t.Fatalf("%d transfer log lines, want %d", len(done), len(cases))
	}
	// The lines arrive in the order the server saw the last ACKs.
	want := map[string]int{}
	for _, c := range cases {
		want[c.name] = len(c.want)
	}
	for _, r := range done {
		name, _ := r["file"].(string)
		n, ok := want[name]
		if !ok || r["bytes"] != float64(n) || r["blksize"] != float64(1468) ||
			!strings.HasPrefix(r["client"].(string), "127.0.0.1:") || r["duration"] == nil {
			t.Errorf("log line %v does not describe a transfer of one of %v at blksize 1468", r, want)
		}
		delete(want, name)
	}
}

// rawRRQ talks TFTP by hand so the test sees the server's own packets: it
// sends an RRQ with the given options, reads the OACK (if any) and the first
// DATA block, then aborts. It returns the OACK options and block 1's size.
func rawRRQ(t *testing.T, addr, name string, opts ...string) (map[string]string, int) {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	return rawRRQConn(t, conn, addr, name, opts...)
}

// rawRRQConn is rawRRQ from the socket conn, which it closes.
func rawRRQConn(t *testing.T, conn *net.UDPConn, addr, name string, opts ...string) (map[string]string, int) {
	t.Helper()
	defer conn.Close()
	srv, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	rrq := []byte{0, 1}
	for _, s := range append([]string{name, "octet"}, opts...) {
		rrq = append(append(rrq, s...), 0)
	}
	if _, err := conn.WriteToUDP(rrq, srv); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 70000)
	read := func() ([]byte, *net.UDPAddr) {
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, from, err := conn.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("waiting for the server's answer to %q: %v", name, err)
		}
		return buf[:n], from
	}
	oack := map[string]string{}
	p, from := read()
	if binary.BigEndian.Uint16(p) == 6 { // OACK: acknowledge with block 0
		f := strings.Split(string(p[2:]), "\x00")
		for i := 0; i+1 < len(f); i += 2 {
			oack[f[i]] = f[i+1]
		}
		if _, err := conn.WriteToUDP([]byte{0, 4, 0, 0}, from); err != nil {
			t.Fatal(err)
		}
		p, _ = read()
	}
	if op := binary.BigEndian.Uint16(p); op != 3 || binary.BigEndian.Uint16(p[2:]) != 1 {
		t.Fatalf("got opcode %d (%q), want DATA block 1", op, p)
	}
	// ERROR "user abort" ends the transfer at once instead of leaving the
	// server retrying.
	conn.WriteToUDP(append([]byte{0, 5, 0, 0}, "test done\x00"...), from)
	return oack, len(p) - 4
}

// TestTFTPBlockSizeNegotiated proves from the server's own packets that the
// block size the client asks for is used (not pin/tftp's 512 fallback), up to
// the 1468 cap, and that tsize is answered.
func TestTFTPBlockSizeNegotiated(t *testing.T) {
	data := randomBytes(t, 100_000)
	addr, _ := startTFTP(t, fstest.MapFS{"f": {Data: data}})
	size := strconv.Itoa(len(data))
	cases := []struct {
		opts      []string
		wantOACK  map[string]string
		wantBlock int
	}{
		{[]string{"blksize", "1468", "tsize", "0"}, map[string]string{"blksize": "1468", "tsize": size}, 1468},
		{[]string{"blksize", "1432"}, map[string]string{"blksize": "1432"}, 1432}, // what iPXE asks for
		{[]string{"blksize", "1024", "tsize", "0"}, map[string]string{"blksize": "1024", "tsize": size}, 1024},
		{[]string{"blksize", "8192"}, map[string]string{"blksize": "1468"}, 1468}, // capped: one Ethernet frame
		{[]string{"tsize", "0"}, map[string]string{"tsize": size}, 512},
		{[]string{"windowsize", "4", "blksize", "1468"}, map[string]string{"blksize": "1468", "windowsize": "4"}, 1468}, // EDK2 (RFC 7440)
		{[]string{"windowsize", "1000"}, map[string]string{"windowsize": "64"}, 512},                                    // capped
		{[]string{"windowsize", "0", "blksize", "4"}, map[string]string{}, 512},                                         // invalid: ignored
		{[]string{"BlkSize", "1024", "TIMEOUT", "3"}, map[string]string{"blksize": "1024", "timeout": "3"}, 1024},       // names are case-insensitive
		{nil, map[string]string{}, 512}, // RFC 1350 client: no OACK, 512
	}
	for _, c := range cases {
		oack, block := rawRRQ(t, addr, "f", c.opts...)
		if fmt.Sprint(oack) != fmt.Sprint(c.wantOACK) || block != c.wantBlock {
			t.Errorf("RRQ options %q: OACK %v with %d-byte blocks, want OACK %v with %d-byte blocks",
				c.opts, oack, block, c.wantOACK, c.wantBlock)
		}
	}
}

// TestTFTPBlockSizeIgnoresInterfaceMTU documents what pin/tftp v3.2.0 does
// with its knobs: by default it clamps blksize to the receiving interface's
// MTU-28, and gives 512 to a request that was queued before its Serve enabled
// IP_PKTINFO (no interface index: the research sandbox's "512 fallback").
// pumi's server switches that off and honours the client's request up to
// 1468, from the first request on. Seen on a loopback whose MTU is lowered to
// 1200, inside a namespace.
func TestTFTPBlockSizeIgnoresInterfaceMTU(t *testing.T) {
	testnet.Require(t)
	ns := testnet.New(t)
	ns.MustIP("link", "set", "lo", "mtu", "1200")
	files := fstest.MapFS{"f": {Data: randomBytes(t, 10_000)}}
	serve := func(s interface{ Serve(net.PacketConn) error }) string {
		var conn *net.UDPConn
		if err := ns.Do(func() (err error) {
			conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		go ns.Do(func() error { return s.Serve(conn) })
		return conn.LocalAddr().String()
	}
	ask := func(addr string) int {
		var c *net.UDPConn
		if err := ns.Do(func() (err error) {
			c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		_, block := rawRRQConn(t, c, addr, "f", "blksize", "1468")
		return block
	}

	ours := NewTFTP(files, nil)
	var conn *net.UDPConn
	if err := ns.Do(func() (err error) {
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ns.Do(func() error { return ours.Serve(ctx, conn) }) }()
	defer func() { cancel(); <-done }()
	if got := ask(conn.LocalAddr().String()); got != 1468 {
		t.Errorf("pumi's server: %d-byte blocks for a 1468 request on a 1200-MTU link, want 1468", got)
	}

	// The library default, for contrast: if this starts failing, pin/tftp
	// changed its negotiation and the comment on tftpMaxBlockSize is stale.
	def := tftp.NewServer(func(_ string, rf io.ReaderFrom) error {
		_, err := rf.ReadFrom(bytes.NewReader(make([]byte, 10_000)))
		return err
	}, nil)
	def.SetBlockSize(1468)
	defer def.Shutdown()
	addr := serve(def)
	first, second := ask(addr), ask(addr)
	t.Logf("pin/tftp default server: %d-byte blocks for the first request, %d for the second", first, second)
	if first != 512 && first != 1200-28 || second != 1200-28 {
		t.Errorf("pin/tftp default server: %d then %d-byte blocks, expected 512 or the MTU clamp %d, then the clamp",
			first, second, 1200-28)
	}
}

func TestTFTPRefuses(t *testing.T) {
	files := fstest.MapFS{"bootx64.efi": {Data: []byte("ipxe")}, "dir/x": {Data: []byte("x")}}
	addr, logs := startTFTP(t, files)
	refused := map[string]string{
		"../etc/passwd":            "refused",
		"/../../etc/passwd":        "refused",
		"dir/../bootx64.efi":       "refused",
		`..\..\etc\passwd`:         "refused",
		`\bootx64.efi`:             "refused",
		strings.Repeat("a/", 200):  "refused",
		"missing.efi":              "file not found: missing.efi",
		"dir":                      "file not found: dir",
		"52-54-00-ab-cd-ef/nofile": "file not found: nofile",
	}
	for name, want := range refused {
		_, _, err := fetch(t, addr, name, 1468)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("get %q: error %v, want a TFTP error containing %q", name, err, want)
		}
	}
	// Read-only: a write request gets a TFTP error and changes nothing.
	c, err := tftp.NewClient(addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetTimeout(2 * time.Second)
	rf, err := c.Send("bootx64.efi", "octet")
	if err == nil {
		_, err = rf.ReadFrom(strings.NewReader("overwritten"))
	}
	if err == nil || !strings.Contains(err.Error(), "does not support write") {
		t.Errorf("write request: error %v, want a TFTP error saying writes are not supported", err)
	}
	if got, _, err := fetch(t, addr, "bootx64.efi", 0); err != nil || string(got) != "ipxe" {
		t.Errorf("after the write attempt bootx64.efi = %q, %v; want unchanged", got, err)
	}
	if n := len(logs.wait(t, "tftp: transfer failed", len(refused)+1)); n < len(refused)+1 {
		t.Errorf("%d failure log lines, want at least %d (one per refused request)", n, len(refused)+1)
	}
}

// TestTFTPServeArguments: bad arguments are clear errors, not panics.
func TestTFTPServeArguments(t *testing.T) {
	if err := NewTFTP(fstest.MapFS{}, nil).Serve(context.Background(), nil); err == nil {
		t.Error("Serve(nil conn) succeeded")
	}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	if err := NewTFTP(nil, nil).Serve(context.Background(), conn); err == nil {
		t.Error("Serve with no files succeeded")
	}
	// A context that is already done: Serve returns nil and closes conn.
	conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := NewTFTP(fstest.MapFS{}, nil).Serve(ctx, conn); err != nil {
		t.Errorf("Serve(done ctx) = %v, want nil", err)
	}
	if _, err := conn.WriteToUDP([]byte{0}, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}); !errors.Is(err, net.ErrClosed) {
		t.Errorf("conn still open after Serve returned: %v", err)
	}
}

// TestTFTPRealClients serves the shipped bootx64.efi inside a network
// namespace to the real tftp-hpa client and to curl, and reads the negotiated
// block size from a packet capture taken on the client's side.
func TestTFTPRealClients(t *testing.T) {
	testnet.Require(t, "tftp", "curl", "tcpdump")
	ipxe, err := fs.ReadFile(assets.IPXE(), "bootx64.efi")
	if err != nil {
		t.Fatal(err)
	}
	ns := testnet.New(t)
	ns.Bridge("br0", "10.99.69.1/24")
	host := ns.Host("br0", "52:54:00:69:00:02", "10.99.69.2/24")

	var conn *net.UDPConn
	if err := ns.Do(func() (err error) {
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{Port: 69})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	sink := &logSink{}
	srv := NewTFTP(assets.IPXE(), slog.New(slog.NewJSONHandler(sink, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	// Serve runs on a thread inside the namespace, so the per-transfer
	// sockets it opens are in the namespace too.
	go func() { done <- ns.Do(func() error { return srv.Serve(ctx, conn) }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	dir := t.TempDir()
	pcap := filepath.Join(dir, "tftp.pcap")
	capCtx, stopCap := context.WithCancel(context.Background())
	defer stopCap()
	dump := host.Command(capCtx, "tcpdump", "-i", "eth0", "-n", "-U", "--immediate-mode", "-w", pcap, "udp")
	dump.Cancel = func() error { return dump.Process.Signal(os.Interrupt) }
	stderr, err := dump.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := host.Start(dump); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(stderr).ReadString('\n'); err != nil || !strings.Contains(line, "listening on") {
		t.Fatalf("tcpdump did not start: %q %v", line, err)
	}

	cmdCtx, cancelCmd := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancelCmd()
	start := time.Now()
	hpa := filepath.Join(dir, "hpa.efi")
	if out, err := host.Output(cmdCtx, "tftp", "-m", "binary", "10.99.69.1", "-c", "get", "bootx64.efi", hpa); err != nil {
		t.Fatalf("tftp-hpa: %v\n%s", err, out)
	}
	t.Logf("tftp-hpa done after %v", time.Since(start))
	curled := filepath.Join(dir, "curl.efi")
	out, err := host.Output(cmdCtx, "curl", "-sS", "-v", "--tftp-blksize", "1468", "-o", curled, "tftp://10.99.69.1/bootx64.efi")
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	t.Logf("curl done after %v", time.Since(start))
	for _, f := range []string{hpa, curled} {
		got, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, ipxe) {
			t.Errorf("%s: %d bytes, not identical to the %d-byte bootx64.efi", filepath.Base(f), len(got), len(ipxe))
		}
	}

	// -T tftp: decode the server's packets too, which come from its
	// per-transfer port rather than 69. tcpdump writes each packet as it
	// reads it (-U, --immediate-mode); poll until curl's OACK and first
	// 1468-byte block are in the file (they were sent long before curl
	// finished), giving up after 10 s.
	var text string
	for i := 0; ; i++ {
		text, err = ns.Output(context.Background(), "tcpdump", "-r", pcap, "-n", "-vv", "-T", "tftp", "udp")
		if err != nil {
			t.Fatalf("reading the capture: %v\n%s", err, text)
		}
		if strings.Contains(text, "OACK") && strings.Contains(text, "length 1472, DATA block 1\n") || i == 100 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("capture complete after %v", time.Since(start))
	stopCap()
	dump.Wait()
	t.Logf("capture (requests and option acks):\n%s", grepLines(text, "RRQ", "OACK", "ERROR"))
	// curl asked for 1468 and tsize; the server's OACK must grant both, and
	// its data packets must be that big.
	oack := grepLines(text, "OACK")
	if !strings.Contains(oack, "blksize 1468") || !strings.Contains(oack, fmt.Sprintf("tsize %d", len(ipxe))) {
		t.Errorf("no OACK granting blksize 1468 and tsize %d in the capture", len(ipxe))
	}
	if !strings.Contains(text, "length 1472, DATA block 1\n") {
		t.Errorf("no 1468-byte DATA block in the capture")
	}
	// The server's log says the same, per transfer: 512 for tftp-hpa (its
	// client cannot ask for a block size), 1468 for curl.
	recs := sink.wait(t, "tftp: transfer done", 2)
	t.Logf("server logs complete after %v", time.Since(start))
	if len(recs) != 2 || recs[0]["blksize"] != float64(512) || recs[1]["blksize"] != float64(1468) ||
		recs[0]["bytes"] != float64(len(ipxe)) || recs[1]["bytes"] != float64(len(ipxe)) {
		t.Errorf("transfer log lines %v, want tftp-hpa at blksize 512 then curl at 1468, %d bytes each", recs, len(ipxe))
	}
}

// grepLines returns the lines of s that contain any of words.
func grepLines(s string, words ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, w := range words {
			if strings.Contains(l, w) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
