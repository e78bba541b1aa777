package udpcast

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/testnet"
)

// lab is a lab VLAN in a box: a bridge in its own namespace, pumi's sender
// (10.55.0.1) and n receivers (10.55.0.11...), each in its own namespace.
type lab struct {
	t      *testing.T
	br     *testnet.NS
	sender *testnet.NS
	port   string // the sender's port on the bridge (loss is applied there)
	rx     []*testnet.NS
	rxAddr []netip.Addr
}

func newLab(t *testing.T, n int, snooping bool) *lab {
	t.Helper()
	testnet.Require(t, "udp-receiver", "nft")
	l := &lab{t: t, br: testnet.New(t)}
	l.br.Bridge("br0", "")
	snoop := "0"
	if snooping {
		snoop = "1"
	}
	l.br.MustIP("link", "set", "br0", "type", "bridge", "mcast_snooping", snoop)
	l.sender = l.br.Host("br0", "", "10.55.0.1/24")
	// The sender is the bridge's only port so far.
	out := l.br.MustIP("-o", "link", "show", "master", "br0")
	f := strings.Fields(out)
	if len(f) < 2 || strings.Count(out, "\n") != 1 {
		t.Fatalf("bridge ports: %q", out)
	}
	l.port, _, _ = strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
	l.sender.MustIP("route", "add", "224.0.0.0/4", "dev", "eth0")
	for i := range n {
		a := netip.AddrFrom4([4]byte{10, 55, 0, byte(11 + i)})
		h := l.br.Host("br0", "", a.String()+"/24")
		h.MustIP("route", "add", "224.0.0.0/4", "dev", "eth0")
		l.rx = append(l.rx, h)
		l.rxAddr = append(l.rxAddr, a)
	}
	return l
}

// loss drops permille/1000 of the frames the sender puts on its link, at the
// bridge port's ingress (this kernel has no netem): the sender does not see
// it, like loss on a wire.
func (l *lab) loss(permille int) {
	l.t.Helper()
	rules := fmt.Sprintf(`table netdev pumiloss {
  chain in { type filter hook ingress device %q priority 0; policy accept;
    numgen random mod 1000 < %d counter drop
  }
}
`, l.port, permille)
	c := exec.Command("ip", "netns", "exec", l.br.Name, "nft", "-f", "-")
	c.Stdin = strings.NewReader(rules)
	if out, err := c.CombinedOutput(); err != nil {
		l.t.Fatalf("nft: %v\n%s", err, out)
	}
}

// lossCounter returns the frames the loss rule dropped.
func (l *lab) lossDropped() string {
	out, _ := exec.Command("ip", "netns", "exec", l.br.Name, "nft", "list", "table", "netdev", "pumiloss").CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "counter") {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

// receiverProc is one udp-receiver, started exactly as Clonezilla's
// ocs-sr does (do_multicast_udpcast_restore), writing to a file.
type receiverProc struct {
	cmd  *exec.Cmd
	out  string
	log  *testnet.LockedBuffer
	done chan error
}

func (l *lab) startReceiver(ctx context.Context, i, portBase int, dir string) *receiverProc {
	l.t.Helper()
	p := &receiverProc{out: filepath.Join(dir, fmt.Sprintf("out.%d.%d", portBase, i)), log: &testnet.LockedBuffer{}, done: make(chan error, 1)}
	p.cmd = l.rx[i].Command(ctx, "udp-receiver", "--nokbd", "--mcast-all-addr", "224.0.0.1",
		"--portbase", fmt.Sprint(portBase), "--ttl", "1", "--file", p.out)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.WaitDelay = 5 * time.Second
	if err := l.rx[i].Start(p.cmd); err != nil {
		l.t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	return p
}

// send runs pumi's sender in the sender namespace; started (optional) gets
// the session before Run.
func (l *lab) send(ctx context.Context, cfg Config, src io.Reader, started func(*Session)) (Stats, error) {
	var st Stats
	err := l.sender.Do(func() error {
		cfg.Interface = "eth0"
		s, err := NewSession(cfg, slog.New(slog.NewTextHandler(testWriter{l.t}, &slog.HandlerOptions{Level: slog.LevelInfo})))
		if err != nil {
			return err
		}
		if started != nil {
			started(s)
		}
		st, err = s.Run(ctx, src)
		return err
	})
	return st, err
}

// whenPayload calls fn once the session has delivered at least n bytes
// (polling Stats like the run page does).
func whenPayload(ctx context.Context, s *Session, n int64, fn func()) {
	go func() {
		for ctx.Err() == nil {
			if s.Stats().PayloadBytes >= n {
				fn()
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func randomImage(t *testing.T, size int) ([]byte, [32]byte) {
	b := make([]byte, size)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b, sha256.Sum256(b)
}

func fileSum(t *testing.T, p string) ([32]byte, int64) {
	f, err := os.Open(p)
	if err != nil {
		return [32]byte{}, -1
	}
	defer f.Close()
	h := sha256.New()
	n, _ := io.Copy(h, f)
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s, n
}

// waitAll waits for every receiver (bounded by ctx) and returns their errors.
func waitAll(ctx context.Context, ps []*receiverProc) []error {
	errs := make([]error, len(ps))
	for i, p := range ps {
		select {
		case errs[i] = <-p.done:
		case <-ctx.Done():
			errs[i] = ctx.Err()
		}
	}
	return errs
}

// TestRealReceivers: pumi's sender against 10 real udp-receiver processes
// (Debian's udpcast, as in every Clonezilla live), each in its own
// namespace, with the bridge's multicast snooping on and off and with 1 % and
// 5 % random loss on the sender's link: every output is byte-identical.
func TestRealReceivers(t *testing.T) {
	for _, tc := range []struct {
		name     string
		snooping bool
		permille int
		size     int
	}{
		{"snooping-on", true, 0, 16 << 20},
		{"snooping-off", false, 0, 16 << 20},
		{"loss-1pct", true, 10, 16 << 20},
		{"loss-5pct", false, 50, 16 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t, 10, tc.snooping)
			if tc.permille > 0 {
				l.loss(tc.permille)
			}
			img, sum := randomImage(t, tc.size)
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			dir := t.TempDir()
			var ps []*receiverProc
			for i := range l.rx {
				ps = append(ps, l.startReceiver(ctx, i, 2232, dir))
			}
			start := time.Now()
			st, err := l.send(ctx, Config{PortBase: 2232, Expect: l.rxAddr}, bytes.NewReader(img), nil)
			if err != nil {
				t.Fatalf("sender: %v", err)
			}
			errs := waitAll(ctx, ps)
			took := time.Since(start)
			for i, p := range ps {
				got, n := fileSum(t, p.out)
				if errs[i] != nil || got != sum {
					t.Errorf("receiver %d: err %v, %d bytes, sha256 match %v\n%s", i, errs[i], n, got == sum, p.log.String())
				}
			}
			for _, r := range st.Receivers {
				if r.State != Done {
					t.Errorf("receiver %s: %s %s", r.Addr, r.State, r.Reason)
				}
			}
			if st.PayloadBytes != int64(tc.size) {
				t.Errorf("payload %d, want %d", st.PayloadBytes, tc.size)
			}
			t.Logf("FIGURE %s: %d receivers, %d MiB in %.1fs (data phase %.1f MiB/s), wire/size %.3f, retransmitted %d of %d packets; %s",
				tc.name, len(ps), tc.size>>20, took.Seconds(), st.Throughput()/(1<<20), float64(st.WireBytes)/float64(tc.size),
				st.Retransmitted, st.DataPackets, l.lossDropped())
		})
	}
}

// TestDeadReceiverDropped: one of 10 receivers is killed (SIGKILL, no
// DISCONNECT) mid-stream; with the default DeadAfter it is dropped within
// 40 s and the other 9 finish byte-identical.
func TestDeadReceiverDropped(t *testing.T) {
	l := newLab(t, 10, true)
	const size = 16 << 20
	img, sum := randomImage(t, size)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	dir := t.TempDir()
	var ps []*receiverProc
	for i := range l.rx {
		ps = append(ps, l.startReceiver(ctx, i, 2232, dir))
	}
	const victim = 4
	var killedAt time.Time
	killed := make(chan struct{})
	// 4 MB/s: the stream lasts about 4 s, the kill comes after 4 MiB.
	cfg := Config{PortBase: 2232, Expect: l.rxAddr, MaxBitrate: 4e6}
	st, err := l.send(ctx, cfg, bytes.NewReader(img), func(s *Session) {
		whenPayload(ctx, s, 4<<20, func() {
			killedAt = time.Now()
			ps[victim].cmd.Process.Kill()
			close(killed)
		})
	})
	if err != nil {
		t.Fatalf("sender: %v", err)
	}
	select {
	case <-killed:
	default:
		t.Fatal("the stream ended before the kill")
	}
	errs := waitAll(ctx, ps)
	for i, p := range ps {
		if i == victim {
			continue
		}
		if got, n := fileSum(t, p.out); errs[i] != nil || got != sum {
			t.Errorf("receiver %d: err %v, %d bytes, sha256 match %v\n%s", i, errs[i], n, got == sum, p.log.String())
		}
	}
	for i, r := range st.Receivers {
		switch {
		case r.Addr == l.rxAddr[victim]:
			if r.State != Dropped {
				t.Fatalf("killed receiver: %s", r.State)
			}
			took := r.DroppedAt.Sub(killedAt)
			t.Logf("FIGURE killed receiver dropped %.1fs after the kill (%s); the other 9 finished %.1fs after the drop",
				took.Seconds(), r.Reason, st.Finished.Sub(r.DroppedAt).Seconds())
			if took > 40*time.Second {
				t.Errorf("dropped %v after the kill, want ≤ 40 s", took)
			}
		case r.State != Done:
			t.Errorf("receiver %d %s: %s %s", i, r.Addr, r.State, r.Reason)
		}
	}
}

// TestManySessionsWithLoss: 20 sessions of 10 receivers each (one port pair
// per session, like Clonezilla's partitions) at 5 % loss all start and
// finish without a stall.
func TestManySessionsWithLoss(t *testing.T) {
	l := newLab(t, 10, false)
	l.loss(50)
	const size = 2 << 20
	dir := t.TempDir()
	start := time.Now()
	var worst time.Duration
	for k := range 20 {
		port := 2232 + 2*k
		img, sum := randomImage(t, size)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		var ps []*receiverProc
		for i := range l.rx {
			ps = append(ps, l.startReceiver(ctx, i, port, dir))
		}
		t0 := time.Now()
		st, err := l.send(ctx, Config{PortBase: port, Expect: l.rxAddr}, bytes.NewReader(img), nil)
		if err != nil {
			cancel()
			t.Fatalf("session %d: %v", k, err)
		}
		errs := waitAll(ctx, ps)
		took := time.Since(t0)
		worst = max(worst, took)
		for i, p := range ps {
			if got, n := fileSum(t, p.out); errs[i] != nil || got != sum {
				t.Errorf("session %d receiver %d: err %v, %d bytes, sha256 match %v\n%s", k, i, errs[i], n, got == sum, p.log.String())
			}
			os.Remove(p.out)
		}
		for _, r := range st.Receivers {
			if r.State != Done {
				t.Errorf("session %d %s: %s %s", k, r.Addr, r.State, r.Reason)
			}
		}
		cancel()
		if t.Failed() {
			return
		}
	}
	t.Logf("FIGURE 20 sessions x 10 receivers x 2 MiB at 5%% loss: %.1fs in all, slowest session %.1fs; %s",
		time.Since(start).Seconds(), worst.Seconds(), l.lossDropped())
}

// TestAdmission: a receiver pumi does not admit is refused at once, and an
// admitted one that asks after the data started is refused too (it never
// joins mid-stream); udp-receiver exits with an error in both cases instead
// of waiting.
func TestAdmission(t *testing.T) {
	l := newLab(t, 5, true)
	const size = 8 << 20
	img, sum := randomImage(t, size)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dir := t.TempDir()
	var ps []*receiverProc
	for i := range 3 {
		ps = append(ps, l.startReceiver(ctx, i, 2232, dir))
	}
	stranger := l.startReceiver(ctx, 4, 2232, dir)
	late := l.rxAddr[3]
	var lateProc *receiverProc
	var lateAt time.Time
	cfg := Config{PortBase: 2232, Expect: l.rxAddr[:3], MaxBitrate: 2e6,
		Admit: func(a netip.Addr) bool { return a == late }}
	st, err := l.send(ctx, cfg, bytes.NewReader(img), func(s *Session) {
		whenPayload(ctx, s, 1<<20, func() {
			lateAt = time.Now()
			lateProc = l.startReceiver(ctx, 3, 2232, dir)
		})
	})
	if err != nil {
		t.Fatalf("sender: %v", err)
	}
	for i, err := range waitAll(ctx, ps) {
		if got, _ := fileSum(t, ps[i].out); err != nil || got != sum {
			t.Errorf("receiver %d: %v\n%s", i, err, ps[i].log.String())
		}
	}
	if lateProc == nil {
		t.Fatal("the late receiver was never started")
	}
	for name, p := range map[string]*receiverProc{"stranger": stranger, "late": lateProc} {
		err := waitAll(ctx, []*receiverProc{p})[0]
		if err == nil || ctx.Err() != nil {
			t.Errorf("%s receiver: exit %v, want a refusal\n%s", name, err, p.log.String())
		}
		if !strings.Contains(p.log.String(), "Too many clients") {
			t.Errorf("%s receiver was not refused:\n%s", name, p.log.String())
		}
		if _, n := fileSum(t, p.out); n > 0 {
			t.Errorf("%s receiver wrote %d bytes", name, n)
		}
	}
	if len(st.Missing) != 0 {
		t.Errorf("missing %v", st.Missing)
	}
	if len(st.Receivers) != 3 || st.Refused < 2 {
		t.Errorf("receivers %v, refused %d %v", st.Receivers, st.Refused, st.RefusedAddrs)
	}
	t.Logf("late receiver started %.1fs into the data phase and was refused; refused %v", lateAt.Sub(st.DataFrom).Seconds(), st.RefusedAddrs)
}

// TestCancel: the sender never outlives its context, and the receivers it
// leaves behind exit with an error instead of waiting forever (in the
// rendezvous and mid-stream).
func TestCancel(t *testing.T) {
	l := newLab(t, 3, true)
	img, _ := randomImage(t, 8<<20)
	dir := t.TempDir()
	bg, stop := context.WithTimeout(context.Background(), 60*time.Second)
	defer stop()
	for _, tc := range []struct {
		name  string
		after int64 // cancel after this many bytes; -1: in the rendezvous
	}{{"rendezvous", -1}, {"mid-stream", 1 << 20}} {
		t.Run(tc.name, func(t *testing.T) {
			var ps []*receiverProc
			for i := range l.rx {
				ps = append(ps, l.startReceiver(bg, i, 2300, dir))
			}
			ctx, cancel := context.WithCancel(bg)
			defer cancel()
			var cancelledAt time.Time
			expect := l.rxAddr
			if tc.after < 0 {
				// One seat never comes: the rendezvous stays open.
				expect = append(append([]netip.Addr(nil), expect...), netip.MustParseAddr("10.55.0.99"))
			}
			_, err := l.send(ctx, Config{PortBase: 2300, Expect: expect, MaxBitrate: 2e6}, bytes.NewReader(img), func(s *Session) {
				if tc.after < 0 {
					go func() {
						for len(s.Stats().Receivers) < len(l.rx) {
							time.Sleep(20 * time.Millisecond)
						}
						cancelledAt = time.Now()
						cancel()
					}()
					return
				}
				whenPayload(ctx, s, tc.after, func() { cancelledAt = time.Now(); cancel() })
			})
			returned := time.Since(cancelledAt)
			if err == nil || !errors.Is(err, context.Canceled) {
				t.Fatalf("Run: %v, want context.Canceled", err)
			}
			if returned > time.Second {
				t.Errorf("Run returned %v after the cancel", returned)
			}
			for i, err := range waitAll(bg, ps) {
				if err == nil || bg.Err() != nil {
					t.Errorf("receiver %d: exit %v, want an error exit\n%s", i, err, ps[i].log.String())
				}
			}
			t.Logf("Run returned %v after the cancel; receivers exited %v after it", returned.Round(time.Millisecond), time.Since(cancelledAt).Round(time.Millisecond))
		})
	}
}

// TestNobodyJoins: with no receiver the rendezvous ends at MaxWait with
// ErrNoReceivers and nothing sent but HELLOs; the sockets are released (a
// second session binds the same ports at once).
func TestNobodyJoins(t *testing.T) {
	testnet.Require(t)
	ns := testnet.New(t)
	ns.MustIP("link", "add", "d0", "type", "veth", "peer", "name", "d1")
	ns.MustIP("addr", "add", "10.57.0.1/24", "dev", "d0")
	ns.MustIP("link", "set", "d0", "up")
	ns.MustIP("link", "set", "d1", "up")
	for i := range 2 {
		err := ns.Do(func() error {
			s, err := NewSession(Config{Interface: "d0", PortBase: 2232, Expect: []netip.Addr{netip.MustParseAddr("10.57.0.2")},
				MaxWait: 300 * time.Millisecond, HelloInterval: 100 * time.Millisecond}, nil)
			if err != nil {
				return err
			}
			start := time.Now()
			st, err := s.Run(context.Background(), bytes.NewReader([]byte("image")))
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("rendezvous took %v", took)
			}
			if len(st.Missing) != 1 || st.Missing[0] != netip.MustParseAddr("10.57.0.2") {
				t.Errorf("missing %v", st.Missing)
			}
			if st.DataPackets != 0 || st.WireBytes == 0 {
				t.Errorf("session %d: %d data packets, %d wire bytes (HELLOs expected)", i, st.DataPackets, st.WireBytes)
			}
			return err
		})
		if !errors.Is(err, ErrNoReceivers) {
			t.Fatalf("session %d: %v, want ErrNoReceivers", i, err)
		}
	}
}
