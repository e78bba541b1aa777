// Package reimage owns runs: one run is a schedule fire (or an admin's
// manual request) applied to a set of seats, and each seat walks a small
// state machine
//
//	pending → powering → netbooting → restoring → rebooting → verifying → verified
//	                                                                    ↘ failed(reason)
//
// (skipped and done are the other terminal states: a seat already verified
// on the image in an "only unverified" run, and a wake/shutdown/capture seat
// that has nothing to verify).
//
// The rule the whole package is built around: every transition is committed
// to the state file (internal/store) before it is acted on. A seat is marked
// powering, with its attempt number, before its job is handed to the
// appliance and before the reboot or Wake-on-LAN packet leaves; a seat is
// marked verifying before pumi logs into it. After a crash the engine reloads
// every open run and redoes the one action that may not have happened (all of
// them are idempotent: a job is keyed by run and attempt, a second WoL packet
// or reboot is harmless, a verification is a read). Nothing depends on the
// process remembering what it was doing.
//
// The engine does not talk to the network itself: it drives three small
// interfaces (Lab, Power, Reporter) that the appliance implements with its
// inventory and boot assignments, internal/power, and the internal/notify
// outbox.
package reimage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pumi-lab/pumi/internal/notify"
	"github.com/pumi-lab/pumi/internal/schedule"
	"github.com/pumi-lab/pumi/internal/seatjob"
)

// SeatState is where a seat is in its walk through a run.
type SeatState string

const (
	Pending    SeatState = "pending"    // waiting for a slot (restore limit, wake stagger, retry delay)
	Powering   SeatState = "powering"   // job handed out; rebooted over SSH or woken by WoL; waiting for its network boot
	Netbooting SeatState = "netbooting" // the seat fetched its Clonezilla boot script
	Restoring  SeatState = "restoring"  // Clonezilla reported that it started
	Rebooting  SeatState = "rebooting"  // Clonezilla reported success; the seat boots its disk
	Verifying  SeatState = "verifying"  // pumi logs in over SSH and reads the Signature
	Verified   SeatState = "verified"   // terminal: the seat runs the image
	Failed     SeatState = "failed"     // terminal once attempts or the window are used up; else retried
	Skipped    SeatState = "skipped"    // terminal: nothing to do (already verified on the image)
	Done       SeatState = "done"       // terminal: wake/shutdown/capture finished, nothing to verify
)

// Terminal reports whether s ends a seat's walk for good (Failed only
// counts when the seat is final; see SeatRun.Final).
func (s SeatState) terminalOK() bool {
	return s == Verified || s == Skipped || s == Done
}

// active states hold a slot of Config.MaxRestoring: the seat loads the link
// (TFTP, HTTP, NFS) or is about to.
func (s SeatState) active() bool {
	return s == Powering || s == Netbooting || s == Restoring
}

// ErrNoRun is wrapped when a run (or a seat in it) does not exist.
var ErrNoRun = errors.New("no such run")

// Seat is one lab PC as the inventory knows it, with what power and
// verification need, resolved once when the run is created so that a seat's
// walk never goes back to the inventory or the config.
type Seat struct {
	ID   string `json:"id"`
	Room string `json:"room,omitempty"`
	MAC  string `json:"mac"`  // canonical form; the key of everything per seat
	Addr string `json:"addr"` // SSH host or host:port
	// Login is how pumi logs into the seat over SSH (reboot, verify).
	Login Login `json:"login,omitzero"`
}

// Login is an SSH login: a user and the name of the secret holding its
// password ("" = pumi's own key). The password itself never enters a run.
type Login struct {
	User   string `json:"user,omitempty"`
	Secret string `json:"secret,omitempty"`
}

// Job is what the engine asks the appliance to do on a seat's next network
// boots: restore (or capture) Image.
type Job struct {
	// Key identifies the job: run ID and attempt. The appliance stores it
	// as the assignment's run ID and must treat a second StartJob with the
	// same Key and MAC as a no-op that keeps the job's state, because after
	// a crash the engine cannot know whether its first call arrived.
	Key    string              `json:"key"`
	RunID  string              `json:"run_id"`
	Seat   Seat                `json:"seat"`
	Action schedule.ActionKind `json:"action"`
	Image  string              `json:"image"`
	// Group, if set, puts the job in the multicast session of that name
	// (the run's ID): the seats of a group restore from one stream.
	Group string `json:"group,omitempty"`
}

// JobKey is the key of attempt n of a run's job for one seat.
func JobKey(runID string, attempt int) string { return fmt.Sprintf("%s#%d", runID, attempt) }

// JobState is the appliance's view of a job.
type JobState struct {
	State   seatjob.State
	Reason  string    // why it failed
	Boots   int       // network boots into Clonezilla for this job
	Bytes   int64     // bytes restored or captured, if known
	Updated time.Time // last change
	// Transport says how the image reaches the seat: "multicast",
	// "unicast", or "unicast (why it left the multicast session)".
	Transport string
}

// Lab is the appliance side of runs: its inventory and the seats' jobs
// (internal/seatjob). The engine calls it from its reconciler, at most once
// per seat and tick, and again after a crash: every method is idempotent.
type Lab interface {
	// Seats resolves a target to inventory seats, with the SSH login for a
	// run of image ("" for wake/shutdown). Unknown names are an error.
	Seats(ctx context.Context, t schedule.Target, image string) ([]Seat, error)
	// StartJob gives the seat job for its next network boots. Idempotent on
	// (job.Key, MAC); a new key replaces an older job. An error that wraps
	// seatjob.ErrNoAddress or seatjob.ErrUnknownSeat fails the seat at once.
	StartJob(ctx context.Context, job Job) error
	// JobState reports the seat's job if its key is key, else
	// seatjob.ErrNoJob.
	JobState(ctx context.Context, mac, key string) (JobState, error)
	// CancelJob ends the seat's job if its key is key (the seat then boots
	// its disk); no job or another key is not an error. A job whose
	// Clonezilla is writing the disk is left to finish, never cut.
	CancelJob(ctx context.Context, mac, key string) error
}

// Power reaches seats. The appliance implements it with internal/power and
// the seat's Login; host keys are pinned per image. Errors should
// be (or wrap) *power.Error so that power.ErrUnreachable can be told apart.
type Power interface {
	// Reboot asks a running seat to reboot; running is the image it is
	// believed to run (for host key pinning; "" if unknown).
	Reboot(ctx context.Context, s Seat, running string) error
	// Shutdown asks a running seat to power off.
	Shutdown(ctx context.Context, s Seat, running string) error
	// Wake sends Wake-on-LAN to the seats, staggered.
	Wake(ctx context.Context, seats []Seat) error
	// Verify checks that the seat runs image.
	Verify(ctx context.Context, s Seat, image string) error
}

// Reporter delivers a finished run's report. The appliance implements it
// with notify.Outbox.Enqueue(ctx, r.Message(runLog)), whose message ID
// "run-<ID>-report" makes a second call (after a crash) a no-op.
type Reporter interface {
	RunFinished(ctx context.Context, r notify.Report, runLog []byte) error
}

// Config tunes the engine. The zero value gets the defaults named below.
type Config struct {
	// PowerTimeout: from powering until the seat network-boots (10 min).
	PowerTimeout time.Duration
	// NetbootTimeout: from the boot script until Clonezilla starts (20 min:
	// every seat fetches the whole squashfs, ~0.4 GB for the official zip,
	// into RAM first; eight seats sharing 100 Mbit/s need ~5 min for that
	// alone, and a slow PC's boot comes on top).
	NetbootTimeout time.Duration
	// RestoreTimeout: from Clonezilla's start until its report (2 h).
	RestoreTimeout time.Duration
	// RebootDelay: after Clonezilla's success, before the first SSH
	// attempt, so the seat has time to boot its OS (1 min).
	RebootDelay time.Duration
	// VerifyTimeout: how long an unreachable seat keeps being tried in
	// verifying before it fails (10 min).
	VerifyTimeout time.Duration
	// VerifyInterval: pause between verification attempts of an
	// unreachable seat (20 s).
	VerifyInterval time.Duration
	// MaxAttempts per seat, the first one included (3).
	MaxAttempts int
	// RetryDelay: pause before a failed seat is tried again (1 min).
	RetryDelay time.Duration
	// MaxRestoring bounds seats in powering/netbooting/restoring at once,
	// so a room's restores stay within the link (8).
	MaxRestoring int
	// WakeGap staggers starts: at most one seat is powered per gap (2 s),
	// so a room does not power up at once (inrush current, DHCP burst).
	WakeGap time.Duration
	// Tick: how often open runs are reconciled (5 s).
	Tick time.Duration
	// ActionTimeout bounds one external call (SSH, job query) (2 min).
	ActionTimeout time.Duration
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.PowerTimeout, 10*time.Minute)
	def(&c.NetbootTimeout, 20*time.Minute)
	def(&c.RestoreTimeout, 2*time.Hour)
	def(&c.RebootDelay, time.Minute)
	def(&c.VerifyTimeout, 10*time.Minute)
	def(&c.VerifyInterval, 20*time.Second)
	def(&c.RetryDelay, time.Minute)
	def(&c.WakeGap, 2*time.Second)
	def(&c.Tick, 5*time.Second)
	def(&c.ActionTimeout, 2*time.Minute)
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 3
	}
	if c.MaxRestoring <= 0 {
		c.MaxRestoring = 8
	}
	return c
}

// RunState is a run's overall state.
type RunState string

const (
	RunOpen     RunState = "open"     // seats still walking
	RunFinished RunState = "finished" // every seat settled; report due or sent
)

// Run is one application of an action to a set of seats, persisted.
type Run struct {
	ID             string              `json:"id"`
	ScheduleID     string              `json:"schedule_id,omitempty"`
	ScheduleName   string              `json:"schedule_name,omitempty"`
	Action         schedule.ActionKind `json:"action"`
	Image          string              `json:"image,omitempty"`
	OnlyUnverified bool                `json:"only_unverified,omitempty"`
	// Transport of a restore run: multicast or unicast, decided at its
	// start from the schedule's choice and the number of seats.
	Transport schedule.Transport `json:"transport,omitempty"`
	Target    schedule.Target    `json:"target"`
	Created   time.Time          `json:"created"`
	Deadline  time.Time          `json:"deadline"` // the window's end
	Finished  time.Time          `json:"finished,omitzero"`
	State     RunState           `json:"state"`
	// Cancelled is set by the admin; the reconciler fails what is left.
	Cancelled string `json:"cancelled,omitempty"`
	// Reported is set once the report was handed to the Reporter.
	Reported bool `json:"reported,omitempty"`
	// LastStart is when a seat was last powered, for WakeGap.
	LastStart time.Time `json:"last_start,omitzero"`
	Notes     []string  `json:"notes,omitempty"`
	Seats     []SeatRun `json:"seats"`
}

// SeatRun is one seat's walk through a run.
type SeatRun struct {
	Seat      Seat      `json:"seat"`
	State     SeatState `json:"state"`
	Reason    string    `json:"reason,omitempty"`     // why failed or skipped
	Attempts  int       `json:"attempts"`             // attempts started
	Final     bool      `json:"final,omitempty"`      // failed for good (no retry)
	Acted     bool      `json:"acted,omitempty"`      // the current state's action is done
	JobKey    string    `json:"job_key,omitempty"`    // the job of the current attempt
	CancelJob string    `json:"cancel_job,omitempty"` // a job still to cancel (persisted intent)
	// Running is the image the seat was last known to run (host key pinning
	// for reboot).
	Running   string                  `json:"running,omitempty"`
	Since     time.Time               `json:"since"`             // entered State
	NextTry   time.Time               `json:"next_try,omitzero"` // verifying: next SSH attempt
	Started   time.Time               `json:"started,omitzero"`  // first powering/verifying
	Finished  time.Time               `json:"finished,omitzero"` // reached a terminal state
	Phases    map[SeatState]time.Time `json:"phases,omitempty"`  // last entry into each state
	Boots     int                     `json:"boots,omitempty"`
	Bytes     int64                   `json:"bytes,omitempty"`
	Transport string                  `json:"transport,omitempty"` // how the image reached it (JobState.Transport)
	LastEvent string                  `json:"last_event,omitempty"`
}

// settled reports whether the seat needs nothing more in this run.
func (s SeatRun) settled() bool {
	return s.State.terminalOK() || (s.State == Failed && s.Final)
}

// Event is one line of a run's log: what happened to which seat and why.
type Event struct {
	Time    time.Time `json:"time"`
	RunID   string    `json:"run_id"`
	MAC     string    `json:"mac,omitempty"`
	State   SeatState `json:"state,omitempty"`
	Attempt int       `json:"attempt,omitempty"`
	Cause   string    `json:"cause"`
}

// VerifiedImage is the per-seat record of the last image verified on it,
// which "only seats not verified on that image" runs consult.
type VerifiedImage struct {
	Image string    `json:"image"`
	At    time.Time `json:"at"`
	RunID string    `json:"run_id"`
}

// Request starts a run by hand (the admin's "restore room B now").
type Request struct {
	ID             string // optional; empty: generated
	ScheduleID     string // the schedule a "run now" belongs to; "" for an ad-hoc run
	Name           string
	Action         schedule.Action
	Target         schedule.Target
	Window         time.Duration
	OnlyUnverified bool
}
