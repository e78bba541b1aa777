package schedule

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"
	_ "time/tzdata" // gokrazy ships no zoneinfo; the appliance's IANA zone must resolve anyway
)

// Clock is the scheduler's view of time, so tests can move it.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

// SystemClock is the real clock.
type SystemClock struct{}

func (SystemClock) Now() time.Time                         { return time.Now() }
func (SystemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// FireStore persists, per schedule, the instant up to which its fires are
// accounted for: every fire at or before it has been handed out to start or
// reported missed. The appliance implements it with its bbolt store.
type FireStore interface {
	// LastFire returns the zero time if the schedule has no record yet.
	LastFire(ctx context.Context, scheduleID string) (time.Time, error)
	// SetLastFire must be durable when it returns (the scheduler relies on
	// it to never start a fire twice).
	SetLastFire(ctx context.Context, scheduleID string, t time.Time) error
}

// Fire is one due fire, to be started by the runs engine.
type Fire struct {
	Schedule Schedule
	At       time.Time     // the fire instant the spec gave
	Deadline time.Time     // At + Window: unfinished seats fail at this time
	Late     time.Duration // how long after At it was handed out; large for a catch-up after boot
}

// Key identifies this fire; the runs engine uses it as the run's idempotency
// key so that even a replayed fire cannot create a second run.
func (f Fire) Key() string {
	return f.Schedule.ID + "@" + f.At.UTC().Format(time.RFC3339)
}

// Missed reports fires that did not start, for the mail report and the UI.
type Missed struct {
	ScheduleID string
	Name       string
	Fires      []time.Time // the most recent missed fires (at most MaxListedMissed), oldest first
	Count      int         // all missed fires (counting stops at MaxCountedMissed)
	Reason     string
	Kind       MissKind // why, for a reader in another language than Reason's English
}

// MissKind is why fires were missed.
type MissKind string

const (
	MissDown        MissKind = "down"         // the appliance was not running while the fire's window was open
	MissSuperseded  MissKind = "superseded"   // an older fire, replaced by the one catch-up run
	MissClock       MissKind = "clock"        // the clock went back; the schedule restarted from now
	MissStartFailed MissKind = "start-failed" // the run could not be started
)

const (
	MaxListedMissed  = 10
	MaxCountedMissed = 10000
)

// ErrClockNotSet is returned while the wall clock is obviously unset (gokrazy
// boots at 1970 until NTP answers); no fire is computed from such a clock.
var ErrClockNotSet = errors.New("the system clock is not set yet (before 2020); waiting for NTP before evaluating schedules")

// Scheduler decides which fires are due. It holds no state of its own: all
// of it is in the FireStore, so a restart loses nothing.
//
// Missed-run policy (evaluated by Due, at boot and on every tick):
//   - The latest fire at or before now starts if now is still inside its
//     window (At + Window); that is a catch-up when the appliance was off.
//   - Every earlier unhandled fire, and the latest one if its window has
//     closed, is reported as missed. There is at most one catch-up per
//     schedule, however long the appliance was off.
//   - The fire time is persisted (SetLastFire) before the fire is handed
//     out, so a crash at any point cannot start it twice; the price is that
//     a crash between SetLastFire and the runs engine persisting the run
//     loses that one fire (at most once, never twice).
//   - A schedule seen for the first time starts counting from now: it never
//     fires retroactively. When the admin edits a schedule's spec, the
//     appliance should SetLastFire(now) for it, for the same reason (else a
//     fire of the new spec between the old LastFire and now may catch up). A disabled schedule is moved forward silently, so
//     enabling it later does not produce a backlog of missed fires.
//
// Clock going backwards: if now is before the stored LastFire by at most
// MaxBackstep (an NTP correction), nothing fires until the clock passes
// LastFire again, so no fire is repeated. If it is further back, the stored
// time is taken as coming from a wrong clock; the schedule is re-based at now
// and the event is reported (as a Missed entry with Count 0).
type Scheduler struct {
	Store FireStore
	Clock Clock
	Loc   *time.Location // the appliance's zone; nil means UTC
	Log   *slog.Logger
	// MaxBackstep: default DefaultMaxBackstep.
	MaxBackstep time.Duration
	// MaxSleep bounds Run's sleep so edits and clock steps are noticed;
	// default one minute.
	MaxSleep time.Duration
}

const DefaultMaxBackstep = 2 * time.Hour

func (s *Scheduler) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

// Due evaluates schedules at Clock.Now(), persists what it hands out, and
// returns the fires to start now and the fires that were missed. Errors for
// one schedule do not stop the others; they are joined in err.
func (s *Scheduler) Due(ctx context.Context, schedules []Schedule) (fires []Fire, missed []Missed, err error) {
	now := s.Clock.Now()
	if now.Year() < 2020 {
		return nil, nil, ErrClockNotSet
	}
	maxBack := s.MaxBackstep
	if maxBack <= 0 {
		maxBack = DefaultMaxBackstep
	}
	sorted := slices.Clone(schedules)
	slices.SortFunc(sorted, func(a, b Schedule) int { return cmpString(a.ID, b.ID) })
	var errs []error
	for _, sc := range sorted {
		if err := ctx.Err(); err != nil {
			return fires, missed, err
		}
		f, m, err := s.due(ctx, sc, now, maxBack)
		if err != nil {
			errs = append(errs, fmt.Errorf("schedule %s (%s): %w", sc.ID, clip(sc.Name), err))
			continue
		}
		if f != nil {
			fires = append(fires, *f)
		}
		if m != nil {
			missed = append(missed, *m)
		}
	}
	return fires, missed, errors.Join(errs...)
}

func (s *Scheduler) due(ctx context.Context, sc Schedule, now time.Time, maxBack time.Duration) (*Fire, *Missed, error) {
	if err := sc.Validate(); err != nil {
		return nil, nil, fmt.Errorf("not evaluated: %w", err)
	}
	last, err := s.Store.LastFire(ctx, sc.ID)
	if err != nil {
		return nil, nil, fmt.Errorf("read last fire time: %w", err)
	}
	loc := orUTC(s.Loc)
	set := func(t time.Time) error {
		if err := s.Store.SetLastFire(ctx, sc.ID, t); err != nil {
			return fmt.Errorf("persist last fire time (nothing started; check the state store): %w", err)
		}
		return nil
	}

	switch {
	case last.IsZero():
		return nil, nil, set(now)
	case last.After(now):
		back := last.Sub(now)
		if back <= maxBack {
			return nil, nil, nil // wait for the clock to catch up; nothing repeats
		}
		s.log().Warn("clock went backwards; re-basing schedule", "schedule", sc.ID, "last_fire", last, "now", now)
		if err := set(now); err != nil {
			return nil, nil, err
		}
		return nil, &Missed{ScheduleID: sc.ID, Name: sc.Name, Kind: MissClock,
			Reason: fmt.Sprintf("the clock went back %v (from %s to %s); schedule restarted from now", back.Round(time.Second), last.In(loc).Format(time.DateTime), now.In(loc).Format(time.DateTime))}, nil
	}

	next := sc.Spec.Next(last, loc)
	if next.IsZero() || next.After(now) {
		return nil, nil, nil
	}
	if !sc.Enabled {
		return nil, nil, set(now)
	}
	latest := sc.Spec.Prev(now, loc)
	if latest.Before(next) { // cannot happen for a consistent Next/Prev; be safe
		latest = next
	}
	open := now.Before(latest.Add(sc.Window))

	// Count and list what was missed: everything in [next, latest), plus
	// latest itself if its window has closed.
	var m Missed
	end := latest
	if !open {
		end = latest.Add(time.Nanosecond)
	}
	for t := next; t.Before(end) && !t.IsZero(); t = sc.Spec.Next(t, loc) {
		m.Count++
		m.Fires = append(m.Fires, t)
		if len(m.Fires) > MaxListedMissed {
			m.Fires = m.Fires[1:]
		}
		if m.Count >= MaxCountedMissed {
			// Skip ahead; the listed fires must stay the most recent ones.
			m.Fires = m.Fires[:0]
			for t2 := sc.Spec.Prev(end.Add(-time.Nanosecond), loc); len(m.Fires) < MaxListedMissed && !t2.IsZero() && !t2.Before(next); t2 = sc.Spec.Prev(t2.Add(-time.Nanosecond), loc) {
				m.Fires = append([]time.Time{t2}, m.Fires...)
			}
			break
		}
	}

	// Persist before handing anything out: a crash after this point can lose
	// the fire but never start it twice.
	if err := set(latest); err != nil {
		return nil, nil, err
	}

	var mp *Missed
	if m.Count > 0 {
		m.ScheduleID, m.Name = sc.ID, sc.Name
		m.Kind = MissDown
		m.Reason = fmt.Sprintf("the appliance was not running when due; a run may only start within its %v window", sc.Window)
		if open {
			m.Kind = MissSuperseded
			m.Reason = fmt.Sprintf("superseded by the catch-up run of %s (at most one catch-up per schedule)", latest.In(loc).Format(time.DateTime))
		}
		mp = &m
		s.log().Warn("missed schedule fires", "schedule", sc.ID, "count", m.Count, "reason", m.Reason)
	}
	if !open {
		return nil, mp, nil
	}
	f := &Fire{Schedule: sc, At: latest, Deadline: latest.Add(sc.Window), Late: now.Sub(latest)}
	s.log().Info("schedule fires", "schedule", sc.ID, "at", latest, "late", f.Late.Round(time.Second), "deadline", f.Deadline)
	return f, mp, nil
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Run evaluates the schedules from list until ctx ends, calling start for
// each due fire (after it has been persisted) and missed for each missed
// report. start should only record the run (quickly) and return; if it
// fails, the fire is reported as missed with the error. Run sleeps until the
// next fire, at most MaxSleep, so edited schedules and clock steps are seen.
func (s *Scheduler) Run(ctx context.Context, list func(context.Context) ([]Schedule, error),
	start func(context.Context, Fire) error, missed func(context.Context, Missed)) error {
	if missed == nil {
		missed = func(context.Context, Missed) {}
	}
	maxSleep := s.MaxSleep
	if maxSleep <= 0 {
		maxSleep = time.Minute
	}
	for {
		wait := maxSleep
		scheds, err := list(ctx)
		if err != nil {
			s.log().Error("cannot list schedules; retrying", "err", err)
		} else {
			fires, ms, err := s.Due(ctx, scheds)
			if err != nil {
				s.log().Error("evaluating schedules", "err", err)
			}
			for _, m := range ms {
				missed(ctx, m)
			}
			for _, f := range fires {
				if err := start(ctx, f); err != nil {
					s.log().Error("could not start scheduled run", "schedule", f.Schedule.ID, "at", f.At, "err", err)
					missed(ctx, Missed{ScheduleID: f.Schedule.ID, Name: f.Schedule.Name, Fires: []time.Time{f.At}, Count: 1, Kind: MissStartFailed,
						Reason: fmt.Sprintf("the run could not be started: %v", err)})
				}
			}
			now := s.Clock.Now()
			for _, sc := range scheds {
				if n := sc.Spec.Next(now, orUTC(s.Loc)); sc.Enabled && !n.IsZero() && n.Sub(now) < wait {
					wait = n.Sub(now)
				}
			}
		}
		// A floor keeps a wall clock that lags the timer from spinning.
		wait = max(wait, 100*time.Millisecond)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.Clock.After(wait):
		}
	}
}
