// Package netboot answers the lab PCs' network boot: DHCPv4 as the lab's only
// server ("full", with a range, reservations and persisted leases) or beside
// an existing one ("proxy", PXE options only, UDP 67 and 4011), the PXE
// options that send UEFI firmware to iPXE over TFTP and iPXE to pumi's HTTP
// boot script, a per-MAC admission policy, and the TFTP service of the iPXE
// binaries.
//
// The reply logic is pure (handler.reply: request in, reply out) so every
// protocol decision is table-tested without sockets; Server only binds the
// sockets and moves packets.
package netboot

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"
)

// Mode selects how pumi takes part in DHCP on the lab interface.
type Mode string

const (
	ModeOff   Mode = "off"   // no DHCP, no TFTP
	ModeProxy Mode = "proxy" // PXE options only; another server hands out addresses
	ModeFull  Mode = "full"  // pumi is the segment's DHCP server
)

// ParseMode accepts the spellings used in flags and config files.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.ToLower(strings.TrimSpace(s))); m {
	case ModeOff, ModeProxy, ModeFull:
		return m, nil
	case "":
		return ModeOff, nil
	}
	return "", fmt.Errorf("netboot mode %q: want off, proxy or full", s)
}

// Reservation pins a MAC to an address (and optionally a hostname, option 12).
// A reserved address is never given to another MAC.
type Reservation struct {
	MAC      net.HardwareAddr
	IP       netip.Addr
	Hostname string
}

// Config is everything the DHCP side needs. Full-mode fields are ignored in
// proxy mode.
type Config struct {
	Interface string     // lab interface, e.g. "eth0"
	Mode      Mode       // off, proxy or full
	ServerIP  netip.Addr // pumi's address on Interface; zero: the interface's first IPv4
	HTTPBase  string     // e.g. "http://10.99.0.1:8080"; iPXE gets HTTPBase/boot/<mac>.ipxe

	// full mode only
	RangeStart, RangeEnd netip.Addr
	Netmask              netip.Prefix  // the lab subnet, e.g. 10.99.0.0/24 (option 1)
	Router               netip.Addr    // option 3; zero: none
	DNS                  []netip.Addr  // option 6
	LeaseTime            time.Duration // option 51; zero: DefaultLeaseTime
	Reservations         []Reservation
}

// DefaultLeaseTime is used when Config.LeaseTime is zero: long enough that a
// restore running over lunch keeps its address, short enough that a room of
// replaced PCs frees the range within a day.
const DefaultLeaseTime = 12 * time.Hour

// ClientInfo is what pumi learnt about a PXE client from one request; the
// appliance shows it in its "seen" list.
type ClientInfo struct {
	Arch        int    // option 93, -1 when absent
	Firmware    string // "uefi-pxe", "uefi-http", "bios-pxe", "ipxe" or "unsupported"
	VendorClass string // option 60
	UserClass   string // option 77
	IP          netip.Addr
	Message     string // DHCP message type, e.g. "DISCOVER"
}

// Admission decides who gets a PXE answer. The appliance implements it from
// its inventory; StaticAdmission is the file-backed one.
type Admission interface {
	Allow(mac net.HardwareAddr) bool
	// Seen reports every PXE client, known or not. Server calls it from
	// one goroutine of its own, in packet order, after or while the answer
	// goes out (never under the DHCP handler's lock), so it may be slow
	// (a durable write); when it falls more than 4,096 calls behind, new
	// ones are dropped and counted in the log.
	Seen(mac net.HardwareAddr, info ClientInfo)
}

// Lease is a committed (ACKed) address.
type Lease struct {
	MAC      net.HardwareAddr
	IP       netip.Addr
	Expiry   time.Time
	Hostname string
}

// LeaseStore persists committed leases so a restart hands every PC the same
// address again. Put and Delete must be durable when they return: the server
// writes before it answers.
//
// Put and Delete are called concurrently, one call per client being answered
// (never two at once for the same MAC), and a burst of PXE clients makes
// hundreds of calls within milliseconds. An implementation should coalesce
// concurrent calls into one durable write (group commit) instead of
// serialising one sync per call: FileLeaseStore does, and a bbolt-backed
// store gets it from store.Store.Batch. Load is called once, before serving.
type LeaseStore interface {
	Load() ([]Lease, error)
	Put(Lease) error
	Delete(mac net.HardwareAddr) error
}

// maxHTTPBase keeps base + "/boot/52-54-00-ab-cd-ef.ipxe" within 127 bytes.
const maxHTTPBase = 127 - len("/boot/52-54-00-ab-cd-ef.ipxe")

// validate checks what can be checked without looking at the interface.
func (c *Config) validate() error {
	switch c.Mode {
	case ModeOff:
		return nil
	case ModeProxy, ModeFull:
	default:
		return fmt.Errorf("netboot mode %q: want off, proxy or full", c.Mode)
	}
	if c.Interface == "" {
		return errors.New("netboot: no interface set: name the lab interface (e.g. -iface eth0)")
	}
	if c.ServerIP.IsValid() && !c.ServerIP.Is4() {
		return fmt.Errorf("netboot: server IP %s is not IPv4", c.ServerIP)
	}
	if c.HTTPBase == "" {
		return errors.New("netboot: no HTTP base URL: iPXE needs it to fetch its script (e.g. http://10.99.0.1:8080)")
	}
	if !strings.HasPrefix(c.HTTPBase, "http://") && !strings.HasPrefix(c.HTTPBase, "https://") {
		return fmt.Errorf("netboot: HTTP base %q must start with http:// or https://", c.HTTPBase)
	}
	if len(c.HTTPBase) > maxHTTPBase {
		// The script URL must fit the 127 bytes of the DHCP "file" field,
		// which some firmware reads instead of option 67.
		return fmt.Errorf("netboot: HTTP base %q is longer than %d bytes: use a shorter host name or the IP", c.HTTPBase, maxHTTPBase)
	}
	if c.Mode == ModeProxy {
		return nil
	}
	return c.validateFull()
}

func (c *Config) validateFull() error {
	p := c.Netmask
	if !p.IsValid() || !p.Addr().Is4() {
		return errors.New("netboot: full mode needs the lab subnet (netmask), e.g. 10.99.0.0/24")
	}
	if p.Bits() > 30 {
		return fmt.Errorf("netboot: subnet %s is too small for a DHCP range", p)
	}
	p = p.Masked()
	if !c.RangeStart.Is4() || !c.RangeEnd.Is4() {
		return errors.New("netboot: full mode needs an IPv4 range start and end")
	}
	if c.RangeEnd.Less(c.RangeStart) {
		return fmt.Errorf("netboot: bad range %s-%s: the end is before the start", c.RangeStart, c.RangeEnd)
	}
	for _, a := range []netip.Addr{c.RangeStart, c.RangeEnd} {
		if !p.Contains(a) {
			return fmt.Errorf("netboot: bad range %s-%s: %s is outside the subnet %s", c.RangeStart, c.RangeEnd, a, p)
		}
		if a == p.Addr() || a == broadcastOf(p) {
			return fmt.Errorf("netboot: bad range %s-%s: %s is the subnet's network or broadcast address", c.RangeStart, c.RangeEnd, a)
		}
	}
	if c.ServerIP.IsValid() && !p.Contains(c.ServerIP) {
		return fmt.Errorf("netboot: server IP %s is outside the subnet %s", c.ServerIP, p)
	}
	if c.Router.IsValid() && (!c.Router.Is4() || !p.Contains(c.Router)) {
		return fmt.Errorf("netboot: router %s is outside the subnet %s", c.Router, p)
	}
	for _, d := range c.DNS {
		if !d.Is4() {
			return fmt.Errorf("netboot: DNS server %s is not IPv4", d)
		}
	}
	if c.LeaseTime < 0 || (c.LeaseTime > 0 && c.LeaseTime < time.Minute) {
		return fmt.Errorf("netboot: lease time %s: use at least 1m", c.LeaseTime)
	}
	seenMAC := map[string]bool{}
	seenIP := map[netip.Addr]string{}
	for _, r := range c.Reservations {
		if len(r.MAC) != 6 {
			return fmt.Errorf("netboot: reservation %s: MAC %q is not a 6-byte Ethernet address", r.IP, r.MAC)
		}
		m := r.MAC.String()
		if seenMAC[m] {
			return fmt.Errorf("netboot: MAC %s is reserved twice: keep one reservation per MAC", m)
		}
		seenMAC[m] = true
		if !r.IP.Is4() || !p.Contains(r.IP) || r.IP == p.Addr() || r.IP == broadcastOf(p) {
			return fmt.Errorf("netboot: reservation %s -> %s: the address must be a host address in %s", m, r.IP, p)
		}
		if r.IP == c.ServerIP || r.IP == c.Router {
			return fmt.Errorf("netboot: reservation %s -> %s: that is the server's or router's own address", m, r.IP)
		}
		if other, dup := seenIP[r.IP]; dup {
			return fmt.Errorf("netboot: %s is reserved for both %s and %s", r.IP, other, m)
		}
		seenIP[r.IP] = m
		if r.Hostname != "" && !validHostname(r.Hostname) {
			return fmt.Errorf("netboot: reservation %s: hostname %q: use letters, digits, '-' and '.' only", m, r.Hostname)
		}
	}
	return nil
}

func validHostname(h string) bool {
	if len(h) > 63*4 {
		return false
	}
	for _, r := range h {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

func broadcastOf(p netip.Prefix) netip.Addr {
	return u32ToAddr(addrToU32(p.Masked().Addr()) | ^uint32(0)>>p.Bits())
}

func addrToU32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func u32ToAddr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Server runs DHCP (67, and 4011 in proxy mode) and TFTP (69) on one
// interface.
type Server struct {
	cfg   Config
	h     *handler
	files fs.FS
	log   *slog.Logger
	ready chan struct{}
}

// New checks cfg and loads the persisted leases; it opens no socket (Listen
// or Run does).
func New(cfg Config, adm Admission, leases LeaseStore, files fs.FS, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Mode == ModeOff {
		return &Server{cfg: cfg, log: log, ready: make(chan struct{})}, nil
	}
	if adm == nil {
		return nil, errors.New("netboot: no admission policy: pass one (StaticAdmission for a fixed list)")
	}
	if files == nil {
		return nil, errors.New("netboot: no TFTP files: pass the iPXE binaries (assets.IPXE())")
	}
	if cfg.Mode == ModeFull && leases == nil {
		return nil, errors.New("netboot: full mode needs a lease store (FileLeaseStore) so addresses survive a restart")
	}
	h, err := newHandler(cfg, adm, leases, log, time.Now)
	if err != nil {
		return nil, err
	}
	h.seenQ = newSeenQueue(adm, h.noisy)
	return &Server{cfg: cfg, h: h, files: files, log: log, ready: make(chan struct{})}, nil
}
