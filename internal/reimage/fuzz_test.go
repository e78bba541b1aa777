package reimage

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/schedule"
	"github.com/pumi-lab/pumi/internal/store"
)

// FuzzStart feeds arbitrary run requests (what the API passes through from
// an admin's form) to Start: it must never panic, a refused request must
// leave no run behind, and an accepted one must be stored as given.
func FuzzStart(f *testing.F) {
	f.Add("r1", "restore", "LAB-2026-img", "B", "", int64(time.Hour), false)
	f.Add("", "verify", "LAB-2026-img", "", "pc01", int64(time.Minute), true)
	f.Add("a|b", "restore", "x", "B", "", int64(time.Hour), false)
	f.Add("r2", "capture", "NEW-img", "", "", int64(time.Hour), false)
	f.Add("r3", "wake", "", "B", "", int64(-1), false)
	f.Add("r4\n", "format", "", "Z", "", int64(0), false)
	st, err := store.Open(context.Background(), f.TempDir(), nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	lab := newFakeLab(3)
	clock := &fakeClock{t: t0}
	e := New(st, lab, newFakePower(), &fakeReporter{}, Config{}, clock, nil)
	f.Fuzz(func(t *testing.T, id, kind, image, room, seat string, window int64, only bool) {
		ctx := context.Background()
		clock.Add(time.Microsecond) // distinct generated IDs
		req := Request{ID: id, Action: schedule.Action{Kind: schedule.ActionKind(kind), Image: image, SourceSeat: seat},
			Window: time.Duration(window), OnlyUnverified: only}
		if room != "" {
			req.Target.Rooms = []string{room}
		}
		if seat != "" {
			req.Target.Seats = []string{seat}
		}
		before, err := e.Runs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		run, err := e.Start(ctx, req)
		after, err2 := e.Runs(ctx)
		if err2 != nil {
			t.Fatal(err2)
		}
		if err != nil {
			if len(after) != len(before) {
				t.Fatalf("refused request %+v left a run: %v", req, err)
			}
			if err.Error() == "" || strings.Contains(err.Error(), "%!") {
				t.Fatalf("bad error text %q", err)
			}
			return
		}
		got, ok, err := e.Get(ctx, run.ID)
		if err != nil || !ok || got.ID != run.ID || len(got.Seats) == 0 {
			t.Fatalf("accepted request %+v not stored: %+v %v", req, got, err)
		}
		if strings.ContainsAny(run.ID, "|\n") {
			t.Fatalf("run id %q accepted", run.ID)
		}
	})
}
