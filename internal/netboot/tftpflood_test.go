package netboot

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/assets"
	"github.com/pumi-lab/pumi/internal/testnet"
)

// serveTFTPIn runs a TFTP server for files on port 69 inside ns until the
// test ends.
func serveTFTPIn(t *testing.T, ns *testnet.NS, files fs.FS) (*TFTP, *logSink) {
	t.Helper()
	var conn *net.UDPConn
	if err := ns.Do(func() (err error) {
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{Port: 69})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	sink := &logSink{}
	srv := NewTFTP(files, slog.New(slog.NewJSONHandler(sink, &slog.HandlerOptions{Level: slog.LevelDebug})))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ns.Do(func() error { return srv.Serve(ctx, conn) }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return srv, sink
}

// TestTFTPWindowsizeAtftp: atftp 0.8 (Debian), a client nobody here wrote,
// asks for RFC 7440 windowsize and gets the file intact; the server's log
// line says the window it used.
func TestTFTPWindowsizeAtftp(t *testing.T) {
	testnet.Require(t, "atftp")
	ipxe, err := fs.ReadFile(assets.IPXE(), "bootx64.efi")
	if err != nil {
		t.Fatal(err)
	}
	ns := testnet.New(t)
	ns.Bridge("br0", "10.99.71.1/24")
	host := ns.Host("br0", "52:54:00:71:00:02", "10.99.71.2/24")
	_, sink := serveTFTPIn(t, ns, assets.IPXE())
	dir := t.TempDir()
	for i, c := range []struct {
		opts   []string
		window float64
	}{
		{[]string{"blksize 1468", "windowsize 8"}, 8},
		{[]string{"blksize 1468", "windowsize 16"}, 16},
		{[]string{"blksize 1468"}, 1},
	} {
		t.Run(strings.Join(c.opts, ","), func(t *testing.T) {
			out := filepath.Join(dir, fmt.Sprintf("f%d", i))
			args := []string{"-g", "-r", "bootx64.efi", "-l", out}
			for _, o := range c.opts {
				args = append(args, "--option", o)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if text, err := host.Output(ctx, "atftp", append(args, "10.99.71.1")...); err != nil {
				t.Fatalf("atftp %v: %v\n%s", args, err, text)
			}
			got, err := os.ReadFile(out)
			if err != nil || !bytes.Equal(got, ipxe) {
				t.Fatalf("atftp got %d bytes (%v), want the %d-byte bootx64.efi", len(got), err, len(ipxe))
			}
			recs := sink.wait(t, "tftp: transfer done", i+1)
			if len(recs) != i+1 {
				t.Fatalf("%d transfer lines, want %d", len(recs), i+1)
			}
			r := recs[i]
			if r["windowsize"] != c.window || r["blksize"] != float64(1468) || r["bytes"] != float64(len(ipxe)) {
				t.Errorf("server log %v, want windowsize %v, blksize 1468, %d bytes", r, c.window, len(ipxe))
			}
		})
	}
}

func (l *logSink) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// processFDs counts this process's open file descriptors.
func processFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// processRSS is this process's resident set in bytes.
func processRSS(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// TestTFTPFloodBounded: 5,000 read requests that are never acknowledged,
// from 50 addresses of an outsider, while a real client (tftp-hpa, then
// atftp with windowsize) fetches bootx64.efi. The server's fds and memory
// stay bounded, the real client gets its file within 2 s, and the log
// stays short.
func TestTFTPFloodBounded(t *testing.T) {
	testnet.Require(t, "tftp", "atftp")
	ipxe, err := fs.ReadFile(assets.IPXE(), "bootx64.efi")
	if err != nil {
		t.Fatal(err)
	}
	ns := testnet.New(t)
	ns.Bridge("br0", "10.99.72.1/24")
	attacker := ns.Host("br0", "52:54:00:72:00:02", "10.99.72.2/24")
	client := ns.Host("br0", "52:54:00:72:00:03", "10.99.72.3/24")
	const addrs = 50
	for i := range addrs {
		attacker.MustIP("addr", "add", fmt.Sprintf("10.99.72.%d/24", 10+i), "dev", "eth0")
	}
	fds0, rss0 := processFDs(t), processRSS(t)
	srv, sink := serveTFTPIn(t, ns, assets.IPXE())

	// The flood: 5,000 RRQs from 500 ports (10 on each of 50 addresses),
	// 10 from each port, a few milliseconds apart so it lasts ~5 s and
	// overlaps the real fetches.
	const requests, ports = 5000, 500
	var socks []*net.UDPConn
	if err := attacker.Do(func() error {
		for i := range ports {
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 99, 72, byte(10+i%addrs))})
			if err != nil {
				return err
			}
			socks = append(socks, c)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, c := range socks {
			c.Close()
		}
	}()
	server := &net.UDPAddr{IP: net.IPv4(10, 99, 72, 1), Port: 69}
	rrq := []byte("\x00\x01bootx64.efi\x00octet\x00blksize\x001468\x00")
	var sent atomic.Int64
	var maxFDs, maxActive atomic.Int64
	var maxRSS atomic.Int64
	stopSample := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			maxFDs.Store(max(maxFDs.Load(), int64(processFDs(t))))
			maxRSS.Store(max(maxRSS.Load(), processRSS(t)))
			maxActive.Store(max(maxActive.Load(), int64(srv.Active())))
			select {
			case <-stopSample:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	floodDone := make(chan struct{})
	go func() {
		defer close(floodDone)
		for i := range requests {
			socks[i%ports].WriteToUDP(rrq, server)
			sent.Add(1)
			if i%50 == 49 {
				time.Sleep(50 * time.Millisecond)
			}
		}
	}()
	for sent.Load() < requests/5 {
		time.Sleep(10 * time.Millisecond)
	}
	dir := t.TempDir()
	for _, c := range []struct {
		name string
		args []string
	}{
		{"tftp-hpa", []string{"tftp", "-m", "binary", "10.99.72.1", "-c", "get", "bootx64.efi", filepath.Join(dir, "hpa")}},
		{"atftp windowsize 8", []string{"atftp", "--option", "blksize 1468", "--option", "windowsize 8", "-g", "-r", "bootx64.efi", "-l", filepath.Join(dir, "atftp"), "10.99.72.1"}},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		start := time.Now()
		text, err := client.Output(ctx, c.args[0], c.args[1:]...)
		took := time.Since(start)
		cancel()
		if err != nil {
			t.Fatalf("%s during the flood: %v\n%s", c.name, err, text)
		}
		got, err := os.ReadFile(c.args[len(c.args)-1])
		if c.name != "tftp-hpa" {
			got, err = os.ReadFile(filepath.Join(dir, "atftp"))
		}
		if err != nil || !bytes.Equal(got, ipxe) {
			t.Errorf("%s: %d bytes (%v), want the %d-byte bootx64.efi", c.name, len(got), err, len(ipxe))
		}
		t.Logf("FIGURE tftp flood: %s got bootx64.efi in %v after %d of %d flood requests", c.name, took.Round(time.Millisecond), sent.Load(), requests)
		if took > 2*time.Second {
			t.Errorf("%s took %v during the flood, want under 2 s", c.name, took)
		}
	}
	<-floodDone
	time.Sleep(200 * time.Millisecond)
	close(stopSample)
	wg.Wait()

	t.Logf("FIGURE tftp flood: %d never-acknowledged requests from %d ports on %d addresses: process fds %d before, at most %d during (%d of them the flood's own sockets); RSS %.1f MiB before, at most %.1f MiB during; at most %d transfers at once",
		requests, ports, addrs, fds0, maxFDs.Load(), ports, float64(rss0)/(1<<20), float64(maxRSS.Load())/(1<<20), maxActive.Load())
	if maxActive.Load() > tftpMaxTransfers {
		t.Errorf("%d transfers at once, bound is %d", maxActive.Load(), tftpMaxTransfers)
	}
	// One fd per transfer (its socket; the embedded files have none) plus
	// the test's own: the flood's sockets live in this process too.
	if extra := maxFDs.Load() - int64(fds0) - ports; extra > 2*tftpMaxTransfers+64 {
		t.Errorf("fds grew by %d beyond the flood's own sockets, want at most %d", extra, 2*tftpMaxTransfers+64)
	}
	if grow := maxRSS.Load() - rss0; grow > 64<<20 {
		t.Errorf("RSS grew by %.1f MiB, want a bounded few MiB", float64(grow)/(1<<20))
	}
	busy := len(sink.records(t, "tftp: transfer limit reached: request refused as busy"))
	failed := sink.records(t, "tftp: transfer failed")
	lines := strings.Count(sink.String(), "\n")
	t.Logf("FIGURE tftp flood: %d log lines for %d requests (%d busy lines, %d failure lines logged; %d refused as busy in all)",
		lines, requests, busy, len(failed), srv.noisy.Total("tftp: transfer limit reached: request refused as busy"))
	if lines > 400 {
		t.Errorf("%d log lines for a flood of %d requests: the noisy lines are not rate-limited", lines, requests)
	}
}

// FuzzParseRRQ: the request parser and the option negotiation never panic,
// and what they accept stays within the bounds the server relies on.
func FuzzParseRRQ(f *testing.F) {
	f.Add([]byte("bootx64.efi\x00octet\x00blksize\x001468\x00tsize\x000\x00windowsize\x004\x00"))
	f.Add([]byte("a\x00netascii\x00"))
	f.Add([]byte("\x00\x00\x00"))
	f.Add([]byte("x\x00octet\x00windowsize\x0099999999999999999999\x00timeout\x00-1\x00"))
	f.Fuzz(func(t *testing.T, p []byte) {
		_, _, opts, err := parseRRQ(p)
		if err != nil {
			return
		}
		o := negotiate(opts, 1<<20)
		if o.blksize < 8 || o.blksize > tftpMaxBlockSize || o.window < 1 || o.window > tftpMaxWindow ||
			o.timeout < time.Second || o.timeout > 255*time.Second || len(o.oack)%2 != 0 {
			t.Fatalf("negotiated %+v from %q", o, p)
		}
	})
}
