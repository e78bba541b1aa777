package schedule

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pumi-lab/pumi/internal/history"
	"github.com/pumi-lab/pumi/internal/store"
)

// ErrNotFound is wrapped when a schedule ID names no schedule.
var ErrNotFound = errors.New("no such schedule")

// ErrInvalid is wrapped when a schedule is refused.
var ErrInvalid = errors.New("invalid schedule")

var (
	bookBucket = store.NewBucket[Schedule]("schedules")
	fireBucket = store.NewBucket[time.Time]("schedule-fires")
)

// Book keeps the schedules and their fire accounting in the state file; it
// is the Scheduler's FireStore.
type Book struct{ St *store.Store }

// List returns the stored schedules.
func (b Book) List(ctx context.Context) ([]Schedule, error) {
	var out []Schedule
	err := b.St.View(ctx, func(tx *store.Tx) error {
		var err error
		out, err = bookBucket.List(tx)
		return err
	})
	return out, err
}

// Get returns one schedule (ErrNotFound).
func (b Book) Get(ctx context.Context, id string) (Schedule, error) {
	var s Schedule
	err := b.St.View(ctx, func(tx *store.Tx) error {
		var ok bool
		var err error
		s, ok, err = bookBucket.Get(tx, id)
		if err == nil && !ok {
			err = fmt.Errorf("schedule %s: %w", id, ErrNotFound)
		}
		return err
	})
	return s, err
}

// Put creates or replaces a schedule. An edited spec restarts the schedule's
// fire accounting at now, so the new spec never fires for the past.
func (b Book) Put(ctx context.Context, s Schedule, now time.Time) error {
	if err := s.Validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return b.St.Update(ctx, func(tx *store.Tx) error {
		old, ok, err := bookBucket.Get(tx, s.ID)
		if err != nil {
			return err
		}
		if ok && old.Spec.String() != s.Spec.String() {
			if err := fireBucket.Put(tx, s.ID, now.UTC()); err != nil {
				return err
			}
		}
		if err := bookBucket.Put(tx, s.ID, s); err != nil {
			return err
		}
		return history.Add(tx, history.Event{Kind: "schedule", Message: fmt.Sprintf("schedule %q saved (%s)", s.Name, s.Spec.String())})
	})
}

// Delete removes a schedule and its fire accounting; runs it started stay.
func (b Book) Delete(ctx context.Context, id string) error {
	return b.St.Update(ctx, func(tx *store.Tx) error {
		if ok, err := bookBucket.Has(tx, id); err != nil || !ok {
			if err == nil {
				err = fmt.Errorf("schedule %s: %w", id, ErrNotFound)
			}
			return err
		}
		if err := bookBucket.Delete(tx, id); err != nil {
			return err
		}
		if err := missedBucket.Delete(tx, id); err != nil {
			return err
		}
		return fireBucket.Delete(tx, id)
	})
}

// LastFire implements FireStore.
func (b Book) LastFire(ctx context.Context, id string) (time.Time, error) {
	var t time.Time
	err := b.St.View(ctx, func(tx *store.Tx) error {
		var err error
		t, _, err = fireBucket.Get(tx, id)
		return err
	})
	return t, err
}

// SetLastFire implements FireStore.
func (b Book) SetLastFire(ctx context.Context, id string, t time.Time) error {
	return b.St.Update(ctx, func(tx *store.Tx) error { return fireBucket.Put(tx, id, t) })
}
