package schedule

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// memStore is the test FireStore: a map behind a mutex.
type memStore struct {
	mu   sync.Mutex
	m    map[string]time.Time
	fail error
	sets int
}

func newMemStore() *memStore { return &memStore{m: map[string]time.Time{}} }

func (s *memStore) LastFire(_ context.Context, id string) (time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[id], nil
}

func (s *memStore) SetLastFire(_ context.Context, id string, t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	s.sets++
	s.m[id] = t
	return nil
}

func (s *memStore) get(id string) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[id]
}

// fakeClock: Now is set by the test; After hands its channel to the test.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	waits  chan time.Duration
	wakeup chan time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	if c.waits != nil {
		c.waits <- d
	}
	return c.wakeup
}

func daily(id string) Schedule {
	return Schedule{ID: id, Name: "room A nightly", Spec: MustParse("0 2 * * *"),
		Target: Target{Rooms: []string{"A"}}, Action: Action{Kind: Restore, Image: "LAB-2026-img"},
		Window: 4 * time.Hour, Enabled: true}
}

func newSched(store *memStore, now time.Time, loc *time.Location) (*Scheduler, *fakeClock) {
	c := &fakeClock{now: now}
	return &Scheduler{Store: store, Clock: c, Loc: loc}, c
}

func TestDueMissedRunPolicy(t *testing.T) {
	utc := time.UTC
	fri := at(utc, 2026, 11, 27, 2, 0)
	tests := []struct {
		name        string
		last        time.Time
		now         time.Time
		wantFire    time.Time // zero: none
		wantMissed  int
		wantListed  []time.Time
		wantReason  string
		wantLastSet time.Time
	}{
		{name: "on time", last: at(utc, 2026, 11, 28, 1, 59), now: at(utc, 2026, 11, 28, 2, 0),
			wantFire: at(utc, 2026, 11, 28, 2, 0), wantLastSet: at(utc, 2026, 11, 28, 2, 0)},
		{name: "not yet", last: fri, now: at(utc, 2026, 11, 28, 1, 59),
			wantLastSet: fri},
		{name: "off overnight, window open: catch-up at boot", last: fri.Add(-time.Hour), now: at(utc, 2026, 11, 27, 5, 59),
			wantFire: fri, wantLastSet: fri},
		{name: "off two nights, window open: one catch-up, older missed", last: fri, now: at(utc, 2026, 11, 29, 3, 0),
			wantFire: at(utc, 2026, 11, 29, 2, 0), wantMissed: 1, wantListed: []time.Time{at(utc, 2026, 11, 28, 2, 0)},
			wantReason: "superseded", wantLastSet: at(utc, 2026, 11, 29, 2, 0)},
		{name: "off, window closed: all missed", last: fri, now: at(utc, 2026, 11, 29, 6, 0),
			wantMissed: 2, wantListed: []time.Time{at(utc, 2026, 11, 28, 2, 0), at(utc, 2026, 11, 29, 2, 0)},
			wantReason: "not running", wantLastSet: at(utc, 2026, 11, 29, 2, 0)},
		{name: "window end is exclusive", last: fri.Add(-time.Minute), now: fri.Add(4 * time.Hour),
			wantMissed: 1, wantListed: []time.Time{fri}, wantReason: "not running", wantLastSet: fri},
		{name: "small clock step back: wait, nothing repeats", last: fri, now: fri.Add(-30 * time.Minute),
			wantLastSet: fri},
		{name: "large clock step back: re-based and reported", last: at(utc, 2030, 1, 1, 2, 0), now: fri,
			wantReason: "clock went back", wantLastSet: fri},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := newMemStore()
			st.m["a"] = tc.last
			s, _ := newSched(st, tc.now, utc)
			fires, missed, err := s.Due(context.Background(), []Schedule{daily("a")})
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantFire.IsZero() {
				if len(fires) != 0 {
					t.Fatalf("fired %v", fires)
				}
			} else {
				if len(fires) != 1 || !fires[0].At.Equal(tc.wantFire) {
					t.Fatalf("fires = %v, want one at %v", fires, tc.wantFire)
				}
				f := fires[0]
				if f.Late != tc.now.Sub(tc.wantFire) || !f.Deadline.Equal(tc.wantFire.Add(4*time.Hour)) {
					t.Errorf("fire late %v deadline %v", f.Late, f.Deadline)
				}
				if f.Key() != "a@"+tc.wantFire.UTC().Format(time.RFC3339) {
					t.Errorf("key %q", f.Key())
				}
			}
			switch {
			case tc.wantReason == "" && len(missed) != 0:
				t.Fatalf("missed %+v", missed)
			case tc.wantReason != "":
				if len(missed) != 1 {
					t.Fatalf("missed = %+v, want one entry", missed)
				}
				m := missed[0]
				if m.Count != tc.wantMissed || !strings.Contains(m.Reason, tc.wantReason) || len(m.Fires) != len(tc.wantListed) {
					t.Fatalf("missed = %+v, want count %d listing %v reason ~%q", m, tc.wantMissed, tc.wantListed, tc.wantReason)
				}
				for i := range m.Fires {
					if !m.Fires[i].Equal(tc.wantListed[i]) {
						t.Errorf("missed fire %d = %v, want %v", i, m.Fires[i], tc.wantListed[i])
					}
				}
			}
			if got := st.get("a"); !got.Equal(tc.wantLastSet) {
				t.Errorf("LastFire = %v, want %v", got, tc.wantLastSet)
			}
			// Evaluating again at the same instant never starts anything new.
			again, _, err := s.Due(context.Background(), []Schedule{daily("a")})
			if err != nil || len(again) != 0 {
				t.Fatalf("second evaluation: %v, %v", again, err)
			}
		})
	}
}

// TestDueCrashCannotDoubleStart: the fire is persisted before it is handed
// out, so a process that dies before starting the run and comes back at the
// same moment (a fresh Scheduler, same store) does not get it again.
func TestDueCrashCannotDoubleStart(t *testing.T) {
	st := newMemStore()
	now := at(time.UTC, 2026, 11, 28, 2, 0)
	st.m["a"] = now.Add(-time.Minute)
	s1, _ := newSched(st, now.Add(time.Second), time.UTC)
	fires, _, err := s1.Due(context.Background(), []Schedule{daily("a")})
	if err != nil || len(fires) != 1 {
		t.Fatalf("first: %v %v", fires, err)
	}
	// "crash": fires[0] is dropped; a new process starts.
	s2, _ := newSched(st, now.Add(2*time.Second), time.UTC)
	fires, missed, err := s2.Due(context.Background(), []Schedule{daily("a")})
	if err != nil || len(fires) != 0 || len(missed) != 0 {
		t.Fatalf("after restart: fires %v missed %v err %v", fires, missed, err)
	}
}

// TestDuePersistFailureStartsNothing: if the fire time cannot be persisted,
// the fire is not handed out (it would risk a double start after a crash).
func TestDuePersistFailureStartsNothing(t *testing.T) {
	st := newMemStore()
	now := at(time.UTC, 2026, 11, 28, 2, 0)
	st.m["a"] = now.Add(-time.Minute)
	st.m["b"] = now.Add(-time.Minute)
	st.fail = errors.New("disk full")
	s, _ := newSched(st, now, time.UTC)
	fires, _, err := s.Due(context.Background(), []Schedule{daily("a"), daily("b")})
	if len(fires) != 0 {
		t.Fatalf("fired %v despite store failure", fires)
	}
	if err == nil || !strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), "schedule a") || !strings.Contains(err.Error(), "schedule b") {
		t.Fatalf("err = %v", err)
	}
}

func TestDueFirstSightAndDisabled(t *testing.T) {
	st := newMemStore()
	now := at(time.UTC, 2026, 11, 28, 2, 30)
	s, c := newSched(st, now, time.UTC)
	sc := daily("a")
	fires, missed, err := s.Due(context.Background(), []Schedule{sc})
	if err != nil || len(fires)+len(missed) != 0 || !st.get("a").Equal(now) {
		t.Fatalf("first sight: %v %v %v last=%v", fires, missed, err, st.get("a"))
	}
	// Disabled for a week: nothing fires, nothing is reported, and the
	// schedule is moved forward so enabling it creates no backlog.
	sc.Enabled = false
	week := now.Add(7 * 24 * time.Hour)
	c.set(week)
	fires, missed, err = s.Due(context.Background(), []Schedule{sc})
	if err != nil || len(fires)+len(missed) != 0 || !st.get("a").Equal(week) {
		t.Fatalf("disabled: %v %v %v last=%v", fires, missed, err, st.get("a"))
	}
	sc.Enabled = true
	fires, missed, err = s.Due(context.Background(), []Schedule{sc})
	if err != nil || len(fires)+len(missed) != 0 {
		t.Fatalf("re-enabled: %v %v %v", fires, missed, err)
	}
}

func TestDueClockNotSet(t *testing.T) {
	s, _ := newSched(newMemStore(), time.Unix(10, 0), time.UTC)
	if _, _, err := s.Due(context.Background(), []Schedule{daily("a")}); !errors.Is(err, ErrClockNotSet) {
		t.Fatalf("err = %v", err)
	}
}

func TestDueInvalidScheduleDoesNotBlockOthers(t *testing.T) {
	st := newMemStore()
	now := at(time.UTC, 2026, 11, 28, 2, 0)
	st.m["bad"] = now.Add(-time.Minute)
	st.m["good"] = now.Add(-time.Minute)
	bad := daily("bad")
	bad.Window = 0
	s, _ := newSched(st, now, time.UTC)
	fires, _, err := s.Due(context.Background(), []Schedule{bad, daily("good")})
	if len(fires) != 1 || fires[0].Schedule.ID != "good" {
		t.Fatalf("fires = %v", fires)
	}
	if err == nil || !strings.Contains(err.Error(), "window") {
		t.Fatalf("err = %v", err)
	}
}

func TestDueManyMissedIsBounded(t *testing.T) {
	st := newMemStore()
	every := daily("m")
	every.Spec = MustParse("* * * * *")
	every.Window = time.Minute
	now := at(time.UTC, 2026, 11, 28, 2, 0).Add(30 * time.Second)
	st.m["m"] = now.Add(-30 * 24 * time.Hour)
	s, _ := newSched(st, now, time.UTC)
	fires, missed, err := s.Due(context.Background(), []Schedule{every})
	if err != nil || len(fires) != 1 || !fires[0].At.Equal(at(time.UTC, 2026, 11, 28, 2, 0)) {
		t.Fatalf("fires %v err %v", fires, err)
	}
	if len(missed) != 1 || missed[0].Count != MaxCountedMissed || len(missed[0].Fires) != MaxListedMissed {
		t.Fatalf("missed = %+v", missed)
	}
	if last := missed[0].Fires[MaxListedMissed-1]; !last.Equal(at(time.UTC, 2026, 11, 28, 1, 59)) {
		t.Fatalf("most recent missed = %v", last)
	}
}

func TestDueDST(t *testing.T) {
	berlin := mustLoc(t, "Europe/Berlin")
	st := newMemStore()
	sc := daily("d")
	sc.Spec = MustParse("30 2 * * *")
	st.m["d"] = time.Date(2026, 3, 29, 1, 0, 0, 0, berlin)
	cest := time.FixedZone("CEST", 2*3600)
	s, c := newSched(st, at(cest, 2026, 3, 29, 3, 0).Add(30*time.Second), berlin)
	fires, _, err := s.Due(context.Background(), []Schedule{sc})
	if err != nil || len(fires) != 1 || !fires[0].At.Equal(at(cest, 2026, 3, 29, 3, 0)) {
		t.Fatalf("spring: %v %v", fires, err)
	}
	// Fall-back: fires at 02:30 CEST; at 02:30 CET (an hour later) nothing.
	st.m["d"] = time.Date(2026, 10, 25, 1, 0, 0, 0, berlin)
	c.set(at(cest, 2026, 10, 25, 2, 30))
	fires, _, err = s.Due(context.Background(), []Schedule{sc})
	if err != nil || len(fires) != 1 {
		t.Fatalf("fall first: %v %v", fires, err)
	}
	c.set(at(time.FixedZone("CET", 3600), 2026, 10, 25, 2, 30))
	fires, missed, err := s.Due(context.Background(), []Schedule{sc})
	if err != nil || len(fires)+len(missed) != 0 {
		t.Fatalf("fall repeat fired again: %v %v %v", fires, missed, err)
	}
}

// TestRunLoop drives Run with the fake clock: the loop sleeps until the next
// fire, starts it once, and reports a failed start as missed.
func TestRunLoop(t *testing.T) {
	st := newMemStore()
	start := at(time.UTC, 2026, 11, 28, 1, 59)
	c := &fakeClock{now: start, waits: make(chan time.Duration), wakeup: make(chan time.Time)}
	s := &Scheduler{Store: st, Clock: c, Loc: time.UTC}
	a, b := daily("a"), daily("b")
	b.Spec = MustParse("0 3 * * *")
	started := make(chan Fire, 4)
	missedc := make(chan Missed, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		done <- s.Run(ctx, func(context.Context) ([]Schedule, error) { return []Schedule{a, b}, nil },
			func(_ context.Context, f Fire) error {
				if f.Schedule.ID == "b" {
					return errors.New("runs engine refused")
				}
				started <- f
				return nil
			},
			func(_ context.Context, m Missed) { missedc <- m })
	}()
	if w := <-c.waits; w != time.Minute {
		t.Fatalf("first sleep %v, want 1m (until 02:00)", w)
	}
	c.set(at(time.UTC, 2026, 11, 28, 2, 0))
	c.wakeup <- c.Now()
	<-c.waits
	if f := <-started; f.Schedule.ID != "a" || f.Late != 0 {
		t.Fatalf("started %+v", f)
	}
	c.set(at(time.UTC, 2026, 11, 28, 3, 0))
	c.wakeup <- c.Now()
	<-c.waits
	if m := <-missedc; m.ScheduleID != "b" || !strings.Contains(m.Reason, "runs engine refused") {
		t.Fatalf("missed %+v", m)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v", err)
	}
	select {
	case f := <-started:
		t.Fatalf("extra start %+v", f)
	default:
	}
}
