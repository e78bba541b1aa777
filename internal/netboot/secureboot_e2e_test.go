package netboot_test

// End-to-end proof of issue 20 (netboot part): a UEFI PC with Secure Boot
// enforced (QEMU + OVMF's SMM build with Microsoft's keys, TCG) network-boots
// from pumi's DHCP + TFTP (netboot.Server) through the signed chain
//
//	firmware DHCP (arch 7) -> TFTP shimx64.efi (Microsoft-signed shim)
//	  -> TFTP grubx64.efi (Debian-signed GRUB) -> TFTP grub/grub.cfg -> grub/<mac>.cfg
//	  -> TFTP kernel (Debian-signed) + initrd -> /init reports Secure Boot on
//
// then, once its decision says "local", back to its own disk (a signed
// shim + GRUB on its ESP), and, set to the iPXE chain, refuses iPXE. One
// boot decision source (a boot.Decider) serves both renderings.

import (
	"context"
	"crypto/rand"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/assets"
	"github.com/pumi-lab/pumi/internal/boot"
	"github.com/pumi-lab/pumi/internal/netboot"
	"github.com/pumi-lab/pumi/internal/testnet"
	"github.com/pumi-lab/pumi/internal/testvm"
)

// seatState is what a seat-job owner keeps per MAC: its decision and its
// chain. It is both the boot.Decider and (wrapping StaticAdmission) the
// netboot.ChainChooser, as the appliance's will be.
type seatState struct {
	mu    sync.Mutex
	dec   map[string]boot.Decision
	chain map[string]netboot.Chain
}

func (s *seatState) Decide(_ context.Context, m boot.Machine) (boot.Decision, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.dec[m.MAC.String()]
	if !ok {
		return boot.Decision{Action: boot.Exit, Reason: "unknown MAC"}, nil
	}
	return d, nil
}

func (s *seatState) set(mac string, d boot.Decision, c netboot.Chain) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dec[mac], s.chain[mac] = d, c
}

type sbAdmission struct {
	*recAdmission
	seats *seatState
}

// Allow admits the MACs the seat state knows.
func (a sbAdmission) Allow(mac net.HardwareAddr) bool {
	a.seats.mu.Lock()
	defer a.seats.mu.Unlock()
	_, ok := a.seats.dec[mac.String()]
	return ok
}

func (a sbAdmission) Chain(mac net.HardwareAddr) netboot.Chain {
	a.seats.mu.Lock()
	defer a.seats.mu.Unlock()
	return a.seats.chain[mac.String()]
}

// padInitrd appends an uncompressed cpio holding mib MiB of random data to
// a copy of initrd, so the TFTP transfer has the size of a real
// Clonezilla/Debian initrd (the kernel unpacks concatenated archives).
func padInitrd(t *testing.T, initrd, to string, mib int) {
	t.Helper()
	copyFile(t, initrd, to)
	dir := t.TempDir()
	b := make([]byte, mib<<20)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pad.bin"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cpio", "-o", "-H", "newc", "--quiet")
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader("pad.bin\n")
	out, err := os.OpenFile(to, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout = out
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("cpio: %v: %s", err, stderr.String())
	}
}

// sbEnv is pumi's netboot (netboot.Server with the signed chain's TFTP
// files and the boot HTTP mux) in a namespace the test creates, serving
// one seat whose decision and chain the test sets.
type sbEnv struct {
	ns         *testnet.NS
	tap        string
	server     string // pumi's address
	base       string // HTTP base URL
	files      string // served at HTTP /files/ and TFTP files/
	rec        *recorder
	seats      *seatState
	adm        sbAdmission
	callback   chan string
	kernel     *testvm.Kernel
	initrdSize int64
}

// newSBEnv starts pumi on 10.99.<net>.1 with the Debian kernel and a busybox
// initrd padded by padMiB MiB in files/; first, if not nil, is the first
// TFTP layer (the benchmark's own GRUB config). In proxy mode dnsmasq is
// the segment's DHCP server (addresses only) and pumi answers PXE beside it.
func newSBEnv(t *testing.T, net3 int, padMiB int, first fs.FS, mode netboot.Mode) *sbEnv {
	t.Helper()
	k := testvm.DebianKernel(t)
	// efivarfs lets /init read the SecureBoot variable.
	initrd := testvm.BuildInitrd(t, testvm.InitrdOptions{Kernel: k, Modules: append(slices.Clone(testvm.NetModules), "efivarfs"),
		Files: map[string]string{"/etc/pumi-test.sh": testvm.SecureBootReport}})
	e := &sbEnv{server: fmt.Sprintf("10.99.%d.1", net3), rec: newRecorder(), kernel: k, callback: make(chan string, 4),
		seats: &seatState{dec: map[string]boot.Decision{}, chain: map[string]netboot.Chain{}}}
	e.base = "http://" + e.server + ":8080"
	log := slog.New(e.rec)
	t.Cleanup(func() {
		if t.Failed() {
			e.rec.dump(t, 120)
		}
	})
	e.ns = testnet.New(t)
	e.ns.Bridge("br0", e.server+"/24")
	e.tap = e.ns.Tap("br0")

	e.files = t.TempDir()
	copyFile(t, k.Vmlinuz, filepath.Join(e.files, "vmlinuz"))
	padInitrd(t, initrd, filepath.Join(e.files, "initrd.img"), padMiB)
	st, err := os.Stat(filepath.Join(e.files, "initrd.img"))
	if err != nil {
		t.Fatal(err)
	}
	e.initrdSize = st.Size()
	e.adm = sbAdmission{&recAdmission{StaticAdmission: netboot.NewStaticAdmission(nil, log.With("svc", "admission"))}, e.seats}

	// HTTP: the boot mux (iPXE's script and HTTP boot, used by the
	// negative run) and the initrd's callback.
	mux, err := boot.NewMux(e.seats, e.files, log.With("svc", "http"))
	if err != nil {
		t.Fatal(err)
	}
	mux.HandleFunc("GET /callback", func(w http.ResponseWriter, r *http.Request) {
		select {
		case e.callback <- r.URL.Query().Get("token"):
		default:
		}
		fmt.Fprint(w, "ack")
	})
	var ln net.Listener
	if err := e.ns.Do(func() (err error) { ln, err = net.Listen("tcp", e.server+":8080"); return err }); err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })

	// TFTP: iPXE, the signed chain, GRUB's configs from the same Decider,
	// and the HTTP /files/ tree under the same path.
	ctx, cancel := context.WithCancel(context.Background())
	root, err := os.OpenRoot(e.files)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	tftpFiles := netboot.Layers(first, assets.IPXE(), assets.SecureBoot(),
		boot.NewGrubFiles(ctx, e.seats, nil, log.With("svc", "grub")), netboot.Mount("files", root.FS()))
	from, to := fmt.Sprintf("10.99.%d.100", net3), fmt.Sprintf("10.99.%d.199", net3)
	cfg := netboot.Config{Interface: "br0", Mode: mode, ServerIP: netip.MustParseAddr(e.server), HTTPBase: e.base}
	var leases netboot.LeaseStore
	if mode == netboot.ModeFull {
		cfg.RangeStart, cfg.RangeEnd = netip.MustParseAddr(from), netip.MustParseAddr(to)
		cfg.Netmask, cfg.LeaseTime = netip.MustParsePrefix(e.server+"/24").Masked(), time.Hour
		leases = netboot.FileLeaseStore(filepath.Join(t.TempDir(), "leases.json"))
	} else {
		startDnsmasq(t, e.ns, from, to)
	}
	srv, err := netboot.New(cfg, e.adm, leases, tftpFiles, log.With("svc", "netboot"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.ns.Do(func() error { return srv.Run(ctx) }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("netboot.Server.Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("netboot.Server.Run did not return 15 s after cancel")
		}
	})
	select {
	case <-srv.Ready():
	case err := <-done:
		t.Fatalf("netboot.Server.Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("netboot server not ready after 10 s")
	}
	return e
}

// sbTimeout is per Secure Boot VM: measured 48-140 s for the longest run
// (35 MB initrd over TFTP at 1.2-9 MB/s, depending on the machine's load).
const sbTimeout = 480 * time.Second

// TestSecureBootQEMU takes three firmware boots (about 1.5-3 minutes of one
// CPU under TCG); -short skips it.
func TestSecureBootQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("QEMU end-to-end boots take minutes; run without -short")
	}
	testnet.Require(t, append(append(testvm.Programs(), testvm.SecureBootPrograms()...), "cpio")...)
	// 32 MiB of padding: the initrd then has the size of a real one.
	e := newSBEnv(t, 4, 32, nil, netboot.ModeFull)
	disk := testvm.SignedLocalDisk(t)
	ns, tap, rec, seats, adm, base, callback, initrdSize := e.ns, e.tap, e.rec, e.seats, e.adm, e.base, e.callback, e.initrdSize

	mac := testvm.RandomMAC()
	token := randomToken(t)
	linux := boot.Decision{Action: boot.Linux, Kernel: base + "/files/vmlinuz", Initrds: []string{base + "/files/initrd.img"},
		// pumi.note="two words" checks, against the real GRUB and kernel,
		// how a quoted value with a blank reaches /proc/cmdline.
		Cmdline: testvm.KernelArgs + ` pumi.token=` + token + ` pumi.callback=` + base + `/callback pumi.note="two words"`,
		Reason:  "secure boot e2e restore"}
	seats.set(mac, linux, netboot.ChainSigned)
	hw, _ := net.ParseMAC(mac)

	boot1 := func(t *testing.T, name, marker string) (*testvm.VM, []logRecord) {
		t.Helper()
		mark := rec.len()
		vm := testvm.Start(t, t.Context(), testvm.Config{Name: name, NS: ns, Tap: tap, MAC: mac, Disk: disk, SecureBoot: true, Timeout: sbTimeout})
		if _, err := vm.WaitFor(t.Context(), marker); err != nil {
			t.Fatal(err)
		}
		at := vm.Elapsed()
		if err := vm.Wait(t.Context()); err != nil {
			t.Errorf("%s: QEMU did not exit by itself after the marker: %v", name, err)
		}
		t.Logf("FIGURE secureboot %s: QEMU start to %s %.1fs", name, marker, at.Seconds())
		return vm, rec.since(mark)
	}
	// tftpDone: completed transfers of file, however the client spelt it
	// (GRUB asks for "/grub/grub.cfg", the firmware for "shimx64.efi").
	tftpDone := func(recs []logRecord, file string) []logRecord {
		var out []logRecord
		for _, r := range find(recs, "tftp: transfer done") {
			if strings.TrimLeft(r.Attrs["file"], "/") == file {
				out = append(out, r)
			}
		}
		return out
	}

	t.Run("signed-chain-linux", func(t *testing.T) {
		vm, recs := boot1(t, "sb-linux", testvm.MarkerCallbackOK)
		serial := vm.Serial()
		// The kernel runs with Secure Boot enforced: the EFI variable,
		// lockdown and the kernel's own log line all say so.
		m := regexp.MustCompile(testvm.MarkerSecureBoot + ` efivar=(\S+) lockdown=(\S*) dmesg=(\d+)`).FindStringSubmatch(serial)
		if m == nil || m[1] != "1" || !strings.Contains(m[2], "[integrity]") && !strings.Contains(m[2], "[confidentiality]") || m[3] == "0" {
			t.Errorf("guest does not report Secure Boot enforced: %q", m)
		}
		for _, s := range []string{"EFI stub: UEFI Secure Boot is enabled.", "secureboot: Secure boot enabled",
			"pumi: GRUB on " + mac, "pumi: " + mac + " boots linux vmlinuz: secure boot e2e restore",
			testvm.MarkerUp + " token=" + token + " addr=10.99.4."} {
			if !strings.Contains(serial, s) {
				t.Errorf("serial console lacks %q", s)
			}
		}
		// GRUB rebuilt the quoted value as the models in internal/boot say.
		if !strings.Contains(serial, `"pumi.note=two words"`) || !strings.Contains(serial, "pumi.token="+token+" ") {
			t.Errorf("kernel command line is not what GRUB should have made of the decision: %s", grepLine(serial, testvm.MarkerCmdline))
		}
		select {
		case got := <-callback:
			if got != token {
				t.Errorf("callback token %q, want %q", got, token)
			}
		default:
			t.Error("guest printed the callback marker but the server got no callback")
		}
		var arch7, ipxe bool
		for _, ev := range adm.of(mac) {
			arch7 = arch7 || ev.Info.Arch == 7 && ev.Info.Firmware == "uefi-pxe"
			ipxe = ipxe || ev.Info.Firmware == "ipxe"
		}
		if !arch7 || ipxe {
			t.Errorf("DHCP saw arch-7 firmware %v, iPXE %v; want firmware only", arch7, ipxe)
		}
		for _, f := range []string{netboot.FileShim, assets.SecureBootGrub, "grub/grub.cfg", boot.GrubConfigPath(hw), "files/vmlinuz", "files/initrd.img"} {
			if len(tftpDone(recs, f)) == 0 {
				t.Errorf("no completed TFTP transfer of %s", f)
			}
		}
		if len(tftpDone(recs, netboot.FileUEFI)) != 0 || len(find(recs, "boot script served")) != 0 {
			t.Errorf("the signed chain touched iPXE")
		}
		if len(find(recs, "grub config served", "mac", mac, "action", "linux")) == 0 {
			t.Errorf("no GRUB config with action linux served for %s", mac)
		}
		for _, f := range []string{"files/vmlinuz", "files/initrd.img"} {
			for _, r := range tftpDone(recs, f) {
				t.Logf("FIGURE secureboot TFTP %s: %s bytes in %s, blksize %s (GRUB)", f, r.Attrs["bytes"], r.Attrs["duration"], r.Attrs["blksize"])
				if f == "files/initrd.img" && r.Attrs["bytes"] != fmt.Sprint(initrdSize) {
					t.Errorf("initrd: %s bytes sent, file has %d", r.Attrs["bytes"], initrdSize)
				}
			}
		}
		logPhases(t, vm)
	})

	t.Run("signed-chain-local", func(t *testing.T) {
		seats.set(mac, boot.Decision{Action: boot.Exit, Reason: "restore done"}, netboot.ChainSigned)
		vm, recs := boot1(t, "sb-local", testvm.MarkerSignedDisk)
		serial := vm.Serial()
		i := strings.Index(serial, "pumi: "+mac+" boots its local disk: restore done")
		j := strings.Index(serial, "pumi: chainloading (hd0,gpt1)/EFI/BOOT/BOOTX64.EFI")
		if i < 0 || j < i || j > strings.Index(serial, testvm.MarkerSignedDisk) {
			t.Errorf("pumi's GRUB config did not chainload the disk's loader before the disk booted (echo at %d, chainload at %d)", i, j)
		}
		if strings.Contains(serial, "UiApp") {
			t.Errorf("the firmware opened its boot menu")
		}
		if len(find(recs, "grub config served", "mac", mac, "action", "exit")) == 0 {
			t.Errorf("no GRUB config with action exit served for %s", mac)
		}
		if len(tftpDone(recs, "files/vmlinuz")) != 0 {
			t.Errorf("a local boot fetched the kernel")
		}
	})

	t.Run("ipxe-refused", func(t *testing.T) {
		seats.set(mac, linux, netboot.ChainIPXE)
		vm, recs := boot1(t, "sb-ipxe", testvm.MarkerSignedDisk)
		serial := vm.Serial()
		// The firmware fetched iPXE and refused to start it (it is not
		// signed), then went on to its disk.
		if !regexp.MustCompile(`failed to load Boot\d+ "UEFI PXEv4 \(MAC:[0-9A-F]+\)".*Access Denied`).MatchString(serial) {
			t.Errorf("OVMF did not refuse the PXE boot program with Access Denied")
		}
		if len(tftpDone(recs, netboot.FileUEFI)) == 0 {
			t.Errorf("iPXE (%s) was never sent, so its refusal proves nothing", netboot.FileUEFI)
		}
		if strings.Contains(serial, "iPXE initialising") || len(find(recs, "boot script served")) != 0 || len(callback) != 0 {
			t.Errorf("iPXE ran under Secure Boot")
		}
		if len(tftpDone(recs, netboot.FileShim)) != 0 {
			t.Errorf("a seat on the iPXE chain was sent the shim")
		}
	})
}

// TestSecureBootQEMUProxy: the signed chain beside the school's DHCP server
// (dnsmasq gives the address, pumi the boot program by proxy DHCP): GRUB
// must still find pumi as its TFTP server. One boot, to the local disk.
func TestSecureBootQEMUProxy(t *testing.T) {
	if testing.Short() {
		t.Skip("QEMU end-to-end boots take minutes; run without -short")
	}
	testnet.Require(t, append(append(testvm.Programs(), testvm.SecureBootPrograms()...), "cpio", "dnsmasq")...)
	e := newSBEnv(t, 7, 0, nil, netboot.ModeProxy)
	mac := testvm.RandomMAC()
	e.seats.set(mac, boot.Decision{Action: boot.Exit, Reason: "proxy local"}, netboot.ChainSigned)
	vm := testvm.Start(t, t.Context(), testvm.Config{Name: "sb-proxy", NS: e.ns, Tap: e.tap, MAC: mac, Disk: testvm.SignedLocalDisk(t),
		SecureBoot: true, Timeout: sbTimeout})
	if _, err := vm.WaitFor(t.Context(), testvm.MarkerSignedDisk); err != nil {
		t.Fatal(err)
	}
	t.Logf("FIGURE secureboot proxy local: QEMU start to %s %.1fs", testvm.MarkerSignedDisk, vm.Elapsed().Seconds())
	serial := vm.Serial()
	if !strings.Contains(serial, "pumi: "+mac+" boots its local disk: proxy local") {
		t.Errorf("GRUB did not get this seat's config from pumi in proxy mode")
	}
	recs := e.rec.since(0)
	if len(find(recs, "proxy PXE answer", "mac", mac, "file", netboot.FileShim)) == 0 {
		t.Errorf("no proxy PXE answer with %s", netboot.FileShim)
	}
	if len(find(recs, "grub config served", "mac", mac, "action", "exit")) == 0 {
		t.Errorf("no GRUB config served")
	}
}

// grepLine returns the first line of s holding marker.
func grepLine(s, marker string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, marker) {
			return l
		}
	}
	return "(no " + marker + " line)"
}

// logPhases logs when the console showed each step of the signed chain.
func logPhases(t *testing.T, vm *testvm.VM) {
	var b strings.Builder
	for _, l := range strings.Split(vm.TimedSerial(), "\n") {
		for _, s := range []string{"NBP file downloaded", "Fetching Netboot Image", "Welcome to GRUB", "pumi: GRUB on", "boots linux",
			"EFI stub: UEFI Secure Boot", "secureboot: Secure boot enabled", testvm.MarkerInit, testvm.MarkerUp, testvm.MarkerSecureBoot, testvm.MarkerCallbackOK} {
			if strings.Contains(l, s) {
				b.WriteString("  " + strings.TrimSpace(l) + "\n")
				break
			}
		}
	}
	t.Logf("signed chain phases (seconds since QEMU start):\n%s", b.String())
}

// TestSecureBootQEMUVars runs the signed chain to a Debian-signed kernel on
// a PC whose firmware variables are PUMI_SB_VARS (an OVMF_VARS_4M.fd with
// other keys enrolled, e.g. only the Microsoft UEFI CA 2023 in db; see
// docs/secureboot.md for how it was made); the kernel must report Secure
// Boot on. It is a probe, not part of make test: it skips without
// PUMI_SB_VARS.
func TestSecureBootQEMUVars(t *testing.T) {
	vars := os.Getenv("PUMI_SB_VARS")
	if vars == "" {
		t.Skip("set PUMI_SB_VARS to an OVMF variable store to boot the signed chain with it")
	}
	testnet.Require(t, append(append(testvm.Programs(), testvm.SecureBootPrograms()...), "cpio")...)
	e := newSBEnv(t, 8, 0, nil, netboot.ModeFull)
	mac := testvm.RandomMAC()
	e.seats.set(mac, boot.Decision{Action: boot.Linux, Kernel: e.base + "/files/vmlinuz", Initrds: []string{e.base + "/files/initrd.img"},
		Cmdline: testvm.KernelArgs, Reason: "vars probe"}, netboot.ChainSigned)
	vm := testvm.Start(t, t.Context(), testvm.Config{Name: "sb-vars", NS: e.ns, Tap: e.tap, MAC: mac,
		SecureBoot: true, OVMFVars: vars, Timeout: sbTimeout})
	line, err := vm.WaitFor(t.Context(), testvm.MarkerSecureBoot)
	if err != nil {
		t.Logf("console:\n%s", vm.Tail(60))
		t.Fatal(err)
	}
	t.Logf("FIGURE secureboot with %s: %s after %.1fs", filepath.Base(vars), line, vm.Elapsed().Seconds())
	if !strings.Contains(line, "efivar=1") {
		t.Errorf("Secure Boot is not enforced with these variables, so the boot proves nothing: %s", line)
	}
}
