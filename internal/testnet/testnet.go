// Package testnet builds throw-away network namespaces, bridges, taps and veth
// "hosts" for integration tests, so that every DHCP, TFTP, ARP, WoL or NFS
// packet a test sends stays inside a namespace the test created and deleted.
//
// Nothing here ever touches the machine's real interfaces: a namespace made by
// New has no uplink and no default route, only the links the test adds.
package testnet

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

var seq atomic.Int64

func init() {
	// Keep the main goroutine on the main thread. Otherwise a goroutine in
	// NS.Do could be scheduled onto the main thread, which the runtime parks
	// rather than terminates when that goroutine exits locked: the process's
	// main thread would then sit in a test namespace, `ip netns pids` would
	// list this very process, and destroy would kill the test binary.
	runtime.LockOSThread()
}

// Require makes the test need root and the named programs. Outside CI a
// missing requirement skips the test; in CI (CI=true, run as root) it fails
// it, because a test that silently skips in CI cannot fail.
func Require(t testing.TB, programs ...string) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, p := range append([]string{"ip"}, programs...) {
		if _, err := exec.LookPath(p); err != nil {
			if _, err2 := os.Stat(p); err2 != nil {
				missing = append(missing, p)
			}
		}
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("integration test needs %s (CI must provide it: see .ci/run)", strings.Join(missing, ", "))
	}
	t.Skipf("integration test needs %s", strings.Join(missing, ", "))
}

// NS is a network namespace owned by one test.
type NS struct {
	Name string
	t    testing.TB

	mu    sync.Mutex
	procs []*exec.Cmd
}

// New creates a fresh namespace with only loopback up and registers its
// deletion (after killing every process started through it) with t.Cleanup.
func New(t testing.TB) *NS {
	t.Helper()
	Require(t)
	name := fmt.Sprintf("pumi-%d-%d", os.Getpid(), seq.Add(1))
	ns := &NS{Name: name, t: t}
	mustRun(t, "ip", "netns", "add", name)
	t.Cleanup(ns.destroy)
	ns.MustIP("link", "set", "lo", "up")
	return ns
}

func (n *NS) destroy() {
	n.mu.Lock()
	procs := n.procs
	n.procs = nil
	n.mu.Unlock()
	for _, c := range procs {
		if c.Process != nil && c.ProcessState == nil {
			_ = c.Process.Kill()
		}
	}
	// Anything else still inside (a daemon that forked) is killed too, so the
	// namespace really goes away.
	if out, err := exec.Command("ip", "netns", "pids", n.Name).Output(); err == nil {
		self := fmt.Sprint(os.Getpid())
		for _, pid := range strings.Fields(string(out)) {
			if pid == self {
				continue
			}
			_ = exec.Command("kill", "-9", pid).Run()
		}
	}
	_ = exec.Command("ip", "netns", "del", n.Name).Run()
}

func mustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// MustIP runs `ip -n NS args...`.
func (n *NS) MustIP(args ...string) string {
	n.t.Helper()
	return mustRun(n.t, "ip", append([]string{"-n", n.Name}, args...)...)
}

// Command returns a command that runs inside the namespace.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Output runs a command inside the namespace and returns its combined output.
func (n *NS) Output(ctx context.Context, name string, args ...string) (string, error) {
	var b bytes.Buffer
	c := n.Command(ctx, name, args...)
	c.Stdout, c.Stderr = &b, &b
	err := c.Run()
	return b.String(), err
}

// Start starts a long-running command inside the namespace; it is killed when
// the namespace is destroyed (or earlier by the caller).
func (n *NS) Start(c *exec.Cmd) error {
	if err := c.Start(); err != nil {
		return err
	}
	n.mu.Lock()
	n.procs = append(n.procs, c)
	n.mu.Unlock()
	return nil
}

// Bridge creates a bridge without STP and forwarding delay and gives it the
// address cidr (e.g. "10.99.0.1/24"; empty for none).
func (n *NS) Bridge(name, cidr string) {
	n.t.Helper()
	n.MustIP("link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0")
	if cidr != "" {
		n.MustIP("addr", "add", cidr, "dev", name)
	}
	n.MustIP("link", "set", name, "up")
}

// Tap creates a tap device attached to bridge and returns its name, for a
// QEMU VM started inside the namespace.
func (n *NS) Tap(bridge string) string {
	n.t.Helper()
	name := fmt.Sprintf("tap%d", seq.Add(1))
	n.MustIP("tuntap", "add", "dev", name, "mode", "tap")
	n.MustIP("link", "set", name, "master", bridge)
	n.MustIP("link", "set", name, "up")
	return name
}

// Host creates another namespace joined to bridge in n by a veth pair. The
// host's end is called eth0, gets mac (empty: random) and cidr (empty: none).
// It is a separate "machine" on the same L2 segment.
func (n *NS) Host(bridge, mac, cidr string) *NS {
	n.t.Helper()
	h := New(n.t)
	id := seq.Add(1)
	outer := fmt.Sprintf("vh%d", id)
	tmp := fmt.Sprintf("vi%d", id)
	n.MustIP("link", "add", outer, "type", "veth", "peer", "name", tmp)
	n.MustIP("link", "set", tmp, "netns", h.Name)
	n.MustIP("link", "set", outer, "master", bridge)
	n.MustIP("link", "set", outer, "up")
	h.MustIP("link", "set", tmp, "name", "eth0")
	if mac != "" {
		h.MustIP("link", "set", "eth0", "address", mac)
	}
	if cidr != "" {
		h.MustIP("addr", "add", cidr, "dev", "eth0")
	}
	h.MustIP("link", "set", "eth0", "up")
	return h
}

// Do runs fn on an OS thread that has joined the namespace. Sockets created
// by fn stay in the namespace after Do returns and may be used from any
// goroutine; this is how a test serves from the namespace in-process.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: it exits with the goroutine, so a
		// thread in the wrong namespace can never run other goroutines.
		runtime.LockOSThread()
		f, err := os.Open("/run/netns/" + n.Name)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", n.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// LockedBuffer is a bytes.Buffer safe for concurrent use, for collecting the
// output of a program a test runs (its stdout and stderr are written from two
// goroutines while the test reads it).
type LockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
