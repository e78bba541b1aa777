package netboot_test

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/pumi-lab/pumi/internal/boot"
	"github.com/pumi-lab/pumi/internal/netboot"
	"github.com/pumi-lab/pumi/internal/testnet"
	"github.com/pumi-lab/pumi/internal/testvm"
)

// TestGrubTFTPBench measures the signed chain's slowest step, GRUB fetching
// a real-sized initrd over TFTP, against dnsmasq in the same run: one
// Secure Boot VM whose GRUB loads the same 34.9 MB initrd from dnsmasq,
// pumi, pumi, dnsmasq (ABBA, so a load change during the run hits both),
// timed by the console lines GRUB echoes between the loads. It is a
// benchmark, not part of make test:
//
//	PUMI_BENCH_GRUB=1 go test -count=1 -v -run TestGrubTFTPBench ./internal/netboot/
func TestGrubTFTPBench(t *testing.T) {
	if os.Getenv("PUMI_BENCH_GRUB") == "" {
		t.Skip("benchmark: set PUMI_BENCH_GRUB=1 to run it")
	}
	testnet.Require(t, append(append(testvm.Programs(), testvm.SecureBootPrograms()...), "cpio", "dnsmasq")...)
	mac := testvm.RandomMAC()
	const peer = "10.99.6.2"
	script := `echo BENCH-BEGIN
linux /files/vmlinuz
echo BENCH-T0
initrd (tftp,` + peer + `)/initrd.img
echo BENCH-T1 dnsmasq
initrd /files/initrd.img
echo BENCH-T2 pumi
initrd /files/initrd.img
echo BENCH-T3 pumi
initrd (tftp,` + peer + `)/initrd.img
echo BENCH-T4 dnsmasq
halt
`
	cfgName := "grub/" + strings.ReplaceAll(mac, ":", "-") + ".cfg"
	e := newSBEnv(t, 6, 32, fstest.MapFS{cfgName: {Data: []byte(script)}}, netboot.ModeFull)
	e.seats.set(mac, boot.Decision{Action: boot.Exit, Reason: "bench"}, netboot.ChainSigned)

	// dnsmasq's TFTP on a second address of the same bridge, serving the
	// same directory.
	e.ns.MustIP("addr", "add", peer+"/24", "dev", "br0")
	dir := t.TempDir()
	logf := filepath.Join(dir, "dnsmasq.log")
	c := e.ns.Command(context.Background(), "dnsmasq", "--keep-in-foreground", "--port=0", "--user=root", "--pid-file=",
		"--bind-interfaces", "--listen-address="+peer, "--enable-tftp", "--tftp-root="+e.files, "--log-facility="+logf)
	if err := e.ns.Start(c); err != nil {
		t.Fatalf("dnsmasq: %v", err)
	}
	t.Cleanup(func() {
		_ = c.Process.Kill()
		_ = c.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logf)
			t.Logf("dnsmasq log:\n%s", b)
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if out, _ := e.ns.Output(context.Background(), "ss", "-lnu"); strings.Contains(out, peer+":69 ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("dnsmasq did not bind TFTP within 10 s")
		}
	}

	vm := testvm.Start(t, t.Context(), testvm.Config{Name: "grub-bench", NS: e.ns, Tap: e.tap, MAC: mac, SecureBoot: true,
		MemoryMiB: 1024, Timeout: 10 * time.Minute})
	if _, err := vm.WaitFor(t.Context(), "BENCH-T4"); err != nil {
		t.Fatal(err)
	}
	vm.Stop()
	at := map[string]float64{}
	re := regexp.MustCompile(`^\[\s*([0-9.]+)s\] (BENCH-T\d)`)
	for _, l := range strings.Split(vm.TimedSerial(), "\n") {
		if m := re.FindStringSubmatch(l); m != nil {
			at[m[2]], _ = strconv.ParseFloat(m[1], 64)
		}
		if strings.Contains(l, "error:") {
			t.Errorf("GRUB reported an error, so the timing is void: %s", l)
		}
	}
	if len(at) != 5 {
		t.Fatalf("timestamps %v", at)
	}
	if n := len(find(e.rec.since(0), "tftp: transfer done", "file", "/files/initrd.img")); n != 2 {
		t.Errorf("pumi completed %d initrd transfers, want 2", n)
	}
	if b, _ := os.ReadFile(logf); strings.Count(string(b), "initrd.img") < 2 {
		t.Errorf("dnsmasq did not log two initrd transfers:\n%s", b)
	}
	dnsmasq := (at["BENCH-T1"] - at["BENCH-T0"]) + (at["BENCH-T4"] - at["BENCH-T3"])
	pumi := at["BENCH-T3"] - at["BENCH-T1"]
	mb := float64(e.initrdSize) / 1e6
	t.Logf("FIGURE GRUB TFTP initrd %.1f MB, 2 loads each (ABBA): dnsmasq %.1fs + %.1fs, pumi %.1fs + %.1fs; pumi/dnsmasq time ratio %.2f (pumi %.1f MB/s, dnsmasq %.1f MB/s)",
		mb, at["BENCH-T1"]-at["BENCH-T0"], at["BENCH-T4"]-at["BENCH-T3"], at["BENCH-T2"]-at["BENCH-T1"], at["BENCH-T3"]-at["BENCH-T2"],
		pumi/dnsmasq, 2*mb/pumi, 2*mb/dnsmasq)
}
