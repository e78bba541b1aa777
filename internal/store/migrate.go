package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
)

// metaBucket holds the schema version and the migration history. Names
// starting with "_" are reserved for the store, so no Bucket can clash.
const metaBucket = "_meta"

var versionKey = []byte("schema_version")

// Migration moves the state from schema Version-1 to Version. Apply runs in
// its own transaction together with the version bump, so a crash leaves the
// file either fully before or fully after the step.
type Migration struct {
	Version int
	Name    string
	Apply   func(tx *Tx) error
}

// migrations is the ordered list of schema steps of this build. Append new
// steps at the end; never edit or reorder a released one, because files in
// the field have already recorded them.
func migrations() []Migration {
	return []Migration{
		{Version: 1, Name: "initial schema", Apply: func(*Tx) error { return nil }},
	}
}

func validateMigrations(migs []Migration) error {
	for i, m := range migs {
		if m.Version != i+1 || m.Apply == nil {
			return fmt.Errorf("store: migration %d (%q) is out of order or has no Apply: versions must be 1, 2, 3, ... (a bug in this build)", i, m.Name)
		}
	}
	return nil
}

// readVersion returns 0 for a file without the meta bucket only if the file
// is otherwise empty; buckets without a schema version mean the file is not
// a pumi state file.
func readVersion(tx *bolt.Tx) (int, error) {
	b := tx.Bucket([]byte(metaBucket))
	if b == nil {
		empty := true
		_ = tx.ForEach(func([]byte, *bolt.Bucket) error { empty = false; return nil })
		if !empty {
			return 0, errors.New("it has data but no schema version: it is not a pumi state file")
		}
		return 0, nil
	}
	raw := b.Get(versionKey)
	if raw == nil {
		return 0, errors.New("the schema version is missing")
	}
	v, err := strconv.Atoi(string(raw))
	if err != nil || v < 0 {
		return 0, fmt.Errorf("the schema version %q is not a number", raw)
	}
	return v, nil
}

// SchemaVersion is the file's current schema version.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.View(ctx, func(tx *Tx) error {
		var err error
		v, err = readVersion(tx.tx)
		return err
	})
	return v, err
}

func (s *Store) migrate(ctx context.Context, migs []Migration) error {
	cur, err := s.SchemaVersion(ctx)
	if err != nil {
		return damaged(s.path, err.Error())
	}
	if cur > len(migs) {
		return fmt.Errorf("state file %s has schema version %d but this pumi knows only up to %d: run the newer pumi: %w",
			s.path, cur, len(migs), ErrNewerSchema)
	}
	for _, m := range migs[cur:] {
		err := s.Update(ctx, func(tx *Tx) error {
			if err := m.Apply(tx); err != nil {
				return err
			}
			meta, err := tx.tx.CreateBucketIfNotExists([]byte(metaBucket))
			if err != nil {
				return err
			}
			if err := meta.Put(versionKey, []byte(strconv.Itoa(m.Version))); err != nil {
				return err
			}
			rec := fmt.Sprintf("%s %s", time.Now().UTC().Format(time.RFC3339), m.Name)
			return meta.Put([]byte(fmt.Sprintf("migration/%04d", m.Version)), []byte(rec))
		})
		if err != nil {
			return fmt.Errorf("state file %s: migration to schema %d (%s) failed, the file stays at schema %d: %w; report this bug, and meanwhile run the previous pumi version",
				s.path, m.Version, m.Name, m.Version-1, err)
		}
		s.log.Info("state schema migrated", "version", m.Version, "step", m.Name)
	}
	return nil
}
