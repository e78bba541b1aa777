package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Tx is one transaction, read-only inside View and read-write inside
// Update. It is only valid inside the function it was passed to.
type Tx struct {
	tx *bolt.Tx
}

// Writable reports whether tx may change the state.
func (tx *Tx) Writable() bool { return tx.tx.Writable() }

// Bucket is a named collection of JSON-encoded values of type T, keyed by
// string. Keys sort byte-wise, which SeqKey and TimeKey are built for.
// Declare buckets once per package, e.g.
//
//	var seats = store.NewBucket[Seat]("seats")
//
// and use them inside Update/View. A bucket springs into existence at its
// first Put; reading a bucket that was never written yields nothing.
type Bucket[T any] struct {
	name string
}

// NewBucket names a bucket. Names are package-level constants chosen by
// their owner; "" and names starting with "_" (reserved for the store) are
// rejected on first use.
func NewBucket[T any](name string) Bucket[T] { return Bucket[T]{name: name} }

// Name is the bucket's name.
func (b Bucket[T]) Name() string { return b.name }

func (b Bucket[T]) get(tx *Tx, create bool) (*bolt.Bucket, error) {
	if b.name == "" || strings.HasPrefix(b.name, "_") {
		return nil, fmt.Errorf("store: bucket name %q is empty or reserved (a bug in its caller)", b.name)
	}
	if !create || !tx.tx.Writable() {
		return tx.tx.Bucket([]byte(b.name)), nil
	}
	bk, err := tx.tx.CreateBucketIfNotExists([]byte(b.name))
	if err != nil {
		return nil, fmt.Errorf("store: bucket %s: %w", b.name, err)
	}
	return bk, nil
}

// Get decodes the value at key; ok is false if there is none.
func (b Bucket[T]) Get(tx *Tx, key string) (v T, ok bool, err error) {
	bk, err := b.get(tx, false)
	if err != nil || bk == nil {
		return v, false, err
	}
	raw := bk.Get([]byte(key))
	if raw == nil {
		return v, false, nil
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return v, false, b.decodeErr(key, err)
	}
	return v, true, nil
}

// Has reports whether key exists without decoding it.
func (b Bucket[T]) Has(tx *Tx, key string) (bool, error) {
	bk, err := b.get(tx, false)
	if err != nil || bk == nil {
		return false, err
	}
	return bk.Get([]byte(key)) != nil, nil
}

// Put stores v at key, replacing any previous value.
func (b Bucket[T]) Put(tx *Tx, key string, v T) error {
	if key == "" {
		return fmt.Errorf("store: %s: empty key", b.name)
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("store: %s/%s: encode: %w", b.name, key, err)
	}
	bk, err := b.get(tx, true)
	if err != nil {
		return err
	}
	if bk == nil {
		return fmt.Errorf("store: %s/%s: put in a read-only transaction: use Update", b.name, key)
	}
	if err := bk.Put([]byte(key), raw); err != nil {
		return fmt.Errorf("store: %s/%s: %w", b.name, key, err)
	}
	return nil
}

// Delete removes key; deleting a missing key is not an error.
func (b Bucket[T]) Delete(tx *Tx, key string) error {
	bk, err := b.get(tx, false)
	if err != nil || bk == nil {
		return err
	}
	if err := bk.Delete([]byte(key)); err != nil {
		return fmt.Errorf("store: %s/%s: delete: %w", b.name, key, err)
	}
	return nil
}

// Clear removes every key of the bucket (its sequence counter restarts too).
func (b Bucket[T]) Clear(tx *Tx) error {
	if _, err := b.get(tx, false); err != nil {
		return err
	}
	err := tx.tx.DeleteBucket([]byte(b.name))
	if err != nil && !errors.Is(err, berrors.ErrBucketNotFound) {
		return fmt.Errorf("store: %s: clear: %w", b.name, err)
	}
	return nil
}

// ForEach calls fn for every key in order until fn returns an error.
func (b Bucket[T]) ForEach(tx *Tx, fn func(key string, v T) error) error {
	return b.scan(tx, nil, nil, fn)
}

// ForEachPrefix calls fn, in key order, for the keys starting with prefix.
func (b Bucket[T]) ForEachPrefix(tx *Tx, prefix string, fn func(key string, v T) error) error {
	p := []byte(prefix)
	return b.scan(tx, p, func(k []byte) bool { return bytes.HasPrefix(k, p) }, fn)
}

// ForEachRange calls fn, in key order, for the keys k with from <= k < to
// (to == "" means no upper bound); with TimeKey this is a time window.
func (b Bucket[T]) ForEachRange(tx *Tx, from, to string, fn func(key string, v T) error) error {
	var more func([]byte) bool
	if to != "" {
		end := []byte(to)
		more = func(k []byte) bool { return bytes.Compare(k, end) < 0 }
	}
	return b.scan(tx, []byte(from), more, fn)
}

func (b Bucket[T]) scan(tx *Tx, from []byte, more func([]byte) bool, fn func(string, T) error) error {
	bk, err := b.get(tx, false)
	if err != nil || bk == nil {
		return err
	}
	c := bk.Cursor()
	var k, raw []byte
	if from == nil {
		k, raw = c.First()
	} else {
		k, raw = c.Seek(from)
	}
	for ; k != nil; k, raw = c.Next() {
		if more != nil && !more(k) {
			return nil
		}
		if raw == nil {
			continue // a nested bucket; none are created by this package
		}
		var v T
		if err := json.Unmarshal(raw, &v); err != nil {
			return b.decodeErr(string(k), err)
		}
		if err := fn(string(k), v); err != nil {
			return err
		}
	}
	return nil
}

// List returns every value in key order.
func (b Bucket[T]) List(tx *Tx) ([]T, error) {
	var out []T
	err := b.ForEach(tx, func(_ string, v T) error { out = append(out, v); return nil })
	return out, err
}

// Count is the number of keys.
func (b Bucket[T]) Count(tx *Tx) (int, error) {
	bk, err := b.get(tx, false)
	if err != nil || bk == nil {
		return 0, err
	}
	return bk.Stats().KeyN, nil
}

// NextSeq returns the bucket's next sequence number (1, 2, 3, ...). It is
// never reused, even when the transaction that took it is later followed by
// deletes; a rolled-back transaction does not consume it.
func (b Bucket[T]) NextSeq(tx *Tx) (uint64, error) {
	bk, err := b.get(tx, true)
	if err != nil {
		return 0, err
	}
	if bk == nil {
		return 0, fmt.Errorf("store: %s: sequence in a read-only transaction: use Update", b.name)
	}
	n, err := bk.NextSequence()
	if err != nil {
		return 0, fmt.Errorf("store: %s: sequence: %w", b.name, err)
	}
	return n, nil
}

// Append stores v under the next sequence number (as SeqKey) and returns
// that number: an append-only log in commit order.
func (b Bucket[T]) Append(tx *Tx, v T) (uint64, error) {
	n, err := b.NextSeq(tx)
	if err != nil {
		return 0, err
	}
	return n, b.Put(tx, SeqKey(n), v)
}

func (b Bucket[T]) decodeErr(key string, err error) error {
	return fmt.Errorf("store: record %s/%s is not valid (%v): it was written by an incompatible pumi version; restore a backup or delete the record: %w",
		b.name, key, err, ErrDamaged)
}

// SeqKey formats n so that keys sort in numeric order.
func SeqKey(n uint64) string { return fmt.Sprintf("%020d", n) }

// ParseSeqKey is the inverse of SeqKey.
func ParseSeqKey(k string) (uint64, error) {
	n, err := strconv.ParseUint(k, 10, 64)
	if err != nil || len(k) != 20 {
		return 0, fmt.Errorf("store: %q is not a sequence key", k)
	}
	return n, nil
}

// timeKeyLayout has a fixed width (nanoseconds always printed), unlike
// time.RFC3339Nano which trims trailing zeros and so would not sort.
const timeKeyLayout = "2006-01-02T15:04:05.000000000Z"

// TimeKey builds a history key that sorts by time (UTC), then by parts, e.g.
// TimeKey(t, runID, mac) = "2026-11-26T13:45:00.000000000Z|run7|52:54:00:..".
// Parts must not contain "|".
func TimeKey(t time.Time, parts ...string) string {
	return strings.Join(append([]string{t.UTC().Format(timeKeyLayout)}, parts...), "|")
}

// TimeKeyFrom is the smallest key at or after t, for ForEachRange windows.
func TimeKeyFrom(t time.Time) string { return t.UTC().Format(timeKeyLayout) }

// ParseTimeKey returns the time and the parts of a TimeKey.
func ParseTimeKey(k string) (time.Time, []string, error) {
	fields := strings.Split(k, "|")
	t, err := time.Parse(timeKeyLayout, fields[0])
	if err != nil {
		return time.Time{}, nil, fmt.Errorf("store: %q is not a time key: %w", k, err)
	}
	return t, fields[1:], nil
}
