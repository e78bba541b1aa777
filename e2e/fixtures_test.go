package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pumi-lab/pumi/internal/testvm"
)

// fixturePrograms are what the scripts in fixtures/ run (besides bash and
// coreutils); CI installs them (see .ci/run).
var fixturePrograms = []string{
	"mmdebstrap", "mksquashfs", "zip", // build-live.sh
	"apt-get", "dpkg", "ssh-keygen", "openssl", "strings", "cpio", "sfdisk", "mkfs.ext4", "mkfs.vfat", "mmd", "mcopy",
	"grub-mkstandalone", "/bin/busybox", "/usr/bin/sudo", // mklab.sh (sudo is copied into the lab disks)
	"ocs-sr", "cnvt-ocs-dev", "losetup", "partx", // mkimage.sh
}

// labFiles are the lab's fixtures, built by the scripts in fixtures/ from
// Debian packages and cached under testvm.CacheDir()/lab by the hash of the
// scripts that made them.
type labFiles struct {
	LiveZip string // an official-zip-shaped Clonezilla live (build-live.sh)
	Disks   string // disk-A.img, disk-B.img, disk-C.img, keys/ (mklab.sh)
	Images  string // holds LAB-A-img, made by ocs-sr savedisk of disk A (mkimage.sh)
}

func buildFixtures(t *testing.T) labFiles {
	t.Helper()
	root := filepath.Join(testvm.CacheDir(), "lab")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	// One builder at a time on the machine; the others wait and reuse.
	lf, err := os.OpenFile(filepath.Join(root, "build.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}

	liveKey := hashFiles(t, "fixtures/build-live.sh")
	live := stage(t, root, "live", liveKey, "fixtures/build-live.sh")
	disksKey := hashFiles(t, "fixtures/mklab.sh")
	disks := stage(t, root, "disks", disksKey, "fixtures/mklab.sh")
	// The image depends on disk A, so its key includes the disks' key.
	images := stage(t, root, "image", hashFiles(t, "fixtures/mkimage.sh")+disksKey, "fixtures/mkimage.sh", disks)

	zips, _ := filepath.Glob(filepath.Join(live, "clonezilla-live-*.zip"))
	if len(zips) != 1 {
		t.Fatalf("%s holds %d Clonezilla live zips, want 1", live, len(zips))
	}
	return labFiles{LiveZip: zips[0], Disks: disks, Images: images}
}

// stage returns root/<name>-<key>, running script (with extra arguments,
// then the output folder) to make it when it is not there yet. A folder is
// complete only once renamed from its .tmp name, so an interrupted build is
// redone, and folders of older keys are removed.
func stage(t *testing.T, root, name, key, script string, args ...string) string {
	t.Helper()
	dir := filepath.Join(root, name+"-"+key[:16])
	if _, err := os.Stat(dir); err == nil {
		t.Logf("fixture %s: cached in %s", name, dir)
		return dir
	}
	old, _ := filepath.Glob(filepath.Join(root, name+"-*"))
	for _, o := range old {
		os.RemoveAll(o)
	}
	tmp := dir + ".tmp"
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(root, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	start := time.Now()
	cmd := exec.Command("bash", append(append([]string{script}, args...), tmp)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Run(); err != nil {
		out, _ := os.ReadFile(logPath)
		t.Fatalf("fixture %s: %s failed: %v\n%s", name, script, err, tail(string(out), 40))
	}
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatal(err)
	}
	out, _ := os.ReadFile(logPath)
	t.Logf("fixture %s: built in %s (%s):\n%s", name, time.Since(start).Round(time.Second), dir, tail(string(out), 12))
	return dir
}

func hashFiles(t *testing.T, paths ...string) string {
	t.Helper()
	h := sha256.New()
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(h, "%s %d\n", p, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
