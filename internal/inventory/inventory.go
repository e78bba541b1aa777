// Package inventory owns the lab's seats (one PC each: MAC, IP, hostname,
// room, SSH user, credential reference) and rooms, kept in the state store;
// their CSV import and export; and the ARP sweep that finds the PCs on a
// subnet (what `nmap -sP` did for the original scripts).
//
// Invariants, enforced inside the same transaction as every change:
// a seat is identified by its MAC (canonical lower-case colon form), no two
// seats share a MAC or an IP, and every seat's room exists (rooms are
// created on demand when a seat names them, and cannot be deleted while
// seats are in them).
package inventory

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/pumi-lab/pumi/internal/macaddr"
	"github.com/pumi-lab/pumi/internal/store"
)

// Seat is one lab PC.
type Seat struct {
	MAC      string     `json:"mac"`                // canonical, e.g. 52:54:00:ab:cd:ef
	IP       netip.Addr `json:"ip,omitzero"`        // IPv4; zero when the address comes from another DHCP server
	Hostname string     `json:"hostname,omitempty"` // lower case
	Room     string     `json:"room,omitempty"`
	SSHUser  string     `json:"ssh_user,omitempty"`
	// Credential names the secret used to log in (a password or key kept
	// elsewhere, 0600); it is never the secret itself.
	Credential string `json:"credential,omitempty"`
}

// Room groups seats; schedules target rooms.
type Room struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
}

// Errors for errors.Is.
var (
	ErrNotFound  = errors.New("not found")
	ErrDuplicate = errors.New("already exists")
	ErrInvalid   = errors.New("invalid")
	ErrInUse     = errors.New("in use")
)

var (
	seatsBucket = store.NewBucket[Seat]("seats")         // canonical MAC -> Seat
	ipIndex     = store.NewBucket[string]("seats-by-ip") // IP -> canonical MAC
	roomsBucket = store.NewBucket[Room]("rooms")         // name -> Room
)

// Inventory reads and changes seats and rooms in a store.
type Inventory struct {
	st *store.Store

	// known is the set of inventory MACs for Known, dropped by every write.
	mu    sync.Mutex
	known map[string]bool
}

// New returns the inventory kept in st.
func New(st *store.Store) *Inventory { return &Inventory{st: st} }

// update is st.Update for inventory changes: it drops Known's set.
func (inv *Inventory) update(ctx context.Context, fn func(tx *store.Tx) error) error {
	err := inv.st.Update(ctx, fn)
	inv.mu.Lock()
	inv.known = nil
	inv.mu.Unlock()
	return err
}

// Known reports whether mac (canonical form) is in the inventory. DHCP asks
// it for every packet, a visitor can send thousands a second, so it answers
// from a set that only the inventory's own writes drop, not from the state
// file per packet.
func (inv *Inventory) Known(ctx context.Context, mac string) (bool, error) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if inv.known == nil {
		seats, err := inv.Seats(ctx)
		if err != nil {
			return false, err
		}
		inv.known = make(map[string]bool, len(seats))
		for _, s := range seats {
			inv.known[s.MAC] = true
		}
	}
	return inv.known[mac], nil
}

// fieldError is a problem with one field of a seat; CSV import turns it
// into "line N, column C: reason".
type fieldError struct {
	field  string // mac, ip, user, hostname, room, credential
	reason string
}

func (e fieldError) Error() string { return e.field + ": " + e.reason }

// normalize checks s and returns it in canonical form (MAC canonical,
// hostname lower case, blanks trimmed).
func normalize(s Seat) (Seat, []fieldError) {
	var errs []fieldError
	bad := func(field, format string, a ...any) {
		errs = append(errs, fieldError{field, fmt.Sprintf(format, a...)})
	}
	mac, err := macaddr.Parse(s.MAC)
	switch {
	case err != nil:
		bad("mac", "%v", err)
	case mac[0]&1 == 1:
		bad("mac", "%s is a multicast/broadcast address, not a network card's", mac)
	case mac.String() == "00:00:00:00:00:00":
		bad("mac", "00:00:00:00:00:00 is not a network card's address")
	default:
		s.MAC = mac.String()
	}
	if s.IP.IsValid() {
		if msg := checkIP(s.IP); msg != "" {
			bad("ip", "%s", msg)
		}
		s.IP = s.IP.Unmap()
	}
	s.Hostname = strings.ToLower(strings.TrimSpace(s.Hostname))
	if s.Hostname != "" {
		if msg := checkHostname(s.Hostname); msg != "" {
			bad("hostname", "%s", msg)
		}
	}
	s.Room = strings.TrimSpace(s.Room)
	if s.Room != "" {
		if msg := checkRoomName(s.Room); msg != "" {
			bad("room", "%s", msg)
		}
	}
	s.SSHUser = strings.TrimSpace(s.SSHUser)
	if s.SSHUser != "" {
		if msg := checkUser(s.SSHUser); msg != "" {
			bad("user", "%s", msg)
		}
	}
	s.Credential = strings.TrimSpace(s.Credential)
	if s.Credential != "" {
		if msg := checkCredential(s.Credential); msg != "" {
			bad("credential", "%s", msg)
		}
	}
	return s, errs
}

func checkIP(ip netip.Addr) string {
	ip = ip.Unmap()
	switch {
	case !ip.Is4():
		return fmt.Sprintf("%s is not an IPv4 address (netboot is IPv4 only)", ip)
	case ip.IsUnspecified(), ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Sprintf("%s cannot be a PC's address", ip)
	case ip.IsLoopback(), ip.IsMulticast(), ip.IsLinkLocalUnicast():
		return fmt.Sprintf("%s is a loopback, multicast or link-local address, not a lab PC's", ip)
	}
	return ""
}

func checkHostname(h string) string {
	if len(h) > 253 {
		return "longer than 253 characters"
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Sprintf("%q: each dot-separated part needs 1 to 63 characters", h)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Sprintf("%q: a part may not start or end with '-'", h)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
				return fmt.Sprintf("%q: only letters, digits, '-' and '.' are allowed", h)
			}
		}
	}
	return ""
}

func checkRoomName(n string) string {
	if utf8.RuneCountInString(n) > 64 {
		return "room name longer than 64 characters"
	}
	for _, r := range n {
		if !(unicode.IsLetter(r) || unicode.IsDigit(r) || strings.ContainsRune(" _-.", r)) {
			return fmt.Sprintf("room %q: only letters, digits, spaces and _ - . are allowed", n)
		}
	}
	return ""
}

// checkUser accepts the POSIX portable user name set; the name goes on an
// SSH command line, so anything else is refused rather than quoted.
func checkUser(u string) string {
	if len(u) > 32 {
		return "user name longer than 32 characters"
	}
	for i, r := range u {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.' || r == '-' && i > 0) {
			return fmt.Sprintf("user %q: only letters, digits, _ . and - (not first) are allowed", u)
		}
	}
	return ""
}

// checkCredential keeps references short and name-like, which also makes
// it unlikely that someone pastes a password into the column.
func checkCredential(c string) string {
	if len(c) > 64 {
		return "credential reference longer than 64 characters"
	}
	for _, r := range c {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.' || r == '-') {
			return fmt.Sprintf("credential reference %q: a name made of letters, digits, _ . - (the secret itself is stored elsewhere)", c)
		}
	}
	return ""
}

func invalid(errs []fieldError) error {
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return fmt.Errorf("seat: %s: %w", strings.Join(msgs, "; "), ErrInvalid)
}

// ensureRoom creates the named room if it does not exist yet.
func ensureRoom(tx *store.Tx, name string) error {
	if name == "" {
		return nil
	}
	ok, err := roomsBucket.Has(tx, name)
	if err != nil || ok {
		return err
	}
	return roomsBucket.Put(tx, name, Room{Name: name})
}

// putSeat writes s (already normalized) in tx, replacing the seat with
// the same MAC (old, if any) and keeping the IP index and rooms in step.
func putSeat(tx *store.Tx, s Seat, old *Seat) error {
	if s.IP.IsValid() {
		owner, ok, err := ipIndex.Get(tx, s.IP.String())
		if err != nil {
			return err
		}
		if ok && owner != s.MAC {
			return fmt.Errorf("seat %s: IP %s already belongs to seat %s: %w", s.MAC, s.IP, owner, ErrDuplicate)
		}
	}
	if old != nil && old.IP.IsValid() && old.IP != s.IP {
		if err := ipIndex.Delete(tx, old.IP.String()); err != nil {
			return err
		}
	}
	if s.IP.IsValid() {
		if err := ipIndex.Put(tx, s.IP.String(), s.MAC); err != nil {
			return err
		}
	}
	if err := ensureRoom(tx, s.Room); err != nil {
		return err
	}
	return seatsBucket.Put(tx, s.MAC, s)
}

func deleteSeat(tx *store.Tx, s Seat) error {
	if s.IP.IsValid() {
		if err := ipIndex.Delete(tx, s.IP.String()); err != nil {
			return err
		}
	}
	return seatsBucket.Delete(tx, s.MAC)
}

// AddSeat stores a new seat; its MAC and IP must not be in use. It returns
// the seat as stored (normalized).
func (inv *Inventory) AddSeat(ctx context.Context, s Seat) (Seat, error) {
	s, errs := normalize(s)
	if len(errs) > 0 {
		return Seat{}, invalid(errs)
	}
	err := inv.update(ctx, func(tx *store.Tx) error {
		if ok, err := seatsBucket.Has(tx, s.MAC); err != nil {
			return err
		} else if ok {
			return fmt.Errorf("seat %s: %w (use update to change it)", s.MAC, ErrDuplicate)
		}
		return putSeat(tx, s, nil)
	})
	return s, err
}

// UpdateSeat replaces the seat with s.MAC by s. To change a MAC (a new
// network card), delete the seat and add it again.
func (inv *Inventory) UpdateSeat(ctx context.Context, s Seat) (Seat, error) {
	s, errs := normalize(s)
	if len(errs) > 0 {
		return Seat{}, invalid(errs)
	}
	err := inv.update(ctx, func(tx *store.Tx) error {
		old, ok, err := seatsBucket.Get(tx, s.MAC)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("seat %s: %w", s.MAC, ErrNotFound)
		}
		return putSeat(tx, s, &old)
	})
	return s, err
}

// DeleteSeat removes the seat with mac (any spelling).
func (inv *Inventory) DeleteSeat(ctx context.Context, mac string) error {
	m, err := macaddr.Normalize(mac)
	if err != nil {
		return fmt.Errorf("seat: %w: %w", err, ErrInvalid)
	}
	return inv.update(ctx, func(tx *store.Tx) error {
		old, ok, err := seatsBucket.Get(tx, m)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("seat %s: %w", m, ErrNotFound)
		}
		return deleteSeat(tx, old)
	})
}

// SeatByMAC finds a seat by its MAC in any spelling.
func (inv *Inventory) SeatByMAC(ctx context.Context, mac string) (Seat, error) {
	m, err := macaddr.Normalize(mac)
	if err != nil {
		return Seat{}, fmt.Errorf("seat: %w: %w", err, ErrInvalid)
	}
	var s Seat
	err = inv.st.View(ctx, func(tx *store.Tx) error {
		var err error
		s, err = SeatByMACTx(tx, m)
		return err
	})
	return s, err
}

// SeatByMACTx is SeatByMAC inside a caller's transaction, for packages
// that must read a seat and act on it atomically. mac must be canonical.
func SeatByMACTx(tx *store.Tx, mac string) (Seat, error) {
	s, ok, err := seatsBucket.Get(tx, mac)
	if err != nil {
		return Seat{}, err
	}
	if !ok {
		return Seat{}, fmt.Errorf("seat %s: %w", mac, ErrNotFound)
	}
	return s, nil
}

// SeatByIP finds the seat that has ip.
func (inv *Inventory) SeatByIP(ctx context.Context, ip netip.Addr) (Seat, error) {
	var s Seat
	err := inv.st.View(ctx, func(tx *store.Tx) error {
		mac, ok, err := ipIndex.Get(tx, ip.Unmap().String())
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("seat with IP %s: %w", ip, ErrNotFound)
		}
		s, err = SeatByMACTx(tx, mac)
		return err
	})
	return s, err
}

// Seats lists every seat, ordered by room, then IP, then MAC.
func (inv *Inventory) Seats(ctx context.Context) ([]Seat, error) {
	var out []Seat
	err := inv.st.View(ctx, func(tx *store.Tx) error {
		var err error
		out, err = seatsBucket.List(tx)
		return err
	})
	sortSeats(out)
	return out, err
}

// SeatsInRoom lists the seats of one room, ordered by IP, then MAC.
// Resolve returns the seats of rooms plus the seats named (by hostname or MAC
// in any spelling), each once, in inventory order. A name that matches no
// seat is an error wrapping ErrNotFound: a schedule must not silently shrink.
func (inv *Inventory) Resolve(ctx context.Context, rooms, names []string) ([]Seat, error) {
	all, err := inv.Seats(ctx)
	if err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
		if m, err := macaddr.Normalize(n); err == nil {
			want[m] = true
		}
	}
	var out []Seat
	found := map[string]bool{}
	for _, s := range all {
		if !slices.Contains(rooms, s.Room) && !want[s.Hostname] && !want[s.MAC] {
			continue
		}
		found[s.Hostname], found[s.MAC] = true, true
		out = append(out, s)
	}
	for _, n := range names {
		m, _ := macaddr.Normalize(n)
		if !found[n] && !found[m] {
			return nil, fmt.Errorf("seat %q: %w", n, ErrNotFound)
		}
	}
	return out, nil
}

// SeatsInRoom returns the seats of one room.
func (inv *Inventory) SeatsInRoom(ctx context.Context, room string) ([]Seat, error) {
	all, err := inv.Seats(ctx)
	if err != nil {
		return nil, err
	}
	var out []Seat
	for _, s := range all {
		if s.Room == room {
			out = append(out, s)
		}
	}
	return out, nil
}

func sortSeats(s []Seat) {
	sort.Slice(s, func(i, j int) bool {
		a, b := s[i], s[j]
		if a.Room != b.Room {
			return a.Room < b.Room
		}
		if c := a.IP.Compare(b.IP); c != 0 {
			return c < 0
		}
		return a.MAC < b.MAC
	})
}

func normalizeRoom(r Room) (Room, error) {
	r.Name = strings.TrimSpace(r.Name)
	r.Description = strings.TrimSpace(r.Description)
	if r.Name == "" {
		return r, fmt.Errorf("room: empty name: %w", ErrInvalid)
	}
	if msg := checkRoomName(r.Name); msg != "" {
		return r, fmt.Errorf("%s: %w", msg, ErrInvalid)
	}
	if len(r.Description) > 1000 {
		return r, fmt.Errorf("room %s: description longer than 1000 bytes: %w", r.Name, ErrInvalid)
	}
	return r, nil
}

// AddRoom creates a room.
func (inv *Inventory) AddRoom(ctx context.Context, r Room) (Room, error) {
	r, err := normalizeRoom(r)
	if err != nil {
		return r, err
	}
	err = inv.update(ctx, func(tx *store.Tx) error {
		if ok, err := roomsBucket.Has(tx, r.Name); err != nil {
			return err
		} else if ok {
			return fmt.Errorf("room %s: %w", r.Name, ErrDuplicate)
		}
		return roomsBucket.Put(tx, r.Name, r)
	})
	return r, err
}

// UpdateRoom changes a room's description (renaming is delete + add after
// moving the seats).
func (inv *Inventory) UpdateRoom(ctx context.Context, r Room) (Room, error) {
	r, err := normalizeRoom(r)
	if err != nil {
		return r, err
	}
	err = inv.update(ctx, func(tx *store.Tx) error {
		if ok, err := roomsBucket.Has(tx, r.Name); err != nil {
			return err
		} else if !ok {
			return fmt.Errorf("room %s: %w", r.Name, ErrNotFound)
		}
		return roomsBucket.Put(tx, r.Name, r)
	})
	return r, err
}

// DeleteRoom removes an empty room.
func (inv *Inventory) DeleteRoom(ctx context.Context, name string) error {
	return inv.update(ctx, func(tx *store.Tx) error {
		if ok, err := roomsBucket.Has(tx, name); err != nil {
			return err
		} else if !ok {
			return fmt.Errorf("room %s: %w", name, ErrNotFound)
		}
		n := 0
		err := seatsBucket.ForEach(tx, func(_ string, s Seat) error {
			if s.Room == name {
				n++
			}
			return nil
		})
		if err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("room %s still has %d seats: move or delete them first: %w", name, n, ErrInUse)
		}
		return roomsBucket.Delete(tx, name)
	})
}

// Room returns one room.
func (inv *Inventory) Room(ctx context.Context, name string) (Room, error) {
	var r Room
	err := inv.st.View(ctx, func(tx *store.Tx) error {
		var ok bool
		var err error
		r, ok, err = roomsBucket.Get(tx, name)
		if err == nil && !ok {
			err = fmt.Errorf("room %s: %w", name, ErrNotFound)
		}
		return err
	})
	return r, err
}

// Rooms lists the rooms by name.
func (inv *Inventory) Rooms(ctx context.Context) ([]Room, error) {
	var out []Room
	err := inv.st.View(ctx, func(tx *store.Tx) error {
		var err error
		out, err = roomsBucket.List(tx)
		return err
	})
	return out, err
}
