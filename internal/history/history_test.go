package history

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/store"
)

func TestPruneByCountAndAge(t *testing.T) {
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "state"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now().UTC()
	err = st.Update(t.Context(), func(tx *store.Tx) error {
		for i := range 50 {
			at := now.Add(-time.Duration(50-i) * time.Minute)
			if i < 10 {
				at = now.Add(-48 * time.Hour) // the ten oldest are too old
			}
			if err := Add(tx, Event{Time: at, Kind: "test", Message: fmt.Sprint(i)}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		maxAge   time.Duration
		maxCount int
		dropped  int
		first    string
	}{
		{24 * time.Hour, 1000, 10, "10"}, // age
		{24 * time.Hour, 30, 10, "20"},   // count
		{24 * time.Hour, 30, 0, "20"},    // nothing left to do
	} {
		n, err := Prune(t.Context(), st, now, c.maxAge, c.maxCount)
		if err != nil || n != c.dropped {
			t.Fatalf("Prune(%v, %d) = %d, %v; want %d", c.maxAge, c.maxCount, n, err, c.dropped)
		}
		evs, _ := List(t.Context(), st, 1000)
		if evs[0].Message != c.first {
			t.Fatalf("oldest kept %q, want %q", evs[0].Message, c.first)
		}
	}
}
