package testvm

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// MarkerDisk is printed by the GRUB on LocalDisk's ESP: seeing it proves the
// firmware fell through to (or booted) the local disk.
const MarkerDisk = "PUMI-LOCAL-DISK-BOOT"

const diskGrubCfg = `serial --unit=0 --speed=115200
terminal_output serial console
terminal_input serial console
echo "` + MarkerDisk + ` grub on the local disk's ESP was started by the firmware"
sleep 1
halt
`

// LocalDisk returns a raw 64 MiB GPT disk image with one EFI System Partition
// whose \EFI\BOOT\BOOTX64.EFI is a standalone GRUB that prints MarkerDisk on
// the serial port and powers the VM off. Attach it read-only (Config.Disk
// uses snapshot=on). Built without root or loop devices (sfdisk,
// mkfs.vfat --offset, mtools) and cached under CacheDir()/disk keyed by the
// GRUB version and configuration.
func LocalDisk(t testing.TB) string {
	t.Helper()
	ver, err := exec.Command("dpkg-query", "-W", "-f=${Version}", "grub-efi-amd64-bin").Output()
	if err != nil {
		t.Fatalf("grub-efi-amd64-bin version: %v (install grub-efi-amd64-bin)", err)
	}
	sum := sha256.Sum256([]byte(string(ver) + "\x00" + diskGrubCfg))
	img := filepath.Join(CacheDir(), "disk", "local-"+hex.EncodeToString(sum[:8])+".img")
	unlock := lockCache(t, "disk")
	defer unlock()
	if _, err := os.Stat(img); err == nil {
		return img
	}
	if err := buildDisk(t, img); err != nil {
		t.Fatal(err)
	}
	return img
}

func buildDisk(t testing.TB, img string) error {
	w := t.TempDir()
	cfg := filepath.Join(w, "grub.cfg")
	if err := os.WriteFile(cfg, []byte(diskGrubCfg), 0o644); err != nil {
		return err
	}
	efi := filepath.Join(w, "BOOTX64.EFI")
	tmp := filepath.Join(w, "disk.img")
	const espStart, espSectors = 2048, 120832 // 1 MiB offset, 59 MiB ESP
	steps := [][]string{
		{"grub-mkstandalone", "-O", "x86_64-efi", "--locales=", "--fonts=", "--themes=",
			"--modules=part_gpt fat serial terminal echo sleep halt", "-o", efi, "boot/grub/grub.cfg=" + cfg},
		{"truncate", "-s", "64M", tmp},
		{"sfdisk", "-q", tmp},
		{"mkfs.vfat", "-F", "32", "-n", "ESP", "--offset", fmt.Sprint(espStart), tmp, fmt.Sprint(espSectors / 2)},
		{"mmd", "-i", tmp + "@@1M", "::/EFI", "::/EFI/BOOT"},
		{"mcopy", "-i", tmp + "@@1M", efi, "::/EFI/BOOT/BOOTX64.EFI"},
	}
	for _, s := range steps {
		c := exec.Command(s[0], s[1:]...)
		if s[0] == "sfdisk" {
			c.Stdin = strings.NewReader(fmt.Sprintf("label: gpt\nstart=%d, size=%d, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"ESP\"\n", espStart, espSectors))
		}
		// mtools refuses to run on an image whose geometry it dislikes
		// unless told not to check.
		c.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
		if out, err := c.CombinedOutput(); err != nil {
			return fmt.Errorf("building the local disk: %s: %w\n%s", strings.Join(s, " "), err, out)
		}
	}
	if err := os.MkdirAll(filepath.Dir(img), 0o755); err != nil {
		return err
	}
	// Copy then rename within the cache, so a reader never sees half a disk.
	b, err := os.ReadFile(tmp)
	if err != nil {
		return err
	}
	part := img + ".part"
	if err := os.WriteFile(part, b, 0o644); err != nil {
		return err
	}
	return os.Rename(part, img)
}
