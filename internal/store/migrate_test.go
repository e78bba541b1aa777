package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Shapes of one record before and after a schema change: v2 splits the
// seed's "user" field into ssh_user and a credential reference.
type seatV1 struct {
	MAC  string `json:"mac"`
	User string `json:"user"`
}

type seatV2 struct {
	MAC        string `json:"mac"`
	SSHUser    string `json:"ssh_user"`
	Credential string `json:"credential"`
}

var (
	seatsV1 = NewBucket[seatV1]("mig-seats")
	seatsV2 = NewBucket[seatV2]("mig-seats")
)

var v1Only = []Migration{{Version: 1, Name: "initial", Apply: func(*Tx) error { return nil }}}

func v2Step(apply func(tx *Tx) error) []Migration {
	return append(append([]Migration{}, v1Only...), Migration{Version: 2, Name: "split user", Apply: apply})
}

func splitUser(tx *Tx) error {
	type kv struct {
		k string
		v seatV1
	}
	var old []kv
	if err := seatsV1.ForEach(tx, func(k string, v seatV1) error { old = append(old, kv{k, v}); return nil }); err != nil {
		return err
	}
	for _, o := range old {
		if err := seatsV2.Put(tx, o.k, seatV2{MAC: o.v.MAC, SSHUser: o.v.User, Credential: "room-default"}); err != nil {
			return err
		}
	}
	return nil
}

func openV1WithData(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	s, err := open(context.Background(), dir, nil, v1Only)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Update(context.Background(), func(tx *Tx) error {
		for i := range 3 {
			mac := fmt.Sprintf("52:54:00:00:00:%02x", i)
			if err := seatsV1.Put(tx, mac, seatV1{MAC: mac, User: "tareas"}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	return dir
}

func TestMigrationV1ToV2(t *testing.T) {
	ctx := context.Background()
	dir := openV1WithData(t)
	s, err := open(ctx, dir, nil, v2Step(splitUser))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, err := s.SchemaVersion(ctx); v != 2 || err != nil {
		t.Fatalf("schema after migration = %d, %v", v, err)
	}
	err = s.View(ctx, func(tx *Tx) error {
		all, err := seatsV2.List(tx)
		if err != nil {
			return err
		}
		if len(all) != 3 {
			return fmt.Errorf("%d seats after migration, want 3", len(all))
		}
		for _, v := range all {
			if v.SSHUser != "tareas" || v.Credential != "room-default" {
				return fmt.Errorf("seat not migrated: %+v", v)
			}
		}
		if tx.tx.Bucket([]byte(metaBucket)).Get([]byte("migration/0002")) == nil {
			return errors.New("migration 2 not recorded in the history")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The backup taken before migrating still holds schema 1, so restoring
	// it undoes a faulty migration.
	bak, err := open(ctx, t.TempDir(), nil, v1Only)
	if err != nil {
		t.Fatal(err)
	}
	bak.Close()
	data, _ := os.ReadFile(filepath.Join(dir, BackupName))
	os.WriteFile(filepath.Join(bak.Dir(), FileName), data, 0o600)
	b, err := open(ctx, bak.Dir(), nil, v1Only)
	if err != nil {
		t.Fatalf("opening the pre-migration backup with the v1 code: %v", err)
	}
	b.Close()
}

func TestFailedMigrationChangesNothing(t *testing.T) {
	ctx := context.Background()
	dir := openV1WithData(t)
	path := filepath.Join(dir, FileName)
	failing := func(tx *Tx) error {
		if err := splitUser(tx); err != nil { // writes, then fails: all must roll back
			return err
		}
		return errors.New("cannot convert seat 3")
	}
	_, err := open(ctx, dir, nil, v2Step(failing))
	if err == nil || !strings.Contains(err.Error(), "stays at schema 1") || !strings.Contains(err.Error(), "cannot convert seat 3") {
		t.Fatalf("open with a failing migration: %v", err)
	}
	s, err := open(ctx, dir, nil, v1Only)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	err = s.View(ctx, func(tx *Tx) error {
		v, err := readVersion(tx.tx)
		if v != 1 || err != nil {
			return fmt.Errorf("version %d, %v", v, err)
		}
		return seatsV2.ForEach(tx, func(k string, v seatV2) error {
			if v.SSHUser != "" || v.Credential != "" {
				return fmt.Errorf("%s was half-migrated: %+v", k, v)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatalf("%s after the failed migration: %v", path, err)
	}
}

func TestNewerSchemaIsRefused(t *testing.T) {
	ctx := context.Background()
	dir := openV1WithData(t)
	s, err := open(ctx, dir, nil, v2Step(splitUser))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, err = open(ctx, dir, nil, v1Only)
	if !errors.Is(err, ErrNewerSchema) || !strings.Contains(err.Error(), "schema version 2") {
		t.Fatalf("old code opening a newer file: %v", err)
	}
}

func TestMigrationListMustBeOrdered(t *testing.T) {
	bad := []Migration{{Version: 2, Name: "skips 1", Apply: func(*Tx) error { return nil }}}
	if _, err := open(context.Background(), t.TempDir(), nil, bad); err == nil {
		t.Fatal("a migration list starting at 2 was accepted")
	}
}
