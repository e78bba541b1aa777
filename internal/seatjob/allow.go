package seatjob

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/pumi-lab/pumi/internal/clonezilla"
)

// CaptureArea is the folder of the repository where captures are written, one
// folder per job: a dot folder, which no restore can name and the Images page
// does not list, so a capture never writes over a published image.
const CaptureArea = ".pumi-capture"

// AllowClient implements nfsexport.Allow: /images (read-only) for the address
// on record of a seat with an active restore, /capture for one with an active
// capture. Asked on every MOUNT and NFS call, so it reads the in-memory index
// that every job change rebuilds, never the state file.
func (j *Jobs) AllowClient(ip netip.Addr, export string, write bool) bool {
	job, ok := j.byAddr(ip)
	if !ok || !job.wantsNFS(j.cfg.Now()) {
		return false
	}
	switch {
	case export == ExportImages && job.Action == Restore && !write:
		return true
	case export == ExportCapture && job.Action == Capture:
		return true
	}
	return false
}

// AllowConnect reports whether ip may open a connection at all (NFS, 6461):
// only the address of a seat with an active job may.
func (j *Jobs) AllowConnect(ip netip.Addr) bool {
	job, ok := j.byAddr(ip)
	return ok && job.wantsNFS(j.cfg.Now())
}

// CaptureDir implements nfsexport.Export.DirFor for /capture: the capture
// folder of the job of the seat at ip (created on first use), so a capture
// writes only there.
func (j *Jobs) CaptureDir(ip netip.Addr) (string, bool) {
	job, ok := j.byAddr(ip)
	if !ok || job.Action != Capture || !job.wantsNFS(j.cfg.Now()) {
		return "", false
	}
	j.mu.RLock()
	repo := j.repo
	j.mu.RUnlock()
	if repo == "" {
		return "", false
	}
	dir := captureDir(repo, job.Key)
	// ocs-sr saves a nested image with -or <parent>: the parent must exist.
	if err := os.MkdirAll(filepath.Join(dir, filepath.FromSlash(path.Dir(job.Image))), 0o755); err != nil {
		j.log.Error("capture folder", "dir", dir, "err", err)
		return "", false
	}
	return dir, true
}

// captureDir is the job's folder in the capture area: its key with anything
// but letters, digits, '-' and '_' replaced.
func captureDir(repo, key string) string {
	name := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '_'
	}, key)
	return filepath.Join(repo, CaptureArea, name)
}

// publish makes a finished capture a published image: the folder is checked
// like the Images page does, synced, and renamed from the capture area to its
// place in the repository, never over an existing image. On any problem the
// capture stays in the capture area and the reason says where.
func (j *Jobs) publish(ctx context.Context, job Job) error {
	j.mu.RLock()
	repo := j.repo
	j.mu.RUnlock()
	if repo == "" {
		return errors.New("no image repository configured")
	}
	area := captureDir(repo, job.Key)
	img, err := clonezilla.Inspect(ctx, area, job.Image)
	if err != nil {
		return fmt.Errorf("the captured image cannot be read (kept in %s): %w", area, err)
	}
	if !img.Valid {
		return fmt.Errorf("the captured image is not restorable (kept in %s): %s", area, strings.Join(img.Problems, "; "))
	}
	src, dst := filepath.Join(area, filepath.FromSlash(job.Image)), filepath.Join(repo, filepath.FromSlash(job.Image))
	if err := syncTree(src); err != nil {
		return fmt.Errorf("syncing the captured image: %w", err)
	}
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("an image %s already exists; the capture is kept in %s", job.Image, area)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if err := os.Rename(src, dst); err != nil {
		return fmt.Errorf("publishing the capture (kept in %s): %w", area, err)
	}
	return syncDir(filepath.Dir(dst))
}

// syncTree fsyncs every regular file below dir and dir itself.
func syncTree(dir string) error {
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		return f.Sync()
	})
	if err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
