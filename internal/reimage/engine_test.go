package reimage

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/power"
	"github.com/pumi-lab/pumi/internal/schedule"
	"github.com/pumi-lab/pumi/internal/seatjob"
	"github.com/pumi-lab/pumi/internal/store"
)

// See internal/power/main_test.go: namespace threads must never be the main
// thread, or deleting a test namespace kills the test binary.
func init() { runtime.LockOSThread() }

var t0 = time.Date(2026, 11, 28, 2, 0, 0, 0, time.UTC)

type rig struct {
	t     *testing.T
	ctx   context.Context
	dir   string
	st    *store.Store
	clock *fakeClock
	lab   *fakeLab
	pw    *fakePower
	rep   *fakeReporter
	cfg   Config
	e     *Engine
}

func newRig(t *testing.T, seats int, cfg Config) *rig {
	t.Helper()
	r := &rig{t: t, ctx: context.Background(), dir: t.TempDir(), clock: &fakeClock{t: t0},
		lab: newFakeLab(seats), pw: newFakePower(), rep: &fakeReporter{}, cfg: cfg}
	r.open()
	return r
}

// open (re)opens the store and a fresh engine on it, as a restart would.
func (r *rig) open() {
	r.t.Helper()
	if r.st != nil {
		r.st.Close()
	}
	st, err := store.Open(r.ctx, r.dir, nil)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { st.Close() })
	r.st = st
	r.e = New(st, r.lab, r.pw, r.rep, r.cfg, r.clock, nil)
}

func (r *rig) tick() {
	r.t.Helper()
	if err := r.e.Tick(r.ctx); err != nil {
		r.t.Fatal(err)
	}
}

// advance moves the clock by d, then ticks.
func (r *rig) advance(d time.Duration) {
	r.t.Helper()
	r.clock.Add(d)
	r.tick()
}

func (r *rig) run(id string) Run {
	r.t.Helper()
	run, ok, err := r.e.Get(r.ctx, id)
	if err != nil || !ok {
		r.t.Fatalf("run %s: ok=%v err=%v", id, ok, err)
	}
	return run
}

func (r *rig) states(id string) []SeatState {
	var out []SeatState
	for _, s := range r.run(id).Seats {
		out = append(out, s.State)
	}
	return out
}

func (r *rig) start(action schedule.ActionKind, image string, window time.Duration) string {
	r.t.Helper()
	run, err := r.e.Start(r.ctx, Request{ID: "r1", Action: schedule.Action{Kind: action, Image: image},
		Target: schedule.Target{Rooms: []string{"B"}}, Window: window})
	if err != nil {
		r.t.Fatal(err)
	}
	return run.ID
}

var fastCfg = Config{WakeGap: time.Second, RebootDelay: 30 * time.Second, RetryDelay: time.Minute,
	PowerTimeout: 5 * time.Minute, NetbootTimeout: 5 * time.Minute, RestoreTimeout: 30 * time.Minute,
	VerifyTimeout: 2 * time.Minute, VerifyInterval: 10 * time.Second, MaxAttempts: 2, MaxRestoring: 8}

func TestRestoreWalk(t *testing.T) {
	r := newRig(t, 3, fastCfg)
	id := r.start(schedule.Restore, "LAB-2026-img", 4*time.Hour)
	r.tick()
	// WakeGap: one seat per second.
	if got := r.states(id); got[0] != Powering || got[1] != Pending {
		t.Fatalf("after first tick: %v", got)
	}
	r.advance(time.Second)
	r.advance(time.Second)
	for _, s := range r.run(id).Seats {
		if s.State != Powering || !s.Acted || s.Attempts != 1 {
			t.Fatalf("seat %s: %+v", s.Seat.MAC, s)
		}
	}
	if len(r.pw.reboots) != 3 || len(r.lab.starts) != 3 {
		t.Fatalf("reboots %v starts %v", r.pw.reboots, r.lab.starts)
	}
	for _, s := range r.lab.seats {
		r.lab.setJob(s.MAC, seatjob.Booted, 1)
	}
	r.advance(time.Second)
	for _, s := range r.lab.seats {
		r.lab.setJob(s.MAC, seatjob.Running, 1)
	}
	r.advance(time.Second)
	if got := r.states(id); got[2] != Restoring {
		t.Fatalf("restoring expected: %v", got)
	}
	for _, s := range r.lab.seats {
		r.lab.setJob(s.MAC, seatjob.Done, 1)
	}
	r.advance(time.Second)
	if got := r.states(id); got[0] != Rebooting {
		t.Fatalf("rebooting expected: %v", got)
	}
	r.advance(fastCfg.RebootDelay)
	run := r.run(id)
	for _, s := range run.Seats {
		if s.State != Verified {
			t.Fatalf("seat %+v", s)
		}
	}
	if run.State != RunFinished || !run.Reported || len(r.rep.reports) != 1 {
		t.Fatalf("run %s reported=%v reports=%d", run.State, run.Reported, len(r.rep.reports))
	}
	v, err := r.e.LastVerified(r.ctx, r.lab.seats[1].MAC)
	if err != nil || v.Image != "LAB-2026-img" || v.RunID != id {
		t.Fatalf("verified record %+v %v", v, err)
	}
	log := string(r.rep.logs[0])
	for _, want := range []string{"run created", "attempt 1: powering", "rebooted over SSH", "Clonezilla started",
		"Clonezilla reported success", "runs LAB-2026-img", "run finished: 3 verified", r.lab.seats[2].MAC} {
		if !strings.Contains(log, want) {
			t.Errorf("run log lacks %q:\n%s", want, log)
		}
	}
	// Nothing more happens, and no second report.
	r.advance(time.Hour)
	if len(r.rep.reports) != 1 {
		t.Fatal("second report")
	}
	rep := r.rep.reports[0]
	if len(rep.Seats) != 3 || rep.Seats[0].Outcome != "verified" || rep.Seats[0].Attempts != 1 {
		t.Fatalf("report %+v", rep)
	}
}

func TestRestoringLimitAndStagger(t *testing.T) {
	cfg := fastCfg
	cfg.MaxRestoring = 2
	r := newRig(t, 5, cfg)
	id := r.start(schedule.Restore, "LAB-2026-img", 4*time.Hour)
	for range 10 {
		r.advance(time.Second)
	}
	var active, starts []time.Time
	for _, s := range r.run(id).Seats {
		if s.State.active() {
			active = append(active, s.Since)
		}
		if !s.Started.IsZero() {
			starts = append(starts, s.Started)
		}
	}
	if len(active) != 2 || len(starts) != 2 {
		t.Fatalf("active %d started %d, want 2 (limit)", len(active), len(starts))
	}
	if d := starts[1].Sub(starts[0]); d < cfg.WakeGap {
		t.Fatalf("starts %s apart, want >= %s", d, cfg.WakeGap)
	}
	// One finishes restoring: a slot frees, the next seat starts.
	r.lab.setJob(r.lab.seats[0].MAC, seatjob.Done, 1)
	r.advance(time.Second)
	r.advance(time.Second)
	if got := r.states(id); got[0] != Rebooting || got[2] != Powering || got[3] != Pending {
		t.Fatalf("states %v", got)
	}
}

func TestUnreachableSeatIsWoken(t *testing.T) {
	r := newRig(t, 1, fastCfg)
	r.pw.rebootErr[r.lab.seats[0].MAC] = unreachable()
	id := r.start(schedule.Restore, "LAB-2026-img", time.Hour)
	r.tick()
	if len(r.pw.wakes) != 1 || r.pw.wakes[0] != r.lab.seats[0].MAC {
		t.Fatalf("wakes %v", r.pw.wakes)
	}
	if s := r.run(id).Seats[0]; !s.Acted || !strings.Contains(s.LastEvent, "Wake-on-LAN sent") {
		t.Fatalf("%+v", s)
	}
}

func TestRetriesWithinLimit(t *testing.T) {
	r := newRig(t, 1, fastCfg)
	mac := r.lab.seats[0].MAC
	r.pw.verifyErr[mac] = &power.Error{Op: "verify", Kind: power.ErrWrongImage, Detail: "found LAB-2025, want LAB-2026"}
	id := r.start(schedule.Restore, "LAB-2026-img", 4*time.Hour)
	for attempt := 1; attempt <= 2; attempt++ {
		r.tick()
		j := r.lab.job(mac)
		if j.Key != JobKey(id, attempt) {
			t.Fatalf("attempt %d job %q", attempt, j.Key)
		}
		r.lab.setJob(mac, seatjob.Done, 1)
		r.advance(time.Second)
		r.advance(fastCfg.RebootDelay)
		s := r.run(id).Seats[0]
		if s.State != Failed || !strings.Contains(s.Reason, "wrong image") {
			t.Fatalf("attempt %d: %+v", attempt, s)
		}
		r.advance(fastCfg.RetryDelay)
	}
	run := r.run(id)
	s := run.Seats[0]
	if s.State != Failed || !s.Final || s.Attempts != 2 || run.State != RunFinished {
		t.Fatalf("%+v %s", s, run.State)
	}
	if len(r.rep.reports) != 1 || r.rep.reports[0].Seats[0].Reason != "wrong image: found LAB-2025, want LAB-2026" {
		t.Fatalf("report %+v", r.rep.reports)
	}
}

func TestStateTimeouts(t *testing.T) {
	cfg := fastCfg
	cfg.MaxAttempts = 1
	for _, tc := range []struct {
		job   seatjob.State
		after time.Duration
		want  string
	}{
		{"", cfg.PowerTimeout, "did not network-boot within 5m0s"},
		{seatjob.Booted, cfg.NetbootTimeout, "Clonezilla did not start within 5m0s"},
		{seatjob.Running, cfg.RestoreTimeout, "restore did not finish within 30m0s"},
		{seatjob.Failed, time.Second, "Clonezilla: ocs-sr exited 1"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			r := newRig(t, 1, cfg)
			mac := r.lab.seats[0].MAC
			id := r.start(schedule.Restore, "LAB-2026-img", 4*time.Hour)
			r.tick()
			if tc.job != "" {
				r.lab.setJob(mac, tc.job, 1)
				r.advance(time.Second)
			}
			r.advance(tc.after - time.Second - 1)
			if s := r.run(id).Seats[0]; s.State == Failed && tc.job != seatjob.Failed {
				t.Fatalf("failed early: %+v", s)
			}
			r.advance(2 * time.Second)
			s := r.run(id).Seats[0]
			if s.State != Failed || s.Reason != tc.want || !s.Final {
				t.Fatalf("got %+v", s)
			}
			if tc.job != seatjob.Failed && !r.lab.job(mac).cancelled {
				t.Fatal("timed-out job not cancelled")
			}
		})
	}
}

func TestVerifyUnreachableUntilTimeout(t *testing.T) {
	cfg := fastCfg
	cfg.MaxAttempts = 1
	r := newRig(t, 1, cfg)
	mac := r.lab.seats[0].MAC
	id := r.start(schedule.Verify, "LAB-2026-img", 4*time.Hour)
	r.pw.verifyErr[mac] = unreachable()
	r.tick()
	r.advance(cfg.VerifyInterval)
	if s := r.run(id).Seats[0]; s.State != Verifying || len(r.pw.verifies) != 2 {
		t.Fatalf("%+v verifies %d", s, len(r.pw.verifies))
	}
	r.advance(cfg.VerifyTimeout)
	s := r.run(id).Seats[0]
	if s.State != Failed || !strings.HasPrefix(s.Reason, "unreachable") {
		t.Fatalf("%+v", s)
	}
	if len(r.lab.starts) != 0 || len(r.pw.reboots) != 0 {
		t.Fatal("a verify-only run touched jobs or power")
	}
}

func TestWindowClosed(t *testing.T) {
	r := newRig(t, 2, fastCfg)
	id := r.start(schedule.Restore, "LAB-2026-img", 3*time.Minute)
	r.tick()
	r.advance(time.Second)
	r.advance(3 * time.Minute)
	run := r.run(id)
	for _, s := range run.Seats {
		if s.State != Failed || s.Reason != "window closed" || !s.Final {
			t.Fatalf("%+v", s)
		}
		if !r.lab.job(s.Seat.MAC).cancelled {
			t.Fatalf("job of %s still active after the window closed", s.Seat.MAC)
		}
	}
	if run.State != RunFinished || len(r.rep.reports) != 1 {
		t.Fatalf("%s %d", run.State, len(r.rep.reports))
	}
}

func TestCancelRunAndSeat(t *testing.T) {
	r := newRig(t, 3, fastCfg)
	id := r.start(schedule.Restore, "LAB-2026-img", time.Hour)
	r.tick()
	if err := r.e.CancelSeat(r.ctx, id, r.lab.seats[0].MAC); err != nil {
		t.Fatal(err)
	}
	if err := r.e.CancelSeat(r.ctx, id, "52:54:00:ff:ff:ff"); err == nil {
		t.Fatal("cancel of an unknown seat accepted")
	}
	r.advance(time.Second)
	if got := r.states(id); got[0] != Failed || got[1] != Powering {
		t.Fatalf("%v", got)
	}
	if !r.lab.job(r.lab.seats[0].MAC).cancelled {
		t.Fatal("cancelled seat's job still active")
	}
	if err := r.e.Cancel(r.ctx, id, ""); err != nil {
		t.Fatal(err)
	}
	r.tick()
	run := r.run(id)
	for _, s := range run.Seats {
		if s.State != Failed || s.Reason != "cancelled by admin" || !s.Final {
			t.Fatalf("%+v", s)
		}
	}
	if len(r.rep.reports) != 1 || !slices.Contains(r.rep.reports[0].Notes, "cancelled by admin") {
		t.Fatalf("%+v", r.rep.reports)
	}
	if _, ok, err := r.e.Get(r.ctx, "nope"); err != nil || ok {
		t.Fatal(err)
	}
	if err := r.e.Cancel(r.ctx, "nope", ""); !errors.Is(err, errNotFound) {
		t.Fatalf("cancel of unknown run: %v", err)
	}
}

func TestOnlyUnverifiedSkips(t *testing.T) {
	r := newRig(t, 2, fastCfg)
	id := r.start(schedule.Verify, "LAB-2026-img", time.Hour)
	r.pw.verifyErr[r.lab.seats[1].MAC] = &power.Error{Op: "verify", Kind: power.ErrWrongImage, Detail: "x"}
	r.tick()
	if got := r.states(id); got[0] != Verified {
		t.Fatalf("%v", got)
	}
	// Seat 1 waits for its retry; end r1 so the seat is free again.
	if err := r.e.Cancel(r.ctx, id, ""); err != nil {
		t.Fatal(err)
	}
	r.tick()
	run, err := r.e.Start(r.ctx, Request{ID: "r2", Action: schedule.Action{Kind: schedule.Restore, Image: "LAB-2026-img"},
		Target: schedule.Target{Rooms: []string{"B"}}, Window: time.Hour, OnlyUnverified: true})
	if err != nil {
		t.Fatal(err)
	}
	if run.Seats[0].State != Skipped || run.Seats[1].State != Pending {
		t.Fatalf("%+v", run.Seats)
	}
	if run.Seats[1].Running != "" {
		t.Fatalf("seat 1 was never verified, yet Running=%q", run.Seats[1].Running)
	}
}

func TestStartValidationAndIdempotence(t *testing.T) {
	r := newRig(t, 2, fastCfg)
	bad := []Request{
		{ID: "a|b", Action: schedule.Action{Kind: schedule.Restore, Image: "x"}, Target: schedule.Target{Rooms: []string{"B"}}, Window: time.Hour},
		{Action: schedule.Action{Kind: schedule.Restore}, Target: schedule.Target{Rooms: []string{"B"}}, Window: time.Hour},
		{Action: schedule.Action{Kind: "format"}, Target: schedule.Target{Rooms: []string{"B"}}, Window: time.Hour},
		{Action: schedule.Action{Kind: schedule.Wake}, Window: time.Hour},
		{Action: schedule.Action{Kind: schedule.Wake}, Target: schedule.Target{Rooms: []string{"B"}}},
		{Action: schedule.Action{Kind: schedule.Wake}, Target: schedule.Target{Rooms: []string{"Z"}}, Window: time.Hour},
	}
	for _, req := range bad {
		if _, err := r.e.Start(r.ctx, req); err == nil {
			t.Errorf("accepted %+v", req)
		}
	}
	if rs, _ := r.e.Runs(r.ctx); len(rs) != 0 {
		t.Fatalf("bad requests left runs: %+v", rs)
	}
	sch := schedule.Schedule{ID: "s1", Name: "room B", Spec: schedule.MustParse("0 2 * * SAT"),
		Target: schedule.Target{Rooms: []string{"B"}}, Action: schedule.Action{Kind: schedule.Restore, Image: "LAB-2026-img"},
		Window: 4 * time.Hour, Enabled: true}
	f := schedule.Fire{Schedule: sch, At: t0, Deadline: t0.Add(4 * time.Hour)}
	if err := r.e.StartFire(r.ctx, f); err != nil {
		t.Fatal(err)
	}
	r.tick()
	r.lab.seats = append(r.lab.seats, Seat{ID: "late", Room: "B", MAC: "52:54:00:00:00:99"})
	if err := r.e.StartFire(r.ctx, f); err != nil {
		t.Fatal(err)
	}
	rs, _ := r.e.Runs(r.ctx)
	if len(rs) != 1 || rs[0].ID != f.Key() || len(rs[0].Seats) != 2 || rs[0].Seats[0].State != Powering {
		t.Fatalf("replayed fire changed the run: %+v", rs)
	}
}

func TestWakeAndShutdownRuns(t *testing.T) {
	r := newRig(t, 2, fastCfg)
	r.pw.rebootErr[r.lab.seats[1].MAC] = unreachable()
	id := r.start(schedule.Shutdown, "", time.Hour)
	r.tick()
	r.advance(time.Second)
	r.advance(fastCfg.RetryDelay)
	r.advance(time.Second)
	run := r.run(id)
	if run.Seats[0].State != Done || run.Seats[1].State != Failed || !strings.HasPrefix(run.Seats[1].Reason, "shutdown: unreachable") {
		t.Fatalf("%+v", run.Seats)
	}
	if run.Seats[1].Attempts != 2 {
		t.Fatalf("attempts %d", run.Seats[1].Attempts)
	}
}

// A restart continues open runs from the store: an action that may not
// have happened (acted=false) is done again, jobs keep their keys, and
// the report is sent once even when the first report attempt failed.
func TestRestartContinues(t *testing.T) {
	r := newRig(t, 2, fastCfg)
	r.lab.startErr = errors.New("appliance busy")
	id := r.start(schedule.Restore, "LAB-2026-img", 4*time.Hour)
	r.tick()
	r.advance(time.Second)
	for _, s := range r.run(id).Seats {
		if s.State != Powering || s.Acted {
			t.Fatalf("%+v", s)
		}
	}
	// "Crash": a new engine on the reopened store.
	r.lab.startErr = nil
	r.open()
	r.tick()
	for _, s := range r.run(id).Seats {
		if !s.Acted || s.JobKey != JobKey(id, 1) {
			t.Fatalf("%+v", s)
		}
	}
	// Seat 0 was powered off mid-restore and network-boots again.
	m0, m1 := r.lab.seats[0].MAC, r.lab.seats[1].MAC
	r.lab.setJob(m0, seatjob.Running, 1)
	r.lab.setJob(m1, seatjob.Done, 1)
	r.advance(time.Second)
	r.lab.setJob(m0, seatjob.Booted, 2)
	r.open()
	r.advance(time.Second)
	s0 := r.run(id).Seats[0]
	if s0.State != Netbooting || s0.Boots != 2 || s0.Attempts != 1 {
		t.Fatalf("%+v", s0)
	}
	r.lab.setJob(m0, seatjob.Done, 2)
	r.rep.err = errors.New("outbox full")
	r.advance(time.Second)
	r.clock.Add(fastCfg.RebootDelay)
	if err := r.e.Tick(r.ctx); err == nil || !strings.Contains(err.Error(), "outbox full") {
		t.Fatalf("report failure not returned: %v", err)
	}
	if run := r.run(id); run.State != RunFinished || run.Reported {
		t.Fatalf("%s reported=%v", run.State, run.Reported)
	}
	r.rep.err = nil
	r.open()
	r.tick()
	r.open()
	r.tick()
	if len(r.rep.reports) != 1 {
		t.Fatalf("%d reports", len(r.rep.reports))
	}
	evs, err := r.e.Events(r.ctx, id)
	if err != nil || len(evs) < 10 {
		t.Fatalf("%d events, %v", len(evs), err)
	}
	log, _ := r.e.RunLog(r.ctx, id)
	if !strings.Contains(string(log), "network-booted again (boot 2)") {
		t.Fatalf("log:\n%s", log)
	}
}

func TestSeatBusyInAnotherRunIsSkipped(t *testing.T) {
	r := newRig(t, 2, fastCfg)
	if _, err := r.e.Start(r.ctx, Request{ID: "first", Action: schedule.Action{Kind: schedule.Restore, Image: "A-img"},
		Target: schedule.Target{Seats: []string{"pc00"}}, Window: time.Hour}); err != nil {
		t.Fatal(err)
	}
	r.tick()
	run, err := r.e.Start(r.ctx, Request{ID: "second", Action: schedule.Action{Kind: schedule.Restore, Image: "B-img"},
		Target: schedule.Target{Rooms: []string{"B"}}, Window: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if s := run.Seats[0]; s.State != Skipped || s.Reason != "busy in run first" {
		t.Fatalf("%+v", s)
	}
	if run.Seats[1].State != Pending {
		t.Fatalf("%+v", run.Seats[1])
	}
	r.advance(time.Second)
	if j := r.lab.job(r.lab.seats[0].MAC); j.Key != JobKey("first", 1) {
		t.Fatalf("the second run replaced the first's job: %+v", j)
	}
}

// TestPokeWakesTheEngine: a job change reaches the engine at once through
// Poke (the appliance calls it from seatjob's Changed), with the tick an hour
// away; only timeouts wait for ticks.
func TestPokeWakesTheEngine(t *testing.T) {
	cfg := fastCfg
	cfg.Tick = time.Hour
	r := newRig(t, 1, cfg)
	id := r.start(schedule.Restore, "LAB-2026-img", 4*time.Hour)
	ctx, cancel := context.WithCancel(r.ctx)
	done := make(chan error, 1)
	go func() { done <- r.e.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitState := func(want SeatState) time.Duration {
		t.Helper()
		t0 := time.Now()
		for r.states(id)[0] != want {
			if time.Since(t0) > 5*time.Second {
				t.Fatalf("seat still %v, want %v", r.states(id)[0], want)
			}
			time.Sleep(5 * time.Millisecond)
		}
		return time.Since(t0)
	}
	waitState(Powering)
	mac := r.lab.seats[0].MAC
	for r.lab.job(mac) == nil {
		time.Sleep(5 * time.Millisecond)
	}
	for _, step := range []struct {
		job  seatjob.State
		want SeatState
	}{{seatjob.Booted, Netbooting}, {seatjob.Running, Restoring}, {seatjob.Done, Rebooting}} {
		r.lab.setJob(mac, step.job, 1)
		r.e.Poke()
		if d := waitState(step.want); d > time.Second {
			t.Errorf("%v reached the engine after %v, want within 1 s", step.job, d)
		} else {
			t.Logf("FIGURE job %s reached the engine in %v", step.job, d.Round(time.Millisecond))
		}
	}
}

// TestRestoreHandedOutClearsVerified: once a restore is handed to a seat its
// disk is half-written until verified again, so an "only unverified" run
// must not skip it on the strength of an older verification.
func TestRestoreHandedOutClearsVerified(t *testing.T) {
	r := newRig(t, 1, fastCfg)
	mac := r.lab.seats[0].MAC
	id := r.start(schedule.Verify, "LAB-2026-img", time.Hour)
	r.tick()
	if v, _ := r.e.LastVerified(r.ctx, mac); v.Image != "LAB-2026-img" || r.states(id)[0] != Verified {
		t.Fatalf("setup: verified record %+v", v)
	}
	if _, err := r.e.Start(r.ctx, Request{ID: "r2", Action: schedule.Action{Kind: schedule.Restore, Image: "LAB-2026-img"},
		Target: schedule.Target{Rooms: []string{"B"}}, Window: time.Hour}); err != nil {
		t.Fatal(err)
	}
	r.tick()
	if got := r.states("r2")[0]; got != Powering {
		t.Fatalf("restore seat: %v", got)
	}
	if v, _ := r.e.LastVerified(r.ctx, mac); v.Image != "" {
		t.Fatalf("a seat handed a restore still counts as verified: %+v", v)
	}
	// The restore is cut (cancelled); the next "only unverified" run must
	// restore the seat.
	if err := r.e.Cancel(r.ctx, "r2", "test"); err != nil {
		t.Fatal(err)
	}
	r.tick()
	r3, err := r.e.Start(r.ctx, Request{ID: "r3", Action: schedule.Action{Kind: schedule.Restore, Image: "LAB-2026-img"},
		Target: schedule.Target{Rooms: []string{"B"}}, Window: time.Hour, OnlyUnverified: true})
	if err != nil {
		t.Fatal(err)
	}
	if r3.Seats[0].State != Pending {
		t.Fatalf("an only-unverified run did not take the half-written seat: %+v", r3.Seats[0])
	}
}

// TestWindowClosingDuringRestoreSaysSo: the window closes while Clonezilla
// writes the disk; the job is ended (left to finish, see seatjob) and the
// seat's reason tells the admin the disk may be half-written.
func TestWindowClosingDuringRestoreSaysSo(t *testing.T) {
	r := newRig(t, 1, fastCfg)
	id := r.start(schedule.Restore, "LAB-2026-img", 10*time.Minute)
	r.tick()
	mac := r.lab.seats[0].MAC
	r.lab.setJob(mac, seatjob.Running, 1)
	r.advance(time.Second)
	if got := r.states(id)[0]; got != Restoring {
		t.Fatalf("setup: %v", got)
	}
	r.advance(10 * time.Minute)
	s := r.run(id).Seats[0]
	if s.State != Failed || !strings.Contains(s.Reason, "window closed") || !strings.Contains(s.Reason, "half-written") {
		t.Fatalf("seat after the window: %v %q", s.State, s.Reason)
	}
	if !r.lab.job(mac).cancelled {
		t.Fatal("the job was not ended")
	}
}

// TestTransportChoice: auto is multicast from schedule.MulticastMin seats;
// only the first attempt of a multicast run joins the stream.
func TestTransportChoice(t *testing.T) {
	for _, c := range []struct {
		seats     int
		transport schedule.Transport
		want      schedule.Transport
	}{
		{2, "", schedule.Unicast},
		{3, "", schedule.Multicast},
		{3, schedule.Unicast, schedule.Unicast},
		{1, schedule.Multicast, schedule.Multicast},
	} {
		t.Run(fmt.Sprintf("%d seats %q", c.seats, c.transport), func(t *testing.T) {
			r := newRig(t, c.seats, fastCfg)
			run, err := r.e.Start(r.ctx, Request{ID: "r1", Action: schedule.Action{Kind: schedule.Restore, Image: "LAB-2026-img", Transport: c.transport},
				Target: schedule.Target{Rooms: []string{"B"}}, Window: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			if run.Transport != c.want {
				t.Fatalf("transport %q, want %q", run.Transport, c.want)
			}
			r.tick()
			mac := r.lab.seats[0].MAC
			if g := r.lab.job(mac).Group; (g != "") != (c.want == schedule.Multicast) {
				t.Fatalf("job group %q for a %s run", g, c.want)
			}
			if c.want != schedule.Multicast {
				return
			}
			// The seat fails (it left the stream and failed again): its retry
			// is a job of its own.
			r.lab.setJob(mac, seatjob.Failed, 1)
			r.advance(time.Second)
			r.advance(fastCfg.RetryDelay)
			r.tick() // the old job is cancelled first, then the new one handed out
			if j := r.lab.job(mac); j.Key != JobKey("r1", 2) || j.Group != "" {
				t.Fatalf("retry job %+v, want attempt 2 outside the group (seat %+v)", j.Job, r.run("r1").Seats[0])
			}
		})
	}
}
