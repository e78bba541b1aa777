package main

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/assets"
	"github.com/pumi-lab/pumi/internal/boot"
	"github.com/pumi-lab/pumi/internal/netboot"
	"github.com/pumi-lab/pumi/internal/testnet"
)

// buildBinary builds pumi-netboot once per test binary run.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "pumi-netboot")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

const udhcpcScript = `#!/bin/sh
[ "$1" = bound ] && echo "LEASE ip=$ip siaddr=$siaddr boot_file=$boot_file"
exit 0
`

var lease = regexp.MustCompile(`LEASE ip=(\S+) siaddr=(\S*) boot_file=(\S*)`)

// TestBinaryFullModeServesIPXEScript runs the real binary in full mode with
// the boot HTTP endpoint, in a namespace: an iPXE-looking busybox udhcpc gets
// an address and the script URL, and the script is served over HTTP.
func TestBinaryFullModeServesIPXEScript(t *testing.T) {
	testnet.Require(t, "busybox")
	bin := buildBinary(t)
	ns := testnet.New(t)
	ns.Bridge("br0", "10.99.41.1/24")
	dir := t.TempDir()
	known, stranger := "52:54:00:41:00:01", "52:54:00:41:00:02"
	cfg := fmt.Sprintf(`{
  "http_base": "http://10.99.41.1:8080",
  "range_start": "10.99.41.100", "range_end": "10.99.41.110", "netmask": "255.255.255.0",
  "boot": {%q: "local"}
}`, known)
	cfgPath := filepath.Join(dir, "netboot.json")
	os.WriteFile(cfgPath, []byte(cfg), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := ns.Command(ctx, bin, "-iface", "br0", "-mode", "full", "-config", cfgPath,
		"-lease-file", filepath.Join(dir, "leases.json"), "-http-listen", "10.99.41.1:8080")
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := ns.Start(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pumi-netboot log:\n%s", logs.String())
		}
	})
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(logs.String(), "netboot serving"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("pumi-netboot did not start")
		}
	}
	script := filepath.Join(dir, "udhcpc.sh")
	os.WriteFile(script, []byte(udhcpcScript), 0o755)
	ipxe := []string{"-V", "PXEClient:Arch:00007:UNDI:003000", "-x", "0x5d:0007", "-x", "0x4d:69505845"} // arch 7, user class "iPXE"

	h := ns.Host("br0", known, "")
	m := udhcpc(t, h, script, ipxe...)
	if m[1] != "10.99.41.1" || m[2] != "http://10.99.41.1:8080/boot/52-54-00-41-00-01.ipxe" {
		t.Fatalf("iPXE got siaddr=%s file=%s", m[1], m[2])
	}
	h.MustIP("addr", "add", m[0]+"/24", "dev", "eth0")
	out, err := h.Output(context.Background(), "busybox", "wget", "-q", "-O", "-", m[2])
	if err != nil || !strings.HasPrefix(out, "#!ipxe") || !strings.Contains(out, "exit 1") {
		t.Fatalf("script %s: %v\n%s", m[2], err, out)
	}

	// An unknown MAC gets an address but no boot answer.
	s := ns.Host("br0", stranger, "")
	m = udhcpc(t, s, script, ipxe...)
	if m[2] != "" {
		t.Fatalf("unknown MAC got boot file %q", m[2])
	}
	if !strings.Contains(logs.String(), "msg=seen mac="+stranger) {
		t.Errorf("unknown MAC not logged as seen")
	}

	// SIGTERM: clean exit.
	cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err != nil {
		t.Errorf("pumi-netboot exit after SIGINT: %v", err)
	}
}

func udhcpc(t *testing.T, h *testnet.NS, script string, extra ...string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := append([]string{"udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1", "-A", "1", "-s", script}, extra...)
	out, err := h.Output(ctx, "busybox", args...)
	m := lease.FindStringSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("udhcpc: %v\n%s", err, out)
	}
	return m[1:]
}

// TestBinaryErrorsAreOneLine: bad setups exit 1 with one clear line.
func TestBinaryErrorsAreOneLine(t *testing.T) {
	testnet.Require(t)
	bin := buildBinary(t)
	ns := testnet.New(t)
	ns.Bridge("br0", "10.99.42.1/24")
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"rangestart": "10.99.42.100"}`), 0o644)
	full := filepath.Join(dir, "full.json")
	os.WriteFile(full, []byte(`{"http_base": "http://10.99.42.1:8080", "range_start": "10.99.42.100", "range_end": "10.99.42.90", "netmask": "10.99.42.0/24"}`), 0o644)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"-iface", "nosuch0", "-http-base", "http://10.99.42.1:8080"}, `interface "nosuch0" not found`},
		{[]string{"-iface", "br0", "-http-base", "http://10.99.42.1:8080", "-config", bad}, `unknown field "rangestart"`},
		{[]string{"-iface", "br0", "-mode", "full", "-config", full}, "bad range"},
		{[]string{"-iface", "br0"}, "no HTTP base"},
		{[]string{"-iface", "br0", "-mode", "full"}, "needs -config"},
		{[]string{"-iface", "br0", "-mode", "proxy", "-http-base", "http://10.99.42.1:8080", "-http-listen", "10.99.99.99:8080"}, "HTTP 10.99.99.99:8080"},
	}
	for _, c := range cases {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := ns.Output(ctx, bin, c.args...)
		cancel()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 1 {
			t.Errorf("%v: err %v, want exit status 1\n%s", c.args, err, out)
			continue
		}
		if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 1 || !strings.Contains(lines[0], c.want) {
			t.Errorf("%v: output %q, want one line containing %q", c.args, out, c.want)
		}
	}
}

// TestBinarySignedChain runs the real binary with one MAC on the signed
// chain: firmware PXE (arch 7, no iPXE) is sent the shim, and tftp-hpa
// fetches the whole chain the way shim and GRUB do: shimx64.efi and
// grubx64.efi (byte-identical to assets.SecureBoot), grub/grub.cfg, the
// seat's grub/<mac>.cfg rendered from its boot entry, and the kernel from
// -files under the same path as its HTTP URL.
func TestBinarySignedChain(t *testing.T) {
	testnet.Require(t, "busybox", "tftp")
	bin := buildBinary(t)
	ns := testnet.New(t)
	ns.Bridge("br0", "10.99.43.1/24")
	dir := t.TempDir()
	files := filepath.Join(dir, "files")
	os.Mkdir(files, 0o755)
	os.WriteFile(filepath.Join(files, "vmlinuz"), []byte("not really a kernel"), 0o644)
	signed, other := "52:54:00:43:00:01", "52:54:00:43:00:02"
	cfg := fmt.Sprintf(`{
  "http_base": "http://10.99.43.1:8080",
  "range_start": "10.99.43.100", "range_end": "10.99.43.110", "netmask": "255.255.255.0",
  "chains": {%[1]q: "signed"},
  "boot": {%[1]q: {"kernel": "http://10.99.43.1:8080/files/vmlinuz", "cmdline": "console=ttyS0,115200 x=\"a b\"", "reason": "bench"}, %[2]q: "local"}
}`, signed, other)
	cfgPath := filepath.Join(dir, "netboot.json")
	os.WriteFile(cfgPath, []byte(cfg), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := ns.Command(ctx, bin, "-iface", "br0", "-mode", "full", "-config", cfgPath,
		"-lease-file", filepath.Join(dir, "leases.json"), "-files", files)
	var logs syncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := ns.Start(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pumi-netboot log:\n%s", logs.String())
		}
	})
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(logs.String(), "netboot serving"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("pumi-netboot did not start")
		}
	}
	script := filepath.Join(dir, "udhcpc.sh")
	os.WriteFile(script, []byte(udhcpcScript), 0o755)
	firmware := []string{"-V", "PXEClient:Arch:00007:UNDI:003000", "-x", "0x5d:0007"}

	h := ns.Host("br0", signed, "")
	if m := udhcpc(t, h, script, firmware...); m[1] != "10.99.43.1" || m[2] != netboot.FileShim {
		t.Fatalf("signed-chain firmware got siaddr=%s file=%s, want the shim", m[1], m[2])
	}
	o := ns.Host("br0", other, "")
	if m := udhcpc(t, o, script, firmware...); m[2] != netboot.FileUEFI {
		t.Fatalf("iPXE-chain firmware got file=%s, want %s", m[2], netboot.FileUEFI)
	}

	get := func(name string) []byte {
		t.Helper()
		local := filepath.Join(dir, "got-"+strings.ReplaceAll(name, "/", "_"))
		out, err := ns.Output(context.Background(), "tftp", "-m", "binary", "10.99.43.1", "-c", "get", name, local)
		b, rerr := os.ReadFile(local)
		if err != nil || rerr != nil || strings.Contains(out, "Error") {
			t.Fatalf("tftp get %s: %v %v\n%s", name, err, rerr, out)
		}
		return b
	}
	for _, name := range []string{assets.SecureBootShim, assets.SecureBootGrub} {
		want, _ := fs.ReadFile(assets.SecureBoot(), name)
		if got := get(name); !bytes.Equal(got, want) {
			t.Errorf("%s over TFTP: %d bytes, differs from the embedded %d", name, len(got), len(want))
		}
	}
	if got := string(get("grub/grub.cfg")); got != boot.GrubDispatcher() {
		t.Errorf("grub/grub.cfg is not the dispatcher:\n%s", got)
	}
	hw, _ := net.ParseMAC(signed)
	if got := string(get("/" + boot.GrubConfigPath(hw))); !strings.Contains(got, "\nlinux /files/vmlinuz console=ttyS0,115200 'x=a b'\n") {
		t.Errorf("per-MAC GRUB config:\n%s", got)
	}
	if got := string(get("files/vmlinuz")); got != "not really a kernel" {
		t.Errorf("files/vmlinuz over TFTP: %q", got)
	}

	// An entry GRUB cannot render is refused at start for a signed MAC.
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(fmt.Sprintf(`{"chains": {%[1]q: "signed"}, "boot": {%[1]q: {"kernel": "http://h/k", "cmdline": "a='b'"}}}`, signed)), 0o644)
	out, err := ns.Output(context.Background(), bin, "-iface", "br0", "-http-base", "http://10.99.43.1:8080", "-config", bad)
	if err == nil || !strings.Contains(out, "signed chain") {
		t.Errorf("unrenderable signed entry: err %v\n%s", err, out)
	}
}

// syncBuffer is a bytes.Buffer safe for the process's writes and the
// test's reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
