package gokrazy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/testnet"
	"github.com/pumi-lab/pumi/internal/testvm"
)

// applianceVM is the appliance image booted in QEMU the way a mini PC boots
// the stick: UEFI (OVMF) or legacy BIOS (SeaBIOS, a few seconds faster;
// the image has both boot paths), e1000 NIC, the image as a writable disk (so /perm persists and
// gok update can write the A/B partitions). testvm.Start cannot do this: it
// always attaches disks with snapshot=on.
type applianceVM struct {
	t       testing.TB
	name    string
	cmd     *exec.Cmd
	serial  string // serial console log file
	start   time.Time
	done    chan struct{}
	unlock  func()
	exitErr error // set when done is closed
}

// userNet is QEMU user networking restricted to the guest and the host's
// loopback forwards: slirp's DHCP hands out 10.91.0.2 (the address the
// static configuration of the update uses too), the forwards go to it.
func userNet(pumiPort, uiPort int) []string {
	return []string{"-netdev", fmt.Sprintf("user,id=n0,restrict=on,net=10.91.0.0/24,host=10.91.0.1,dhcpstart=10.91.0.2,"+
		"hostfwd=tcp:127.0.0.1:%d-10.91.0.2:80,hostfwd=tcp:127.0.0.1:%d-10.91.0.2:%d", pumiPort, uiPort, uiPort),
		"-device", "e1000,netdev=n0"}
}

// tapNet attaches the VM to tap (in the VM's namespace).
func tapNet(tap, mac string) []string {
	return []string{"-netdev", "tap,id=n0,ifname=" + tap + ",script=no,downscript=no", "-device", "e1000,netdev=n0,mac=" + mac}
}

// bootAppliance starts QEMU on img (TCG always: KVM is unusable on these
// machines) and returns at once. It takes the machine-wide VM slot that
// testvm uses, so it never runs beside another test's VM unless it hands
// the slot over with releaseSlot. The VM lives until owner's test ends (a
// VM started in one subtest is used by the next ones) or Kill.
func bootAppliance(t, owner testing.TB, ctx context.Context, name, img string, uefi bool, ns *testnet.NS, netArgs []string) *applianceVM {
	t.Helper()
	waited := time.Now()
	unlock, err := testvm.Slot(ctx)
	if err != nil {
		t.Fatalf("waiting for the VM slot: %v", err)
	}
	if d := time.Since(waited); d > time.Second {
		t.Logf("%s: waited %.1fs for another VM on this machine to finish", name, d.Seconds())
	}
	v := &applianceVM{t: t, name: name, serial: filepath.Join(owner.TempDir(), name+".serial"), done: make(chan struct{}), unlock: unlock}
	args := []string{"-name", name, "-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "2",
		"-drive", "file=" + img + ",format=raw,if=ide", "-display", "none", "-vga", "none", "-monitor", "none",
		"-serial", "file:" + v.serial}
	if uefi {
		vars := filepath.Join(owner.TempDir(), name+".vars.fd")
		b, err := os.ReadFile(testvm.OVMFVars)
		if err != nil {
			unlock()
			t.Fatalf("%v (install ovmf)", err)
		}
		if err := os.WriteFile(vars, b, 0o644); err != nil {
			unlock()
			t.Fatal(err)
		}
		args = append(args, "-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+testvm.OVMFCode,
			"-drive", "if=pflash,format=raw,unit=1,file="+vars)
	}
	args = append(args, netArgs...)
	if ns != nil {
		v.cmd = ns.Command(ctx, "qemu-system-x86_64", args...)
	} else {
		v.cmd = exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	}
	var stderr strings.Builder
	v.cmd.Stdout, v.cmd.Stderr = &stderr, &stderr
	v.start = time.Now()
	if err := v.cmd.Start(); err != nil {
		unlock()
		t.Fatalf("starting QEMU: %v", err)
	}
	t.Logf("%s: QEMU pid %d: qemu-system-x86_64 %s", name, v.cmd.Process.Pid, strings.Join(args, " "))
	go func() {
		err := v.cmd.Wait()
		v.unlock()
		v.exitErr = fmt.Errorf("%v %s", err, stderr.String())
		close(v.done)
	}()
	owner.Cleanup(func() {
		v.Kill()
		if owner.Failed() || os.Getenv("PUMI_TEST_SERIAL") != "" {
			owner.Logf("%s: serial console (last 60 lines):\n%s\nQEMU: %v", name, lastLines(v.Serial(), 60), v.exitErr)
		}
	})
	return v
}

// Kill pulls the plug (SIGKILL: no shutdown, no sync) and waits.
func (v *applianceVM) Kill() {
	select {
	case <-v.done:
		return
	default:
	}
	_ = v.cmd.Process.Kill()
	<-v.done
}

// Serial is the console output so far.
func (v *applianceVM) Serial() string {
	b, _ := os.ReadFile(v.serial)
	return strings.ReplaceAll(string(b), "\r", "")
}

// releaseSlot gives the VM slot away while this VM keeps running, so that a
// second VM of the same test (the lab PC) can start: two VMs at once.
func (v *applianceVM) releaseSlot() { v.unlock() }

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// nsClient is an HTTP client whose connections are made inside ns (the
// appliance on the lab bridge is only reachable there).
func nsClient(ns *testnet.NS) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := ns.Do(func() (err error) {
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}}}
}

// waitHTTP polls url until it answers with want, and returns the body.
func waitHTTP(ctx context.Context, c *http.Client, url string, want int, limit time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		resp, err := c.Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == want {
				return string(b), nil
			}
			last = fmt.Sprintf("%s: %s", resp.Status, b)
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%s did not answer %d within %s (last: %s)", url, want, limit, last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
