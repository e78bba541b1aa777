package reimage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pumi-lab/pumi/internal/notify"
	"github.com/pumi-lab/pumi/internal/power"
	"github.com/pumi-lab/pumi/internal/schedule"
	"github.com/pumi-lab/pumi/internal/seatjob"
	"github.com/pumi-lab/pumi/internal/store"
)

// Buckets owned by this package. Events are keyed "<run ID>|<seq>" so one
// run's log is a prefix scan in commit order.
var (
	runsB     = store.NewBucket[Run]("reimage-runs")
	eventsB   = store.NewBucket[Event]("reimage-events")
	verifiedB = store.NewBucket[VerifiedImage]("reimage-verified")
)

// Engine runs runs. Create it with New; Run reconciles until its context
// ends. All state is in the store: two Engines must not share one store at
// the same time (the store's file lock already prevents two processes).
type Engine struct {
	st    *store.Store
	lab   Lab
	pw    Power
	rep   Reporter
	clock schedule.Clock
	cfg   Config
	log   *slog.Logger
	// Loc is the zone report times are printed in (nil: UTC).
	Loc *time.Location

	poke chan struct{} // a new run or a cancel: reconcile now
	mu   sync.Mutex    // one reconciliation at a time
	soon bool          // the last Tick left a seat waiting only for WakeGap
}

// New returns an engine. clock nil means the system clock, log nil discards.
func New(st *store.Store, lab Lab, pw Power, rep Reporter, cfg Config, clock schedule.Clock, log *slog.Logger) *Engine {
	if clock == nil {
		clock = schedule.SystemClock{}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Engine{st: st, lab: lab, pw: pw, rep: rep, clock: clock, cfg: cfg.withDefaults(),
		log: log.With("pkg", "reimage"), poke: make(chan struct{}, 1)}
}

// Poke makes the engine reconcile now; the appliance calls it on every seat
// job change (Clonezilla's reports, a network boot), so the engine follows a
// seat within moments instead of at the next tick. It never blocks.
func (e *Engine) Poke() { e.wake() }

func (e *Engine) wake() {
	select {
	case e.poke <- struct{}{}:
	default:
	}
}

// StartFire records the run for a schedule fire. Its ID is f.Key(), so a
// fire handed out twice (a replay after a crash) yields the same run: the
// second call returns nil and changes nothing. It is meant as the start
// callback of schedule.Scheduler.Run: it only records and returns.
func (e *Engine) StartFire(ctx context.Context, f schedule.Fire) error {
	window := f.Deadline.Sub(f.At)
	if window <= 0 {
		window = f.Schedule.Window
	}
	_, err := e.start(ctx, f.Key(), f.Schedule.ID, f.Schedule.Name, f.Schedule.Action, f.Schedule.Target,
		f.At, f.Deadline, window, f.Schedule.OnlyUnverified)
	return err
}

// Start records a manual run. An empty req.ID gets one from the clock;
// an existing ID returns the existing run unchanged.
func (e *Engine) Start(ctx context.Context, req Request) (Run, error) {
	now := e.clock.Now()
	id := req.ID
	if id == "" {
		id = "manual-" + now.UTC().Format("20060102T150405.000000000Z")
	}
	return e.start(ctx, id, req.ScheduleID, req.Name, req.Action, req.Target, now, now.Add(req.Window), req.Window, req.OnlyUnverified)
}

func (e *Engine) start(ctx context.Context, id, schedID, name string, act schedule.Action, target schedule.Target,
	at, deadline time.Time, window time.Duration, onlyUnverified bool) (Run, error) {
	if err := checkRequest(id, act, target, window); err != nil {
		return Run{}, err
	}
	// An existing run is returned before the inventory is asked, so a
	// replayed fire is a no-op even if the inventory changed meanwhile.
	if r, ok, err := e.Get(ctx, id); err != nil || ok {
		return r, err
	}
	if act.Kind == schedule.Capture {
		target = schedule.Target{Seats: []string{act.SourceSeat}}
	}
	seats, err := e.lab.Seats(ctx, target, act.Image)
	if err != nil {
		return Run{}, fmt.Errorf("run %s: resolving its seats: %w", id, err)
	}
	if len(seats) == 0 {
		return Run{}, fmt.Errorf("run %s: the target names no seats; add seats to the room or pick another target", id)
	}
	now := e.clock.Now()
	r := Run{ID: id, ScheduleID: schedID, ScheduleName: name, Action: act.Kind, Image: act.Image,
		OnlyUnverified: onlyUnverified, Target: target, Created: now, Deadline: deadline, State: RunOpen}
	var created bool
	err = e.st.Update(ctx, func(tx *store.Tx) error {
		old, ok, err := runsB.Get(tx, id)
		if err != nil || ok {
			r = old
			return err
		}
		evs := []Event{{Cause: fmt.Sprintf("run created: %s %s on %d seats, window until %s",
			act.Kind, act.Image, len(seats), deadline.UTC().Format(time.RFC3339))}}
		// A seat still walking in another open run is left to it: two runs
		// handing out jobs for one seat would keep replacing each other's.
		busy := map[string]string{}
		err = runsB.ForEach(tx, func(_ string, o Run) error {
			if o.State != RunOpen {
				return nil
			}
			for _, s := range o.Seats {
				if !s.settled() {
					busy[s.Seat.MAC] = o.ID
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, s := range seats {
			if seen[s.MAC] {
				continue // a seat named twice (room and seat list) is imaged once
			}
			seen[s.MAC] = true
			v, _, err := verifiedB.Get(tx, s.MAC)
			if err != nil {
				return err
			}
			sr := SeatRun{Seat: s, State: Pending, Since: now, Running: v.Image}
			sr.Phases = map[SeatState]time.Time{Pending: now}
			switch {
			case busy[s.MAC] != "":
				sr.State, sr.Reason, sr.Finished = Skipped, "busy in run "+busy[s.MAC], now
			case onlyUnverified && act.Image != "" && v.Image == act.Image:
				sr.State, sr.Reason, sr.Finished = Skipped, "already verified on "+act.Image, now
			}
			sr.LastEvent = string(sr.State)
			r.Seats = append(r.Seats, sr)
			evs = append(evs, Event{MAC: s.MAC, State: sr.State, Cause: cmpOr(sr.Reason, "added to the run")})
		}
		if act.Kind == schedule.Restore {
			n := 0
			for _, sr := range r.Seats {
				if sr.State == Pending {
					n++
				}
			}
			r.Transport = schedule.Unicast
			if act.Multicast(n) {
				r.Transport = schedule.Multicast
				r.Notes = append(r.Notes, fmt.Sprintf("multicast: one stream for %d seats; a seat that misses it restores by unicast", n))
			}
		}
		if err := runsB.Put(tx, id, r); err != nil {
			return err
		}
		created = true
		return appendEvents(tx, id, now, evs)
	})
	if err != nil {
		return Run{}, fmt.Errorf("run %s: saving: %w", id, err)
	}
	if created {
		e.log.Info("run created", "run", id, "action", act.Kind, "image", act.Image, "seats", len(r.Seats), "late", now.Sub(at))
		e.wake()
	}
	return r, nil
}

func checkRequest(id string, act schedule.Action, target schedule.Target, window time.Duration) error {
	var errs []error
	if id == "" || strings.ContainsAny(id, "|\n") {
		errs = append(errs, fmt.Errorf("run id %q is empty or contains '|' or a newline", id))
	}
	switch act.Kind {
	case schedule.Restore, schedule.Capture, schedule.Verify:
		if act.Image == "" {
			errs = append(errs, fmt.Errorf("a %s run needs an image name", act.Kind))
		}
	case schedule.Wake, schedule.Shutdown:
	default:
		errs = append(errs, fmt.Errorf("unknown action %q (want restore, capture, verify, wake or shutdown)", act.Kind))
	}
	if act.Kind == schedule.Capture && act.SourceSeat == "" {
		errs = append(errs, errors.New("a capture run needs its source seat"))
	}
	if act.Kind != schedule.Capture && len(target.Rooms) == 0 && len(target.Seats) == 0 {
		errs = append(errs, errors.New("the run has no target: name rooms or seats"))
	}
	if window <= 0 {
		errs = append(errs, fmt.Errorf("window %s must be positive", window))
	}
	return errors.Join(errs...)
}

// Get returns a run.
func (e *Engine) Get(ctx context.Context, id string) (r Run, ok bool, err error) {
	err = e.st.View(ctx, func(tx *store.Tx) error {
		r, ok, err = runsB.Get(tx, id)
		return err
	})
	return r, ok, err
}

// Runs lists every run in ID order.
func (e *Engine) Runs(ctx context.Context) (rs []Run, err error) {
	err = e.st.View(ctx, func(tx *store.Tx) error {
		rs, err = runsB.List(tx)
		return err
	})
	return rs, err
}

// Events returns a run's log in commit order.
func (e *Engine) Events(ctx context.Context, runID string) (evs []Event, err error) {
	err = e.st.View(ctx, func(tx *store.Tx) error {
		return eventsB.ForEachPrefix(tx, runID+"|", func(_ string, ev Event) error {
			evs = append(evs, ev)
			return nil
		})
	})
	return evs, err
}

// RunLog renders a run's log as text, one event per line (the download of
// the API and the mail's attachment).
func (e *Engine) RunLog(ctx context.Context, runID string) ([]byte, error) {
	evs, err := e.Events(ctx, runID)
	if err != nil {
		return nil, err
	}
	loc := e.Loc
	if loc == nil {
		loc = time.UTC
	}
	var b strings.Builder
	for _, ev := range evs {
		fmt.Fprintf(&b, "%s %-17s %-10s #%d %s\n", ev.Time.In(loc).Format("2006-01-02 15:04:05.000 MST"),
			cmpOr(ev.MAC, "-"), cmpOr(string(ev.State), "-"), ev.Attempt, ev.Cause)
	}
	return []byte(b.String()), nil
}

// LastVerified is the image last verified on the seat ("" if none).
func (e *Engine) LastVerified(ctx context.Context, mac string) (v VerifiedImage, err error) {
	err = e.st.View(ctx, func(tx *store.Tx) error {
		v, _, err = verifiedB.Get(tx, mac)
		return err
	})
	return v, err
}

// Cancel stops a run: its unfinished seats fail with reason at the next
// reconciliation (their jobs are cancelled) and the report follows.
func (e *Engine) Cancel(ctx context.Context, runID, reason string) error {
	reason = cmpOr(reason, "cancelled by admin")
	err := e.mutate(ctx, runID, func(_ *store.Tx, r *Run, now time.Time) ([]Event, error) {
		if r.State != RunOpen || r.Cancelled != "" {
			return nil, nil
		}
		r.Cancelled = reason
		r.Notes = append(r.Notes, reason)
		return []Event{{Cause: "run cancel requested: " + reason}}, nil
	})
	if err == nil {
		e.wake()
	}
	return err
}

// CancelSeat fails one seat of a run for good ("cancelled by admin") and
// cancels its job; the other seats continue.
func (e *Engine) CancelSeat(ctx context.Context, runID, mac string) error {
	found := false
	err := e.mutate(ctx, runID, func(_ *store.Tx, r *Run, now time.Time) ([]Event, error) {
		for i := range r.Seats {
			if r.Seats[i].Seat.MAC != mac {
				continue
			}
			found = true
			if r.Seats[i].settled() {
				return nil, nil
			}
			return []Event{r.fail(i, now, "cancelled by admin", true)}, nil
		}
		return nil, nil
	})
	if err == nil && !found {
		return fmt.Errorf("run %s has no seat %s", runID, mac)
	}
	if err == nil {
		e.wake()
	}
	return err
}

// errNotFound keeps mutate's callers' messages short.
var errNotFound = errors.New("no such run")

// mutate applies fn to the stored run in one transaction; the events fn
// returns are appended to the run's log in the same transaction.
func (e *Engine) mutate(ctx context.Context, id string, fn func(tx *store.Tx, r *Run, now time.Time) ([]Event, error)) error {
	now := e.clock.Now()
	var evs []Event
	err := e.st.Update(ctx, func(tx *store.Tx) error {
		r, ok, err := runsB.Get(tx, id)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("run %s: %w", id, errNotFound)
		}
		evs, err = fn(tx, &r, now)
		if err != nil || len(evs) == 0 {
			return err
		}
		if err := runsB.Put(tx, id, r); err != nil {
			return err
		}
		return appendEvents(tx, id, now, evs)
	})
	if err != nil {
		return fmt.Errorf("run %s: saving a change: %w", id, err)
	}
	for _, ev := range evs {
		e.log.Info(ev.Cause, "run", id, "mac", ev.MAC, "state", ev.State, "attempt", ev.Attempt)
	}
	return nil
}

func appendEvents(tx *store.Tx, runID string, now time.Time, evs []Event) error {
	for _, ev := range evs {
		ev.RunID = runID
		if ev.Time.IsZero() {
			ev.Time = now
		}
		n, err := eventsB.NextSeq(tx)
		if err != nil {
			return err
		}
		if err := eventsB.Put(tx, runID+"|"+store.SeqKey(n), ev); err != nil {
			return err
		}
	}
	return nil
}

// set moves seat i to st and returns the event recording why.
func (r *Run) set(i int, st SeatState, now time.Time, cause string) Event {
	s := &r.Seats[i]
	s.State, s.Since, s.Acted, s.NextTry, s.LastEvent = st, now, false, time.Time{}, cause
	if s.Phases == nil {
		s.Phases = map[SeatState]time.Time{}
	}
	s.Phases[st] = now
	if s.Started.IsZero() && (st == Powering || st == Verifying) {
		s.Started = now
	}
	if st.terminalOK() || st == Failed {
		s.Finished = now
	}
	if st != Failed {
		s.Reason, s.Final = "", false
	}
	return Event{MAC: s.Seat.MAC, State: st, Attempt: s.Attempts, Cause: cause}
}

// fail moves seat i to failed; a job it may still have is marked for
// cancellation (done after the commit, redone after a crash).
func (r *Run) fail(i int, now time.Time, reason string, final bool) Event {
	s := &r.Seats[i]
	if s.JobKey != "" && (s.State.active() || s.State == Pending) {
		s.CancelJob = s.JobKey
	}
	ev := r.set(i, Failed, now, "failed: "+reason)
	s.Reason, s.Final = reason, final
	return ev
}

// Run reconciles open runs until ctx ends: at once (runs left open by a
// crash or power cut continue from their persisted state), every Tick,
// and whenever a run is started or cancelled.
func (e *Engine) Run(ctx context.Context) error {
	for {
		if err := e.Tick(ctx); err != nil && ctx.Err() == nil {
			e.log.Error("reconciling runs failed; retrying at the next tick", "err", err)
		}
		sleep := e.cfg.Tick
		if e.soon && e.cfg.WakeGap < sleep {
			sleep = e.cfg.WakeGap
		}
		select {
		case <-ctx.Done():
			return nil
		case <-e.poke:
		case <-e.clock.After(sleep):
		}
	}
}

// Tick reconciles every open run once: it commits the transitions that
// need no outside information, acts on them (jobs, power, SSH) in
// parallel, commits the outcomes, and reports finished runs.
func (e *Engine) Tick(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	var ids []string
	err := e.st.View(ctx, func(tx *store.Tx) error {
		return runsB.ForEach(tx, func(k string, r Run) error {
			if r.State == RunOpen || !r.Reported || r.cancelsPending() {
				ids = append(ids, k)
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("listing open runs: %w", err)
	}
	e.soon = false
	var errs []error
	for _, id := range ids {
		if err := e.step(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (e *Engine) step(ctx context.Context, id string) error {
	if err := e.mutate(ctx, id, e.plan); err != nil {
		return err
	}
	r, _, err := e.Get(ctx, id)
	if err != nil {
		return err
	}
	if r.State == RunOpen || r.cancelsPending() {
		if err := e.act(ctx, r); err != nil {
			return err
		}
		// Outcomes may have settled the last seats.
		if err := e.mutate(ctx, id, e.plan); err != nil {
			return err
		}
		if r, _, err = e.Get(ctx, id); err != nil {
			return err
		}
	}
	if r.State == RunFinished && !r.Reported {
		return e.report(ctx, r)
	}
	return nil
}

// plan makes the transitions that depend only on the run and the clock.
func (e *Engine) plan(tx *store.Tx, r *Run, now time.Time) ([]Event, error) {
	if r.State != RunOpen {
		return nil, nil
	}
	c := e.cfg
	var evs []Event
	closing := r.Cancelled
	if closing == "" && !now.Before(r.Deadline) {
		closing = "window closed"
	}
	for i := range r.Seats {
		s := &r.Seats[i]
		if s.settled() {
			continue
		}
		if closing != "" {
			reason := closing
			if s.State == Failed && s.Reason != "" {
				reason = s.Reason + "; then " + closing
			}
			if s.State == Restoring {
				// The job is ended, not cut: Clonezilla keeps its NFS access
				// and finishes (seatjob.Jobs.Cancel); until then the disk is
				// half-written, and the admin must know.
				reason += " while Clonezilla was writing the disk (left to finish; the disk may be half-written)"
			}
			evs = append(evs, r.fail(i, now, reason, true))
			continue
		}
		age := now.Sub(s.Since)
		switch s.State {
		case Failed:
			if s.Attempts >= c.MaxAttempts {
				s.Final = true
				evs = append(evs, Event{MAC: s.Seat.MAC, State: Failed, Attempt: s.Attempts,
					Cause: fmt.Sprintf("giving up after %d attempts: %s", s.Attempts, s.Reason)})
			} else if age >= c.RetryDelay {
				evs = append(evs, r.set(i, Pending, now, fmt.Sprintf("retrying after: %s", s.Reason)))
			}
		case Powering:
			if age >= c.PowerTimeout {
				why := "did not network-boot within " + c.PowerTimeout.String()
				if !s.Acted {
					why = "could not be powered within " + c.PowerTimeout.String() + " (" + s.LastEvent + ")"
				}
				evs = append(evs, r.fail(i, now, why, false))
			}
		case Netbooting:
			if age >= c.NetbootTimeout {
				evs = append(evs, r.fail(i, now, "Clonezilla did not start within "+c.NetbootTimeout.String(), false))
			}
		case Restoring:
			if age >= c.RestoreTimeout {
				evs = append(evs, r.fail(i, now, "restore did not finish within "+c.RestoreTimeout.String(), false))
			}
		case Rebooting:
			if age >= c.RebootDelay {
				ev := r.set(i, Verifying, now, "checking the image over SSH")
				s.NextTry = now
				evs = append(evs, ev)
			}
		}
	}
	started, evs2 := e.startPending(r, now)
	evs = append(evs, evs2...)
	if r.Action == schedule.Restore {
		// A restore handed out makes the disk half-written until it is
		// verified again: an "only unverified" run must not skip it.
		for _, mac := range started {
			if err := verifiedB.Delete(tx, mac); err != nil {
				return nil, err
			}
		}
	}
	if r.allSettled() {
		r.State, r.Finished = RunFinished, now
		evs = append(evs, Event{Cause: "run finished: " + r.summary()})
	}
	return evs, nil
}

// startPending moves pending seats on, within MaxRestoring and WakeGap; it
// returns the MACs it powered.
func (e *Engine) startPending(r *Run, now time.Time) (started []string, evs []Event) {
	active := 0
	for _, s := range r.Seats {
		if s.State.active() {
			active++
		}
	}
	for i := range r.Seats {
		s := &r.Seats[i]
		if s.State != Pending {
			continue
		}
		if r.Action == schedule.Verify {
			// A read over SSH loads nothing; no slot, no stagger.
			s.Attempts++
			ev := r.set(i, Verifying, now, "checking the image over SSH")
			s.NextTry = now
			evs = append(evs, ev)
			continue
		}
		if active >= e.cfg.MaxRestoring {
			break
		}
		if !r.LastStart.IsZero() && now.Sub(r.LastStart) < e.cfg.WakeGap {
			e.soon = true
			break
		}
		s.Attempts++
		s.JobKey = ""
		if r.Action == schedule.Restore || r.Action == schedule.Capture {
			s.JobKey = JobKey(r.ID, s.Attempts)
		}
		r.LastStart = now
		active++
		started = append(started, s.Seat.MAC)
		evs = append(evs, r.set(i, Powering, now, fmt.Sprintf("attempt %d: powering", s.Attempts)))
	}
	return started, evs
}

func (r *Run) cancelsPending() bool {
	for _, s := range r.Seats {
		if s.CancelJob != "" {
			return true
		}
	}
	return false
}

func (r *Run) allSettled() bool {
	for _, s := range r.Seats {
		if !s.settled() {
			return false
		}
	}
	return true
}

func (r *Run) summary() string {
	n := map[SeatState]int{}
	for _, s := range r.Seats {
		n[s.State]++
	}
	var parts []string
	for _, st := range []SeatState{Verified, Done, Skipped, Failed} {
		if n[st] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n[st], st))
		}
	}
	return strings.Join(parts, ", ")
}

// outcome is an action's result, applied to the freshly loaded run only if
// the seat is still where the action found it (same state and attempt): a
// cancel or a window close that happened meanwhile wins.
type outcome struct {
	i       int
	state   SeatState
	attempt int
	apply   func(tx *store.Tx, r *Run, now time.Time) ([]Event, error)
}

// act performs the actions that the persisted state asks for.
func (e *Engine) act(ctx context.Context, r Run) error {
	var (
		mu   sync.Mutex
		outs []outcome
		wg   sync.WaitGroup
	)
	now := e.clock.Now()
	for i, s := range r.Seats {
		var fn func(ctx context.Context) func(*store.Tx, *Run, time.Time) ([]Event, error)
		switch {
		case s.CancelJob != "":
			fn = e.cancelJob(s)
		case r.State != RunOpen:
		case s.State == Powering && !s.Acted:
			fn = e.powerOn(r, s)
		case s.State == Powering || s.State == Netbooting || s.State == Restoring:
			fn = e.pollJob(r, s)
		case s.State == Verifying && !now.Before(s.NextTry):
			fn = e.verify(r, s)
		}
		if fn == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			actx, cancel := context.WithTimeout(ctx, e.cfg.ActionTimeout)
			defer cancel()
			apply := fn(actx)
			if apply == nil {
				return
			}
			mu.Lock()
			outs = append(outs, outcome{i: i, state: s.State, attempt: s.Attempts, apply: apply})
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(outs) == 0 || ctx.Err() != nil {
		return ctx.Err()
	}
	slices.SortFunc(outs, func(a, b outcome) int { return a.i - b.i })
	return e.mutate(ctx, r.ID, func(tx *store.Tx, fr *Run, now time.Time) ([]Event, error) {
		var evs []Event
		for _, o := range outs {
			if o.i >= len(fr.Seats) || fr.Seats[o.i].State != o.state || fr.Seats[o.i].Attempts != o.attempt {
				continue
			}
			ev, err := o.apply(tx, fr, now)
			if err != nil {
				return nil, err
			}
			evs = append(evs, ev...)
		}
		return evs, nil
	})
}

type applyFn = func(*store.Tx, *Run, time.Time) ([]Event, error)

// seatIndex finds the seat by MAC in a freshly loaded run.
func seatIndex(r *Run, mac string) int {
	for i := range r.Seats {
		if r.Seats[i].Seat.MAC == mac {
			return i
		}
	}
	return -1
}

func (e *Engine) cancelJob(s SeatRun) func(context.Context) applyFn {
	return func(ctx context.Context) applyFn {
		if err := e.lab.CancelJob(ctx, s.Seat.MAC, s.CancelJob); err != nil {
			e.log.Warn("cancelling a job failed; retrying at the next tick", "mac", s.Seat.MAC, "job", s.CancelJob, "err", err)
			return nil
		}
		key := s.CancelJob
		return func(_ *store.Tx, r *Run, now time.Time) ([]Event, error) {
			i := seatIndex(r, s.Seat.MAC)
			if r.Seats[i].CancelJob != key {
				return nil, nil
			}
			r.Seats[i].CancelJob = ""
			return []Event{{MAC: s.Seat.MAC, State: r.Seats[i].State, Attempt: r.Seats[i].Attempts,
				Cause: "job " + key + " cancelled"}}, nil
		}
	}
}

// powerOn hands out the job (restore/capture) and gets the seat to boot:
// an SSH reboot if it answers, Wake-on-LAN if it does not.
func (e *Engine) powerOn(r Run, s SeatRun) func(context.Context) applyFn {
	return func(ctx context.Context) applyFn {
		mac := s.Seat.MAC
		note := func(cause string) applyFn {
			return func(_ *store.Tx, r *Run, now time.Time) ([]Event, error) {
				i := seatIndex(r, mac)
				r.Seats[i].LastEvent = cause
				return []Event{{MAC: mac, State: Powering, Attempt: s.Attempts, Cause: cause}}, nil
			}
		}
		done := func(cause string, then SeatState) applyFn {
			return func(_ *store.Tx, r *Run, now time.Time) ([]Event, error) {
				i := seatIndex(r, mac)
				if then != Powering {
					return []Event{r.set(i, then, now, cause)}, nil
				}
				r.Seats[i].Acted, r.Seats[i].LastEvent = true, cause
				return []Event{{MAC: mac, State: Powering, Attempt: s.Attempts, Cause: cause}}, nil
			}
		}
		failed := func(reason string) applyFn {
			return func(_ *store.Tx, r *Run, now time.Time) ([]Event, error) {
				return []Event{r.fail(seatIndex(r, mac), now, reason, false)}, nil
			}
		}
		switch r.Action {
		case schedule.Wake:
			if err := e.pw.Wake(ctx, []Seat{s.Seat}); err != nil {
				return failed("Wake-on-LAN: " + power.Reason(err))
			}
			return done("Wake-on-LAN sent", Done)
		case schedule.Shutdown:
			if err := e.pw.Shutdown(ctx, s.Seat, s.Running); err != nil {
				return failed("shutdown: " + power.Reason(err))
			}
			return done("shut down over SSH", Done)
		}
		job := Job{Key: s.JobKey, RunID: r.ID, Seat: s.Seat, Action: r.Action, Image: r.Image}
		if r.Transport == schedule.Multicast && s.Attempts == 1 {
			// Only the first attempt joins the room's stream: a retry is
			// one seat alone, and the stream has long gone.
			job.Group = r.ID
		}
		if err := e.lab.StartJob(ctx, job); errors.Is(err, seatjob.ErrNoAddress) || errors.Is(err, seatjob.ErrUnknownSeat) {
			// No retry helps: pumi would not know the seat's traffic from a
			// visitor's until the admin records its address.
			return func(_ *store.Tx, r *Run, now time.Time) ([]Event, error) {
				return []Event{r.fail(seatIndex(r, mac), now, "not restorable: "+err.Error(), true)}, nil
			}
		} else if err != nil {
			// Not a seat failure: the appliance could not record the job
			// (e.g. its state file is busy). Tried again next tick until
			// PowerTimeout.
			return note("could not hand out the job: " + err.Error())
		}
		err := e.pw.Reboot(ctx, s.Seat, s.Running)
		switch {
		case err == nil:
			return done("job "+job.Key+" handed out; rebooted over SSH", Powering)
		case errors.Is(err, power.ErrUnreachable):
			if werr := e.pw.Wake(ctx, []Seat{s.Seat}); werr != nil {
				return note("not answering SSH and Wake-on-LAN failed: " + power.Reason(werr))
			}
			return done("job "+job.Key+" handed out; not answering SSH ("+power.Reason(err)+"), Wake-on-LAN sent", Powering)
		default:
			// The seat runs but will not let pumi reboot it (wrong
			// password, changed host key, no sudo rule): say so now rather
			// than after PowerTimeout.
			return failed("reboot: " + power.Reason(err))
		}
	}
}

// pollJob follows the appliance's job: booted, running, done or failed.
func (e *Engine) pollJob(r Run, s SeatRun) func(context.Context) applyFn {
	return func(ctx context.Context) applyFn {
		mac := s.Seat.MAC
		js, err := e.lab.JobState(ctx, mac, s.JobKey)
		if errors.Is(err, seatjob.ErrNoJob) {
			return func(_ *store.Tx, r *Run, now time.Time) ([]Event, error) {
				i := seatIndex(r, mac)
				return []Event{r.fail(i, now, "its job "+s.JobKey+" was removed on the appliance", false)}, nil
			}
		}
		if err != nil {
			e.log.Warn("reading a job failed; retrying at the next tick", "mac", mac, "job", s.JobKey, "err", err)
			return nil
		}
		var next SeatState
		switch js.State {
		case seatjob.Pending:
			return nil
		case seatjob.Booted:
			next = Netbooting
		case seatjob.Running:
			next = Restoring
		case seatjob.Done:
			next = Rebooting
			if r.Action == schedule.Capture {
				next = Done
			}
		case seatjob.Failed:
			next = Failed
		default:
			e.log.Warn("unknown job state", "mac", mac, "state", js.State)
			return nil
		}
		if next == s.State && js.Boots == s.Boots && js.Transport == s.Transport {
			return nil
		}
		return func(tx *store.Tx, r *Run, now time.Time) ([]Event, error) {
			i := seatIndex(r, mac)
			sr := &r.Seats[i]
			again := js.Boots > sr.Boots && sr.Boots > 0
			sr.Boots, sr.Bytes = js.Boots, js.Bytes
			if js.Transport != sr.Transport && js.Transport != "" {
				sr.Transport = js.Transport
				if next == sr.State && !again {
					return []Event{{MAC: mac, State: sr.State, Attempt: sr.Attempts, Cause: "restore by " + js.Transport}}, nil
				}
			}
			switch {
			case next == Failed:
				reason := cmpOr(js.Reason, "reported failure")
				if !strings.HasPrefix(strings.ToLower(reason), "clonezilla") {
					reason = "Clonezilla: " + reason
				}
				return []Event{r.fail(i, now, reason, false)}, nil
			case next == sr.State && again:
				// Same state, new boot: the Since clock restarts so a seat
				// that was powered off mid-restore gets its full time.
				return []Event{r.set(i, next, now, fmt.Sprintf("network-booted again (boot %d): restore starts over", js.Boots))}, nil
			case next == sr.State:
				return nil, nil
			}
			cause := map[SeatState]string{
				Netbooting: fmt.Sprintf("fetched its Clonezilla boot script (boot %d)", js.Boots),
				Restoring:  "Clonezilla started",
				Rebooting:  "Clonezilla reported success; booting its disk",
				Done:       "Clonezilla reported success",
			}[next]
			if again {
				cause = fmt.Sprintf("network-booted again (boot %d): %s", js.Boots, cause)
			} else if js.Boots > 1 && next != Netbooting {
				// Several boots between two looks: a restore was cut
				// (power loss) and started over.
				cause = fmt.Sprintf("%s (boot %d)", cause, js.Boots)
			}
			ev := r.set(i, next, now, cause)
			if next == Rebooting || next == Done {
				sr.Running = ""
			}
			return []Event{ev}, nil
		}
	}
}

// verify logs into the seat and checks its Signature.
func (e *Engine) verify(r Run, s SeatRun) func(context.Context) applyFn {
	return func(ctx context.Context) applyFn {
		mac := s.Seat.MAC
		err := e.pw.Verify(ctx, s.Seat, r.Image)
		if ctx.Err() != nil && err != nil {
			return nil // the engine is stopping; the seat stays verifying and is tried again
		}
		return func(tx *store.Tx, fr *Run, now time.Time) ([]Event, error) {
			i := seatIndex(fr, mac)
			sr := &fr.Seats[i]
			switch {
			case err == nil:
				sr.Running = r.Image
				if err := verifiedB.Put(tx, mac, VerifiedImage{Image: r.Image, At: now, RunID: r.ID}); err != nil {
					return nil, err
				}
				return []Event{fr.set(i, Verified, now, "runs "+r.Image)}, nil
			case errors.Is(err, power.ErrUnreachable) && now.Sub(sr.Since) < e.cfg.VerifyTimeout:
				sr.NextTry = now.Add(e.cfg.VerifyInterval)
				sr.LastEvent = "not reachable yet: " + power.Reason(err)
				return []Event{{MAC: mac, State: Verifying, Attempt: sr.Attempts, Cause: sr.LastEvent}}, nil
			default:
				return []Event{fr.fail(i, now, power.Reason(err), false)}, nil
			}
		}
	}
}

// report hands the finished run's report to the Reporter, then records
// that it did. A crash in between makes it hand it out again, which the
// outbox drops by message ID.
func (e *Engine) report(ctx context.Context, r Run) error {
	log, err := e.RunLog(ctx, r.ID)
	if err != nil {
		return err
	}
	if err := e.rep.RunFinished(ctx, e.Report(r), log); err != nil {
		return fmt.Errorf("run %s: queueing its report: %w", r.ID, err)
	}
	return e.mutate(ctx, r.ID, func(_ *store.Tx, fr *Run, now time.Time) ([]Event, error) {
		if fr.Reported {
			return nil, nil
		}
		fr.Reported = true
		return []Event{{Cause: "report queued"}}, nil
	})
}

// Report is the run's mail report input.
func (e *Engine) Report(r Run) notify.Report {
	rep := notify.Report{RunID: r.ID, Schedule: r.ScheduleName, Action: string(r.Action), Image: r.Image,
		Started: r.Created, Finished: r.Finished, Notes: r.Notes, Loc: e.Loc}
	for _, s := range r.Seats {
		out := string(s.State)
		switch s.State {
		case Verified:
			out = notify.OutcomeVerified
		case Failed:
			out = notify.OutcomeFailed
		case Skipped:
			out = notify.OutcomeSkipped
		}
		rep.Seats = append(rep.Seats, notify.SeatReport{Seat: cmpOr(s.Seat.ID, s.Seat.MAC), Room: s.Seat.Room,
			MAC: s.Seat.MAC, Outcome: out, Reason: s.Reason, Attempts: s.Attempts, Started: s.Started,
			Finished: s.Finished, Bytes: s.Bytes, Via: s.Transport})
	}
	return rep
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// SeatLog writes the seat's part of a run's log to w; ErrNoRun if the run
// does not exist or has no such seat.
func (e *Engine) SeatLog(ctx context.Context, runID, mac string, w io.Writer) error {
	r, ok, err := e.Get(ctx, runID)
	if err != nil {
		return err
	}
	if !ok || seatIndex(&r, mac) < 0 {
		return fmt.Errorf("seat %s in run %s: %w", mac, runID, ErrNoRun)
	}
	evs, err := e.Events(ctx, runID)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "pumi log of seat %s in run %s\n\n", mac, runID)
	for _, ev := range evs {
		if ev.MAC == mac {
			fmt.Fprintf(w, "%s  %-10s  attempt %d  %s\n", ev.Time.UTC().Format(time.RFC3339), ev.State, ev.Attempt, ev.Cause)
		}
	}
	return nil
}
