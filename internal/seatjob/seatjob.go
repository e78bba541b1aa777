// Package seatjob owns a seat's job: the record of what one lab PC must do on
// its next network boots (restore or capture an image), the per-boot decision
// that follows from it, Clonezilla's reports about it (HTTP and TCP 6461), and
// the NFS answer "may this address read or write the repository now".
//
// # Trust
//
// The lab network is not trusted: students and visitors sit at the lab PCs,
// some with a live USB stick. A seat is who pumi's own records say is at an
// address: its inventory IP, or the address pumi's DHCP leased to its MAC in
// full mode (Config.Addr answers that; a DHCP field, an HTTP request's claim,
// a report's source or a 6461 line are never records). Everything that can
// change a job or open the repository is accepted only from the job's seat's
// trusted address:
//   - a boot script for a seat with an active job carries the job's token only
//     when it is fetched from that address; from anywhere else it is `exit 1`
//     and changes nothing;
//   - tokens are per boot attempt: every boot mints a new one, the old one is
//     dead;
//   - reports (token) and 6461 lines (no token; they must name the MAC's
//     trusted address and the job's image) come from that address;
//   - NFS is open to that address only while its job is active.
//
// A seat that is powered off can still be impersonated by a machine that
// takes both its MAC and its IP on a flat VLAN; switch port security or
// 802.1X closes that (docs/ARCHITECTURE.md).
package seatjob

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pumi-lab/pumi/internal/clonezilla"
	"github.com/pumi-lab/pumi/internal/history"
	"github.com/pumi-lab/pumi/internal/macaddr"
	"github.com/pumi-lab/pumi/internal/store"
)

// State is where a job is. pending and booted seats get Clonezilla on every
// network boot, so a restore cut by a power failure simply runs again.
type State string

const (
	Pending State = "pending" // waiting for the seat to network-boot
	Booted  State = "booted"  // the seat fetched its Clonezilla script (this boot's token is out)
	Running State = "running" // Clonezilla mounted the repository and reported "started"
	Done    State = "done"    // Clonezilla reported success (restored or captured)
	Failed  State = "failed"  // Clonezilla reported failure; Reason says why
)

// Active reports whether a job in this state still wants its seat's boots.
func (s State) Active() bool { return s == Pending || s == Booted || s == Running }

// Action is what a job does on the seat's next network boot.
type Action string

const (
	Restore Action = "restore" // restoredisk an image onto the seat
	Capture Action = "capture" // savedisk the seat's disk into a new image folder
)

// Errors callers tell apart.
var (
	ErrNoJob       = errors.New("no such job")
	ErrUnknownSeat = errors.New("not in pumi's inventory")
	// ErrNoAddress: pumi has no record of where the seat is, so nothing it
	// sends could be told from a visitor's; such a seat cannot be restored.
	ErrNoAddress = errors.New("pumi has no address on record for this seat (give it an IP in the inventory; in proxy mode the school's DHCP reservation)")
	ErrBadToken  = errors.New("unknown or expired report token")
	ErrNotSeat   = errors.New("not from the seat's address on record")
	ErrInvalid   = errors.New("invalid job")
)

// Job is one seat's job. The token is never shown by any API.
type Job struct {
	MAC    string `json:"mac"`
	Key    string `json:"key"` // the run's job key (run ID and attempt)
	Action Action `json:"action"`
	Image  string `json:"image"` // folder relative to the repository root
	Disk   string `json:"disk,omitempty"`
	// Token authenticates Clonezilla's reports for this boot of this job;
	// empty until the seat's first boot.
	Token  string `json:"token,omitempty"`
	State  State  `json:"state"`
	Reason string `json:"reason,omitempty"`
	// Boots counts network boots into Clonezilla for this job (more than one:
	// a restore was cut and started again).
	Boots int `json:"boots"`
	// OCSLine is Clonezilla's ocs_server success line of the current boot.
	OCSLine string `json:"ocs_line,omitempty"`
	// Bytes is what Clonezilla reported restored or saved.
	Bytes   int64     `json:"bytes,omitempty"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	// LogFile is Clonezilla's uploaded log, relative to Config.LogDir.
	LogFile   string    `json:"log_file,omitempty"`
	StartedAt time.Time `json:"started_at,omitzero"`
	// Ending is set when the job was cancelled while Clonezilla was writing
	// the disk: the seat gets no new boot, but its NFS access and report stay
	// open until Clonezilla finishes (or EndBy), so the disk is not cut off
	// mid-partition.
	Ending string    `json:"ending,omitempty"`
	EndBy  time.Time `json:"end_by,omitzero"`
	// Group puts a restore in a multicast session (the run's ID). Its first
	// boot gets Clonezilla's multicast client on McastPort; a seat that
	// boots again, misses the start or drops out is Demoted (why) and
	// restores by unicast.
	Group     string `json:"group,omitempty"`
	McastBoot bool   `json:"mcast_boot,omitempty"` // this boot runs the multicast client
	McastPort int    `json:"mcast_port,omitempty"`
	Demoted   string `json:"demoted,omitempty"`
}

// Transport says how the image reaches the seat, for the run page and mail.
func (j Job) Transport() string {
	switch {
	case j.Action != Restore:
		return ""
	case j.Group != "" && j.Demoted == "":
		return "multicast"
	case j.Demoted != "":
		return "unicast (" + j.Demoted + ")"
	}
	return "unicast"
}

// wantsNFS reports whether the job's seat may use the repository now.
func (j Job) wantsNFS(now time.Time) bool {
	if j.Ending != "" {
		return j.State == Running && now.Before(j.EndBy)
	}
	return j.State.Active()
}

// Env is what a Clonezilla boot needs from the appliance's settings.
type Env struct {
	Base       string     // URL seats reach pumi's HTTP at (http://ip:port)
	Server     netip.Addr // pumi's address on the lab network (NFS, ocs_server)
	NFSPort    int
	Live       string // imported Clonezilla live version ("" none)
	Repository string // image repository root ("" none)
	Console    string
}

// Config connects the jobs to the appliance.
type Config struct {
	Store *store.Store
	Log   *slog.Logger
	// Addr returns the address pumi's records give the seat with this MAC
	// (canonical form) inside tx: its inventory IP, else in full mode pumi's
	// own lease. ErrUnknownSeat: not in the inventory; ErrNoAddress: no
	// record. Called on every decision, report, 6461 line and index rebuild.
	Addr func(tx *store.Tx, mac string) (netip.Addr, error)
	// Env returns the current boot settings; called per Clonezilla decision
	// and index rebuild. With an error, Repository is still set if known.
	Env func(ctx context.Context) (Env, error)
	// LogDir keeps Clonezilla's uploaded logs (<LogDir>/<key>/<mac>-clonezilla-<boot>.log).
	LogDir string
	// Changed is called after every committed job change (the runs engine's
	// wake-up); it must not block.
	Changed func()
	// Multicast returns the port base and the wait of a multicast group's
	// session (internal/roomcast); ok false: multicast cannot run (the seat
	// restores by unicast, why says so). Nil: no multicast.
	Multicast func(group string) (port int, wait time.Duration, why string, ok bool)
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// EndGrace bounds how long a cancelled job whose Clonezilla is writing
	// keeps its NFS access (default 2 h, the engine's restore timeout).
	EndGrace time.Duration
}

// Jobs is the one owner of seats' jobs.
type Jobs struct {
	cfg Config
	log *slog.Logger

	mu   sync.RWMutex
	idx  map[netip.Addr]Job // active jobs by trusted address (NFS, 6461)
	repo string             // the repository at the last Refresh (capture folders)

	ocs  ocsLimits
	warn warnLimit
}

// New returns the jobs of st and builds the address index.
func New(ctx context.Context, cfg Config) (*Jobs, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Changed == nil {
		cfg.Changed = func() {}
	}
	if cfg.EndGrace <= 0 {
		cfg.EndGrace = 2 * time.Hour
	}
	j := &Jobs{cfg: cfg, log: cfg.Log.With("pkg", "seatjob")}
	j.ocs.init()
	return j, j.Refresh(ctx)
}

var bucket = store.NewBucket[Job]("seat-jobs")

// Request asks for a job on a seat.
type Request struct {
	Key    string
	MAC    string // canonical
	Action Action
	Image  string
	Disk   string
	Group  string // multicast group (restore only); "" = unicast
}

// Start records the seat's job for its next network boots. It is idempotent
// on (MAC, Key): the runs engine repeats it after a crash, and a second call
// keeps the job's progress. A new key replaces an older job of the seat. A
// seat pumi has no address on record for is refused (ErrNoAddress).
func (j *Jobs) Start(ctx context.Context, req Request) (Job, error) {
	if req.Key == "" || req.MAC == "" || (req.Action != Restore && req.Action != Capture) || req.Image == "" {
		return Job{}, fmt.Errorf("%w: key, MAC, action (restore|capture) and image are required", ErrInvalid)
	}
	var out Job
	changed := false
	err := j.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		changed = false
		old, ok, err := bucket.Get(tx, req.MAC)
		if err != nil {
			return err
		}
		if ok && old.Key == req.Key {
			out = old
			return nil
		}
		if _, err := j.cfg.Addr(tx, req.MAC); err != nil {
			return fmt.Errorf("seat %s: %w", req.MAC, err)
		}
		now := j.cfg.Now().UTC()
		out = Job{MAC: req.MAC, Key: req.Key, Action: req.Action, Image: req.Image, Disk: req.Disk,
			State: Pending, Created: now, Updated: now}
		if req.Action == Restore {
			out.Group = req.Group
		}
		changed = true
		if err := bucket.Put(tx, req.MAC, out); err != nil {
			return err
		}
		return history.Add(tx, history.Event{MAC: req.MAC, RunID: req.Key, Kind: "assigned",
			Message: fmt.Sprintf("%s %s on the next network boot", req.Action, req.Image)})
	})
	if err != nil {
		return Job{}, err
	}
	if changed {
		j.changed(ctx)
	}
	return out, nil
}

// Get returns the seat's job if its key is key, else ErrNoJob.
func (j *Jobs) Get(ctx context.Context, mac, key string) (Job, error) {
	var out Job
	err := j.cfg.Store.View(ctx, func(tx *store.Tx) error {
		v, ok, err := bucket.Get(tx, mac)
		if err != nil {
			return err
		}
		if !ok || (key != "" && v.Key != key) {
			return ErrNoJob
		}
		out = v
		return nil
	})
	return out, err
}

// List returns every job, tokens removed.
func (j *Jobs) List(ctx context.Context) ([]Job, error) {
	var out []Job
	err := j.cfg.Store.View(ctx, func(tx *store.Tx) error {
		return bucket.ForEach(tx, func(_ string, v Job) error {
			v.Token = ""
			out = append(out, v)
			return nil
		})
	})
	return out, err
}

// Cancel ends the seat's job if its key is key ("" = any key): the seat boots
// its disk from now on. A job whose Clonezilla is writing the disk is not cut:
// it keeps NFS and its report until Clonezilla finishes or EndGrace passes,
// and the returned Job says so (Ending set, State running); the outcome it then
// reports is recorded. No job, or another key, is not an error.
func (j *Jobs) Cancel(ctx context.Context, mac, key, why string) (Job, error) {
	var out Job
	changed := false
	err := j.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		changed = false
		v, ok, err := bucket.Get(tx, mac)
		if err != nil || !ok || (key != "" && v.Key != key) {
			return err
		}
		now := j.cfg.Now().UTC()
		if v.State == Running && v.Ending == "" {
			v.Ending, v.EndBy, v.Updated = why, now.Add(j.cfg.EndGrace), now
			out, changed = v, true
			if err := bucket.Put(tx, mac, v); err != nil {
				return err
			}
			return history.Add(tx, history.Event{MAC: mac, RunID: v.Key, Kind: "job-ending",
				Message: "job ended (" + why + ") while Clonezilla was writing the disk: it may finish; no new boot"})
		}
		if v.Ending != "" {
			out = v
			return nil
		}
		changed = true
		if err := bucket.Delete(tx, mac); err != nil {
			return err
		}
		return history.Add(tx, history.Event{MAC: mac, RunID: v.Key, Kind: "job-cancelled", Message: "job ended: " + why})
	})
	if err != nil {
		return Job{}, err
	}
	if changed {
		j.changed(ctx)
	}
	return out, nil
}

// Refresh rebuilds the address index from the records; the appliance calls it
// when an address record changes outside this package (inventory import, a
// new lease).
func (j *Jobs) Refresh(ctx context.Context) error {
	idx := map[netip.Addr]Job{}
	now := j.cfg.Now()
	err := j.cfg.Store.View(ctx, func(tx *store.Tx) error {
		return bucket.ForEach(tx, func(mac string, v Job) error {
			if !v.wantsNFS(now) {
				return nil
			}
			addr, err := j.cfg.Addr(tx, mac)
			if err != nil {
				return nil // no record: nothing from the network counts for it
			}
			idx[addr] = v
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("seat jobs: %w", err)
	}
	env, _ := j.cfg.Env(ctx) // the repository is set even when the lab address is not
	repo := env.Repository
	j.mu.Lock()
	j.idx, j.repo = idx, repo
	j.mu.Unlock()
	return nil
}

// changed rebuilds the index and wakes the engine after a committed change.
func (j *Jobs) changed(ctx context.Context) {
	if err := j.Refresh(context.WithoutCancel(ctx)); err != nil {
		j.log.Error("rebuilding the address index", "err", err)
	}
	j.cfg.Changed()
}

// byAddr is the active job of the seat at addr.
func (j *Jobs) byAddr(addr netip.Addr) (Job, bool) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	v, ok := j.idx[addr.Unmap()]
	return v, ok
}

// newToken returns a fresh report token (what clonezilla.CheckToken accepts:
// URL-safe base64, 32 characters).
func newToken() (string, error) {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// StartAll gives seats a manual job (the API's "restore these PCs on their
// next boot", outside any run) under one key. Everything is checked before
// the first job is written: the action and image name, the image restorable
// in the repository, each MAC in the inventory with an address on record, a
// capture from exactly one seat with a disk. Refusals wrap ErrInvalid.
func (j *Jobs) StartAll(ctx context.Context, key string, macs []string, action Action, image, disk string) ([]Job, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
	}
	if action != Restore && action != Capture {
		return nil, bad("action must be restore or capture")
	}
	if err := clonezilla.CheckImagePath(image); err != nil {
		return nil, bad("image: %v", err)
	}
	if disk == "" && action == Capture {
		return nil, bad("a capture needs the source disk (disk)")
	}
	if disk != "" {
		if err := clonezilla.CheckDisk(disk); err != nil {
			return nil, bad("disk: %v", err)
		}
	}
	env, err := j.cfg.Env(ctx)
	if err != nil {
		return nil, err
	}
	if env.Repository == "" {
		return nil, bad("no image repository configured")
	}
	if action == Restore {
		img, err := clonezilla.Inspect(ctx, env.Repository, image)
		if err != nil {
			return nil, bad("image %s: %v", image, err)
		}
		if !img.Valid {
			return nil, bad("image %s cannot be restored: %s", image, strings.Join(img.Problems, "; "))
		}
	}
	set := map[string]bool{}
	for _, m := range macs {
		n, err := macaddr.Normalize(m)
		if err != nil {
			return nil, bad("%v", err)
		}
		set[n] = true
	}
	if len(set) == 0 {
		return nil, bad("no seats named (macs or room)")
	}
	if action == Capture && len(set) != 1 {
		return nil, bad("a capture is taken from exactly one seat")
	}
	sorted := slices.Sorted(maps.Keys(set))
	err = j.cfg.Store.View(ctx, func(tx *store.Tx) error {
		for _, m := range sorted {
			if _, err := j.cfg.Addr(tx, m); err != nil {
				return bad("seat %s: %v", m, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []Job
	for _, m := range sorted {
		v, err := j.Start(ctx, Request{Key: key, MAC: m, Action: action, Image: image, Disk: disk})
		if err != nil {
			return out, err
		}
		v.Token = ""
		out = append(out, v)
	}
	return out, nil
}

// Demote takes the seat's job out of its multicast session: its restore goes
// (or starts over) by unicast. No job, another key, or a job not in a group
// is not an error.
func (j *Jobs) Demote(ctx context.Context, mac, key, why string) error {
	changed := false
	err := j.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		changed = false
		v, ok, err := bucket.Get(tx, mac)
		if err != nil || !ok || v.Key != key || v.Group == "" || v.Demoted != "" || !v.State.Active() {
			return err
		}
		v.Demoted, v.Updated = why, j.cfg.Now().UTC()
		changed = true
		if err := bucket.Put(tx, mac, v); err != nil {
			return err
		}
		return history.Add(tx, history.Event{MAC: mac, RunID: key, Kind: "multicast", Message: "restore by unicast: " + why})
	})
	if err == nil && changed {
		j.changed(ctx)
	}
	return err
}

// Addr is the address pumi's records give the seat (the trust rule).
func (j *Jobs) Addr(ctx context.Context, mac string) (netip.Addr, error) {
	var a netip.Addr
	err := j.cfg.Store.View(ctx, func(tx *store.Tx) error {
		var err error
		a, err = j.cfg.Addr(tx, mac)
		return err
	})
	return a, err
}
