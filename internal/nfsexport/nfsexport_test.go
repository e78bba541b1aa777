package nfsexport

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	nfsc "github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/rpc"
	"github.com/willscott/go-nfs-client/nfs/xdr"
	"golang.org/x/sys/unix"
)

// allowList is the test's Allow: a set of (ip, export) pairs, changeable
// while the server runs, plus a write flag per export.
type allowList struct {
	mu    sync.Mutex
	read  map[string]bool // ip|export
	write map[string]bool
}

func newAllow() *allowList {
	return &allowList{read: map[string]bool{}, write: map[string]bool{}}
}

func (a *allowList) set(ip, export string, read, write bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.read[ip+"|"+export] = read
	a.write[ip+"|"+export] = write
}

// AllowConnect: an address with any export allowed has a job.
func (a *allowList) AllowConnect(ip netip.Addr) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, ok := range a.read {
		if ok && strings.HasPrefix(k, ip.String()+"|") {
			return true
		}
	}
	for k, ok := range a.write {
		if ok && strings.HasPrefix(k, ip.String()+"|") {
			return true
		}
	}
	return false
}

func (a *allowList) AllowClient(ip netip.Addr, export string, write bool) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := ip.String() + "|" + export
	if write {
		return a.write[k]
	}
	return a.read[k]
}

type fixture struct {
	images, capture string
	big             []byte
	longRel         string
}

// newFixture makes an image repository with a multi-MiB file, a nested
// image folder, a path too long to inline in a handle, and a symlink that
// points out of the export.
func newFixture(t testing.TB) fixture {
	t.Helper()
	root := t.TempDir()
	f := fixture{images: filepath.Join(root, "images"), capture: filepath.Join(root, "capture")}
	must(t, os.MkdirAll(filepath.Join(f.images, "LAB-2026-img"), 0o755))
	must(t, os.MkdirAll(f.capture, 0o755))
	f.big = make([]byte, 5<<20+123)
	_, _ = rand.Read(f.big)
	must(t, os.WriteFile(filepath.Join(f.images, "LAB-2026-img", "sda1.ext4-ptcl-img.zst.aa"), f.big, 0o600))
	must(t, os.WriteFile(filepath.Join(f.images, "LAB-2026-img", "disk"), []byte("sda\n"), 0o644))
	long := filepath.Join(f.images, "LAB-2026-img", strings.Repeat("d", 40), strings.Repeat("e", 40))
	must(t, os.MkdirAll(long, 0o755))
	must(t, os.WriteFile(filepath.Join(long, "parts"), []byte("sda1 sda2\n"), 0o644))
	f.longRel = "LAB-2026-img/" + strings.Repeat("d", 40) + "/" + strings.Repeat("e", 40) + "/parts"
	must(t, os.Symlink("/etc", filepath.Join(f.images, "escape")))
	must(t, os.WriteFile(filepath.Join(root, "secret"), []byte("outside"), 0o644))
	must(t, os.Symlink("../secret", filepath.Join(f.images, "escape-rel")))
	return f
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// startServer serves f on 127.0.0.1 and returns its address and a stop
// function that waits for Serve to return.
func startServer(t testing.TB, f fixture, allow Allow) (string, func()) {
	t.Helper()
	return startServerOn(t, f, allow, "127.0.0.1:0")
}

func startServerOn(t testing.TB, f fixture, allow Allow, addr string) (string, func()) {
	t.Helper()
	return startServerLog(t, f, allow, addr, testLogger(t))
}

func startServerLog(t testing.TB, f fixture, allow Allow, addr string, log *slog.Logger) (string, func()) {
	t.Helper()
	s, err := New(Config{Exports: []Export{
		{Path: "/images", Dir: f.images},
		{Path: "/capture", Dir: f.capture, Writable: true},
	}}, allow, log)
	must(t, err)
	l, err := net.Listen("tcp", addr)
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return l.Addr().String(), stop
}

func dial(t testing.TB, addr string) *rpc.Client {
	t.Helper()
	c, err := rpc.DialTCP("tcp", addr, false)
	must(t, err)
	t.Cleanup(c.Close)
	return c
}

func mount(t testing.TB, addr, export string) (*nfsc.Target, []byte, error) {
	t.Helper()
	c := dial(t, addr)
	m := &nfsc.Mount{Client: c}
	auth := rpc.NewAuthUnix("seat", 0, 0).Auth()
	v, err := m.Mount(export, auth)
	if err != nil {
		return nil, nil, err
	}
	_, fh, err := v.Lookup(".")
	if err != nil {
		return nil, nil, err
	}
	return v, fh, nil
}

func readAll(t testing.TB, v *nfsc.Target, p string) ([]byte, error) {
	t.Helper()
	f, err := v.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

type readArgs struct {
	rpc.Header
	FH     []byte
	Offset uint64
	Count  uint32
}

// rawRead sends one READ with a given handle, as a client holding that
// handle from before a restart would, and returns the NFS status and data.
func rawRead(t testing.TB, c *rpc.Client, fh []byte, off uint64, count uint32) (uint32, []byte) {
	t.Helper()
	res, err := c.Call(&readArgs{
		Header: rpc.Header{Rpcvers: 2, Prog: nfsc.Nfs3Prog, Vers: nfsc.Nfs3Vers, Proc: nfsc.NFSProc3Read,
			Cred: rpc.AuthNull, Verf: rpc.AuthNull},
		FH: fh, Offset: off, Count: count,
	})
	must(t, err)
	status, err := xdr.ReadUint32(res)
	must(t, err)
	if status != 0 {
		return status, nil
	}
	var rr struct {
		Attr  nfsc.PostOpAttr
		Count uint32
		EOF   uint32
	}
	must(t, xdr.Read(res, &rr))
	data, err := xdr.ReadOpaque(res)
	must(t, err)
	return status, data
}

func TestMountReadList(t *testing.T) {
	f := newFixture(t)
	allow := newAllow()
	allow.set("127.0.0.1", "/images", true, false)
	addr, _ := startServer(t, f, allow)

	v, _, err := mount(t, addr, "/images")
	must(t, err)
	got, err := readAll(t, v, "LAB-2026-img/sda1.ext4-ptcl-img.zst.aa")
	must(t, err)
	if sha256.Sum256(got) != sha256.Sum256(f.big) {
		t.Fatalf("read %d bytes with a different sha256 than the %d-byte file", len(got), len(f.big))
	}
	got, err = readAll(t, v, f.longRel)
	must(t, err)
	if string(got) != "sda1 sda2\n" {
		t.Fatalf("long path read %q", got)
	}
	ents, err := v.ReadDirPlus("LAB-2026-img")
	must(t, err)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	want := []string{"disk", strings.Repeat("d", 40), "sda1.ext4-ptcl-img.zst.aa"}
	for _, w := range want {
		if !strings.Contains(strings.Join(names, ","), w) {
			t.Errorf("READDIRPLUS of LAB-2026-img = %v, missing %s", names, w)
		}
	}

	// ACCESS on the ro export grants READ|LOOKUP|EXECUTE and nothing else
	// (a handle length that breaks go-nfs's argument decoding gives 0 here).
	for _, p := range []string{".", "LAB-2026-img", "LAB-2026-img/disk"} {
		if m, err := v.Access(p, 0x3f); err != nil || m != 0x23 {
			t.Errorf("ACCESS %s: mask %#x, err %v; want 0x23", p, m, err)
		}
	}

	fsinfo, err := v.FSInfo()
	must(t, err)
	if fsinfo.RTMax != 1<<20 || fsinfo.RTPref != 1<<20 || fsinfo.WTMax != 1<<20 {
		t.Errorf("FSINFO rtmax=%d rtpref=%d wtmax=%d, want 1 MiB", fsinfo.RTMax, fsinfo.RTPref, fsinfo.WTMax)
	}
}

func TestMountRefusals(t *testing.T) {
	f := newFixture(t)
	allow := newAllow()
	allow.set("127.0.0.2", "/images", true, false) // another seat, not us
	addr, _ := startServer(t, f, allow)

	// An address with no job at all is refused at accept: not one byte
	// is read or answered.
	if got, err := refusedAtAccept(addr); err != nil {
		t.Errorf("connection from an address with no job: %v (read %q)", err, got)
	}
	// A seat with a job on another export cannot mount this one.
	allow.set("127.0.0.1", "/capture", true, true)
	if _, _, err := mount(t, addr, "/images"); err == nil || !strings.Contains(err.Error(), "MNT3ERR_ACCES") {
		t.Errorf("MOUNT /images from a client outside the run: err = %v, want MNT3ERR_ACCES", err)
	}
	allow.set("127.0.0.1", "/images", true, false)
	for _, p := range []string{"/", "/etc", "/images/../etc", "/imagesX", "/images/nope", "/images/escape"} {
		if _, _, err := mount(t, addr, p); err == nil || !strings.Contains(err.Error(), "MNT3ERR_NOENT") {
			t.Errorf("MOUNT %s: err = %v, want MNT3ERR_NOENT", p, err)
		}
	}
	// A mounted client that leaves the run loses access on its next call.
	v, fh, err := mount(t, addr, "/images")
	must(t, err)
	allow.set("127.0.0.1", "/images", false, false)
	if _, err := readAll(t, v, "LAB-2026-img/disk"); err == nil {
		t.Error("read after the seat left the run succeeded")
	} else if !strings.Contains(err.Error(), "ACCES") {
		t.Errorf("read after the seat left the run: %v, want access denied", err)
	}
	st, _ := rawRead(t, dial(t, addr), fh, 0, 10)
	if st != nfs3ErrAcces {
		t.Errorf("raw READ from a disallowed client: status %d, want NFS3ERR_ACCES (13)", st)
	}
}

func TestWrites(t *testing.T) {
	f := newFixture(t)
	allow := newAllow()
	allow.set("127.0.0.1", "/images", true, true) // even if Allow says yes, /images is ro
	allow.set("127.0.0.1", "/capture", true, true)
	addr, _ := startServer(t, f, allow)

	v, _, err := mount(t, addr, "/images")
	must(t, err)
	_, err = v.Create("new.txt", 0o644)
	var nerr *nfsc.Error
	if !errors.As(err, &nerr) || nerr.ErrorNum != nfs3ErrROFS {
		t.Errorf("CREATE on /images: err = %v, want NFS3ERR_ROFS", err)
	}
	if err := v.Remove("LAB-2026-img/disk"); !errors.As(err, &nerr) || nerr.ErrorNum != nfs3ErrROFS {
		t.Errorf("REMOVE on /images: err = %v, want NFS3ERR_ROFS", err)
	}
	if _, err := os.Stat(filepath.Join(f.images, "LAB-2026-img", "disk")); err != nil {
		t.Errorf("file on the ro export was touched: %v", err)
	}

	c, _, err := mount(t, addr, "/capture")
	must(t, err)
	_, err = c.Mkdir("saved-img", 0o755)
	must(t, err)
	w, err := c.OpenFile("saved-img/sda1.img", 0o644)
	must(t, err)
	payload := bytes.Repeat([]byte("capture!"), 300000)
	_, err = w.Write(payload)
	must(t, err)
	must(t, w.Close())
	got, err := os.ReadFile(filepath.Join(f.capture, "saved-img", "sda1.img"))
	must(t, err)
	if !bytes.Equal(got, payload) {
		t.Fatalf("capture file has %d bytes, want %d identical", len(got), len(payload))
	}

	// Writing to capture needs the write permission too.
	allow.set("127.0.0.1", "/capture", true, false)
	if _, err := c.Create("denied.txt", 0o644); !errors.As(err, &nerr) || nerr.ErrorNum != nfs3ErrAcces {
		t.Errorf("CREATE on /capture without write permission: err = %v, want NFS3ERR_ACCES", err)
	}
}

func TestEscapeRefused(t *testing.T) {
	f := newFixture(t)
	allow := newAllow()
	allow.set("127.0.0.1", "/images", true, false)
	addr, _ := startServer(t, f, allow)
	v, _, err := mount(t, addr, "/images")
	must(t, err)
	for _, p := range []string{"escape/hostname", "escape/passwd", "escape-rel"} {
		if got, err := readAll(t, v, p); err == nil {
			t.Errorf("read %s through a symlink out of the export: got %q", p, got)
		}
	}
	c := dial(t, addr)
	tab := newHandleTable("/images")
	// READ of a directory or a FIFO is refused (and must not block).
	must(t, unix.Mkfifo(filepath.Join(f.images, "fifo"), 0o644))
	for rel, want := range map[string]uint32{"LAB-2026-img": nfs3ErrIsDir, "fifo": nfs3ErrInval} {
		if st, _ := rawRead(t, c, tab.encode(rel), 0, 100); st != want {
			t.Errorf("READ of %s: status %d, want %d", rel, st, want)
		}
	}
	// Forged handles: through a symlink (resolved inside the export, so it
	// names nothing) and with "..", which never decodes.
	for _, rel := range []string{"escape/hostname", "escape-rel", "../secret"} {
		fh := tab.encode(rel)
		st, data := rawRead(t, c, fh, 0, 100)
		if st == 0 {
			t.Errorf("READ of forged handle %q succeeded: %q", rel, data)
		}
	}
}

func TestHandleSurvivesRestart(t *testing.T) {
	f := newFixture(t)
	allow := newAllow()
	allow.set("127.0.0.1", "/images", true, false)
	addr, stop := startServer(t, f, allow)
	v, _, err := mount(t, addr, "/images")
	must(t, err)
	_, bigFH, err := v.Lookup("LAB-2026-img/sda1.ext4-ptcl-img.zst.aa")
	must(t, err)
	_, longFH, err := v.Lookup(f.longRel)
	must(t, err)
	if len(longFH) > 64 || len(bigFH) > 64 {
		t.Fatalf("handle lengths %d/%d exceed NFSv3's 64 bytes", len(bigFH), len(longFH))
	}
	st, first := rawRead(t, dial(t, addr), bigFH, 0, 1<<20)
	if st != 0 || !bytes.Equal(first, f.big[:1<<20]) {
		t.Fatalf("first READ: status %d, %d bytes", st, len(first))
	}
	stop()

	// A new Server instance: nothing of the old one's memory is left, and
	// this client does no MOUNT or LOOKUP, it just goes on with its handles.
	addr2, _ := startServerOn(t, f, allow, addr)
	c := dial(t, addr2)
	st, rest := rawRead(t, c, bigFH, 1<<20, 1<<20)
	if st != 0 || !bytes.Equal(rest, f.big[1<<20:2<<20]) {
		t.Fatalf("READ with a pre-restart handle: status %d, %d bytes", st, len(rest))
	}
	st, parts := rawRead(t, c, longFH, 0, 100)
	if st != 0 || string(parts) != "sda1 sda2\n" {
		t.Fatalf("READ with a pre-restart hashed (long path) handle: status %d, %q", st, parts)
	}
	// Stale only when really gone.
	must(t, os.Remove(filepath.Join(f.images, "LAB-2026-img", "disk")))
	_, diskFH, _ := v.Lookup("LAB-2026-img/disk") // from the old mount's cache or error
	if diskFH != nil {
		if st, _ := rawRead(t, c, diskFH, 0, 10); st != nfs3ErrStale {
			t.Errorf("READ of a removed file: status %d, want NFS3ERR_STALE (70)", st)
		}
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	must(t, os.WriteFile(file, nil, 0o644))
	cases := map[string]Config{
		"none":     {},
		"relative": {Exports: []Export{{Path: "images", Dir: dir}}},
		"unclean":  {Exports: []Export{{Path: "/images/", Dir: dir}}},
		"dup":      {Exports: []Export{{Path: "/a", Dir: dir}, {Path: "/a", Dir: dir}}},
		"missing":  {Exports: []Export{{Path: "/a", Dir: filepath.Join(dir, "nope")}}},
		"notdir":   {Exports: []Export{{Path: "/a", Dir: file}}},
	}
	for name, cfg := range cases {
		if _, err := New(cfg, newAllow(), nil); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
	if _, err := New(Config{Exports: []Export{{Path: "/a", Dir: dir}}}, nil, nil); err == nil {
		t.Error("New accepted a nil Allow")
	}
}

// TestMalformedRecords sends broken records over TCP; the server must keep
// serving other clients.
func TestMalformedRecords(t *testing.T) {
	f := newFixture(t)
	allow := newAllow()
	allow.set("127.0.0.1", "/images", true, false)
	addr, _ := startServer(t, f, allow)
	for _, rec := range malformedSeeds() {
		sendRaw(t, addr, rec)
	}
	if _, _, err := mount(t, addr, "/images"); err != nil {
		t.Fatalf("server no longer mounts after malformed records: %v", err)
	}
}

// refusedAtAccept dials addr, sends a NULL call and expects the server to
// close the connection without answering.
func refusedAtAccept(addr string) ([]byte, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_, _ = c.Write(callRecord(1, progNFS, 3, procNull, nil))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	switch {
	case len(got) > 0:
		return got, errors.New("the server answered")
	case err != nil && errors.Is(err, os.ErrDeadlineExceeded):
		return nil, errors.New("the server kept the connection open")
	}
	return nil, nil // EOF or reset: closed at accept
}

func sendRaw(t testing.TB, addr string, b []byte) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	_, _ = c.Write(b)
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, _ = io.Copy(io.Discard, c)
}
