package reimage

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/pumi-lab/pumi/internal/notify"
	"github.com/pumi-lab/pumi/internal/power"
	"github.com/pumi-lab/pumi/internal/schedule"
	"github.com/pumi-lab/pumi/internal/seatjob"
)

// Fakes for the state machine's unit tests. The integration tests use real
// OpenSSH seats instead.

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// After never fires: unit tests call Tick themselves.
func (c *fakeClock) After(time.Duration) <-chan time.Time { return nil }

type fakeJob struct {
	Job
	JobState
	cancelled bool
}

// fakeLab is an in-memory appliance: inventory and one job per MAC.
type fakeLab struct {
	mu        sync.Mutex
	seats     []Seat
	jobs      map[string]*fakeJob // by MAC
	starts    []string            // job keys, in call order
	cancels   []string
	startErr  error
	seatsErrs error
}

func newFakeLab(n int) *fakeLab {
	l := &fakeLab{jobs: map[string]*fakeJob{}}
	for i := range n {
		l.seats = append(l.seats, Seat{ID: fmt.Sprintf("pc%02d", i), Room: "B",
			MAC: fmt.Sprintf("52:54:00:00:00:%02x", i), Addr: fmt.Sprintf("seat%d", i)})
	}
	return l
}

func (l *fakeLab) Seats(_ context.Context, t schedule.Target, _ string) ([]Seat, error) {
	if l.seatsErrs != nil {
		return nil, l.seatsErrs
	}
	var out []Seat
	for _, s := range l.seats {
		if slices.Contains(t.Rooms, s.Room) || slices.Contains(t.Seats, s.ID) {
			out = append(out, s)
		}
	}
	return out, nil
}

func (l *fakeLab) StartJob(_ context.Context, j Job) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.startErr != nil {
		return l.startErr
	}
	l.starts = append(l.starts, j.Key)
	if old := l.jobs[j.Seat.MAC]; old != nil && old.Key == j.Key {
		return nil // idempotent, as the contract asks
	}
	l.jobs[j.Seat.MAC] = &fakeJob{Job: j, JobState: JobState{State: seatjob.Pending}}
	return nil
}

func (l *fakeLab) JobState(_ context.Context, mac, key string) (JobState, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	j := l.jobs[mac]
	if j == nil || j.Key != key || j.cancelled {
		return JobState{}, seatjob.ErrNoJob
	}
	return j.JobState, nil
}

func (l *fakeLab) CancelJob(_ context.Context, mac, key string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cancels = append(l.cancels, key)
	if j := l.jobs[mac]; j != nil && j.Key == key {
		j.cancelled = true
	}
	return nil
}

// setJob moves a seat's current job, like Clonezilla's reports would.
func (l *fakeLab) setJob(mac string, state seatjob.State, boots int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	j := l.jobs[mac]
	if j == nil {
		panic("no job for " + mac)
	}
	j.State, j.Boots = state, boots
	if state == seatjob.Failed {
		j.Reason = "ocs-sr exited 1"
	}
}

func (l *fakeLab) job(mac string) *fakeJob {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.jobs[mac]
}

type fakePower struct {
	mu        sync.Mutex
	rebootErr map[string]error // by MAC
	verifyErr map[string]error
	reboots   []string
	wakes     []string
	verifies  []string
}

func newFakePower() *fakePower {
	return &fakePower{rebootErr: map[string]error{}, verifyErr: map[string]error{}}
}

func (p *fakePower) Reboot(_ context.Context, s Seat, _ string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reboots = append(p.reboots, s.MAC)
	return p.rebootErr[s.MAC]
}

func (p *fakePower) Shutdown(_ context.Context, s Seat, _ string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rebootErr[s.MAC]
}

func (p *fakePower) Wake(_ context.Context, seats []Seat) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range seats {
		p.wakes = append(p.wakes, s.MAC)
	}
	return nil
}

func (p *fakePower) Verify(_ context.Context, s Seat, image string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.verifies = append(p.verifies, s.MAC)
	return p.verifyErr[s.MAC]
}

func unreachable() error {
	return &power.Error{Op: "ssh", Addr: "x:22", Kind: power.ErrUnreachable, Detail: "connection refused"}
}

type fakeReporter struct {
	mu      sync.Mutex
	reports []notify.Report
	logs    [][]byte
	err     error
}

func (f *fakeReporter) RunFinished(_ context.Context, r notify.Report, log []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	f.reports = append(f.reports, r)
	f.logs = append(f.logs, log)
	return nil
}
