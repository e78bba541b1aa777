package testvm

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/pumi-lab/pumi/assets"
)

// OVMF with Secure Boot (Debian's ovmf package): the SMM build that
// enforces Secure Boot, and a variable store with Microsoft's keys (KEK, db
// with "Microsoft Corporation UEFI CA 2011") and Secure Boot switched on.
// Set Config.SecureBoot to use them; every VM gets a fresh copy of the
// variables.
const (
	OVMFCodeSecureBoot = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
	OVMFVarsMS         = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
)

// SecureBootPrograms are what Config.SecureBoot and SignedLocalDisk need on
// top of Programs.
func SecureBootPrograms() []string {
	return []string{OVMFCodeSecureBoot, OVMFVarsMS, "apt-cache"}
}

// Serial-console markers of Secure Boot tests.
const (
	// MarkerSignedDisk is printed by the Debian-signed GRUB on
	// SignedLocalDisk's ESP, which the Microsoft-signed shim there loaded:
	// seeing it proves a fully signed local boot.
	MarkerSignedDisk = "PUMI-SIGNED-LOCAL-DISK-BOOT"
	// MarkerSecureBoot starts the line SecureBootReport prints:
	// "PUMI-SB-STATE efivar=<0|1> lockdown=<...> dmesg=<count>".
	MarkerSecureBoot = "PUMI-SB-STATE"
	// MarkerCmdline starts the line with /proc/cmdline.
	MarkerCmdline = "PUMI-SB-CMDLINE"
)

// SecureBootReport is a script for InitrdOptions.Files["/etc/pumi-test.sh"]:
// it prints what the running kernel says about Secure Boot — the
// SecureBoot EFI variable (1 = enforced; its 5th byte, after 4 attribute
// bytes), the lockdown mode (Debian's kernel locks down under Secure Boot)
// and how often dmesg says "Secure boot enabled" — and /proc/cmdline.
const SecureBootReport = `grep -q efivarfs /proc/filesystems || echo "pumi-init: no efivarfs in this kernel"
mount -t efivarfs efivarfs /sys/firmware/efi/efivars || echo "pumi-init: cannot mount efivarfs"
mount -t securityfs securityfs /sys/kernel/security || echo "pumi-init: cannot mount securityfs"
SBVAR=$(od -An -tu1 /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c | awk '{print $5}')
echo "PUMI-SB-STATE efivar=${SBVAR:-none} lockdown=$(cat /sys/kernel/security/lockdown 2>/dev/null | tr ' ' ,) dmesg=$(dmesg | grep -c 'Secure boot enabled')"
echo "PUMI-SB-CMDLINE $(cat /proc/cmdline)"
`

// DebianPackage returns the directory a Debian package (the candidate
// version of apt's lists) is unpacked into with dpkg -x (never installed),
// cached as <cache>/deb/<package>_<version>.
func DebianPackage(t testing.TB, pkg string) (dir, version string) {
	t.Helper()
	out, err := exec.Command("apt-cache", "show", "--no-all-versions", pkg).Output()
	if err != nil {
		t.Fatalf("apt-cache show %s: %v (run apt-get update)", pkg, err)
	}
	m := regexp.MustCompile(`(?m)^Version: (\S+)$`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("apt-cache show %s: no Version field", pkg)
	}
	version = string(m[1])
	dir = filepath.Join(CacheDir(), "deb", pkg+"_"+version)
	unlock := lockCache(t, "deb")
	defer unlock()
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err != nil {
		if err := fetchKernel(t, pkg, version, dir); err != nil { // any package unpacks the same way
			t.Fatal(err)
		}
	}
	return dir, version
}

// signedDiskGrubCfg is read by the signed disk GRUB (prefix /EFI/debian).
const signedDiskGrubCfg = `echo "` + MarkerSignedDisk + ` shim and Debian-signed GRUB on the local disk's ESP were started"
sleep 1
halt
`

// SignedLocalDisk returns a raw 64 MiB GPT disk whose ESP boots like an
// installed Debian under Secure Boot: \EFI\BOOT\BOOTX64.EFI is the
// Microsoft-signed shim (the one pumi embeds), \EFI\BOOT\grubx64.efi is
// Debian's signed disk GRUB (grub-efi-amd64-signed, fetched from the
// archive), and its \EFI\debian\grub.cfg prints MarkerSignedDisk and powers
// off. Attach it with Config.Disk; cached under CacheDir()/disk.
func SignedLocalDisk(t testing.TB) string {
	t.Helper()
	grubDir, grubVer := DebianPackage(t, "grub-efi-amd64-signed")
	grub := filepath.Join(grubDir, "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed")
	shim, err := fs.ReadFile(assets.SecureBoot(), assets.SecureBootShim)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00", grubVer, signedDiskGrubCfg)
	h.Write(shim)
	img := filepath.Join(CacheDir(), "disk", "signed-"+hex.EncodeToString(h.Sum(nil)[:8])+".img")
	unlock := lockCache(t, "disk")
	defer unlock()
	if _, err := os.Stat(img); err == nil {
		return img
	}
	w := t.TempDir()
	cfg := filepath.Join(w, "grub.cfg")
	shimPath := filepath.Join(w, "BOOTX64.EFI")
	if err := os.WriteFile(cfg, []byte(signedDiskGrubCfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(shimPath, shim, 0o644); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(w, "disk.img")
	const espStart, espSectors = 2048, 120832 // 1 MiB offset, 59 MiB ESP
	steps := [][]string{
		{"truncate", "-s", "64M", tmp},
		{"sfdisk", "-q", tmp},
		{"mkfs.vfat", "-F", "32", "-n", "ESP", "--offset", fmt.Sprint(espStart), tmp, fmt.Sprint(espSectors / 2)},
		{"mmd", "-i", tmp + "@@1M", "::/EFI", "::/EFI/BOOT", "::/EFI/debian"},
		{"mcopy", "-i", tmp + "@@1M", shimPath, "::/EFI/BOOT/BOOTX64.EFI"},
		{"mcopy", "-i", tmp + "@@1M", grub, "::/EFI/BOOT/grubx64.efi"},
		{"mcopy", "-i", tmp + "@@1M", cfg, "::/EFI/debian/grub.cfg"},
	}
	for _, s := range steps {
		c := exec.Command(s[0], s[1:]...)
		if s[0] == "sfdisk" {
			c.Stdin = strings.NewReader(fmt.Sprintf("label: gpt\nstart=%d, size=%d, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"ESP\"\n", espStart, espSectors))
		}
		c.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("building the signed local disk: %s: %v\n%s", strings.Join(s, " "), err, out)
		}
	}
	if err := os.MkdirAll(filepath.Dir(img), 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img+".part", b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(img+".part", img); err != nil {
		t.Fatal(err)
	}
	return img
}

// firmwareArgs are the QEMU arguments for OVMF with vars (a per-VM copy),
// with or without Secure Boot. Secure Boot needs the SMM build, which needs
// q35 with SMM and the flash in secure mode (so only SMM code can write the
// variable store, and the OS cannot switch Secure Boot off).
func firmwareArgs(secureBoot bool, vars string) []string {
	code := OVMFCode
	if secureBoot {
		code = OVMFCodeSecureBoot
	}
	args := []string{
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + code,
		"-drive", "if=pflash,format=raw,unit=1,file=" + vars,
	}
	if secureBoot {
		args = append(args, "-global", "driver=cfi.pflash01,property=secure,value=on")
	}
	return args
}
