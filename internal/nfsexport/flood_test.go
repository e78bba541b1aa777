package nfsexport

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestHelperServer is not a test: TestRecordFlood runs the test binary
// again with PUMI_NFS_HELPER set, so the server under attack is a process
// of its own whose memory (VmHWM) is measured alone.
func TestHelperServer(t *testing.T) {
	if os.Getenv("PUMI_NFS_HELPER") == "" {
		t.Skip("helper process for TestRecordFlood")
	}
	allow := newAllow()
	for _, ip := range strings.Split(os.Getenv("PUMI_NFS_ALLOW"), ",") {
		allow.set(ip, "/images", true, false)
	}
	s, err := New(Config{Exports: []Export{{Path: "/images", Dir: os.Getenv("PUMI_NFS_IMAGES")}}}, allow,
		slog.New(slog.DiscardHandler))
	must(t, err)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	fmt.Printf("ADDR %s\n", l.Addr())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent closes it
	cancel()
	<-done
}

// procStatus reads a kB field of /proc/PID/status.
func procStatus(t testing.TB, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	must(t, err)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			must(t, err)
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// TestRecordFlood: 1,000 connections, each sending a record header that
// claims 1 MiB and then all but the last 64 bytes of it, from an address
// with no job and (separately) from an address allowed to mount. The
// server's peak RSS must stay under 64 MiB and a seat's restore read on
// its own connection must go on. Everything is on loopback.
func TestRecordFlood(t *testing.T) {
	if os.Getenv("PUMI_NFS_HELPER") != "" {
		t.Skip("inside the helper")
	}
	images := t.TempDir()
	img := filepath.Join(images, "LAB-2026-img")
	must(t, os.MkdirAll(img, 0o755))
	big := make([]byte, 32<<20)
	_, _ = rand.Read(big)
	must(t, os.WriteFile(filepath.Join(img, "sda1.img"), big, 0o644))
	const seat, allowed, stranger = "127.0.0.2", "127.0.0.3", "127.0.0.4"

	for _, tc := range []struct{ name, from string }{{"no-job", stranger}, {"allowed", allowed}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperServer$", "-test.count=1")
			cmd.Env = append(os.Environ(), "PUMI_NFS_HELPER=1", "PUMI_NFS_IMAGES="+images,
				"PUMI_NFS_ALLOW="+seat+","+allowed)
			stdin, err := cmd.StdinPipe()
			must(t, err)
			stdout, err := cmd.StdoutPipe()
			must(t, err)
			cmd.Stderr = os.Stderr
			must(t, cmd.Start())
			defer func() { stdin.Close(); _ = cmd.Wait() }()
			line, err := bufio.NewReader(stdout).ReadString('\n')
			must(t, err)
			addr, ok := strings.CutPrefix(strings.TrimSpace(line), "ADDR ")
			if !ok {
				t.Fatalf("helper said %q", line)
			}
			pid := cmd.Process.Pid
			go func() { _, _ = io.Copy(io.Discard, stdout) }()

			// The seat restores: 1 MiB READs, round and round the file.
			fh := newHandleTable("/images").encode("LAB-2026-img/sda1.img")
			sc := dialRaw(t, addr, seat)
			var reads atomic.Int64
			readErr := make(chan error, 1)
			stopRead := make(chan struct{})
			go func() {
				for off := uint64(0); ; off = (off + 1<<20) % uint64(len(big)) {
					select {
					case <-stopRead:
						readErr <- nil
						return
					default:
					}
					st, x, err := sc.nfs(procRead, argsRead(fh, off, 1<<20))
					if err == nil && st != nfs3OK {
						err = fmt.Errorf("READ status %d", st)
					}
					if err != nil {
						readErr <- err
						return
					}
					if x.u32() == 1 {
						x.off += 84
					}
					x.u32()
					x.u32()
					if data := x.opaque(1 << 20); x.err != nil || string(data[:64]) != string(big[off:off+64]) {
						readErr <- fmt.Errorf("READ at %d: wrong data (%v)", off, x.err)
						return
					}
					reads.Add(1)
				}
			}()
			waitReads := func(n int64, within time.Duration) bool {
				end := time.Now().Add(within)
				for time.Now().Before(end) {
					if reads.Load() >= n {
						return true
					}
					time.Sleep(10 * time.Millisecond)
				}
				return false
			}
			if !waitReads(5, 20*time.Second) {
				t.Fatal("the seat's restore read did not start")
			}
			rssBefore := procStatus(t, pid, "VmRSS")

			// The flood.
			const conns = 1000
			rec := make([]byte, 4+1<<20-64)
			binary.BigEndian.PutUint32(rec, 1<<31|1<<20)
			var (
				wg                sync.WaitGroup
				mu                sync.Mutex
				open              []net.Conn
				dialFail, written atomic.Int64
			)
			readsAtFlood := reads.Load()
			start := time.Now()
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(tc.from)}}
			for range conns {
				wg.Go(func() {
					c, err := d.DialContext(ctx, "tcp", addr)
					if err != nil {
						dialFail.Add(1)
						return
					}
					mu.Lock()
					open = append(open, c)
					mu.Unlock()
					_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
					if _, err := c.Write(rec); err == nil {
						written.Add(1)
					}
				})
			}
			wg.Wait()
			floodTime := time.Since(start)
			// Give the server time to read what it accepted.
			time.Sleep(time.Second)
			readsDuring := reads.Load() - readsAtFlood
			rss, hwm := procStatus(t, pid, "VmRSS"), procStatus(t, pid, "VmHWM")
			if !waitReads(reads.Load()+5, 10*time.Second) {
				t.Errorf("the seat's restore read stalled after the flood (%d reads during it)", readsDuring)
			}
			close(stopRead)
			if err := <-readErr; err != nil {
				t.Errorf("the seat's restore read failed: %v", err)
			}
			mu.Lock()
			for _, c := range open {
				c.Close()
			}
			mu.Unlock()
			t.Logf("FIGURE record flood from %s (%s): %d connections (%d dials failed, %d had all but 64 bytes of a 1 MiB record taken by the socket) in %v; "+
				"server VmRSS %d MiB before, %d MiB after, peak VmHWM %d MiB; seat READs during the flood: %d MiB",
				tc.from, tc.name, conns, dialFail.Load(), written.Load(), floodTime.Round(time.Millisecond),
				rssBefore>>10, rss>>10, hwm>>10, readsDuring)
			if hwm >= 64<<10 {
				t.Errorf("server peak RSS %d MiB, want under 64 MiB", hwm>>10)
			}
		})
	}
}

// TestRecordMemoryBudget: a client that starts a large WRITE and stalls
// holds record memory only until its record deadline; another client's
// WRITE that needs that memory waits, then goes through.
func TestRecordMemoryBudget(t *testing.T) {
	lab := newCaptureLab(t, "")
	allow := newAllow()
	allow.set("127.0.0.1", "/capture", true, true)
	allow.set("127.0.0.2", "/capture", true, true)
	cfg := lab.config()
	cfg.RecordMemory = 128 << 10 // two units beyond the free 64 KiB
	s, err := New(cfg, allow, testLogger(t))
	must(t, err)
	s.recordTime = time.Second
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-done })
	addr := l.Addr().String()
	tab := newHandleTable("/capture")

	// The staller: a 1 MiB record header and 250 KiB of it.
	staller := dialRaw(t, addr, "127.0.0.1")
	hdr := binary.BigEndian.AppendUint32(nil, 1<<31|1<<20)
	_, err = staller.c.Write(append(hdr, make([]byte, 250<<10)...))
	must(t, err)
	time.Sleep(200 * time.Millisecond) // let the server take both units

	// The writer (in its own job folder) needs both units for 150 KiB.
	w := dialRaw(t, addr, "127.0.0.2")
	if st, _, err := w.nfs(8, argsCreate(tab.encode(""), "part")); err != nil || st != nfs3OK {
		t.Fatalf("CREATE: status %d, %v", st, err)
	}
	start := time.Now()
	data := bytes.Repeat([]byte("p"), 150<<10)
	st, _, err := w.nfs(procWrite, argsWrite(tab.encode("part"), 0, stableFileSync, data))
	waited := time.Since(start)
	if err != nil || st != nfs3OK {
		t.Fatalf("150 KiB WRITE while another client holds the budget: status %d, %v", st, err)
	}
	got, err := os.ReadFile(filepath.Join(lab.jobs[netip.MustParseAddr("127.0.0.2")], "part"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("written file: %d bytes, %v", len(got), err)
	}
	// The staller's connection was dropped at its record deadline.
	_ = staller.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := staller.c.Read(make([]byte, 1)); err == nil {
		t.Errorf("the stalled connection is still open (read %d bytes)", n)
	}
	t.Logf("the WRITE waited %v for record memory (the staller's deadline: 1 s)", waited.Round(time.Millisecond))
	if waited < 300*time.Millisecond {
		t.Errorf("the WRITE did not wait for the budget (%v): the staller held nothing?", waited)
	}
}
