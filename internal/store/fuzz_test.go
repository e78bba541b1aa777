package store

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// smallDB builds a bbolt file with 1 KiB pages (so fuzz inputs stay small)
// holding the shapes the walker must understand: a multi-page bucket with
// branch and overflow pages, an inline bucket, a nested bucket, a free list.
func smallDB(tb testing.TB, records int) []byte {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "seed.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{PageSize: 1024})
	if err != nil {
		tb.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, _ := tx.CreateBucket([]byte(metaBucket))
		meta.Put(versionKey, []byte("1"))
		big, _ := tx.CreateBucket([]byte("big"))
		for i := range records {
			big.Put(fmt.Appendf(nil, "k%04d", i), []byte(strings.Repeat("v", 40)))
		}
		big.Put([]byte("overflow"), []byte(strings.Repeat("o", 1500)))
		small, _ := tx.CreateBucket([]byte("inline"))
		small.Put([]byte("a"), []byte("1"))
		outer, _ := tx.CreateBucket([]byte("outer"))
		inner, _ := outer.CreateBucket([]byte("inner"))
		inner.Put([]byte("x"), []byte("y"))
		return nil
	})
	if err == nil {
		// frees pages, so the free list is not empty
		err = db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("big")).Delete([]byte("overflow")) })
	}
	db.Close()
	if err != nil {
		tb.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	// bbolt grows files in large steps; the pages past the high-water mark
	// are unused, and cutting them keeps the fuzz inputs small.
	m, err := readMeta(bytes.NewReader(data), 0)
	if err != nil {
		tb.Fatal(err)
	}
	return data[:m.hw*uint64(m.pageSize)]
}

// TestWriteFuzzSeeds regenerates testdata/fuzz/FuzzVerifyFile when
// PUMI_WRITE_FUZZ_SEEDS=1 (after a bbolt upgrade, say).
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("PUMI_WRITE_FUZZ_SEEDS") != "1" {
		t.Skip("set PUMI_WRITE_FUZZ_SEEDS=1 to regenerate the seed corpus")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzVerifyFile")
	os.MkdirAll(dir, 0o755)
	for name, data := range map[string][]byte{"empty-schema": smallDB(t, 0), "tree": smallDB(t, 40)} {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// FuzzVerifyFile hands arbitrary bytes to the check that guards Open. It
// must never crash the process, and a file it accepts must be readable to
// the last key without a panic or fault.
func FuzzVerifyFile(f *testing.F) {
	f.Add(smallDB(f, 5))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), FileName)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if len(data) == 0 {
			return // Open treats an empty file as new; bbolt would initialise it
		}
		if err := verifyFile(path, int64(len(data)), 1<<30); err != nil {
			return
		}
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("a file that passed the check panics when read: %v", r)
			}
		}()
		db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
		if err != nil {
			t.Fatalf("a file that passed the check does not open: %v", err)
		}
		defer db.Close()
		var walk func(b *bolt.Bucket) error
		walk = func(b *bolt.Bucket) error {
			return b.ForEach(func(k, v []byte) error {
				if v == nil {
					return walk(b.Bucket(k))
				}
				return nil
			})
		}
		db.View(func(tx *bolt.Tx) error {
			return tx.ForEach(func(_ []byte, b *bolt.Bucket) error { return walk(b) })
		})
	})
}
