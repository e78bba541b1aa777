package netboot_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/netboot"
	"github.com/pumi-lab/pumi/internal/testnet"
	"github.com/pumi-lab/pumi/internal/testvm"
)

// TestE2EQEMUSeaBIOS network-boots a legacy BIOS PC: QEMU's default
// firmware (SeaBIOS) with the NIC's own option ROM (QEMU's iPXE build, the
// legacy PXE ROM such a PC has). One PC boots pumi's Linux kernel to its
// marker; another is told to boot locally, and its ROM hands control back to
// SeaBIOS, which boots the MBR of its disk. About 1 minute under TCG; -short
// skips it.
func TestE2EQEMUSeaBIOS(t *testing.T) {
	if testing.Short() {
		t.Skip("QEMU boots take a minute; run without -short")
	}
	testnet.Require(t, testvm.Programs()...)
	fx := buildFixtures(t)
	e := newEnv(t, fx, "10.99.4.1/24")
	e.startPumi(t, netboot.Config{
		Interface: "br0", Mode: netboot.ModeFull, ServerIP: netip.MustParseAddr("10.99.4.1"), HTTPBase: e.base,
		RangeStart: netip.MustParseAddr("10.99.4.100"), RangeEnd: netip.MustParseAddr("10.99.4.199"),
		Netmask: netip.MustParsePrefix("10.99.4.0/24"), LeaseTime: time.Hour,
	})
	disk := testvm.LocalBIOSDisk(t)

	// assertBIOSROM: the DHCP side saw the PC as iPXE on a BIOS (arch 0)
	// machine, i.e. the legacy ROM, not UEFI firmware.
	assertBIOSROM := func(t *testing.T, mac string) {
		t.Helper()
		var bios bool
		for _, ev := range e.adm.of(mac) {
			if ev.Info.Arch == 7 || ev.Info.Arch == 9 {
				t.Errorf("DHCP saw UEFI firmware from %s: %+v", mac, ev.Info)
			}
			bios = bios || (ev.Info.Arch == 0 && ev.Info.Firmware == "ipxe")
		}
		if !bios {
			t.Errorf("DHCP never saw a BIOS (arch 0) iPXE ROM request from %s: %+v", mac, e.adm.of(mac))
		}
	}

	t.Run("linux", func(t *testing.T) {
		mark := e.log.len()
		vm := testvm.Start(t, t.Context(), testvm.Config{Name: "bios-linux", NS: e.ns, Tap: e.tap, MAC: e.macs.linux, BIOS: true, Timeout: vmTimeout})
		if _, err := vm.WaitFor(t.Context(), testvm.MarkerCallbackOK); err != nil {
			t.Fatal(err)
		}
		t.Logf("FIGURE seabios: kernel marker %.1fs after QEMU started", vm.Elapsed().Seconds())
		if err := vm.Wait(t.Context()); err != nil {
			t.Errorf("QEMU did not exit by itself after the marker: %v", err)
		}
		serial := vm.Serial()
		if !strings.Contains(serial, testvm.MarkerUp+" token="+e.token+" addr=10.99.4.") {
			t.Errorf("guest did not print its token with an address in 10.99.4.0/24")
		}
		select {
		case cb := <-e.callback:
			if cb.token != e.token {
				t.Errorf("callback token %q, want %q", cb.token, e.token)
			}
		default:
			t.Error("guest printed the callback marker but the server got no callback")
		}
		assertBIOSROM(t, e.macs.linux)
		recs := e.log.since(mark)
		if len(find(recs, "boot script served", "mac", e.macs.linux, "action", "linux")) == 0 {
			t.Errorf("no boot script with action linux served to %s", e.macs.linux)
		}
	})
	t.Run("exit-local", func(t *testing.T) {
		mark := e.log.len()
		vm := testvm.Start(t, t.Context(), testvm.Config{Name: "bios-local", NS: e.ns, Tap: e.tap, MAC: e.macs.local, BIOS: true, Disk: disk, Timeout: vmTimeout})
		if _, err := vm.WaitFor(t.Context(), testvm.MarkerDisk); err != nil {
			t.Fatal(err)
		}
		t.Logf("FIGURE seabios: local disk marker %.1fs after QEMU started", vm.Elapsed().Seconds())
		// Read before stopping: the exit script was served before the disk
		// booted. (The ROM's own console is the VGA text screen, which this
		// VM does not have, so its "pumi: ..." line is not on the serial.)
		recs := e.log.since(mark)
		vm.Stop() // the boot sector halts; it cannot power off
		assertBIOSROM(t, e.macs.local)
		if len(find(recs, "boot script served", "mac", e.macs.local, "action", "exit")) == 0 {
			t.Errorf("no exit script served for %s before its disk booted", e.macs.local)
		}
		if len(find(recs, "boot file requested")) != 0 {
			t.Errorf("a local-disk boot fetched boot files: %v", find(recs, "boot file requested"))
		}
	})
}
