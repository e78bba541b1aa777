package schedule

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// ActionKind is what a schedule does to its target when it fires.
type ActionKind string

const (
	Restore  ActionKind = "restore"  // set the desired image and re-image seats that differ
	Capture  ActionKind = "capture"  // capture SourceSeat's disk as Image
	Verify   ActionKind = "verify"   // only check seats over SSH (against Image if set)
	Wake     ActionKind = "wake"     // Wake-on-LAN only
	Shutdown ActionKind = "shutdown" // SSH shutdown only
)

// Target is the set of seats a schedule acts on: every seat of the listed
// rooms plus the listed seats (by inventory seat ID).
type Target struct {
	Rooms []string `json:"rooms,omitempty"`
	Seats []string `json:"seats,omitempty"`
}

// Transport is how a restore carries the image to the seats.
type Transport string

const (
	// Auto (the default, ""): multicast when at least MulticastMin seats
	// restore the image, else unicast.
	Auto      Transport = "auto"
	Multicast Transport = "multicast" // one stream for the room (udpcast), unicast for stragglers
	Unicast   Transport = "unicast"   // every seat reads its own copy over NFS
)

// MulticastMin is how many seats make Auto choose multicast: below it the
// join wait costs more than the copies it saves.
const MulticastMin = 3

// Action is what to do when a schedule fires.
type Action struct {
	Kind       ActionKind `json:"kind"`
	Image      string     `json:"image,omitempty"`       // restore, capture (name of the new image), verify (optional)
	SourceSeat string     `json:"source_seat,omitempty"` // capture only
	Transport  Transport  `json:"transport,omitempty"`   // restore only; "" = Auto
}

// Multicast reports whether a restore of n seats goes by multicast.
func (a Action) Multicast(n int) bool {
	if a.Kind != Restore || n == 0 {
		return false
	}
	switch a.Transport {
	case Multicast:
		return true
	case Unicast:
		return false
	}
	return n >= MulticastMin
}

// Schedule is one cron-driven job. It is a plain value; the appliance stores
// it and calls Validate before saving.
type Schedule struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Spec   Spec   `json:"spec"`
	Target Target `json:"target"`
	Action Action `json:"action"`
	// Window is how long after a fire the run may still start and work;
	// a fire found late (appliance was off) starts only inside its window.
	Window time.Duration `json:"window"`
	// OnlyUnverified restricts a restore to seats not verified on Image.
	OnlyUnverified bool `json:"only_unverified,omitempty"`
	Enabled        bool `json:"enabled"`
}

// Window limits: below a minute a restart of the appliance would already
// miss the run; above a week a catch-up could start absurdly late.
const (
	MinWindow = time.Minute
	MaxWindow = 7 * 24 * time.Hour
)

// Validate reports every problem with s at once, in plain language.
func (s Schedule) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	if err := checkID(s.ID); err != nil {
		bad("id: %w", err)
	}
	if err := checkName(s.Name, 100); err != nil {
		bad("name: %w", err)
	}
	if s.Spec.IsZero() {
		bad("spec: missing; give a cron spec such as \"0 2 * * SAT\"")
	}
	switch {
	case s.Window < MinWindow:
		bad("window %v is too short; use at least %v", s.Window, MinWindow)
	case s.Window > MaxWindow:
		bad("window %v is too long; use at most %v", s.Window, MaxWindow)
	}

	a := s.Action
	needTarget := true
	switch a.Kind {
	case Restore:
		if a.Image == "" {
			bad("restore: choose the image to restore")
		}
	case Capture:
		needTarget = false
		if a.Image == "" {
			bad("capture: name the image to create")
		}
		if a.SourceSeat == "" {
			bad("capture: choose the seat to capture from (source seat)")
		}
		if len(s.Target.Rooms)+len(s.Target.Seats) > 0 {
			bad("capture: the seat is the source seat; leave rooms and seats empty")
		}
	case Verify:
	case Wake, Shutdown:
		if a.Image != "" {
			bad("%s: takes no image; clear it", a.Kind)
		}
	case "":
		bad("action: missing; use one of restore, capture, verify, wake, shutdown")
	default:
		bad("action %q unknown; use one of restore, capture, verify, wake, shutdown", clip(string(a.Kind)))
	}
	switch a.Transport {
	case "", Auto, Multicast, Unicast:
		if a.Transport != "" && a.Transport != Auto && a.Kind != Restore {
			bad("%s: a transport is only for restore; clear it", a.Kind)
		}
	default:
		bad("transport %q unknown; use auto, multicast or unicast", clip(string(a.Transport)))
	}
	if a.Kind != Capture && a.SourceSeat != "" {
		bad("%s: a source seat is only for capture; clear it", a.Kind)
	}
	if s.OnlyUnverified && a.Kind != Restore {
		bad("\"only seats not verified\" applies to restore only")
	}
	if a.Image != "" {
		if err := checkName(a.Image, 200); err != nil {
			bad("image: %w", err)
		}
	}
	if a.SourceSeat != "" {
		if err := checkName(a.SourceSeat, 200); err != nil {
			bad("source seat: %w", err)
		}
	}
	if needTarget && len(s.Target.Rooms)+len(s.Target.Seats) == 0 {
		bad("target: choose at least one room or seat")
	}
	for _, l := range []struct {
		what string
		list []string
	}{{"room", s.Target.Rooms}, {"seat", s.Target.Seats}} {
		what := l.what
		seen := map[string]bool{}
		for _, v := range l.list {
			if err := checkName(v, 200); err != nil {
				bad("%s %q: %w", what, clip(v), err)
			}
			if seen[v] {
				bad("%s %q listed twice", what, clip(v))
			}
			seen[v] = true
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("schedule %q: %w", clip(s.Name), errors.Join(errs...))
}

// checkID keeps IDs usable as bbolt keys, file names and URL path segments.
func checkID(id string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("must be 1-64 characters")
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("%q may contain only letters, digits, '-', '_' and '.'", clip(id))
		}
	}
	return nil
}

func checkName(s string, max int) error {
	switch {
	case strings.TrimSpace(s) == "":
		return fmt.Errorf("empty")
	case len(s) > max:
		return fmt.Errorf("longer than %d bytes", max)
	case !utf8.ValidString(s):
		return fmt.Errorf("not valid UTF-8")
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("contains a control character")
		}
	}
	return nil
}
