package web

import (
	"context"
	"io"
	"net/netip"
	"time"

	"github.com/pumi-lab/pumi/internal/clonezilla"
	"github.com/pumi-lab/pumi/internal/inventory"
	"github.com/pumi-lab/pumi/internal/schedule"
)

// Backend is everything the pages need from the appliance. It mirrors the
// appliance's own methods so that *appliance.App can satisfy it with thin
// adapters; web never imports the appliance (the appliance mounts web).
//
// Secrets (mail password, SSH passwords) only ever go in: Settings carries
// whether they are set, never their value.
type Backend interface {
	// Settings returns the current settings; secret values are left out.
	Settings(ctx context.Context) (Settings, error)
	// SetSettings validates and stores s; secrets are kept as they are.
	// A validation error must wrap ErrInvalid (or the backend's own
	// invalid error) and change nothing.
	SetSettings(ctx context.Context, s Settings) error
	// SetSecret sets (value != "") or clears (value == "") one secret:
	// SecretMail or SSHSecretName(scope, name).
	SetSecret(ctx context.Context, name, value string) error
	// SendTestMail sends a short mail with the stored mail settings.
	SendTestMail(ctx context.Context) error
	// PublicKey is pumi's SSH public key (authorized_keys line).
	PublicKey(ctx context.Context) (string, error)

	// Inventory.
	Seats(ctx context.Context) ([]inventory.Seat, error)
	AddSeat(ctx context.Context, s inventory.Seat) (inventory.Seat, error)
	DeleteSeat(ctx context.Context, mac string) error
	ImportSeats(ctx context.Context, r io.Reader, mode inventory.ImportMode) (inventory.ImportResult, error)
	Rooms(ctx context.Context) ([]inventory.Room, error)
	AddRoom(ctx context.Context, r inventory.Room) (inventory.Room, error)
	// Discover ARP-sweeps prefix on the lab interface ifname.
	Discover(ctx context.Context, ifname string, prefix netip.Prefix) ([]inventory.Found, error)
	// Seen lists PXE clients pumi has heard from, known or not.
	Seen(ctx context.Context) ([]SeenMAC, error)

	// Images scans the configured repository.
	Images(ctx context.Context) (clonezilla.ScanResult, error)
	// ImportLive imports a Clonezilla live zip given relative to the
	// repository root and selects it.
	ImportLive(ctx context.Context, zipRel string) (clonezilla.LiveFiles, error)

	// Schedules.
	Schedules(ctx context.Context) ([]schedule.Schedule, error)
	// PutSchedule creates or replaces the schedule with s.ID.
	PutSchedule(ctx context.Context, s schedule.Schedule) error
	DeleteSchedule(ctx context.Context, id string) error
	// Missed lists the schedules' missed-fire records recorded since.
	Missed(ctx context.Context, since time.Time) ([]schedule.MissedRecord, error)
	// RunNow starts the schedule's action at once and returns the run ID.
	RunNow(ctx context.Context, scheduleID string) (string, error)

	// Runs, newest first.
	Runs(ctx context.Context) ([]Run, error)
	Run(ctx context.Context, id string) (Run, error)
	CancelRun(ctx context.Context, id string) error
	// SeatLog opens the log of one seat in a run (Clonezilla's output and
	// pumi's events); ErrNotFound if there is none.
	SeatLog(ctx context.Context, runID, mac string) (io.ReadCloser, error)
}

// Secret names for Backend.SetSecret.
const SecretMail = "mail"

// SSHSecretName names the SSH password of a room or an image.
func SSHSecretName(scope, name string) string { return "ssh:" + scope + ":" + name }

// Settings is what the setup page edits.
type Settings struct {
	Network    Network    `json:"network"`
	Netboot    Netboot    `json:"netboot"`
	Repository string     `json:"repository,omitempty"`   // absolute path of the image repository
	Live       string     `json:"live_version,omitempty"` // selected Clonezilla live version
	Mail       Mail       `json:"mail"`
	SSH        []SSHLogin `json:"ssh,omitempty"`
	TimeZone   string     `json:"time_zone,omitempty"` // IANA name, e.g. Europe/Zurich; "" = UTC
}

// Network is the appliance's own address on its management interface.
type Network struct {
	Mode    string       `json:"mode"` // "dhcp" or "static"
	Address netip.Prefix `json:"address,omitzero"`
	Gateway netip.Addr   `json:"gateway,omitzero"`
	DNS     []netip.Addr `json:"dns,omitempty"`
}

// Netboot is DHCP/TFTP on the lab interface.
type Netboot struct {
	Mode       string       `json:"mode"` // off, proxy or full
	Interface  string       `json:"interface,omitempty"`
	Subnet     netip.Prefix `json:"subnet,omitzero"`
	RangeStart netip.Addr   `json:"range_start,omitzero"`
	RangeEnd   netip.Addr   `json:"range_end,omitzero"`
	Router     netip.Addr   `json:"router,omitzero"`
}

// Mail is the SMTP settings without the password.
type Mail struct {
	Host        string   `json:"host,omitempty"`
	Port        int      `json:"port,omitempty"`
	Username    string   `json:"username,omitempty"`
	From        string   `json:"from,omitempty"`
	To          []string `json:"to,omitempty"`
	TLS         string   `json:"tls,omitempty"`      // starttls or tls (notify.TLSMode)
	Language    string   `json:"language,omitempty"` // report mails: en or es
	PasswordSet bool     `json:"password_set"`       // read only
}

// SSHLogin is the login pumi uses for the seats of a room or an image.
type SSHLogin struct {
	Scope       string `json:"scope"` // "room" or "image"
	Name        string `json:"name"`
	User        string `json:"user"`
	PasswordSet bool   `json:"password_set"` // read only
}

// SeenMAC is a PXE client pumi has heard from.
type SeenMAC struct {
	MAC   string     `json:"mac"`
	IP    netip.Addr `json:"ip,omitzero"`
	Arch  string     `json:"arch,omitempty"`
	Last  time.Time  `json:"last"`
	Count int        `json:"count"`
	Known bool       `json:"known"`
}

// Run is one run of a schedule (or a "run now").
type Run struct {
	ID         string         `json:"id"`
	ScheduleID string         `json:"schedule_id,omitempty"`
	Name       string         `json:"name"`
	Action     string         `json:"action"`
	Image      string         `json:"image,omitempty"`
	State      string         `json:"state"` // open (or running), finished, cancelled, failed
	Started    time.Time      `json:"started"`
	Ended      time.Time      `json:"ended,omitzero"`
	Seats      []SeatProgress `json:"seats"`
}

// Open reports whether the run may still change: the page polls it and
// offers "cancel" only then. "open" is internal/reimage's word.
func (r Run) Open() bool {
	switch r.State {
	case "", "open", "running", "pending":
		return true
	}
	return false
}

// SeatProgress is one seat's place in a run.
type SeatProgress struct {
	MAC       string    `json:"mac"`
	Hostname  string    `json:"hostname,omitempty"`
	State     string    `json:"state"` // internal/reimage.SeatState: pending, powering, netbooting, restoring, rebooting, verifying, verified, failed, skipped, done; or cancelled
	Reason    string    `json:"reason,omitempty"`
	LastEvent string    `json:"last_event,omitempty"`
	Started   time.Time `json:"started,omitzero"`
	Updated   time.Time `json:"updated,omitzero"`
	Finished  time.Time `json:"finished,omitzero"` // reached a final state; the elapsed time stops there
	Bytes     int64     `json:"bytes,omitempty"`   // restored so far, when known
	Total     int64     `json:"total,omitempty"`   // image size, when known
	Rate      float64   `json:"rate,omitempty"`    // bytes per second, when known
	HasLog    bool      `json:"has_log,omitempty"`
}

// Waiting reports a seat that is not moving on by itself: still active,
// with a problem noted (a refused SSH login, a missing address). The page
// shows it amber as waiting, not as progress.
func (p SeatProgress) Waiting() bool {
	switch p.State {
	case "pending", "powering", "netbooting", "rebooting", "verifying":
		return p.Reason != ""
	}
	return false
}

// WaitsFor is what a waiting seat waits for (an English catalog key).
func (p SeatProgress) WaitsFor() string {
	switch p.State {
	case "pending":
		return "a free slot or its next try"
	case "powering":
		return "its network boot (reboot over SSH or Wake-on-LAN)"
	case "netbooting":
		return "Clonezilla to start"
	case "rebooting", "verifying":
		return "an SSH login to check the image"
	}
	return "its next step"
}
