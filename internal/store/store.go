// Package store owns pumi's state file: one bbolt database (state.db) in the
// state directory, its schema version and migrations, its consistency check
// and its backup copy (state.db.bak).
//
// The rule every other package follows: every state change happens in a
// transaction (Store.Update) that has committed before the change is acted on.
// A seat is marked "powering" before the Wake-on-LAN packet leaves, a run is
// recorded before its first seat is touched, a lease is written before the
// DHCP ACK is sent. After a crash or power cut pumi reloads what it had
// decided and continues from there; nothing depends on a process remembering
// what it was doing.
//
// Opening never resets or repairs anything silently: a missing parent
// directory, a read-only or unwritable directory, a file held by another
// process, a damaged file and a file written by a newer pumi are each a
// startup error (see the Err* values) whose text says what to do.
package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/pumi-lab/pumi/internal/atomicfile"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"golang.org/x/sys/unix"
)

// File names inside the state directory.
const (
	FileName   = "state.db"
	BackupName = "state.db.bak"
)

// Kinds of startup failure, for errors.Is. The wrapped messages name the
// path and the remedy; these values only let callers branch on the kind.
var (
	ErrNoParent    = errors.New("state directory parent missing")
	ErrNotWritable = errors.New("state directory not writable")
	ErrInUse       = errors.New("state file in use")
	ErrDamaged     = errors.New("state file damaged")
	ErrNewerSchema = errors.New("state file from a newer pumi")
)

// lockTimeout bounds the wait for the file lock, so that a stale instance
// left running during a gokrazy restart makes Open fail instead of hanging.
const lockTimeout = time.Second

// Store is an open state file. It is safe for concurrent use.
type Store struct {
	db   *bolt.DB
	dir  string
	path string
	log  *slog.Logger
}

// Open opens (or creates) dir/state.db. dir itself is created (mode 0700)
// only when its parent exists: a missing parent usually means the persistent
// partition is not mounted, and writing into the root file system instead
// would lose the state at the next reboot.
//
// Before the file is opened for writing it is opened read-only and checked;
// a damaged file is left untouched. After a successful check a backup copy
// is taken and pending migrations are applied, one transaction each.
func Open(ctx context.Context, dir string, log *slog.Logger) (*Store, error) {
	return open(ctx, dir, log, migrations())
}

func open(ctx context.Context, dir string, log *slog.Logger, migs []Migration) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := validateMigrations(migs); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dir, err := prepareDir(dir)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, FileName)

	fresh, err := precheck(path, len(migs), log)
	if err != nil {
		return nil, err
	}
	db, err := openRW(path)
	if err != nil {
		return nil, err
	}
	// Only now, holding the exclusive lock, can no other pumi be mid-backup.
	removeStaleTemps(dir, log)
	s := &Store{db: db, dir: dir, path: path, log: log}
	if err := s.fixMode(); err != nil {
		db.Close()
		return nil, err
	}
	if fresh {
		// bbolt fsyncs the file on every commit but never the directory
		// entry of a file it created; without this a power cut soon after
		// the first start could lose the whole file, commits included.
		if err := atomicfile.SyncDir(dir); err != nil {
			db.Close()
			return nil, notWritable(dir, err)
		}
	} else {
		// The backup is taken before migrating, so that a faulty migration
		// can be undone by restoring the pre-migration copy.
		if err := s.Backup(ctx); err != nil {
			db.Close()
			return nil, err
		}
	}
	if err := s.migrate(ctx, migs); err != nil {
		db.Close()
		return nil, err
	}
	log.Info("state file open", "path", path, "schema", len(migs), "fresh", fresh)
	return s, nil
}

// openRW opens the checked file for writing. The check has already walked
// every page, so a panic here is not expected; it is still turned into an
// error, because a crash loop is the one outcome that must not happen.
func openRW(path string) (db *bolt.DB, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			db, err = nil, damaged(path, fmt.Sprintf("opening it failed: %v", r))
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout})
	if err != nil {
		return nil, classifyOpenError(path, err)
	}
	return db, nil
}

// Close releases the file and its lock.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close state file %s: %w", s.path, err)
	}
	return nil
}

// Dir is the state directory; other packages may keep their own files there.
func (s *Store) Dir() string { return s.dir }

// Path is the state file's path.
func (s *Store) Path() string { return s.path }

// Update runs fn in a read-write transaction and commits it (fsync included)
// when fn returns nil. Any error from fn, or a context that ended meanwhile,
// rolls everything back: a caller that gave up must not find its change
// committed behind its back.
func (s *Store) Update(ctx context.Context, fn func(tx *Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.Update(func(btx *bolt.Tx) error {
		if err := fn(&Tx{tx: btx}); err != nil {
			return err
		}
		return ctx.Err()
	})
}

// Batch is Update for many small writers at once (a DHCP server committing
// leases for a room of PCs): concurrent Batch calls are coalesced by bbolt
// into one transaction and one fsync, and each call returns only after that
// commit, so "written before acted on" holds as with Update. Because a failed
// batch is retried one call at a time, fn may run more than once and must
// only depend on its transaction (no side effects outside it). A single
// caller pays up to bbolt's batch delay (10 ms) extra; use Update there.
func (s *Store) Batch(ctx context.Context, fn func(tx *Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.Batch(func(btx *bolt.Tx) error {
		if err := fn(&Tx{tx: btx}); err != nil {
			return err
		}
		return ctx.Err()
	})
}

// View runs fn in a read-only transaction, which sees one consistent
// snapshot and may run concurrently with other Views and one Update.
func (s *Store) View(ctx context.Context, fn func(tx *Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.View(func(btx *bolt.Tx) error { return fn(&Tx{tx: btx}) })
}

// prepareDir makes dir absolute, creates it if only the last element is
// missing and proves it writable.
func prepareDir(dir string) (string, error) {
	if dir == "" {
		return "", fmt.Errorf("no state directory given: pass one (for example ./pumi-data or /perm/pumi)")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("state directory %s: %w", dir, err)
	}
	fi, err := os.Stat(abs)
	switch {
	case err == nil && !fi.IsDir():
		return "", fmt.Errorf("state directory %s is not a directory: move the file aside or choose another state directory", abs)
	case errors.Is(err, fs.ErrNotExist):
		parent := filepath.Dir(abs)
		if pfi, perr := os.Stat(parent); perr != nil || !pfi.IsDir() {
			return "", fmt.Errorf("state directory %s cannot be created because %s does not exist (is the persistent partition mounted?): create %s or choose another state directory: %w",
				abs, parent, parent, ErrNoParent)
		}
		if err := os.Mkdir(abs, 0o700); err != nil {
			return "", notWritable(abs, err)
		}
		if err := atomicfile.SyncDir(parent); err != nil {
			return "", notWritable(abs, err)
		}
	case err != nil:
		return "", fmt.Errorf("state directory %s: %w: check its permissions or choose another state directory", abs, err)
	}
	// Probe with a real file: a read-only mount, a full disk or missing
	// permissions show up here with a clear message, rather than later as
	// a failed backup rename.
	f, err := os.CreateTemp(abs, ".probe*")
	if err != nil {
		return "", notWritable(abs, err)
	}
	name := f.Name()
	f.Close()
	if err := os.Remove(name); err != nil {
		return "", notWritable(abs, err)
	}
	return abs, nil
}

func notWritable(dir string, err error) error {
	hint := "check its permissions and free space"
	if errors.Is(err, syscall.EROFS) {
		hint = "it is on a read-only file system: mount it read-write (on gokrazy: is /perm formatted and mounted?)"
	}
	return fmt.Errorf("state directory %s is not writable (%v): %s, or choose another state directory: %w", dir, err, hint, ErrNotWritable)
}

// removeStaleTemps deletes temporary files left by a backup or restore that
// was interrupted; they are never the only copy of anything.
func removeStaleTemps(dir string, log *slog.Logger) {
	for _, pat := range []string{"." + BackupName + ".tmp*", "." + FileName + ".tmp*"} {
		matches, _ := filepath.Glob(filepath.Join(dir, pat))
		for _, m := range matches {
			if err := os.Remove(m); err == nil {
				log.Info("removed leftover temporary file", "path", m)
			}
		}
	}
}

func damaged(path, detail string) error {
	bak := filepath.Join(filepath.Dir(path), BackupName)
	return fmt.Errorf("state file %s is damaged (%s): restore it from %s with `pumi-appliance -restore-backup`, or move it aside to start empty: %w",
		path, detail, bak, ErrDamaged)
}

func classifyOpenError(path string, err error) error {
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return fmt.Errorf("state file %s is locked by another process (is another pumi-appliance running?): stop it and start again: %w", path, ErrInUse)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch):
		return damaged(path, err.Error())
	case errors.Is(err, syscall.EROFS), errors.Is(err, fs.ErrPermission):
		return notWritable(filepath.Dir(path), err)
	}
	// Anything else on an existing file (short read, bad mmap size, ...)
	// means the bytes are not a usable bbolt file.
	return damaged(path, err.Error())
}

// precheck opens an existing state file read-only and verifies it, so that
// a damaged file is reported before anything could write to it. It reports
// whether the file is new (absent or empty).
func precheck(path string, known int, log *slog.Logger) (fresh bool, err error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("state file %s: %w: check its permissions", path, err)
	}
	if !fi.Mode().IsRegular() {
		return false, damaged(path, "not a regular file")
	}
	if fi.Size() == 0 {
		// bbolt creates the file and then writes its first pages, so an
		// interrupted first start leaves an empty file holding no data. With
		// a backup beside it, though, data existed: refuse rather than start
		// empty.
		if _, err := os.Stat(filepath.Join(filepath.Dir(path), BackupName)); err == nil {
			return false, damaged(path, "the file is empty but a backup exists")
		}
		log.Warn("state file is empty (interrupted first start?); initialising it", "path", path)
		return true, nil
	}
	if err := verifyFile(path, fi.Size(), known); err != nil {
		return false, err
	}
	return false, nil
}

// verifyFile opens path read-only and runs the consistency check and the
// schema check on it.
func verifyFile(path string, size int64, known int) (err error) {
	// A damaged page can make bbolt index past the end of its slice or, if
	// the file is shorter than its metadata claims, fault on the mapping.
	// Both become an error here instead of a crash loop.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = damaged(path, fmt.Sprintf("reading it failed: %v", r))
		}
	}()
	// Hold a shared lock while walking, so that a running pumi (which holds
	// the exclusive one) is reported as such rather than its half-written
	// pages being mistaken for damage.
	unlock, err := lockShared(path)
	if err != nil {
		return err
	}
	defer unlock()
	if err := walkFile(path); err != nil {
		return damaged(path, err.Error())
	}
	// PreLoadFreelist reads the free list here, in this goroutine, rather
	// than inside Check's goroutine.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout, ReadOnly: true, PreLoadFreelist: true})
	if err != nil {
		return classifyOpenError(path, err)
	}
	defer db.Close()
	return db.View(func(tx *bolt.Tx) error {
		if tx.Size() > size {
			return damaged(path, fmt.Sprintf("it is truncated: %d bytes, its metadata needs %d", size, tx.Size()))
		}
		var problems []string
		for e := range tx.Check() {
			if len(problems) < 5 {
				problems = append(problems, e.Error())
			}
		}
		if len(problems) > 0 {
			return damaged(path, "consistency check: "+strings.Join(problems, "; "))
		}
		v, err := readVersion(tx)
		if err != nil {
			return damaged(path, err.Error())
		}
		if v > known {
			return fmt.Errorf("state file %s has schema version %d but this pumi knows only up to %d: run the newer pumi, or restore a backup made by this version: %w",
				path, v, known, ErrNewerSchema)
		}
		return nil
	})
}

func lockShared(path string) (unlock func(), err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("state file %s: %w: check its permissions", path, err)
	}
	deadline := time.Now().Add(lockTimeout)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("state file %s: lock: %w", path, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, classifyOpenError(path, berrors.ErrTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// fixMode narrows a state file that someone made readable by others: it
// may hold credential references and password hashes.
func (s *Store) fixMode() error {
	fi, err := os.Stat(s.path)
	if err != nil {
		return fmt.Errorf("state file %s: %w", s.path, err)
	}
	if fi.Mode().Perm() != 0o600 {
		s.log.Warn("state file mode was too open; setting 0600", "path", s.path, "mode", fi.Mode().Perm())
		if err := os.Chmod(s.path, 0o600); err != nil {
			return fmt.Errorf("state file %s: chmod 0600: %w", s.path, err)
		}
	}
	return nil
}
