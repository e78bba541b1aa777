package reimage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/notify"
	"github.com/pumi-lab/pumi/internal/power"
	"github.com/pumi-lab/pumi/internal/schedule"
	"github.com/pumi-lab/pumi/internal/seatjob"
	"github.com/pumi-lab/pumi/internal/store"

	"github.com/pumi-lab/pumi/internal/testnet"
)

// The power-loss harness. The engine runs in a child process (this test
// binary re-executed) with its own bbolt store and mail outbox; the parent
// kills it with SIGKILL at random moments and starts it again, N times.
// Everything outside the engine (the seats, the appliance's jobs and the
// mail server) lives in the parent, so it survives the kills exactly as the
// real lab, the appliance's state and the SMTP server would; the child
// reaches it over loopback HTTP.
//
// Each child start replays every fire the parent has handed out (as a
// scheduler's catch-up would), so a fire that crashed before its run was
// recorded is started then, and a fire whose run exists must not get a
// second one. Between kills the parent opens the state file and checks that
// nothing went backwards: a run once recorded is still there, a seat once
// settled stays settled the same way, a report once marked stays marked.
// At the end: every run finished, every seat verified or failed with a
// reason, one report per run, no mail delivered twice.
//
// N is PUMI_POWERLOSS_KILLS (default 20; 200 or more for the long version).

const (
	childEnv = "PUMI_REIMAGE_POWERLOSS_CHILD"
	roomSize = 5
)

func killsWanted(t *testing.T) int {
	n := 20
	if v := os.Getenv("PUMI_POWERLOSS_KILLS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("PUMI_POWERLOSS_KILLS=%q: want a positive number", v)
		}
	}
	return n
}

// rpc is the child ↔ world protocol.
type rpc struct {
	Op    string          `json:"op"`
	Seat  Seat            `json:"seat"`
	Image string          `json:"image,omitempty"`
	Key   string          `json:"key,omitempty"`
	Job   Job             `json:"job"`
	Mail  *notify.Message `json:"mail,omitempty"`
	Tgt   schedule.Target `json:"target"`
}

type rpcReply struct {
	Err    string   `json:"err,omitempty"`
	Kind   string   `json:"kind,omitempty"` // power failure kind
	Detail string   `json:"detail,omitempty"`
	NoJob  bool     `json:"no_job,omitempty"`
	State  JobState `json:"state"`
	Seats  []Seat   `json:"seats,omitempty"`
}

// ---- the world (parent side) ----

type wSeat struct {
	Seat
	on         bool
	sig        string
	gen        int // power cycles; a stale timer of an earlier cycle does nothing
	booting    bool
	wrongImage bool // its restores leave the old Signature
	neverBack  bool
}

type world struct {
	mu     sync.Mutex
	rng    *rand.Rand
	seats  map[string]*wSeat
	order  []string
	jobs   map[string]*labJob
	mails  map[string]int
	powerL int // mid-restore power losses simulated
	closed bool
}

func newWorld(rooms int) *world {
	w := &world{rng: rand.New(rand.NewPCG(1, 2)), seats: map[string]*wSeat{}, jobs: map[string]*labJob{}, mails: map[string]int{}}
	for r := range rooms {
		for i := range roomSize {
			mac := fmt.Sprintf("02:99:00:00:%02x:%02x", r, i)
			s := &wSeat{Seat: Seat{ID: fmt.Sprintf("r%dpc%d", r, i), Room: fmt.Sprintf("R%d", r), MAC: mac, Addr: mac},
				on: true, sig: "OLD", wrongImage: i == 3, neverBack: i == 4 && r%2 == 0}
			w.seats[mac] = s
			w.order = append(w.order, mac)
		}
	}
	return w
}

func (w *world) after(d time.Duration, fn func()) {
	time.AfterFunc(d, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if !w.closed {
			fn()
		}
	})
}

func (w *world) jitter(lo, hi int) time.Duration {
	return time.Duration(lo+w.rng.IntN(hi-lo)) * time.Millisecond
}

// powerCycle takes the seat down and, unless it never comes back, boots it.
func (w *world) powerCycle(s *wSeat) {
	s.on, s.booting = false, false
	s.gen++
	if s.neverBack {
		return
	}
	s.booting = true
	gen := s.gen
	w.after(w.jitter(10, 60), func() { w.netboot(s, gen) })
}

// netboot is the firmware + iPXE + Clonezilla of one boot.
func (w *world) netboot(s *wSeat, gen int) {
	if s.gen != gen {
		return
	}
	j := w.jobs[s.MAC]
	if j == nil || !j.State.Active() {
		s.on, s.booting = true, false // boots its disk
		return
	}
	j.State, j.Boots = seatjob.Booted, j.Boots+1
	key := j.Key
	w.after(w.jitter(10, 40), func() {
		if s.gen != gen || w.jobs[s.MAC] == nil || w.jobs[s.MAC].Key != key {
			return
		}
		w.jobs[s.MAC].State = seatjob.Running
		w.after(w.jitter(30, 150), func() {
			j := w.jobs[s.MAC]
			if s.gen != gen || j == nil || j.Key != key || j.State != seatjob.Running {
				return
			}
			if j.Boots < 3 && w.rng.IntN(4) == 0 {
				// A power cut in the middle of the restore: the seat
				// boots again and its job restarts.
				w.powerL++
				w.powerCycle(s)
				return
			}
			if !s.wrongImage {
				s.sig = power.WantedSignature(j.Image)
			}
			j.State = seatjob.Done
			w.powerCycle(s) // Clonezilla reboots; the next script is exit
		})
	})
}

func (w *world) handle(req rpc) rpcReply {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.seats[req.Seat.MAC]
	switch req.Op {
	case "seats":
		var out []Seat
		for _, mac := range w.order {
			if slices.Contains(req.Tgt.Rooms, w.seats[mac].Room) {
				out = append(out, w.seats[mac].Seat)
			}
		}
		return rpcReply{Seats: out}
	case "mail":
		w.mails[req.Mail.ID]++
		return rpcReply{}
	}
	if s == nil {
		return rpcReply{Err: "unknown seat " + req.Seat.MAC}
	}
	unreach := rpcReply{Kind: "unreachable", Detail: "connection refused"}
	switch req.Op {
	case "startjob":
		if j := w.jobs[s.MAC]; j != nil && j.Key == req.Job.Key {
			return rpcReply{}
		}
		w.jobs[s.MAC] = &labJob{Key: req.Job.Key, Image: req.Job.Image, State: seatjob.Pending}
	case "jobstate":
		j := w.jobs[s.MAC]
		if j == nil || j.Key != req.Key {
			return rpcReply{NoJob: true}
		}
		return rpcReply{State: JobState{State: j.State, Boots: j.Boots}}
	case "canceljob":
		if j := w.jobs[s.MAC]; j != nil && j.Key == req.Key {
			delete(w.jobs, s.MAC)
		}
	case "reboot":
		if !s.on {
			return unreach
		}
		w.powerCycle(s)
	case "wake":
		if !s.on && !s.booting && !s.neverBack {
			s.booting = true
			gen := s.gen
			w.after(w.jitter(10, 60), func() { w.netboot(s, gen) })
		}
	case "verify":
		if !s.on {
			return unreach
		}
		if s.sig != power.WantedSignature(req.Image) {
			return rpcReply{Kind: "wrong image", Detail: fmt.Sprintf("found %q, want %q", s.sig, power.WantedSignature(req.Image))}
		}
	default:
		return rpcReply{Err: "unknown op " + req.Op}
	}
	return rpcReply{}
}

func (w *world) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	var req rpc
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(rw, err.Error(), http.StatusBadRequest)
		return
	}
	json.NewEncoder(rw).Encode(w.handle(req))
}

// ---- the child: the engine with HTTP-backed Lab, Power and mail ----

type worldClient struct{ url string }

func (c worldClient) call(ctx context.Context, req rpc) (rpcReply, error) {
	b, _ := json.Marshal(req)
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(b))
	if err != nil {
		return rpcReply{}, err
	}
	resp, err := http.DefaultClient.Do(hr)
	if err != nil {
		return rpcReply{}, err
	}
	defer resp.Body.Close()
	var rep rpcReply
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		return rep, err
	}
	if rep.Err != "" {
		return rep, errors.New(rep.Err)
	}
	return rep, nil
}

func (c worldClient) powerErr(op string, rep rpcReply, err error) error {
	if err != nil || rep.Kind == "" {
		return err
	}
	kinds := map[string]error{"unreachable": power.ErrUnreachable, "wrong image": power.ErrWrongImage}
	return &power.Error{Op: op, Addr: "sim", Kind: kinds[rep.Kind], Detail: rep.Detail}
}

func (c worldClient) Seats(ctx context.Context, t schedule.Target, _ string) ([]Seat, error) {
	rep, err := c.call(ctx, rpc{Op: "seats", Tgt: t})
	return rep.Seats, err
}

func (c worldClient) StartJob(ctx context.Context, j Job) error {
	_, err := c.call(ctx, rpc{Op: "startjob", Seat: j.Seat, Job: j})
	return err
}

func (c worldClient) JobState(ctx context.Context, mac, key string) (JobState, error) {
	rep, err := c.call(ctx, rpc{Op: "jobstate", Seat: Seat{MAC: mac}, Key: key})
	if err == nil && rep.NoJob {
		return JobState{}, seatjob.ErrNoJob
	}
	return rep.State, err
}

func (c worldClient) CancelJob(ctx context.Context, mac, key string) error {
	_, err := c.call(ctx, rpc{Op: "canceljob", Seat: Seat{MAC: mac}, Key: key})
	return err
}

func (c worldClient) Reboot(ctx context.Context, s Seat, _ string) error {
	rep, err := c.call(ctx, rpc{Op: "reboot", Seat: s})
	return c.powerErr("reboot", rep, err)
}

func (c worldClient) Shutdown(ctx context.Context, s Seat, _ string) error {
	return errors.New("not simulated")
}

func (c worldClient) Wake(ctx context.Context, seats []Seat) error {
	for _, s := range seats {
		if _, err := c.call(ctx, rpc{Op: "wake", Seat: s}); err != nil {
			return err
		}
	}
	return nil
}

func (c worldClient) Verify(ctx context.Context, s Seat, image string) error {
	rep, err := c.call(ctx, rpc{Op: "verify", Seat: s, Image: image})
	return c.powerErr("verify", rep, err)
}

var harnessCfg = Config{Tick: 50 * time.Millisecond, WakeGap: 10 * time.Millisecond, RebootDelay: 50 * time.Millisecond,
	VerifyInterval: 50 * time.Millisecond, VerifyTimeout: 2 * time.Second, PowerTimeout: 2 * time.Second,
	NetbootTimeout: 2 * time.Second, RestoreTimeout: 3 * time.Second, RetryDelay: 50 * time.Millisecond,
	MaxAttempts: 3, MaxRestoring: 3, ActionTimeout: 5 * time.Second}

// TestPowerLossChild is the engine process of TestPowerLoss; it does
// nothing unless started by it.
func TestPowerLossChild(t *testing.T) {
	if os.Getenv(childEnv) == "" {
		t.Skip("the child process of TestPowerLoss")
	}
	ctx := context.Background()
	dir := os.Getenv(childEnv)
	wc := worldClient{url: os.Getenv("PUMI_WORLD_URL")}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	st, err := store.Open(ctx, filepath.Join(dir, "state"), log)
	if err != nil {
		t.Fatal(err)
	}
	ob, err := notify.OpenOutbox(filepath.Join(dir, "outbox"), notify.SenderFunc(func(ctx context.Context, m notify.Message) error {
		_, err := wc.call(ctx, rpc{Op: "mail", Mail: &m})
		return err
	}), log)
	if err != nil {
		t.Fatal(err)
	}
	ob.MinBackoff, ob.MaxBackoff = 50*time.Millisecond, 200*time.Millisecond
	e := New(st, wc, wc, outboxReporter{ob}, harnessCfg, nil, log)
	// Replay every fire handed out so far, as the scheduler's catch-up does.
	var fires []schedule.Fire
	if err := json.Unmarshal([]byte(os.Getenv("PUMI_FIRES")), &fires); err != nil {
		t.Fatal(err)
	}
	for _, f := range fires {
		if err := e.StartFire(ctx, f); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go ob.Run(ctx)
	if os.Getenv("PUMI_EXIT_WHEN_DONE") != "" {
		// The last, undisturbed start ends by itself once every run is
		// reported and the outbox is empty, so the parent never has to
		// guess when the state file is final.
		go func() {
			for ctx.Err() == nil {
				time.Sleep(50 * time.Millisecond)
				rs, err := e.Runs(ctx)
				pend, perr := ob.Pending()
				if err != nil || perr != nil || len(rs) != len(fires) || len(pend) > 0 {
					continue
				}
				done := true
				for _, r := range rs {
					done = done && r.Reported
				}
				if done {
					cancel()
				}
			}
		}()
	}
	e.Run(ctx) // until killed, or done
}

// ---- the parent ----

type snapshot struct {
	runs map[string]Run
}

func inspect(t *testing.T, dir string) snapshot {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(dir, "state"), nil)
	if err != nil {
		t.Fatalf("state file after a kill: %v", err)
	}
	defer st.Close()
	e := New(st, nil, nil, nil, Config{}, nil, nil)
	rs, err := e.Runs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sn := snapshot{runs: map[string]Run{}}
	for _, r := range rs {
		sn.runs[r.ID] = r
	}
	return sn
}

// monotonic checks that nothing persisted went backwards between two looks.
func monotonic(t *testing.T, before, after snapshot) {
	t.Helper()
	for id, b := range before.runs {
		a, ok := after.runs[id]
		if !ok {
			t.Fatalf("run %s lost", id)
		}
		if b.Reported && !a.Reported || b.State == RunFinished && a.State != RunFinished {
			t.Fatalf("run %s went backwards: %s/%v → %s/%v", id, b.State, b.Reported, a.State, a.Reported)
		}
		if len(a.Seats) != len(b.Seats) {
			t.Fatalf("run %s: seats %d → %d", id, len(b.Seats), len(a.Seats))
		}
		for i, bs := range b.Seats {
			as := a.Seats[i]
			if as.Attempts < bs.Attempts {
				t.Fatalf("run %s seat %s: attempts %d → %d", id, bs.Seat.MAC, bs.Attempts, as.Attempts)
			}
			if bs.settled() && (as.State != bs.State || as.Reason != bs.Reason) {
				t.Fatalf("run %s seat %s: settled %s %q changed to %s %q", id, bs.Seat.MAC, bs.State, bs.Reason, as.State, as.Reason)
			}
		}
	}
}

func TestPowerLoss(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		t.Skip("inside the child")
	}
	if testing.Short() {
		t.Skip("the power-loss harness takes ~15 s; not in -short")
	}
	kills := killsWanted(t)
	const rooms = 3
	w := newWorld(rooms)
	defer func() { w.mu.Lock(); w.closed = true; w.mu.Unlock() }()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	srv := &http.Server{Handler: w}
	go srv.Serve(ln)
	defer srv.Close()
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))

	// Fires are handed out in rounds, one per room; a new round starts once
	// every run of the last one has its report delivered, so kills keep
	// landing in busy runs however large N is.
	var fires []schedule.Fire
	round := 0
	newRound := func() {
		at := time.Date(2026, 11, 28, 2, 0, 0, 0, time.UTC).Add(time.Duration(round) * 24 * time.Hour)
		for r := range rooms {
			act := schedule.Action{Kind: schedule.Restore, Image: fmt.Sprintf("LAB-%d-img", round)}
			sch := schedule.Schedule{ID: fmt.Sprintf("room%d", r), Name: fmt.Sprintf("room R%d", r),
				Spec: schedule.MustParse("0 2 * * *"), Target: schedule.Target{Rooms: []string{fmt.Sprintf("R%d", r)}},
				Action: act, Window: time.Hour, Enabled: true}
			// Deadline from the real clock: the engine judges the window
			// by it.
			fires = append(fires, schedule.Fire{Schedule: sch, At: at, Deadline: time.Now().Add(10 * time.Minute)})
		}
		round++
	}
	newRound()
	delivered := func() int {
		w.mu.Lock()
		defer w.mu.Unlock()
		return len(w.mails)
	}

	exe, err := os.Executable()
	must(t, err)
	start := func() (*exec.Cmd, *testnet.LockedBuffer) {
		fj, _ := json.Marshal(fires)
		cmd := exec.Command(exe, "-test.run=^TestPowerLossChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), childEnv+"="+dir, "PUMI_WORLD_URL=http://"+ln.Addr().String()+"/", "PUMI_FIRES="+string(fj))
		out := &testnet.LockedBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		must(t, cmd.Start())
		return cmd, out
	}

	// A mail the world accepted whose sent/<id> marker is not on disk after
	// the kill was cut in SMTP's one unavoidable window (after the server's
	// 250, before the marker's fsync; see notify.Outbox): its resend carries
	// the same Message-ID, which receivers drop. Such resends are counted
	// and reported; any other duplicate fails the test.
	window := map[string]bool{}
	inWindow := func(dir string) {
		w.mu.Lock()
		defer w.mu.Unlock()
		for id := range w.mails {
			if _, err := os.Stat(filepath.Join(dir, "outbox", "sent", id)); err != nil {
				window[id] = true
			}
		}
	}

	var prev snapshot
	began := time.Now()
	var alive time.Duration
	for k := 0; k < kills; k++ {
		if delivered() == len(fires) {
			newRound()
		}
		cmd, out := start()
		d := time.Duration(20+rng.IntN(700)) * time.Millisecond
		time.Sleep(d)
		alive += d
		cmd.Process.Signal(syscall.SIGKILL)
		err := cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("kill %d: child ended by itself (%v):\n%s", k, err, out.String())
		}
		sn := inspect(t, dir)
		monotonic(t, prev, sn)
		prev = sn
		inWindow(dir)
	}

	// The last start runs undisturbed until it sees every run reported and
	// its outbox empty, and exits.
	t.Setenv("PUMI_EXIT_WHEN_DONE", "1")
	cmd, out := start()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("last start: %v\n%s", err, out.String())
		}
	case <-time.After(90 * time.Second):
		cmd.Process.Kill()
		<-exited
		t.Fatalf("reports %d/%d after the last start ran 90s:\n%s", delivered(), len(fires), out.String())
	}

	sn := inspect(t, dir)
	monotonic(t, prev, sn)
	if len(sn.runs) != len(fires) {
		t.Fatalf("%d runs for %d fires", len(sn.runs), len(fires))
	}
	counts := map[SeatState]int{}
	var attempts, restarts int
	for _, f := range fires {
		r, ok := sn.runs[f.Key()]
		if !ok {
			t.Fatalf("run of fire %s lost", f.Key())
		}
		if r.State != RunFinished || !r.Reported {
			t.Errorf("run %s: %s reported=%v", r.ID, r.State, r.Reported)
		}
		for _, s := range r.Seats {
			counts[s.State]++
			attempts += s.Attempts
			if s.Boots > 1 {
				restarts += s.Boots - 1
			}
			ws := w.seats[s.Seat.MAC]
			switch {
			case s.State == Verified && !ws.wrongImage && !ws.neverBack:
			case s.State == Failed && s.Final && s.Reason != "" && (ws.wrongImage || ws.neverBack):
				if ws.wrongImage && !strings.Contains(s.Reason, "wrong image") ||
					ws.neverBack && !strings.Contains(s.Reason, "network-boot") && !strings.Contains(s.Reason, "unreachable") {
					t.Errorf("run %s seat %s: reason %q", r.ID, s.Seat.MAC, s.Reason)
				}
			default:
				t.Errorf("run %s seat %s (wrong image %v, never back %v): %s %q final=%v", r.ID, s.Seat.MAC,
					ws.wrongImage, ws.neverBack, s.State, s.Reason, s.Final)
			}
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	windowDups := 0
	for id, n := range w.mails {
		switch {
		case n == 2 && window[id]:
			windowDups++
			t.Logf("report %s delivered twice: a kill landed between the server's acceptance and the outbox's sent marker (same Message-ID)", id)
		case n != 1:
			t.Errorf("report %s delivered %d times (kill in the SMTP window: %v)", id, n, window[id])
		}
	}
	t.Logf("power-loss harness: %d kills (engine alive %s between kills, wall %s), %d rounds, %d runs, %d seat-runs "+
		"(%d verified, %d failed), %d attempts, %d restores restarted after a simulated power cut (%d cuts), %d reports, %d resent by a kill in the SMTP window",
		kills, alive.Round(time.Millisecond), time.Since(began).Round(time.Millisecond), round, len(sn.runs),
		counts[Verified]+counts[Failed], counts[Verified], counts[Failed], attempts, restarts, w.powerL, len(w.mails), windowDups)
}
