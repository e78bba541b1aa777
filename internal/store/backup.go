package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/pumi-lab/pumi/internal/atomicfile"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// Backup writes a consistent copy of the state to state.db.bak: a snapshot
// copied in a read transaction (writers continue meanwhile) into a temporary
// file, fsynced, checked, and renamed over the previous backup, so a crash at
// any instant leaves the old backup or the new one, never a partial one.
func (s *Store) Backup(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	bak := filepath.Join(s.dir, BackupName)
	f, err := os.CreateTemp(s.dir, "."+BackupName+".tmp*")
	if err != nil {
		return fmt.Errorf("backup %s: %w: check free space in %s", bak, err, s.dir)
	}
	tmp := f.Name()
	f.Close()
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp)
		}
	}()
	if err := s.db.View(func(tx *bolt.Tx) error { return tx.CopyFile(tmp, 0o600) }); err != nil {
		return fmt.Errorf("backup %s: copy: %w: check free space in %s", bak, err, s.dir)
	}
	size, err := syncFile(tmp)
	if err != nil {
		return fmt.Errorf("backup %s: %w", bak, err)
	}
	// A backup nobody has read back is only a hope; the copy is small.
	if err := verifyFile(tmp, size, 1<<30); err != nil {
		return fmt.Errorf("backup %s: the fresh copy does not verify, keeping the previous backup: %w", bak, err)
	}
	if err := os.Rename(tmp, bak); err != nil {
		return fmt.Errorf("backup %s: %w", bak, err)
	}
	ok = true
	if err := atomicfile.SyncDir(s.dir); err != nil {
		return fmt.Errorf("backup %s: %w", bak, err)
	}
	s.log.Debug("state backup written", "path", bak, "bytes", size)
	return nil
}

// BackupEvery takes a backup every interval until ctx ends. A failed backup
// is logged and retried at the next tick: it must not stop the appliance.
func (s *Store) BackupEvery(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			if err := s.Backup(ctx); err != nil && ctx.Err() == nil {
				s.log.Error("periodic state backup failed", "err", err)
			}
		}
	}
}

func syncFile(path string) (int64, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("fsync %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// RestoreBackup replaces dir/state.db by the backup dir/state.db.bak after
// checking the backup. The current file, if any, is kept beside it as
// state.db.damaged-<time> rather than deleted. It refuses while another
// process holds the state file. It returns the name the old file was moved
// to ("" if there was none).
func RestoreBackup(ctx context.Context, dir string, log *slog.Logger) (string, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, FileName)
	bak := filepath.Join(dir, BackupName)
	fi, err := os.Stat(bak)
	if err != nil {
		return "", fmt.Errorf("restore: no usable backup %s (%w): move %s aside to start with an empty state", bak, err, path)
	}
	if err := verifyFile(bak, fi.Size(), len(migrations())); err != nil {
		return "", fmt.Errorf("restore: the backup %s does not verify either: %w", bak, err)
	}

	var moved string
	if cur, err := os.OpenFile(path, os.O_RDONLY, 0); err == nil {
		// bbolt holds an flock on the file while open; taking it ourselves
		// proves no pumi is using the file we are about to replace.
		lerr := unix.Flock(int(cur.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if lerr != nil {
			cur.Close()
			return "", fmt.Errorf("restore: %s is in use by another process (is pumi-appliance running?): stop it first: %w", path, ErrInUse)
		}
		defer cur.Close() // keeps the lock until the new file is in place
		moved = fmt.Sprintf("%s.damaged-%s", path, time.Now().UTC().Format("20060102T150405Z"))
		if err := os.Rename(path, moved); err != nil {
			return "", fmt.Errorf("restore: move %s aside: %w", path, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("restore: %s: %w", path, err)
	}

	data, err := copyToTemp(bak, dir)
	if err != nil {
		return moved, fmt.Errorf("restore: %w", err)
	}
	if err := os.Rename(data, path); err != nil {
		os.Remove(data)
		return moved, fmt.Errorf("restore: %w", err)
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return moved, fmt.Errorf("restore: %w", err)
	}
	log.Warn("state restored from backup", "path", path, "backup", bak, "old", moved)
	return moved, nil
}

// copyToTemp copies src into a fsynced temporary file in dir, streaming so a
// large state file is never held in memory.
func copyToTemp(src, dir string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := os.CreateTemp(dir, "."+FileName+".tmp*")
	if err != nil {
		return "", err
	}
	name := out.Name()
	fail := func(err error) (string, error) {
		out.Close()
		os.Remove(name)
		return "", err
	}
	if err := out.Chmod(0o600); err != nil {
		return fail(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		return fail(err)
	}
	if err := out.Sync(); err != nil {
		return fail(err)
	}
	if err := out.Close(); err != nil {
		os.Remove(name)
		return "", err
	}
	return name, nil
}
