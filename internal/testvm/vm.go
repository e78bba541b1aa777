package testvm

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pumi-lab/pumi/internal/testnet"
)

// OVMF firmware from Debian's ovmf package (4 MiB build, no Secure Boot).
const (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// Config describes one VM. With Kernel empty it boots UEFI (OVMF) with the
// NIC first in the boot order (network boot through the firmware's own PXE,
// as a lab PC does) and Disk second; with Kernel set it boots that kernel
// directly (QEMU -kernel/-initrd/-append, no firmware involved).
type Config struct {
	Name string      // shown in logs; default "vm"
	NS   *testnet.NS // namespace QEMU runs in (its tap lives there); nil: no network
	Tap  string      // tap device in NS (testnet.NS.Tap); required with NS
	MAC  string      // NIC MAC; default a random locally administered 52:54:00:xx:xx:xx
	NIC  string      // QEMU NIC model; default virtio-net-pci

	Kernel string // direct boot: bzImage path
	Initrd string // direct boot: initrd path
	Append string // direct boot: command line; KernelArgs are added in front when it has no console=

	Disk      string        // raw disk image attached with snapshot=on (never modified), boot index 2
	Timeout   time.Duration // QEMU is killed this long after it starts; default 5 min
	MemoryMiB int           // default 512
	Extra     []string      // extra QEMU arguments

	// OwnDisk is a lab PC's own disk: a raw image attached read-write as
	// NVMe (serial PUMI-LAB, so Clonezilla sees nvme0n1), boot index 2.
	// Writes reach the file, so a restore survives power cycles. Use
	// either Disk or OwnDisk.
	OwnDisk string
	// Reboot lets the guest reboot inside the same QEMU process, as a PC
	// does; by default a reboot (or a panic) ends QEMU (-no-reboot).
	Reboot bool
	// SlotHeld says the caller holds Slot for a group of VMs it runs
	// together (the lab scenario); Start then does not wait for it.
	SlotHeld bool
	// SecureBoot boots OVMF with Secure Boot enforced (OVMFCodeSecureBoot,
	// Microsoft's keys from OVMFVarsMS, q35 with SMM): unsigned boot
	// programs such as iPXE are refused. Firmware boot only (Kernel empty).
	SecureBoot bool
	// OVMFVars, if set, is the variable store each VM starts from (a copy)
	// instead of OVMFVars / OVMFVarsMS, e.g. one with other keys enrolled.
	OVMFVars string
	// BIOS boots QEMU's default firmware, SeaBIOS, instead of OVMF, and
	// keeps the NIC's own option ROM (QEMU's iPXE build), which is the
	// legacy PXE ROM SeaBIOS network-boots with. Use LocalBIOSDisk as Disk.
	BIOS bool
}

// KernelArgs belong on every test guest's command line: the serial console
// the markers are read from; no_timer_check, because on a loaded host TCG
// is slow enough for the kernel's IO-APIC timer check to fail and panic
// ("IO-APIC + timer doesn't work!", seen here at load average 17); and
// panic=1, so a panic reboots, which -no-reboot turns into QEMU exiting,
// and the test fails at once instead of at its timeout.
const KernelArgs = "console=ttyS0,115200 no_timer_check panic=1"

// RandomMAC returns a MAC in QEMU's 52:54:00 prefix with random low bytes.
func RandomMAC() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", b[0], b[1], b[2])
}

// VM is a running QEMU process whose serial console is captured.
type VM struct {
	Config
	t       testing.TB
	cmd     *exec.Cmd
	start   time.Time
	stderr  bytes.Buffer
	release func()
	cancel  context.CancelFunc
	logFile *os.File // timed console copy, to watch a running VM with tail -f

	mu      sync.Mutex
	serial  []byte // cleaned serial output
	timed   []byte // the same, each line prefixed with its arrival time
	atBOL   bool   // timed is at the beginning of a line
	changed chan struct{}
	exited  chan struct{}
	exitErr error
}

// Start starts QEMU (always -accel tcg: /dev/kvm on these machines is a PVM
// hypervisor that cannot run OVMF, and TCG is fast enough) and returns at
// once. Only one VM runs at a time on the whole machine (an flock under
// CacheDir()), because CPU is shared; Start waits for that slot as long as
// ctx allows (the time spent waiting does not count against Timeout).
// The VM is killed Timeout after QEMU started, when ctx ends, or when the
// test ends; if the test failed, the
// last serial lines (with arrival times) and QEMU's stderr are logged; with
// PUMI_TEST_SERIAL=1 the whole timed console is logged in any case.
func Start(t testing.TB, ctx context.Context, c Config) *VM {
	t.Helper()
	if c.Name == "" {
		c.Name = "vm"
	}
	if c.MAC == "" {
		c.MAC = RandomMAC()
	}
	if _, err := net.ParseMAC(c.MAC); err != nil {
		t.Fatalf("testvm: MAC %q: %v", c.MAC, err)
	}
	if c.NIC == "" {
		c.NIC = "virtio-net-pci"
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = 512
	}
	if (c.NS == nil) != (c.Tap == "") {
		t.Fatalf("testvm: NS and Tap go together (got NS %v, Tap %q)", c.NS != nil, c.Tap)
	}
	dir := t.TempDir()
	machine := "q35"
	if c.SecureBoot {
		machine = "q35,smm=on"
	}
	args := []string{"-name", c.Name, "-accel", "tcg", "-machine", machine, "-smp", "1", "-m", fmt.Sprint(c.MemoryMiB),
		"-display", "none", "-vga", "none", "-monitor", "none", "-serial", "stdio"}
	if !c.Reboot {
		args = append(args, "-no-reboot")
	}
	if c.Disk != "" && c.OwnDisk != "" {
		t.Fatalf("testvm: Disk and OwnDisk are exclusive")
	}
	if c.SecureBoot && c.Kernel != "" {
		t.Fatalf("testvm: SecureBoot needs the firmware boot (Kernel empty)")
	}
	if c.SecureBoot && c.BIOS {
		t.Fatalf("testvm: SecureBoot is OVMF's, not SeaBIOS's")
	}
	if c.Kernel == "" && c.BIOS {
		// SeaBIOS needs no arguments: it is QEMU's default. The boot
		// order comes from the devices' bootindex below.
	} else if c.Kernel == "" {
		vars := filepath.Join(dir, "OVMF_VARS.fd")
		varsFrom := OVMFVars
		if c.SecureBoot {
			varsFrom = OVMFVarsMS
		}
		if c.OVMFVars != "" {
			varsFrom = c.OVMFVars
		}
		b, err := os.ReadFile(varsFrom)
		if err != nil {
			t.Fatalf("testvm: %v (install ovmf)", err)
		}
		// A fresh NVRAM per VM: OVMF writes boot entries into it, and a
		// stale BootOrder from an earlier run would change what boots.
		if err := os.WriteFile(vars, b, 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, firmwareArgs(c.SecureBoot, vars)...)
		args = append(args,
			// Without this OVMF tries PXEv6 and HTTPv6 first (about 130 s
			// of timeouts) before the disk.
			"-fw_cfg", "name=opt/org.tianocore/IPv6Support,string=no")
	} else {
		app := c.Append
		if !strings.Contains(app, "console=") {
			app = strings.TrimSpace(KernelArgs + " " + app)
		}
		args = append(args, "-kernel", c.Kernel, "-append", app)
		if c.Initrd != "" {
			args = append(args, "-initrd", c.Initrd)
		}
	}
	if c.NS != nil {
		// romfile= drops QEMU's own iPXE option ROM, so the firmware's
		// network stack does the PXE boot, as on a real PC.
		rom := ",romfile="
		if c.BIOS {
			rom = "" // SeaBIOS has no network stack of its own: the ROM is its PXE
		}
		args = append(args, "-netdev", "tap,id=n0,ifname="+c.Tap+",script=no,downscript=no",
			"-device", c.NIC+",netdev=n0,mac="+c.MAC+rom+",bootindex=1")
	} else {
		args = append(args, "-nic", "none")
	}
	if c.Disk != "" {
		args = append(args, "-drive", "if=none,id=d0,format=raw,snapshot=on,file="+c.Disk,
			"-device", "virtio-blk-pci,drive=d0,bootindex=2")
	}
	if c.OwnDisk != "" {
		// cache=unsafe: the file is scratch for the test, and a power cut is
		// QEMU being killed, after which the host still has every write.
		args = append(args, "-drive", "if=none,id=d0,format=raw,cache=unsafe,file="+c.OwnDisk,
			"-device", "nvme,drive=d0,serial=PUMI-LAB,bootindex=2")
	}
	args = append(args, c.Extra...)

	if c.Timeout == 0 {
		c.Timeout = 5 * time.Minute
	}
	var err error
	release := func() {}
	if !c.SlotHeld {
		waited := time.Now()
		if release, err = Slot(ctx); err != nil {
			t.Fatalf("testvm: waiting for the VM slot: %v", err)
		}
		if d := time.Since(waited); d > time.Second {
			t.Logf("testvm %s: waited %.1fs for another VM on this machine to finish", c.Name, d.Seconds())
		}
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	v := &VM{Config: c, t: t, release: release, changed: make(chan struct{}), exited: make(chan struct{}), atBOL: true}
	if c.NS != nil {
		v.cmd = c.NS.Command(ctx, "qemu-system-x86_64", args...)
	} else {
		v.cmd = exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	}
	v.cancel = cancel
	if v.logFile, err = os.Create(filepath.Join(dir, c.Name+".serial.log")); err != nil {
		release()
		cancel()
		t.Fatal(err)
	}
	v.cmd.Stderr = &v.stderr
	v.cmd.WaitDelay = 5 * time.Second
	out, err := v.cmd.StdoutPipe()
	if err != nil {
		release()
		cancel()
		t.Fatal(err)
	}
	v.start = time.Now()
	if err := v.cmd.Start(); err != nil {
		release()
		cancel()
		t.Fatalf("testvm: starting QEMU: %v", err)
	}
	t.Logf("testvm %s: started QEMU pid %d mac %s, console in %s: qemu-system-x86_64 %s", c.Name, v.cmd.Process.Pid, c.MAC, v.logFile.Name(), strings.Join(args, " "))
	go v.read(out)
	t.Cleanup(func() {
		v.Stop()
		if os.Getenv("PUMI_TEST_SERIAL") != "" {
			t.Logf("testvm %s: serial console (PUMI_TEST_SERIAL is set):\n%s", c.Name, v.TimedSerial())
		} else if t.Failed() {
			t.Logf("testvm %s: last serial lines:\n%s", c.Name, v.Tail(40))
			if s := strings.TrimSpace(v.stderr.String()); s != "" {
				t.Logf("testvm %s: QEMU stderr:\n%s", c.Name, s)
			}
		}
	})
	return v
}

// Slot takes the machine-wide VM lock (one TCG guest at a time shares the two
// cores sanely), polling so that ctx is honoured; call the returned func to
// release it. Start takes it itself; tests that run QEMU another way (the
// gokrazy image test) take it here.
func Slot(ctx context.Context) (func(), error) {
	if err := os.MkdirAll(CacheDir(), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(CacheDir(), "vm.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			var once sync.Once
			return func() { once.Do(func() { f.Close() }) }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, err
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("another VM is still running on this machine: %w", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// ANSI/VT escape sequences that OVMF and GRUB sprinkle over the console.
var escapes = regexp.MustCompile(`\x1b(\[[0-9;?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>78cDEHM])`)

func (v *VM) read(r io.Reader) {
	buf := make([]byte, 32<<10)
	var pending []byte
	for {
		n, err := r.Read(buf)
		if n > 0 {
			pending = append(pending, buf[:n]...)
			// Clean only up to the last newline so an escape sequence split
			// across reads is never half-removed.
			if i := bytes.LastIndexByte(pending, '\n'); i >= 0 {
				v.appendClean(pending[:i+1])
				pending = append([]byte(nil), pending[i+1:]...)
			}
			if len(pending) > 4096 {
				v.appendClean(pending)
				pending = nil
			}
		}
		if err != nil {
			break
		}
	}
	v.appendClean(pending)
	v.exitErr = v.cmd.Wait()
	v.logFile.Close()
	v.cancel()
	v.release()
	close(v.exited)
	v.mu.Lock()
	close(v.changed)
	v.mu.Unlock()
}

func (v *VM) appendClean(b []byte) {
	if len(b) == 0 {
		return
	}
	b = escapes.ReplaceAll(b, nil)
	b = bytes.ReplaceAll(b, []byte("\r"), nil)
	v.mu.Lock()
	v.serial = append(v.serial, b...)
	stamp := fmt.Sprintf("[%6.1fs] ", time.Since(v.start).Seconds())
	n := len(v.timed)
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if v.atBOL {
			v.timed = append(v.timed, stamp...)
		}
		v.timed = append(v.timed, line...)
		v.atBOL = line[len(line)-1] == '\n'
	}
	_, _ = v.logFile.Write(v.timed[n:])
	close(v.changed)
	v.changed = make(chan struct{})
	v.mu.Unlock()
}

// Serial returns the console output so far, without \r and escape codes.
func (v *VM) Serial() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return string(v.serial)
}

// TimedSerial is Serial with each line prefixed by the time since QEMU
// started ("[ 12.3s] "), to see where a boot spends its time.
func (v *VM) TimedSerial() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return string(v.timed)
}

// Tail returns the last n lines of the timed console output.
func (v *VM) Tail(n int) string {
	lines := strings.Split(strings.TrimRight(v.TimedSerial(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Elapsed is the time since QEMU started.
func (v *VM) Elapsed() time.Duration { return time.Since(v.start) }

// WaitFor waits until marker appears on the console and returns the line
// holding it (from the marker to the end of the line). It fails if QEMU
// exits first or ctx ends.
func (v *VM) WaitFor(ctx context.Context, marker string) (string, error) {
	for {
		// Read exited before the output: once exited is closed the output
		// is complete, so a marker missing then is missing for good.
		exited := false
		select {
		case <-v.exited:
			exited = true
		default:
		}
		v.mu.Lock()
		s := string(v.serial)
		ch := v.changed
		v.mu.Unlock()
		if i := strings.Index(s, marker); i >= 0 {
			line := s[i:]
			j := strings.IndexByte(line, '\n')
			if j < 0 && !exited && ctx.Err() == nil {
				// The line is still being written; wait for its end.
				select {
				case <-ch:
				case <-ctx.Done():
				}
				continue
			}
			if j >= 0 {
				line = line[:j]
			}
			return strings.TrimSpace(line), nil
		}
		if exited {
			why := fmt.Sprint(v.exitErr)
			if v.exitErr != nil && v.Elapsed() >= v.Timeout {
				why += fmt.Sprintf(", killed at its %s timeout", v.Timeout)
			}
			return "", fmt.Errorf("VM %s exited (%s) after %.1fs without printing %q", v.Name, why, v.Elapsed().Seconds(), marker)
		}
		select {
		case <-ch:
		case <-v.exited:
		case <-ctx.Done():
			return "", fmt.Errorf("VM %s: no %q after %.1fs: %w", v.Name, marker, v.Elapsed().Seconds(), ctx.Err())
		}
	}
}

// Wait waits for QEMU to exit by itself (poweroff with -no-reboot) and
// returns its exit error, or ctx's error.
func (v *VM) Wait(ctx context.Context) error {
	select {
	case <-v.exited:
		return v.exitErr
	case <-ctx.Done():
		return fmt.Errorf("VM %s still running after %.1fs: %w", v.Name, v.Elapsed().Seconds(), ctx.Err())
	}
}

// Stop kills QEMU (if still running) and waits for it to go.
func (v *VM) Stop() {
	select {
	case <-v.exited:
		return
	default:
	}
	_ = v.cmd.Process.Kill()
	<-v.exited
}

// Exited reports whether QEMU has ended (the guest powered off, or it was
// stopped or killed).
func (v *VM) Exited() bool {
	select {
	case <-v.exited:
		return true
	default:
		return false
	}
}
