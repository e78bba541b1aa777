package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

type rec struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
}

var recs = NewBucket[rec]("recs")

var corruptIterations = flag.Int("corrupt-iterations", 100, "damaged files TestOpenRandomCorruptionNeverPanics opens")

func mustOpen(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(context.Background(), dir, nil)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	return s
}

func fileHash(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func TestOpenCreatesDirWithModesAndSchema(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := mustOpen(t, dir)
	v, err := s.SchemaVersion(context.Background())
	if err != nil || v != len(migrations()) {
		t.Fatalf("schema = %d, %v; want %d", v, err, len(migrations()))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700 | os.ModeDir, filepath.Join(dir, FileName): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode(), want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, BackupName)); err == nil {
		t.Errorf("a fresh store has nothing to back up, yet %s exists", BackupName)
	}
	// A second open checks the existing file and takes the backup.
	s = mustOpen(t, dir)
	s.Close()
	fi, err := os.Stat(filepath.Join(dir, BackupName))
	if err != nil || fi.Mode() != 0o600 {
		t.Fatalf("backup after reopen: %v, %v", fi, err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".*"))
	if len(left) != 0 {
		t.Errorf("temporary files left behind: %v", left)
	}
}

func TestOpenFixesLooseFileMode(t *testing.T) {
	dir := t.TempDir()
	mustOpen(t, dir).Close()
	path := filepath.Join(dir, FileName)
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	mustOpen(t, dir).Close()
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
}

func TestOpenMissingParentIsAnError(t *testing.T) {
	parent := filepath.Join(t.TempDir(), "perm")
	dir := filepath.Join(parent, "pumi")
	_, err := Open(context.Background(), dir, nil)
	if !errors.Is(err, ErrNoParent) || !strings.Contains(err.Error(), parent) {
		t.Fatalf("err = %v; want ErrNoParent naming %s", err, parent)
	}
	if _, err := os.Stat(parent); err == nil {
		t.Fatalf("Open created %s", parent)
	}
}

func TestOpenStateDirIsAFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.WriteFile(dir, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(context.Background(), dir, nil)
	if err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("err = %v", err)
	}
}

func TestOpenWhileInUse(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir)
	defer s.Close()
	_, err := Open(context.Background(), dir, nil)
	if !errors.Is(err, ErrInUse) {
		t.Fatalf("second Open: %v; want ErrInUse", err)
	}
	if _, err := RestoreBackup(context.Background(), dir, nil); err == nil {
		t.Fatal("RestoreBackup succeeded while the store is open")
	}
}

// makeStore writes some records and returns the state file's path.
func makeStore(t *testing.T, dir string, n int) string {
	t.Helper()
	s := mustOpen(t, dir)
	err := s.Update(context.Background(), func(tx *Tx) error {
		for i := range n {
			if err := recs.Put(tx, fmt.Sprintf("k%05d", i), rec{Name: strings.Repeat("x", 200), Count: i}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	return filepath.Join(dir, FileName)
}

func TestOpenDamagedFileIsAClearErrorAndUntouched(t *testing.T) {
	cases := map[string]func(t *testing.T, path string){
		"garbage": func(t *testing.T, path string) {
			os.WriteFile(path, bytes.Repeat([]byte("not a database "), 1000), 0o600)
		},
		"truncated": func(t *testing.T, path string) {
			fi, _ := os.Stat(path)
			os.Truncate(path, fi.Size()/2)
		},
		"both meta pages": func(t *testing.T, path string) {
			f, _ := os.OpenFile(path, os.O_RDWR, 0)
			defer f.Close()
			for _, off := range []int64{32, 4096 + 32} { // inside each meta, past the page header
				f.WriteAt(bytes.Repeat([]byte{0xAA}, 32), off)
			}
		},
		"data pages": func(t *testing.T, path string) {
			f, _ := os.OpenFile(path, os.O_RDWR, 0)
			defer f.Close()
			fi, _ := f.Stat()
			for off := int64(2 * 4096); off < fi.Size(); off += 4096 {
				f.WriteAt(bytes.Repeat([]byte{0xFF}, 16), off) // page headers: id, flags, count
			}
		},
		"empty with a backup": func(t *testing.T, path string) {
			// a reopen takes a backup, then the file loses its content
			mustOpen(t, filepath.Dir(path)).Close()
			os.Truncate(path, 0)
		},
		"foreign bbolt file": func(t *testing.T, path string) {
			os.Remove(path)
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("other")); return err })
			db.Close()
		},
	}
	for name, damage := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := makeStore(t, dir, 300)
			damage(t, path)
			before := fileHash(t, path)
			_, err := Open(context.Background(), dir, nil)
			if !errors.Is(err, ErrDamaged) {
				t.Fatalf("Open: %v; want ErrDamaged", err)
			}
			msg := err.Error()
			for _, want := range []string{path, BackupName, "-restore-backup"} {
				if !strings.Contains(msg, want) {
					t.Errorf("message %q does not mention %q", msg, want)
				}
			}
			if fileHash(t, path) != before {
				t.Error("Open modified the damaged file")
			}
		})
	}
}

// TestOpenRandomCorruptionNeverPanics flips random bytes of a real state
// file many times: Open must return an error or a store that passes its
// check, and never crash the process.
func TestOpenRandomCorruptionNeverPanics(t *testing.T) {
	src := makeStore(t, t.TempDir(), 400)
	orig, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	iterations := *corruptIterations
	var opened, refused int
	for i := range iterations {
		data := bytes.Clone(orig)
		for range 1 + rng.IntN(8) {
			off := rng.IntN(len(data) - 8)
			binary.LittleEndian.PutUint64(data[off:], rng.Uint64())
		}
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, FileName), data, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(context.Background(), dir, nil)
		if err != nil {
			if !errors.Is(err, ErrDamaged) {
				t.Fatalf("iteration %d: unexpected error kind: %v", i, err)
			}
			refused++
			continue
		}
		opened++
		// Whatever opened must be readable end to end without panicking.
		err = s.View(context.Background(), func(tx *Tx) error {
			return recs.ForEach(tx, func(string, rec) error { return nil })
		})
		if err != nil && !errors.Is(err, ErrDamaged) {
			t.Errorf("iteration %d: reading an accepted file: %v", i, err)
		}
		s.Close()
	}
	t.Logf("%d corrupted files: %d refused as damaged, %d opened (flips in unused space)", iterations, refused, opened)
	if refused == 0 {
		t.Error("no corruption was ever detected: the check is not running")
	}
}

func TestBackupRestore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := mustOpen(t, dir)
	put := func(k string, n int) {
		t.Helper()
		if err := s.Update(ctx, func(tx *Tx) error { return recs.Put(tx, k, rec{Count: n}) }); err != nil {
			t.Fatal(err)
		}
	}
	put("a", 1)
	if err := s.Backup(ctx); err != nil {
		t.Fatal(err)
	}
	put("b", 2) // after the backup: lost by a restore, as it should be
	s.Close()

	path := filepath.Join(dir, FileName)
	os.WriteFile(path, []byte("damaged beyond repair"), 0o600)
	if _, err := Open(ctx, dir, nil); !errors.Is(err, ErrDamaged) {
		t.Fatalf("Open damaged: %v", err)
	}
	moved, err := RestoreBackup(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(moved); string(b) != "damaged beyond repair" {
		t.Errorf("damaged file not kept at %s", moved)
	}
	s = mustOpen(t, dir)
	defer s.Close()
	err = s.View(ctx, func(tx *Tx) error {
		a, okA, err := recs.Get(tx, "a")
		if err != nil {
			return err
		}
		_, okB, err := recs.Get(tx, "b")
		if !okA || a.Count != 1 || okB {
			return fmt.Errorf("after restore: a=%v(%v) b present=%v", a, okA, okB)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestRestoreRefusesDamagedBackup(t *testing.T) {
	dir := t.TempDir()
	makeStore(t, dir, 10)
	mustOpen(t, dir).Close() // takes a backup
	bak := filepath.Join(dir, BackupName)
	os.WriteFile(bak, []byte("junk"), 0o600)
	before := fileHash(t, filepath.Join(dir, FileName))
	if _, err := RestoreBackup(context.Background(), dir, nil); err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Fatalf("RestoreBackup with a junk backup: %v", err)
	}
	if fileHash(t, filepath.Join(dir, FileName)) != before {
		t.Fatal("the state file changed although the restore was refused")
	}
}

func TestBackupEveryRuns(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir)
	defer s.Close()
	bak := filepath.Join(dir, BackupName)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.BackupEvery(ctx, time.Millisecond) }()
	for {
		if _, err := os.Stat(bak); err == nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("BackupEvery returned %v", err)
	}
}

func TestUpdateRollsBack(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir)
	defer s.Close()
	boom := errors.New("boom")
	err := s.Update(context.Background(), func(tx *Tx) error {
		recs.Put(tx, "x", rec{Count: 1})
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	err = s.Update(ctx, func(tx *Tx) error {
		recs.Put(tx, "y", rec{Count: 1})
		cancel() // the caller gives up while the transaction runs
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Update with cancelled ctx = %v", err)
	}
	s.View(context.Background(), func(tx *Tx) error {
		if n, _ := recs.Count(tx); n != 0 {
			t.Errorf("%d records committed by failed transactions", n)
		}
		return nil
	})
}

func TestBucketHelpers(t *testing.T) {
	ctx := context.Background()
	s := mustOpen(t, t.TempDir())
	defer s.Close()
	log := NewBucket[rec]("log")
	hist := NewBucket[rec]("hist")
	t0 := time.Date(2026, 11, 26, 13, 0, 0, 0, time.UTC)
	err := s.Update(ctx, func(tx *Tx) error {
		for _, k := range []string{"seat/b", "seat/a", "room/x"} {
			if err := recs.Put(tx, k, rec{Name: k}); err != nil {
				return err
			}
		}
		for i := range 12 {
			if n, err := log.Append(tx, rec{Count: i}); err != nil || n != uint64(i+1) {
				return fmt.Errorf("Append %d = %d, %v", i, n, err)
			}
		}
		// Times whose RFC3339Nano forms would sort wrongly (".5Z" > ".25Z" is fine but "Z" < ".5Z" is not).
		for i, d := range []time.Duration{time.Second, 500 * time.Millisecond, 0, 2 * time.Second, 1500 * time.Millisecond} {
			if err := hist.Put(tx, TimeKey(t0.Add(d), "run1", fmt.Sprint(i)), rec{Count: int(d / time.Millisecond)}); err != nil {
				return err
			}
		}
		return recs.Delete(tx, "nope")
	})
	if err != nil {
		t.Fatal(err)
	}
	err = s.View(ctx, func(tx *Tx) error {
		var keys []string
		recs.ForEachPrefix(tx, "seat/", func(k string, v rec) error { keys = append(keys, k); return nil })
		if strings.Join(keys, ",") != "seat/a,seat/b" {
			t.Errorf("prefix scan = %v", keys)
		}
		all, _ := log.List(tx)
		for i, v := range all {
			if v.Count != i {
				t.Errorf("log[%d] = %d: sequence keys do not sort numerically", i, v.Count)
			}
		}
		var ms []int
		hist.ForEachRange(tx, TimeKeyFrom(t0.Add(400*time.Millisecond)), TimeKeyFrom(t0.Add(2*time.Second)), func(k string, v rec) error {
			ms = append(ms, v.Count)
			return nil
		})
		if fmt.Sprint(ms) != "[500 1000 1500]" {
			t.Errorf("time window = %v, want [500 1000 1500]", ms)
		}
		if _, ok, _ := recs.Get(tx, "missing"); ok {
			t.Error("Get of a missing key reported ok")
		}
		if err := recs.Put(tx, "z", rec{}); err == nil {
			t.Error("Put inside View succeeded")
		}
		if _, err := NewBucket[rec]("_meta").List(tx); err == nil {
			t.Error("reserved bucket name accepted")
		}
		if _, ok, _ := NewBucket[rec]("never").Get(tx, "k"); ok {
			t.Error("Get from a bucket never written reported ok")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	tm, parts, err := ParseTimeKey(TimeKey(t0, "r", "m"))
	if err != nil || !tm.Equal(t0) || strings.Join(parts, ",") != "r,m" {
		t.Errorf("ParseTimeKey = %v %v %v", tm, parts, err)
	}
	if n, err := ParseSeqKey(SeqKey(42)); n != 42 || err != nil {
		t.Errorf("ParseSeqKey = %d %v", n, err)
	}
	// A record another version wrote in a shape this one cannot read.
	s.db.Update(func(tx *bolt.Tx) error {
		b, _ := tx.CreateBucketIfNotExists([]byte("recs"))
		return b.Put([]byte("bad"), []byte(`{"count":"seven"}`))
	})
	err = s.View(ctx, func(tx *Tx) error { _, _, err := recs.Get(tx, "bad"); return err })
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "recs/bad") {
		t.Errorf("decoding a bad record: %v", err)
	}
}

// TestOpenReadOnlyFileSystem mounts a tmpfs in a private mount namespace
// of a child process (so nothing leaks into the machine's mounts), fills
// it, remounts it read-only and checks that Open explains the problem.
func TestOpenReadOnlyFileSystem(t *testing.T) {
	if os.Getenv("PUMI_RO_CHILD") != "" {
		roChild(t)
		return
	}
	if os.Geteuid() != 0 {
		// Without root, directory permissions are the read-only case.
		dir := t.TempDir()
		os.Chmod(dir, 0o500)
		defer os.Chmod(dir, 0o700)
		if _, err := Open(context.Background(), dir, nil); !errors.Is(err, ErrNotWritable) {
			t.Fatalf("Open in a 0500 directory: %v", err)
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestOpenReadOnlyFileSystem$", "-test.v")
	cmd.Env = append(os.Environ(), "PUMI_RO_CHILD="+t.TempDir())
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("ro-child ok")) {
		t.Fatalf("child: %v\n%s", err, out)
	}
	t.Logf("child:\n%s", out)
}

func roChild(t *testing.T) {
	mnt := os.Getenv("PUMI_RO_CHILD")
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=8m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	dir := filepath.Join(mnt, "pumi")
	makeStore(t, dir, 5)
	if err := syscall.Mount("", mnt, "", syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Fatalf("remount ro: %v", err)
	}
	for _, d := range []string{dir, filepath.Join(mnt, "missing")} {
		_, err := Open(context.Background(), d, nil)
		if !errors.Is(err, ErrNotWritable) || !strings.Contains(err.Error(), "read-only file system") {
			t.Fatalf("Open(%s) on a read-only mount: %v", d, err)
		}
		t.Logf("%s: %v", d, err)
	}
	fmt.Println("ro-child ok")
}

func TestOpenRemovesLeftoverTemporaryFiles(t *testing.T) {
	dir := t.TempDir()
	mustOpen(t, dir).Close()
	left := []string{filepath.Join(dir, ".state.db.bak.tmp123"), filepath.Join(dir, ".state.db.tmp456")}
	for _, p := range left {
		os.WriteFile(p, []byte("half a backup"), 0o600)
	}
	mustOpen(t, dir).Close()
	for _, p := range left {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s survived Open", p)
		}
	}
}
