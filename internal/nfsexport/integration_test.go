package nfsexport

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pumi-lab/pumi/internal/testnet"
	"github.com/pumi-lab/pumi/internal/testvm"
)

// nsServer runs pumi's NFS server inside a test namespace and can restart
// it (a brand-new Server on the same address), as a pumi update would.
type nsServer struct {
	t     testing.TB
	ns    *testnet.NS
	addr  string
	f     fixture
	allow Allow
	hook  func(exportPath, rel string, off uint64)
	// capIPs, if set, serves /capture per client (Export.DirFor): these
	// addresses get f.capture, every other one no /capture at all.
	capIPs []string
	stable func(exportPath, rel string, committed uint32)

	mu       sync.Mutex
	stopFn   func()
	restarts int
}

func (n *nsServer) start() {
	n.t.Helper()
	capture := Export{Path: "/capture", Dir: n.f.capture, Writable: true}
	if n.capIPs != nil {
		capture.Dir = ""
		capture.DirFor = func(ip netip.Addr) (string, bool) {
			return n.f.capture, slices.Contains(n.capIPs, ip.String())
		}
	}
	s, err := New(Config{Exports: []Export{{Path: "/images", Dir: n.f.images}, capture}}, n.allow, testLogger(n.t))
	must(n.t, err)
	s.readHook = n.hook
	s.stableHook = n.stable
	var l net.Listener
	must(n.t, doIn(n.ns, func() (err error) { l, err = net.Listen("tcp", n.addr); return err }))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	var once sync.Once
	n.mu.Lock()
	n.stopFn = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				n.t.Errorf("Serve: %v", err)
			}
		})
	}
	n.mu.Unlock()
}

func (n *nsServer) stop() {
	n.mu.Lock()
	f := n.stopFn
	n.mu.Unlock()
	if f != nil {
		f()
	}
}

func (n *nsServer) restart() {
	n.stop()
	n.start()
	n.mu.Lock()
	n.restarts++
	n.mu.Unlock()
}

func shaHex(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// TestLibnfsClient: the userspace NFS client from libnfs-utils, in its own
// namespace host, lists, reads and writes through pumi; a host outside the
// run is refused.
func TestLibnfsClient(t *testing.T) {
	testnet.Require(t, "nfs-ls", "nfs-cat", "nfs-cp")
	f := newFixture(t)
	ns := testnet.New(t)
	ns.Bridge("br0", "10.91.0.1/24")
	seat := ns.Host("br0", "", "10.91.0.2/24")
	stranger := ns.Host("br0", "", "10.91.0.3/24")
	allow := newAllow()
	allow.set("10.91.0.2", "/images", true, false)
	allow.set("10.91.0.2", "/capture", true, true)
	srv := &nsServer{t: t, ns: ns, addr: "10.91.0.1:2049", f: f, allow: allow, capIPs: []string{"10.91.0.2"}}
	srv.start()
	t.Cleanup(srv.stop)

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	url := func(p string) string {
		return "nfs://10.91.0.1" + p + "?version=3&nfsport=2049&mountport=2049"
	}

	out, err := seat.Output(ctx, "nfs-ls", url("/images/LAB-2026-img"))
	if err != nil || !strings.Contains(out, "sda1.ext4-ptcl-img.zst.aa") || !strings.Contains(out, "disk") {
		t.Fatalf("nfs-ls /images/LAB-2026-img: %v\n%s", err, out)
	}
	var stdout, stderr bytes.Buffer
	c := seat.Command(ctx, "nfs-cat", url("/images/LAB-2026-img/sda1.ext4-ptcl-img.zst.aa"))
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		t.Fatalf("nfs-cat: %v\n%s", err, stderr.String())
	}
	if got, want := shaHex(stdout.Bytes()), shaHex(f.big); got != want {
		t.Fatalf("nfs-cat of a %d-byte file gave %d bytes, sha256 %s, want %s", len(f.big), stdout.Len(), got, want)
	}

	local := filepath.Join(t.TempDir(), "up.bin")
	payload := bytes.Repeat([]byte("pumi-capture "), 100000)
	must(t, os.WriteFile(local, payload, 0o644))
	if out, err := seat.Output(ctx, "nfs-cp", local, url("/capture/up.bin")); err != nil {
		t.Fatalf("nfs-cp to /capture: %v\n%s", err, out)
	}
	got, err := os.ReadFile(filepath.Join(f.capture, "up.bin"))
	must(t, err)
	if !bytes.Equal(got, payload) {
		t.Fatalf("/capture/up.bin has %d bytes, want %d", len(got), len(payload))
	}
	if out, err := seat.Output(ctx, "nfs-cp", local, url("/images/up.bin")); err == nil {
		t.Errorf("nfs-cp to the read-only /images succeeded:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(f.images, "up.bin")); err == nil {
		t.Error("a file appeared in the read-only export")
	}
	if out, err := stranger.Output(ctx, "nfs-ls", url("/images")); err == nil || strings.Contains(out, "LAB-2026-img") {
		t.Errorf("nfs-ls from a host outside the run: err %v\n%s", err, out)
	} else {
		t.Logf("stranger refused: %s", strings.TrimSpace(out))
	}
}

// TestLibnfsReaddirLarge: libnfs's nfs-ls lists a directory of 20,000
// entries through pumi in well under 2 s (it took 123 s when every READDIR
// page re-read, stated and sorted the whole directory).
func TestLibnfsReaddirLarge(t *testing.T) {
	testnet.Require(t, "nfs-ls")
	const n = 20000
	f := newFixture(t)
	dir := filepath.Join(f.images, "many")
	must(t, os.MkdirAll(dir, 0o755))
	for i := range n {
		fl, err := os.Create(filepath.Join(dir, fmt.Sprintf("entry-%05d.ptcl", i)))
		must(t, err)
		fl.Close()
	}
	ns := testnet.New(t)
	ns.Bridge("br0", "10.94.0.1/24")
	seat := ns.Host("br0", "", "10.94.0.2/24")
	allow := newAllow()
	allow.set("10.94.0.2", "/images", true, false)
	srv := &nsServer{t: t, ns: ns, addr: "10.94.0.1:2049", f: f, allow: allow}
	srv.start()
	t.Cleanup(srv.stop)

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	// Three runs, the best must be under 2 s: on an idle machine each takes
	// about 0.4 s, but this machine is shared and a load spike can stall any
	// one run; a server without the listing cache needs minutes for every one.
	best := time.Duration(0)
	for run := range 3 {
		start := time.Now()
		out, err := seat.Output(ctx, "nfs-ls", "nfs://10.94.0.1/images/many?version=3&nfsport=2049&mountport=2049")
		took := time.Since(start)
		if err != nil {
			t.Fatalf("nfs-ls: %v\n%.2000s", err, out)
		}
		got := 0
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "entry-") {
				got++
			}
		}
		if got != n {
			t.Fatalf("nfs-ls listed %d of %d entries", got, n)
		}
		t.Logf("FIGURE nfs-ls of %d entries (run %d): %v", n, run+1, took.Round(time.Millisecond))
		if best == 0 || took < best {
			best = took
		}
	}
	if best > 2*time.Second {
		t.Errorf("nfs-ls of %d entries took at best %v, want under 2 s", n, best)
	}
}

// guestScript runs inside the QEMU guest (sourced by testvm's ProbeInit)
// and prints NFSX-* lines for the test to check.
const guestScript = `
S=%[1]s; DENY=%[2]s; STRANGER=%[3]s
O=vers=3,proto=tcp,port=2049,mountport=2049,mountproto=tcp,nolock
mkdir -p /mnt/img /mnt/rw /mnt/cap /mnt/deny
ip addr add $DENY/24 dev $IF
ip route add $S/32 dev $IF src $DENY
if mount -t nfs -o $O,ro $S:/images /mnt/deny 2>/tmp/err; then echo "NFSX-DENY-MOUNTED"; umount /mnt/deny; else echo "NFSX-DENY-REFUSED $(cat /tmp/err)"; fi
ip route del $S/32 dev $IF src $DENY
ip addr add $STRANGER/24 dev $IF
ip route add $S/32 dev $IF src $STRANGER
if mount -t nfs -o $O,ro $S:/images /mnt/deny 2>/tmp/err; then echo "NFSX-STRANGER-MOUNTED"; umount /mnt/deny; else echo "NFSX-STRANGER-REFUSED $(cat /tmp/err)"; fi
ip route del $S/32 dev $IF src $STRANGER
if mount -t nfs -o $O,ro $S:/images /mnt/img 2>/tmp/err; then echo "NFSX-MOUNT-OK"; else echo "NFSX-MOUNT-FAILED $(cat /tmp/err)"; fi
echo "NFSX-LS-ROOT $(ls /mnt/img | tr '\n' ' ')"
echo "NFSX-LS-IMG $(ls /mnt/img/LAB-2026-img | tr '\n' ' ')"
echo "NFSX-SHA-SMALL $(sha256sum /mnt/img/LAB-2026-img/sda1.ext4-ptcl-img.zst.aa | cut -d' ' -f1)"
grep " /mnt/img " /proc/mounts | sed 's/^/NFSX-OPTS /'
if mount -t nfs -o $O $S:/images /mnt/rw 2>/tmp/err; then
  if ( echo x > /mnt/rw/newfile ) 2>/tmp/err; then echo "NFSX-RO-WROTE"; else echo "NFSX-ROFS $(cat /tmp/err)"; fi
  umount /mnt/rw
else echo "NFSX-RW-MOUNT-FAILED $(cat /tmp/err)"; fi
if mount -t nfs -o $O $S:/capture /mnt/cap 2>/tmp/err; then
  dd if=/dev/urandom of=/tmp/cap bs=64k count=64 2>/dev/null
  cp /tmp/cap /mnt/cap/saved.img && sync && echo "NFSX-CAPTURE $(sha256sum /tmp/cap | cut -d' ' -f1)"
  umount /mnt/cap
else echo "NFSX-CAP-MOUNT-FAILED $(cat /tmp/err)"; fi
mkdir -p /mnt/pm
if mount -t nfs -o noatime,nfsvers=3,nolock $S:/images /mnt/pm 2>/tmp/err; then echo "NFSX-PORTMAP-OK $(ls /mnt/pm/LAB-2026-img | tr '\n' ' ')"; umount /mnt/pm; else echo "NFSX-PORTMAP-FAILED $(cat /tmp/err)"; fi
echo "NFSX-BIG-START $(cut -d' ' -f1 /proc/uptime)"
echo "NFSX-SHA-BIG $(sha256sum /mnt/img/LAB-2026-img/big.img 2>&1 | cut -d' ' -f1) $(cut -d' ' -f1 /proc/uptime)"
umount /mnt/img
echo "NFSX-DONE"
`

// TestGuestKernelClient mounts pumi's exports from the Linux kernel NFS
// client in a QEMU guest, with exactly Clonezilla's mount options, and
// restarts pumi in the middle of a large read.
func TestGuestKernelClient(t *testing.T) {
	testnet.Require(t, testvm.Programs()...)
	k := testvm.DebianKernel(t)
	f := newFixture(t)
	bigSize := 96 << 20
	big := make([]byte, bigSize)
	_, _ = rand.Read(big)
	must(t, os.WriteFile(filepath.Join(f.images, "LAB-2026-img", "big.img"), big, 0o600))
	bigSHA := shaHex(big)
	big = nil

	// denyIP has a job, but not a restore: its MOUNT of /images is refused
	// (permission denied); strangerIP has no job at all: refused at accept.
	const srvIP, guestIP, denyIP, strangerIP = "10.92.0.1", "10.92.0.2", "10.92.0.3", "10.92.0.4"
	initrd := testvm.BuildInitrd(t, testvm.InitrdOptions{Kernel: k,
		Modules: append(append([]string{}, testvm.NetModules...), testvm.NFSModules...),
		Files:   map[string]string{"/etc/pumi-test.sh": fmt.Sprintf(guestScript, srvIP, denyIP, strangerIP)}})
	ns := testnet.New(t)
	ns.Bridge("br0", srvIP+"/24")
	tap := ns.Tap("br0")
	allow := newAllow()
	allow.set(guestIP, "/images", true, true) // write allowed: /images must still be ro
	allow.set(guestIP, "/capture", true, true)
	allow.set(denyIP, "/capture", true, true)

	srv := &nsServer{t: t, ns: ns, addr: srvIP + ":2049", f: f, allow: allow, capIPs: []string{guestIP}}
	// The kernel writes saved.img UNSTABLE and makes it durable with
	// COMMIT (cp && sync): count what reached the disk how.
	var (
		stableMu sync.Mutex
		stable   = map[uint32]int{}
	)
	srv.stable = func(exp, rel string, committed uint32) {
		if exp == "/capture" && rel == "saved.img" {
			stableMu.Lock()
			stable[committed]++
			stableMu.Unlock()
		}
	}
	var (
		restartOnce sync.Once
		restarted   = make(chan struct{})
	)
	// Restart pumi once the guest has read a third of big.img: the rest of
	// the read must come from the new server instance through the old
	// handles.
	srv.hook = func(exp, rel string, off uint64) {
		if rel == "LAB-2026-img/big.img" && off >= uint64(bigSize/3) {
			restartOnce.Do(func() {
				go func() {
					t.Logf("restarting pumi's NFS server at offset %d MiB", off>>20)
					srv.restart()
					close(restarted)
				}()
			})
		}
	}
	srv.start()
	t.Cleanup(srv.stop)
	startPortmap(t, ns, srvIP)

	// Generous: testvm.Start first waits for the machine-wide VM slot,
	// which other packages' VM tests may hold for minutes. Stay inside go
	// test's -timeout, so a long queue fails with a message, not a panic.
	budget := 12 * time.Minute
	if dl, ok := t.Deadline(); ok && time.Until(dl)-30*time.Second < budget {
		budget = time.Until(dl) - 30*time.Second
	}
	ctx, cancel := context.WithTimeout(t.Context(), budget)
	defer cancel()
	vm := testvm.Start(t, ctx, testvm.Config{Name: "nfs-guest", NS: ns, Tap: tap, Kernel: k.Vmlinuz, Initrd: initrd,
		Append: "quiet pumi.ip=" + guestIP + "/24 pumi.token=nfs"})
	if _, err := vm.WaitFor(ctx, "NFSX-DONE"); err != nil {
		t.Fatalf("%v\n%s", err, vm.Tail(40))
	}
	serial := vm.Serial()
	line := func(marker string) string {
		i := strings.Index(serial, marker)
		if i < 0 {
			return ""
		}
		l := serial[i:]
		if j := strings.IndexByte(l, '\n'); j >= 0 {
			l = l[:j]
		}
		return strings.TrimSpace(l)
	}
	t.Logf("guest:\n%s", strings.Join(grepLines(serial, "NFSX-"), "\n"))

	if l := line("NFSX-DENY-"); !strings.HasPrefix(l, "NFSX-DENY-REFUSED") || !strings.Contains(strings.ToLower(l), "permission denied") {
		t.Errorf("mount of /images from %s (a capture job only): %q, want permission denied", denyIP, l)
	}
	if l := line("NFSX-STRANGER-"); !strings.HasPrefix(l, "NFSX-STRANGER-REFUSED") {
		t.Errorf("mount from %s (no job): %q, want refused", strangerIP, l)
	}
	if line("NFSX-MOUNT-OK") == "" {
		t.Fatalf("Clonezilla-style mount failed: %q", line("NFSX-MOUNT-FAILED"))
	}
	if l := line("NFSX-LS-ROOT"); !strings.Contains(l, "LAB-2026-img") {
		t.Errorf("ls of the export root: %q", l)
	}
	if l := line("NFSX-LS-IMG"); !strings.Contains(l, "big.img") || !strings.Contains(l, "sda1.ext4-ptcl-img.zst.aa") || !strings.Contains(l, "disk") {
		t.Errorf("ls of LAB-2026-img: %q", l)
	}
	if l := line("NFSX-SHA-SMALL"); l != "NFSX-SHA-SMALL "+shaHex(f.big) {
		t.Errorf("sha256 of the 5 MiB image file in the guest: %q, want %s", l, shaHex(f.big))
	}
	if l := line("NFSX-OPTS"); !strings.Contains(l, "rsize=1048576") {
		t.Errorf("guest mount options %q: want rsize=1048576 from FSINFO", l)
	}
	if l := line("NFSX-RO"); !strings.HasPrefix(l, "NFSX-ROFS") || !strings.Contains(l, "Read-only file system") {
		t.Errorf("write to /images mounted rw: %q, want EROFS from the server", l)
	}
	capLine := line("NFSX-CAPTURE")
	got, err := os.ReadFile(filepath.Join(f.capture, "saved.img"))
	if err != nil || capLine != "NFSX-CAPTURE "+shaHex(got) || len(got) != 64*64<<10 {
		t.Errorf("capture: guest says %q, host file %d bytes sha %s (err %v)", capLine, len(got), shaHex(got), err)
	}
	stableMu.Lock()
	t.Logf("saved.img: %d UNSTABLE WRITEs, %d FILE_SYNC WRITEs, %d COMMITs", stable[stableUnstable], stable[stableFileSync], stable[stableCommit])
	if stable[stableCommit] == 0 && stable[stableUnstable] > 0 {
		t.Errorf("the kernel wrote saved.img UNSTABLE but no COMMIT reached pumi")
	}
	if stable[stableCommit]+stable[stableFileSync] == 0 {
		t.Errorf("nothing of saved.img was made durable (no FILE_SYNC WRITE, no COMMIT)")
	}
	stableMu.Unlock()
	// Clonezilla's ocs_repository="nfs://..." mount (-o noatime,nfsvers=3):
	// no ports given, both found through pumi's portmapper. nolock is
	// added only because this guest has no rpcbind of its own, which the
	// kernel's lockd needs locally (Clonezilla live runs one).
	if l := line("NFSX-PORTMAP-"); !strings.HasPrefix(l, "NFSX-PORTMAP-OK") || !strings.Contains(l, "disk") {
		t.Errorf("mount -o noatime,nfsvers=3,nolock (ports from the portmapper): %q", l)
	}
	select {
	case <-restarted:
	default:
		t.Fatal("the server was never restarted during the big read")
	}
	if l := line("NFSX-SHA-BIG"); !strings.HasPrefix(l, "NFSX-SHA-BIG "+bigSHA) {
		t.Errorf("sha256 of the %d MiB file read across a restart: %q, want %s", bigSize>>20, l, bigSHA)
	}
	t.Logf("big read: %s -> %s (guest uptime s); restarts: %d", line("NFSX-BIG-START"), line("NFSX-SHA-BIG"), srv.restarts)
}

func grepLines(s, prefix string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if i := strings.Index(l, prefix); i >= 0 {
			out = append(out, strings.TrimSpace(l[i:]))
		}
	}
	return out
}

// startPortmap serves the portmapper on ip:111 (TCP and UDP) inside ns.
func startPortmap(t testing.TB, ns *testnet.NS, ip string) {
	t.Helper()
	var (
		l  net.Listener
		pc net.PacketConn
	)
	must(t, doIn(ns, func() (err error) {
		if l, err = net.Listen("tcp", ip+":111"); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", ip+":111")
		return err
	}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServePortmap(ctx, l, pc, 2049, testLogger(t)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServePortmap: %v", err)
		}
	})
}

// TestPortmap: clients that only know the server's address find NFS and
// MOUNT through port 111: rpcinfo (TCP DUMP, UDP NULL), libnfs without
// nfsport/mountport, and the go-nfs client's portmapper dial.
func TestPortmap(t *testing.T) {
	testnet.Require(t, "rpcinfo", "nfs-cat")
	f := newFixture(t)
	ns := testnet.New(t)
	ns.Bridge("br0", "10.93.0.1/24")
	seat := ns.Host("br0", "", "10.93.0.2/24")
	allow := newAllow()
	allow.set("10.93.0.2", "/images", true, false)
	srv := &nsServer{t: t, ns: ns, addr: "10.93.0.1:2049", f: f, allow: allow}
	srv.start()
	t.Cleanup(srv.stop)
	startPortmap(t, ns, "10.93.0.1")

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	out, err := seat.Output(ctx, "rpcinfo", "-p", "10.93.0.1")
	if err != nil || !strings.Contains(out, "100003    3   tcp   2049") || !strings.Contains(out, "100005    3   tcp   2049") {
		t.Errorf("rpcinfo -p: %v\n%s", err, out)
	}
	if out, err := seat.Output(ctx, "rpcinfo", "-u", "10.93.0.1", "100000", "2"); err != nil || !strings.Contains(out, "ready and waiting") {
		t.Errorf("rpcinfo -u (portmapper NULL over UDP): %v\n%s", err, out)
	}
	var stdout, stderr bytes.Buffer
	c := seat.Command(ctx, "nfs-cat", "nfs://10.93.0.1/images/LAB-2026-img/sda1.ext4-ptcl-img.zst.aa?version=3")
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		t.Fatalf("nfs-cat through the portmapper: %v\n%s", err, stderr.String())
	}
	if shaHex(stdout.Bytes()) != shaHex(f.big) {
		t.Fatalf("nfs-cat through the portmapper: %d bytes, wrong sha256", stdout.Len())
	}
}

func TestPortmapAnswers(t *testing.T) {
	get := &xdrWriter{}
	get.u32(progMount)
	get.u32(3)
	get.u32(ipProtoTCP)
	get.u32(0)
	rec := callRecord(7, progPortmap, 2, pmapProcGet, get.b)[4:]
	w := pmapAnswer(rec, 2049)
	x := xdrReader{b: w.b[4:]}
	xid, typ, stat, _, _, accept, port := x.u32(), x.u32(), x.u32(), x.u32(), x.u32(), x.u32(), x.u32()
	if x.err != nil || xid != 7 || typ != msgReply || stat != 0 || accept != acceptSuccess || port != 2049 {
		t.Errorf("GETPORT mount v3 tcp: xid %d type %d stat %d accept %d port %d (%v)", xid, typ, stat, accept, port, x.err)
	}
	get.b[11] = 17 // UDP: not registered
	w = pmapAnswer(callRecord(8, progPortmap, 2, pmapProcGet, get.b)[4:], 2049)
	if p := w.b[len(w.b)-4:]; !bytes.Equal(p, []byte{0, 0, 0, 0}) {
		t.Errorf("GETPORT mount v3 udp: port %x, want 0", p)
	}
	if pmapAnswer([]byte{1, 2, 3}, 2049) != nil {
		t.Error("a 3-byte record got an answer")
	}
}

// doIn runs fn with the calling thread inside ns and moves the thread back
// before unlocking it. testnet.NS.Do instead lets the thread die with its
// goroutine; when that goroutine ran on the process's main thread, the
// runtime cannot end that thread, the main thread stays in the namespace,
// and the namespace teardown (kill every pid in it) kills the test binary.
func doIn(ns *testnet.NS, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return err
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + ns.Name)
	if err != nil {
		return err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns %s: %w", ns.Name, err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread cannot go back: keep it locked so it dies with
		// this goroutine instead of running others in the namespace.
		runtime.LockOSThread()
		return fmt.Errorf("setns back from %s: %w", ns.Name, err)
	}
	return ferr
}
