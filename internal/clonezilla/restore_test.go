package clonezilla

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/testnet"
)

// TestRestoreFixtureWithOCSSR restores the committed room-b/LAB-B-img with
// Debian's real ocs-sr onto a loop device, running the exact ocs_live_run
// that RestoreArgs renders, with three test-only changes: the repository
// copy at /mnt instead of the NFS mount point, the loop device instead of sda, and
// "-p true -iefi" instead of "-p reboot" (this is the host, not a seat: it
// must not reboot, and must not touch the host's UEFI boot entries). The
// restored ext4 must then hold Signature "LAB-B". This proves both that the
// fixture is a real, restorable Clonezilla image and that the rendered
// command (including -or for a nested image) is one ocs-sr accepts.
func TestRestoreFixtureWithOCSSR(t *testing.T) {
	testnet.Require(t, "ocs-sr", "losetup", "partx", "unshare", "debugfs", "truncate")
	repo := copyTree(t, "testdata/repo")

	c := baseCommon()
	c.ImagePath = "room-b/LAB-B-img"
	c.Disk = "sda"
	line, err := RestoreArgs(RestoreParams{c})
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`ocs_live_run="([^"]*)"`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no ocs_live_run in %s", line)
	}
	run := m[1]

	disk := filepath.Join(t.TempDir(), "target.img")
	if out, err := exec.Command("truncate", "-s", "24M", disk).CombinedOutput(); err != nil {
		t.Fatalf("truncate: %v %s", err, out)
	}
	out, err := exec.Command("losetup", "--show", "-f", disk).Output()
	if err != nil {
		t.Skipf("no loop device available here: %v", err)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		exec.Command("partx", "-d", loop).Run()
		exec.Command("losetup", "-d", loop).Run()
	})

	for _, r := range []struct{ from, to string }{
		{"-or /home/partimag/", "-or /mnt/"},
		{" -p reboot ", " -p true -iefi "},
		{" LAB-B-img sda", " LAB-B-img " + strings.TrimPrefix(loop, "/dev/")},
	} {
		if strings.Count(run, r.from) != 1 {
			t.Fatalf("ocs_live_run %q does not contain %q exactly once", run, r.from)
		}
		run = strings.Replace(run, r.from, r.to, 1)
	}
	if strings.Contains(run, "reboot") || strings.Contains(run, "poweroff") {
		t.Fatalf("refusing to run %q on the host", run)
	}

	// Private mounts: the repository copy appears at /mnt, and ocs-sr's
	// logs, state and /tmp files go to tmpfs, not the host.
	script := `set -e
mount --bind "$1" /mnt
mount -t tmpfs pumi-test /tmp
mount -t tmpfs pumi-test /var/log
mkdir -p /var/lib/clonezilla
mount -t tmpfs pumi-test /var/lib/clonezilla
` + run
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "-m", "--propagation", "private", "bash", "-c", script, "restore", repo)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TERM=dumb")
	cmd.Stdin = nil
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("ocs-sr: %v\n%s", err, buf.String())
	}
	t.Logf("ocs-sr restoredisk took %v", time.Since(start).Round(time.Second))
	if !strings.Contains(buf.String(), "Partclone successfully restored the image") {
		t.Errorf("ocs-sr did not report a partclone restore:\n%s", buf.String())
	}

	exec.Command("partx", "-a", loop).Run()
	sig, err := exec.Command("debugfs", "-R", "cat /home/user/Desktop/Signature", loop+"p1").Output()
	if err != nil {
		t.Fatalf("read Signature from restored disk: %v", err)
	}
	if strings.TrimSpace(string(sig)) != "LAB-B" {
		t.Errorf("restored Signature %q, want LAB-B", sig)
	}
}
