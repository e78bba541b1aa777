package testvm

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/testnet"
)

// TestInitrdArchive checks the Go cpio writer against the real cpio(1):
// it must list every entry, with the device node, in a valid newc archive.
func TestInitrdArchive(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio not installed")
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("busybox-static not installed")
	}
	var b bytes.Buffer
	err := WriteInitrd(&b, InitrdOptions{Files: map[string]string{"/etc/pumi-test.sh": "echo hi\n", "/opt/x/y.sh": "true\n"}})
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(&b)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	c := exec.Command("cpio", "-itv", "--quiet")
	c.Stdin = bytes.NewReader(raw)
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v\n%s", err, out)
	}
	list := string(out)
	for _, want := range []string{" init\n", " bin/busybox\n", " etc/udhcpc.script\n", " lib/modules/order\n", " etc/pumi-test.sh\n", " opt/x\n", " opt/x/y.sh\n"} {
		if !strings.Contains(list, want) {
			t.Errorf("cpio listing lacks %q:\n%s", want, list)
		}
	}
	if !strings.Contains(list, "crw-------") || !strings.Contains(list, "5,") {
		t.Errorf("no /dev/console char device in listing:\n%s", list)
	}
	if strings.Count(list, " opt\n") != 1 {
		t.Errorf("directory opt listed %d times", strings.Count(list, " opt\n"))
	}
	// Extract and compare content byte for byte.
	dir := t.TempDir()
	x := exec.Command("cpio", "-id", "--quiet", "--no-absolute-filenames")
	x.Dir = dir
	x.Stdin = bytes.NewReader(raw)
	if out, err := x.CombinedOutput(); err != nil && !strings.Contains(string(out), "console") {
		t.Fatalf("cpio -i: %v\n%s", err, out)
	}
	got, _ := os.ReadFile(dir + "/init")
	if string(got) != ProbeInit {
		t.Error("extracted /init differs from ProbeInit")
	}
	bb, _ := os.ReadFile("/bin/busybox")
	got, _ = os.ReadFile(dir + "/bin/busybox")
	if !bytes.Equal(got, bb) {
		t.Error("extracted busybox differs")
	}
	if err := WriteInitrd(io.Discard, InitrdOptions{Modules: []string{"e1000"}}); err == nil {
		t.Error("modules without a kernel: no error")
	}
}

// TestKernelModules fetches the Debian kernel (cached) and checks that
// dependency resolution puts every module after its dependencies.
func TestKernelModules(t *testing.T) {
	testnet.Require(t, "apt-get", "dpkg")
	k := DebianKernel(t)
	files, err := k.ModuleFiles(append(append([]string{}, NetModules...), NFSModules...)...)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, f := range files {
		pos[strings.TrimSuffix(baseName(f), ".ko")] = i
	}
	for _, m := range append(append([]string{}, NetModules...), NFSModules...) {
		if _, ok := pos[m]; !ok {
			t.Errorf("module %s missing from %v", m, files)
		}
	}
	for _, f := range files {
		deps, err := moduleDepends(f)
		if err != nil {
			t.Fatal(err)
		}
		me := pos[strings.TrimSuffix(baseName(f), ".ko")]
		for _, d := range deps {
			if p, ok := pos[strings.ReplaceAll(d, "-", "_")]; !ok || p > me {
				t.Errorf("%s depends on %s, which is not loaded before it", f, d)
			}
		}
	}
	if _, err := k.ModuleFiles("no_such_module"); err == nil {
		t.Error("unknown module: no error")
	}
	t.Logf("%s %s: %d modules in load order", k.Package, k.Version, len(files))
}

func baseName(p string) string { return p[strings.LastIndexByte(p, '/')+1:] }

// TestDirectBoot boots the Debian kernel with the probe initrd directly
// (no firmware) on a tap in a namespace with a static address, and checks
// that the guest calls back over HTTP with its token: the path other
// packages' guest tests (NFS) build on.
func TestDirectBoot(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM; run without -short")
	}
	testnet.Require(t, Programs()...)
	k := DebianKernel(t)
	initrd := BuildInitrd(t, InitrdOptions{Kernel: k, Modules: NetModules,
		Files: map[string]string{"/etc/pumi-test.sh": `echo "HOOK-RAN token=$TOKEN if=$IF"` + "\n"}})
	ns := testnet.New(t)
	ns.Bridge("br0", "10.98.7.1/24")
	tap := ns.Tap("br0")
	token := fmt.Sprintf("tok%d", time.Now().UnixNano())

	got := make(chan string, 1)
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", "10.98.7.1:8080"); return err }); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case got <- r.URL.Query().Get("token") + " " + r.URL.Query().Get("addr"):
		default:
		}
		fmt.Fprint(w, "ack")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	ctx := t.Context()
	vm := Start(t, ctx, Config{Name: "direct", NS: ns, Tap: tap, Kernel: k.Vmlinuz, Initrd: initrd, Timeout: 2 * time.Minute,
		Append: "quiet pumi.ip=10.98.7.2/24 pumi.token=" + token + " pumi.callback=http://10.98.7.1:8080/cb"})
	line, err := vm.WaitFor(ctx, MarkerCallbackOK)
	if err != nil {
		t.Fatal(err)
	}
	if line != MarkerCallbackOK+" ack" {
		t.Errorf("callback line %q", line)
	}
	if !strings.Contains(vm.Serial(), "HOOK-RAN token="+token) {
		t.Error("hook /etc/pumi-test.sh did not run")
	}
	if c := <-got; c != token+" 10.98.7.2/24" {
		t.Errorf("callback got %q, want token %s and addr", c, token)
	}
	if err := vm.Wait(ctx); err != nil {
		t.Errorf("QEMU did not exit cleanly after poweroff: %v", err)
	}
	t.Logf("direct boot to callback + poweroff: %.1fs", vm.Elapsed().Seconds())
}

// TestLocalDisk boots OVMF with only the local disk: GRUB on it must print
// MarkerDisk and power off.
func TestLocalDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM; run without -short")
	}
	testnet.Require(t, Programs()...)
	disk := LocalDisk(t)
	ctx := t.Context()
	vm := Start(t, ctx, Config{Name: "disk", Disk: disk, Timeout: 2 * time.Minute})
	if _, err := vm.WaitFor(ctx, MarkerDisk); err != nil {
		t.Fatal(err)
	}
	if err := vm.Wait(ctx); err != nil {
		t.Errorf("QEMU did not exit after GRUB's halt: %v", err)
	}
	t.Logf("UEFI to local-disk marker + halt: %.1fs", vm.Elapsed().Seconds())
}

// TestWaitForExit: a guest that dies without the marker must fail WaitFor
// promptly (QEMU exits through panic=1 and -no-reboot), not at the timeout.
// A kernel with no initrd panics for lack of a root file system.
func TestWaitForExit(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM; run without -short")
	}
	testnet.Require(t, Programs()...)
	k := DebianKernel(t)
	vm := Start(t, t.Context(), Config{Name: "noroot", Kernel: k.Vmlinuz, Timeout: 2 * time.Minute})
	_, err := vm.WaitFor(t.Context(), MarkerInit)
	if err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("WaitFor = %v, want an 'exited without printing' error", err)
	}
	if !strings.Contains(vm.Serial(), "Kernel panic") {
		t.Errorf("expected a kernel panic on the console")
	}
	if vm.Elapsed() > time.Minute {
		t.Errorf("took %.0fs: panic=1 did not end QEMU", vm.Elapsed().Seconds())
	}
	t.Logf("%v", err)
}
