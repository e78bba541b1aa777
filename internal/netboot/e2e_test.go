package netboot_test

// End-to-end proof of issue 2: a real UEFI PC (QEMU + OVMF, TCG) network-boots
// from pumi's own DHCP + TFTP (netboot.Server) and HTTP (internal/boot), all
// inside a network namespace the test creates:
//
//	firmware DHCP (arch 7) -> TFTP bootx64.efi (iPXE) -> iPXE DHCP -> GET /boot/<mac>.ipxe -> ...
//
// Scenarios, one VM at a time: (a) kernel + initrd whose /init calls back
// with a per-run token, (b) `exit 1` falls through to the local disk,
// (c) an unknown MAC gets no PXE answer and boots its disk, all with pumi in
// full mode; (d) proxy mode beside dnsmasq (the "school" DHCP server, which
// gives the address while pumi gives the boot program and script).

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/assets"
	"github.com/pumi-lab/pumi/internal/boot"
	"github.com/pumi-lab/pumi/internal/macaddr"
	"github.com/pumi-lab/pumi/internal/netboot"
	"github.com/pumi-lab/pumi/internal/testnet"
	"github.com/pumi-lab/pumi/internal/testvm"
)

// vmTimeout is generous: measured here 38 s (linux), 58 s (exit, iPXE runs
// twice: PXEv4 then HTTPv4) and 185 s (unknown MAC: OVMF waits out PXE and
// HTTP boot) on an idle machine; TCG gets slower under load.
const vmTimeout = 300 * time.Second

// unknownTimeout is for the unknown-MAC scenario, which sits through two
// firmware timeouts before the disk boots.
const unknownTimeout = 480 * time.Second

// --- server-side evidence ---------------------------------------------------

// logRecord is one slog record, flattened for assertions.
type logRecord struct {
	Msg   string
	Attrs map[string]string
}

// recorder is a slog.Handler that keeps every record, so the test can
// assert on what the servers logged (TFTP transfers, scripts, files).
type recorder struct {
	mu   *sync.Mutex
	recs *[]logRecord
	pre  []slog.Attr
}

func newRecorder() *recorder { return &recorder{mu: &sync.Mutex{}, recs: &[]logRecord{}} }

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) WithGroup(string) slog.Handler            { return r }
func (r *recorder) WithAttrs(as []slog.Attr) slog.Handler {
	return &recorder{mu: r.mu, recs: r.recs, pre: append(slices.Clone(r.pre), as...)}
}
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	m := map[string]string{"level": rec.Level.String()}
	for _, a := range r.pre {
		m[a.Key] = a.Value.String()
	}
	rec.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
	r.mu.Lock()
	*r.recs = append(*r.recs, logRecord{Msg: rec.Message, Attrs: m})
	r.mu.Unlock()
	return nil
}

// since returns the records logged after mark (a previous len()).
func (r *recorder) since(mark int) []logRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone((*r.recs)[mark:])
}
func (r *recorder) len() int { r.mu.Lock(); defer r.mu.Unlock(); return len(*r.recs) }

func (r *recorder) dump(t *testing.T, last int) {
	recs := r.since(0)
	if len(recs) > last {
		recs = recs[len(recs)-last:]
	}
	var b strings.Builder
	for _, x := range recs {
		fmt.Fprintf(&b, "  %s %v\n", x.Msg, x.Attrs)
	}
	t.Logf("server log (last %d records):\n%s", len(recs), b.String())
}

func find(recs []logRecord, msg string, attrs ...string) []logRecord {
	var out []logRecord
	for _, r := range recs {
		if r.Msg != msg {
			continue
		}
		ok := true
		for i := 0; i+1 < len(attrs); i += 2 {
			if r.Attrs[attrs[i]] != attrs[i+1] {
				ok = false
			}
		}
		if ok {
			out = append(out, r)
		}
	}
	return out
}

// seenEvent is one Admission.Seen call: the DHCP side's view of a client.
type seenEvent struct {
	MAC  string
	Info netboot.ClientInfo
}

// recAdmission is the real StaticAdmission, with every Seen call recorded.
type recAdmission struct {
	*netboot.StaticAdmission
	mu     sync.Mutex
	events []seenEvent
}

func (a *recAdmission) Seen(mac net.HardwareAddr, info netboot.ClientInfo) {
	a.mu.Lock()
	a.events = append(a.events, seenEvent{mac.String(), info})
	a.mu.Unlock()
	a.StaticAdmission.Seen(mac, info)
}

func (a *recAdmission) of(mac string) []seenEvent {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []seenEvent
	for _, e := range a.events {
		if e.MAC == mac {
			out = append(out, e)
		}
	}
	return out
}

// --- the environment ----------------------------------------------------------

type scenarioMAC struct {
	linux, local, unknown string
}

type env struct {
	ns       *testnet.NS
	tap      string
	base     string // HTTP base URL
	log      *recorder
	adm      *recAdmission
	disk     string
	token    string
	macs     scenarioMAC
	callback chan callbackHit
}

type callbackHit struct{ token, addr string }

func randomToken(t *testing.T) string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// fixtures are built once per test binary run (the kernel and disk are
// cached on disk anyway).
type fixtures struct {
	kernel *testvm.Kernel
	initrd string
	disk   string
}

func buildFixtures(t *testing.T) fixtures {
	t.Helper()
	k := testvm.DebianKernel(t)
	return fixtures{
		kernel: k,
		initrd: testvm.BuildInitrd(t, testvm.InitrdOptions{Kernel: k, Modules: testvm.NetModules}),
		disk:   testvm.LocalDisk(t),
	}
}

// newEnv builds a namespace with bridge br0 = serverCIDR and one tap, the
// boot HTTP endpoint (internal/boot, with a StaticDecider) plus a /callback
// route on :8080, and returns it; the DHCP/TFTP side is started by the caller.
func newEnv(t *testing.T, fx fixtures, serverCIDR string) *env {
	t.Helper()
	pfx := netip.MustParsePrefix(serverCIDR)
	ip := pfx.Addr().String()
	e := &env{
		ns:       testnet.New(t),
		base:     "http://" + ip + ":8080",
		log:      newRecorder(),
		disk:     fx.disk,
		token:    randomToken(t),
		macs:     scenarioMAC{testvm.RandomMAC(), testvm.RandomMAC(), testvm.RandomMAC()},
		callback: make(chan callbackHit, 4),
	}
	t.Cleanup(func() {
		if t.Failed() {
			e.log.dump(t, 80)
		}
	})
	e.ns.Bridge("br0", serverCIDR)
	e.tap = e.ns.Tap("br0")
	// Saves iPXE's ~15 s IPv6 autoconfiguration wait on every run.
	testvm.AdvertiseRouter(t, e.ns, "br0")

	// Boot files are copied (not linked) into the served directory:
	// boot.Files refuses symlinks that leave its root, by design.
	files := t.TempDir()
	copyFile(t, fx.kernel.Vmlinuz, filepath.Join(files, "vmlinuz"))
	copyFile(t, fx.initrd, filepath.Join(files, "initrd.gz"))
	cfg := fmt.Sprintf(`{
	  %q: {"kernel": "%[2]s/files/vmlinuz", "initrds": ["%[2]s/files/initrd.gz"],
	       "cmdline": "%[5]s quiet pumi.token=%[3]s pumi.callback=%[2]s/callback",
	       "reason": "e2e linux scenario"},
	  %[4]q: "local"
	}`, e.macs.linux, e.base, e.token, e.macs.local, testvm.KernelArgs)
	dec, err := boot.ParseStatic([]byte(cfg))
	if err != nil {
		t.Fatal(err)
	}
	known := dec.MACs()
	e.adm = &recAdmission{StaticAdmission: netboot.NewStaticAdmission(known, slog.New(e.log).With("svc", "admission"))}

	mux, err := boot.NewMux(dec, files, slog.New(e.log).With("svc", "http"))
	if err != nil {
		t.Fatal(err)
	}
	mux.HandleFunc("GET /callback", func(w http.ResponseWriter, r *http.Request) {
		select {
		case e.callback <- callbackHit{r.URL.Query().Get("token"), r.URL.Query().Get("addr")}:
		default:
		}
		fmt.Fprint(w, "ack")
	})
	var ln net.Listener
	if err := e.ns.Do(func() (err error) { ln, err = net.Listen("tcp", ip+":8080"); return err }); err != nil {
		t.Fatalf("HTTP listener in the namespace: %v", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return e
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// startPumi runs netboot.Server in the namespace until the test ends.
func (e *env) startPumi(t *testing.T, cfg netboot.Config) {
	t.Helper()
	var leases netboot.LeaseStore
	if cfg.Mode == netboot.ModeFull {
		leases = netboot.FileLeaseStore(filepath.Join(t.TempDir(), "leases.json"))
	}
	srv, err := netboot.New(cfg, e.adm, leases, assets.IPXE(), slog.New(e.log).With("svc", "netboot"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	// Run creates its sockets on the calling goroutine, so running it
	// inside ns.Do keeps them all in the namespace.
	go func() { done <- e.ns.Do(func() error { return srv.Run(ctx) }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("netboot.Server.Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("netboot.Server.Run did not return 10 s after cancel")
		}
	})
	select {
	case <-srv.Ready():
	case err := <-done:
		t.Fatalf("netboot.Server.Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("netboot server not ready after 10 s")
	}
}

// run boots one VM with mac and waits for marker; it returns the VM.
func (e *env) run(t *testing.T, name, mac, marker string, disk bool, timeout time.Duration) *testvm.VM {
	t.Helper()
	ctx := t.Context()
	c := testvm.Config{Name: name, NS: e.ns, Tap: e.tap, MAC: mac, Timeout: timeout}
	if disk {
		c.Disk = e.disk
	}
	vm := testvm.Start(t, ctx, c)
	if _, err := vm.WaitFor(ctx, marker); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: marker %q after %.1fs (QEMU start to marker)", name, marker, vm.Elapsed().Seconds())
	if err := vm.Wait(ctx); err != nil {
		t.Errorf("%s: QEMU did not exit by itself after the marker: %v", name, err)
	}
	return vm
}

func hyphen(t *testing.T, mac string) string {
	m, err := macaddr.Parse(mac)
	if err != nil {
		t.Fatal(err)
	}
	return macaddr.Hyphen(m)
}

// assertFirmwareChain checks the DHCP side saw mac as UEFI x64 PXE firmware
// (arch 7, DISCOVER) and then as iPXE, and that bootx64.efi went out by TFTP.
func (e *env) assertFirmwareChain(t *testing.T, mac string, recs []logRecord) {
	t.Helper()
	var arch7, ipxe bool
	for _, ev := range e.adm.of(mac) {
		arch7 = arch7 || (ev.Info.Arch == 7 && ev.Info.Message == "DISCOVER" && ev.Info.Firmware == "uefi-pxe")
		ipxe = ipxe || ev.Info.Firmware == "ipxe"
	}
	if !arch7 {
		t.Errorf("DHCP never saw an arch-7 DISCOVER from %s: %+v", mac, e.adm.of(mac))
	}
	if !ipxe {
		t.Errorf("DHCP never saw iPXE from %s: %+v", mac, e.adm.of(mac))
	}
	tftp := find(recs, "tftp: transfer done", "file", netboot.FileUEFI)
	if len(tftp) == 0 {
		t.Errorf("no completed TFTP transfer of %s", netboot.FileUEFI)
	}
	for _, r := range tftp {
		if r.Attrs["blksize"] == "512" {
			t.Errorf("TFTP transfer fell back to 512-byte blocks: %v", r.Attrs)
		}
		t.Logf("FIGURE firmware TFTP: %s blksize %s windowsize %s in %s", r.Attrs["file"], r.Attrs["blksize"], r.Attrs["windowsize"], r.Attrs["duration"])
	}
}

// TestE2EQEMU takes about 6 minutes of one CPU (one VM at a time); -short
// skips it.
func TestE2EQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("QEMU end-to-end boots take minutes; run without -short")
	}
	testnet.Require(t, append(testvm.Programs(), "dnsmasq")...)
	fx := buildFixtures(t)
	t0 := time.Now()
	t.Run("full", func(t *testing.T) {
		e := newEnv(t, fx, "10.99.2.1/24")
		e.startPumi(t, netboot.Config{
			Interface: "br0", Mode: netboot.ModeFull, ServerIP: netip.MustParseAddr("10.99.2.1"), HTTPBase: e.base,
			RangeStart: netip.MustParseAddr("10.99.2.100"), RangeEnd: netip.MustParseAddr("10.99.2.199"),
			Netmask: netip.MustParsePrefix("10.99.2.0/24"), LeaseTime: time.Hour,
		})
		t.Run("a-linux", func(t *testing.T) { e.scenarioLinux(t, "10.99.2.") })
		t.Run("b-exit-local", e.scenarioLocal)
		t.Run("c-unknown-mac", e.scenarioUnknown)
	})
	t.Run("d-proxy-beside-dnsmasq", func(t *testing.T) {
		e := newEnv(t, fx, "10.99.3.1/24")
		leases := startDnsmasq(t, e.ns, "10.99.3.100", "10.99.3.199")
		e.startPumi(t, netboot.Config{
			Interface: "br0", Mode: netboot.ModeProxy, ServerIP: netip.MustParseAddr("10.99.3.1"), HTTPBase: e.base,
		})
		e.scenarioLinux(t, "10.99.3.")
		// The address came from dnsmasq, not from pumi (which has no pool in
		// proxy mode): dnsmasq's lease file names the VM.
		b, err := os.ReadFile(leases)
		if err != nil || !strings.Contains(string(b), e.macs.linux) {
			t.Errorf("dnsmasq lease file has no lease for %s: %v\n%s", e.macs.linux, err, b)
		}
		recs := e.log.since(0)
		if len(find(recs, "proxy PXE answer", "mac", e.macs.linux)) == 0 {
			t.Errorf("pumi logged no proxy PXE answer for %s", e.macs.linux)
		}
		if len(find(recs, "lease")) != 0 {
			t.Errorf("pumi handed out a lease in proxy mode: %v", find(recs, "lease"))
		}
	})
	t.Logf("all scenarios: %.1fs", time.Since(t0).Seconds())
}

// (a): kernel + initrd over HTTP; /init gets an address, prints the token
// and calls back.
func (e *env) scenarioLinux(t *testing.T, subnet string) {
	mark := e.log.len()
	start := time.Now()
	vm := e.run(t, "linux", e.macs.linux, testvm.MarkerCallbackOK, false, vmTimeout)
	recs := e.log.since(mark)
	serial := vm.Serial()

	if !strings.Contains(serial, testvm.MarkerUp+" token="+e.token+" addr="+subnet) {
		t.Errorf("guest did not print its token %s with an address in %s0/24", e.token, subnet)
	}
	if !strings.Contains(serial, "pumi: "+e.macs.linux+" boots linux vmlinuz: e2e linux scenario") {
		t.Errorf("serial log lacks pumi's iPXE echo line for %s", e.macs.linux)
	}
	select {
	case cb := <-e.callback:
		if cb.token != e.token || !strings.HasPrefix(cb.addr, subnet) {
			t.Errorf("callback token %q addr %q, want token %q in %s0/24", cb.token, cb.addr, e.token, subnet)
		}
	default:
		t.Error("guest printed the callback marker but the server got no callback")
	}
	e.assertFirmwareChain(t, e.macs.linux, recs)
	if s := find(recs, "boot script served", "mac", e.macs.linux, "action", "linux"); len(s) == 0 {
		t.Errorf("no GET /boot/%s.ipxe served with action linux", hyphen(t, e.macs.linux))
	}
	for _, f := range []string{"vmlinuz", "initrd.gz"} {
		if len(find(recs, "boot file requested", "path", f)) == 0 {
			t.Errorf("guest never fetched %s over HTTP", f)
		}
	}
	t.Logf("scenario linux: %.1fs wall", time.Since(start).Seconds())
}

// (b): the script says `exit 1`; the firmware goes on to the disk.
func (e *env) scenarioLocal(t *testing.T) {
	mark := e.log.len()
	start := time.Now()
	vm := e.run(t, "local", e.macs.local, testvm.MarkerDisk, true, vmTimeout)
	recs := e.log.since(mark)
	serial := vm.Serial()
	i := strings.Index(serial, "pumi: "+e.macs.local+" boots its local disk: static config: local")
	if i < 0 || i > strings.Index(serial, testvm.MarkerDisk) {
		t.Errorf("pumi's exit script did not run before the disk booted")
	}
	e.assertFirmwareChain(t, e.macs.local, recs)
	if len(find(recs, "boot script served", "mac", e.macs.local, "action", "exit")) == 0 {
		t.Errorf("no exit script served for %s", e.macs.local)
	}
	if f := find(recs, "boot file requested"); len(f) != 0 {
		t.Errorf("a local-disk boot fetched boot files: %v", f)
	}
	t.Logf("scenario exit-local: %.1fs wall", time.Since(start).Seconds())
}

// (c): a MAC pumi does not know gets no PXE answer: no TFTP, no script, and
// the firmware boots the disk.
func (e *env) scenarioUnknown(t *testing.T) {
	mark := e.log.len()
	start := time.Now()
	vm := e.run(t, "unknown", e.macs.unknown, testvm.MarkerDisk, true, unknownTimeout)
	recs := e.log.since(mark)
	var pxe bool
	for _, ev := range e.adm.of(e.macs.unknown) {
		pxe = pxe || ev.Info.Arch == 7
	}
	if !pxe {
		t.Errorf("DHCP never saw the unknown MAC's PXE request (so the test proves nothing)")
	}
	if len(find(recs, "seen PXE client that is not admitted; no boot answer", "mac", e.macs.unknown)) == 0 {
		t.Errorf("no 'not admitted' log line for %s", e.macs.unknown)
	}
	if f := find(recs, "tftp: transfer done"); len(f) != 0 {
		t.Errorf("unknown MAC got a TFTP transfer: %v", f)
	}
	if f := find(recs, "boot script served"); len(f) != 0 {
		t.Errorf("unknown MAC got a boot script: %v", f)
	}
	if strings.Contains(vm.Serial(), "pumi: ") {
		t.Errorf("iPXE ran a pumi script for an unknown MAC")
	}
	t.Logf("scenario unknown-mac: %.1fs wall", time.Since(start).Seconds())
}

// startDnsmasq runs dnsmasq (dnsmasq-base) as the school's plain DHCP server
// on br0: addresses only, no TFTP, no PXE, no DNS. It returns the lease
// file's path.
func startDnsmasq(t *testing.T, ns *testnet.NS, from, to string) string {
	t.Helper()
	dir := t.TempDir()
	leases := filepath.Join(dir, "dnsmasq.leases")
	conf := filepath.Join(dir, "dnsmasq.conf")
	err := os.WriteFile(conf, []byte(fmt.Sprintf(`port=0
interface=br0
bind-interfaces
except-interface=lo
user=root
dhcp-range=%s,%s,255.255.255.0,1h
dhcp-leasefile=%s
dhcp-authoritative
log-dhcp
`, from, to, leases)), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	logf := filepath.Join(dir, "dnsmasq.log")
	c := ns.Command(context.Background(), "dnsmasq", "--keep-in-foreground", "--conf-file="+conf, "--log-facility="+logf, "--pid-file=")
	if err := ns.Start(c); err != nil {
		t.Fatalf("dnsmasq: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logf)
			t.Logf("dnsmasq log:\n%s", b)
		}
		_ = c.Process.Kill()
		_ = c.Wait()
	})
	// Wait until it has bound port 67 so pumi's shared bind comes second.
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := ns.Output(context.Background(), "ss", "-lnu")
		if strings.Contains(out, ":67 ") {
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logf)
			t.Fatalf("dnsmasq did not bind port 67 within 10 s:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return leases
}
