package appliance

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pumi-lab/pumi/internal/macaddr"
	"github.com/pumi-lab/pumi/internal/netboot"
	"github.com/pumi-lab/pumi/internal/store"
)

// Buckets owned by the appliance.
var (
	configBucket     = store.NewBucket[Config]("appliance-config")
	assignmentBucket = store.NewBucket[Assignment]("assignments")
	eventBucket      = store.NewBucket[Event]("events")
	seenBucket       = store.NewBucket[Seen]("seen")
	leaseBucket      = store.NewBucket[storedLease]("leases")
)

const configKey = "config"

// Action is what an assignment asks a seat's next network boot to do.
type Action string

const (
	ActionRestore Action = "restore" // restoredisk an image onto the seat
	ActionCapture Action = "capture" // savedisk the seat's disk into a new image folder
)

// Assignment states. A seat in pending or booted gets the Clonezilla script on
// every network boot, so a restore cut by a power failure simply runs again;
// done and failed seats boot their local disk.
const (
	StatePending = "pending" // waiting for the seat to network-boot
	StateBooted  = "booted"  // the seat fetched its Clonezilla script
	StateRunning = "running" // Clonezilla mounted the repository and reported "started"
	StateDone    = "done"    // Clonezilla reported success (restored or captured)
	StateFailed  = "failed"  // Clonezilla reported failure; Reason says why
)

// Assignment is one seat's job in a run: the desired image, and the token
// that only this seat's Clonezilla knows (it is on its kernel command line).
type Assignment struct {
	MAC    string `json:"mac"`
	RunID  string `json:"run_id"`
	Action Action `json:"action"`
	// Image is the image folder relative to the repository root.
	Image string `json:"image"`
	Disk  string `json:"disk,omitempty"`
	// Token authenticates Clonezilla's reports for this seat and run. It is
	// never returned by the API.
	Token string `json:"token"`
	State string `json:"state"`
	// Reason explains a failure in plain language.
	Reason string `json:"reason,omitempty"`
	// Boots counts network boots into Clonezilla for this assignment (more
	// than one means a restore was interrupted and started again).
	Boots int `json:"boots"`
	// OCSLine is set when Clonezilla's own ocs_server status line reported
	// success for this seat during the current boot.
	OCSLine string `json:"ocs_line,omitempty"`
	// Bytes is the data Clonezilla reported restored or saved (from its
	// status line's per-partition sizes).
	Bytes     int64     `json:"bytes,omitempty"`
	Created   time.Time `json:"created"`
	Updated   time.Time `json:"updated"`
	LogFile   string    `json:"log_file,omitempty"` // Clonezilla's log as uploaded, below <state>/logs
	ClientIP  string    `json:"client_ip,omitempty"`
	StartedAt time.Time `json:"started_at,omitzero"`
}

// Active reports whether the seat should get Clonezilla on its next boot.
func (a Assignment) Active() bool {
	return a.State == StatePending || a.State == StateBooted || a.State == StateRunning
}

// Event is one line of the appliance's history: what happened to which seat.
type Event struct {
	Time    time.Time `json:"time"`
	MAC     string    `json:"mac,omitempty"`
	RunID   string    `json:"run_id,omitempty"`
	Kind    string    `json:"kind"`
	Message string    `json:"message"`
}

// Seen is a MAC that network-booted, known or not, so the admin can add
// unknown ones to the inventory.
type Seen struct {
	MAC      string    `json:"mac"`
	Known    bool      `json:"known"`
	Firmware string    `json:"firmware"`
	Arch     int       `json:"arch"`
	IP       string    `json:"ip,omitempty"`
	First    time.Time `json:"first"`
	Last     time.Time `json:"last"`
	Count    int       `json:"count"`
}

type storedLease struct {
	MAC      string     `json:"mac"`
	IP       netip.Addr `json:"ip"`
	Expiry   time.Time  `json:"expiry"`
	Hostname string     `json:"hostname,omitempty"`
}

// newToken returns a fresh per-seat report token (what clonezilla.CheckToken
// accepts: URL-safe base64, 32 characters).
func newToken() (string, error) {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// addEvent appends an event inside tx, so it commits with the change it
// describes.
func addEvent(tx *store.Tx, e Event) error {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	_, err := eventBucket.Append(tx, e)
	return err
}

// leaseStore keeps DHCP leases in the state file: Put and Delete commit
// (fsync) before they return, as netboot.LeaseStore requires; concurrent
// calls are coalesced into one commit by Store.Batch.
type leaseStore struct{ st *store.Store }

func (l leaseStore) Load() ([]netboot.Lease, error) {
	var out []netboot.Lease
	err := l.st.View(context.Background(), func(tx *store.Tx) error {
		return leaseBucket.ForEach(tx, func(_ string, v storedLease) error {
			m, err := macaddr.Parse(v.MAC)
			if err != nil {
				return nil // written by us; a bad entry is skipped rather than blocking DHCP
			}
			out = append(out, netboot.Lease{MAC: m, IP: v.IP, Expiry: v.Expiry, Hostname: v.Hostname})
			return nil
		})
	})
	return out, err
}

func (l leaseStore) Put(le netboot.Lease) error {
	return l.st.Batch(context.Background(), func(tx *store.Tx) error {
		return leaseBucket.Put(tx, le.MAC.String(), storedLease{MAC: le.MAC.String(), IP: le.IP, Expiry: le.Expiry, Hostname: le.Hostname})
	})
}

func (l leaseStore) Delete(mac net.HardwareAddr) error {
	return l.st.Batch(context.Background(), func(tx *store.Tx) error { return leaseBucket.Delete(tx, mac.String()) })
}
