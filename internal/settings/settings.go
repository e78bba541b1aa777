// Package settings owns the appliance's settings and secrets in the state
// file: one Config type that the API, the pages and the appliance share, its
// validation, and the passwords that are kept apart from it (stored 0600 with
// the whole state file, never returned by any API, never logged).
package settings

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pumi-lab/pumi/internal/atomicfile"
	"github.com/pumi-lab/pumi/internal/hostnet"
	"github.com/pumi-lab/pumi/internal/inventory"
	"github.com/pumi-lab/pumi/internal/macaddr"
	"github.com/pumi-lab/pumi/internal/netboot"
	"github.com/pumi-lab/pumi/internal/notify"
	"github.com/pumi-lab/pumi/internal/store"
)

// Config is the appliance's settings, kept in the state file and edited
// through the API (later the setup page). The zero value is the safe default:
// netboot off, no repository.
type Config struct {
	Netboot NetbootSettings `json:"netboot"`
	// Repository is the image repository: a folder (on gokrazy usually a
	// mounted disk or a folder below /perm) holding Clonezilla image folders
	// at any depth. It is exported read-only over NFS as /images.
	Repository string `json:"repository,omitempty"`
	// LiveVersion picks the imported Clonezilla live file set (a folder
	// below <state>/live) that seats boot.
	LiveVersion string `json:"live_version,omitempty"`
	// TargetDisk is the disk Clonezilla restores onto ("" = the first disk).
	TargetDisk string `json:"target_disk,omitempty"`
	// Console, e.g. "ttyS0,115200", adds a serial console to Clonezilla's
	// command line (useful for VMs and for labs with serial consoles).
	Console string `json:"console,omitempty"`

	// Network is the appliance's own address (DHCP client or static); on
	// gokrazy it is applied at boot.
	Network hostnet.NetworkSettings `json:"network,omitzero"`
	// Mail is the SMTP account reports are sent with; its password is a
	// secret kept apart (SecretMail) and never shown back.
	Mail MailSettings `json:"mail,omitzero"`
	// SSH lists the logins pumi uses per room or per image; passwords are
	// secrets (SSHSecretName). Without one, pumi logs in with its own key
	// as the seat's SSH user.
	SSH []SSHLogin `json:"ssh,omitempty"`
	// TimeZone is the IANA zone schedules are read in ("" = UTC).
	TimeZone string `json:"time_zone,omitempty"`
	// WoLGap staggers Wake-on-LAN packets between seats (default 2s).
	WoLGap Duration `json:"wol_gap,omitzero"`
	// Multicast tunes room restores by multicast (schedules pick the
	// transport).
	Multicast MulticastSettings `json:"multicast,omitzero"`
}

// MulticastSettings tune multicast sessions; zero values are the defaults.
type MulticastSettings struct {
	// MaxWait is how long a session waits for the seats it expects before
	// it starts with those that joined (default 2m); the others restore by
	// unicast.
	MaxWait Duration `json:"max_wait,omitzero"`
	// MaxBitrateMbit caps the stream (0: no cap), so a room restore leaves
	// room on the school network.
	MaxBitrateMbit int `json:"max_bitrate_mbit,omitempty"`
	// PortBase is the first UDP port (default 2232, Clonezilla's); a session
	// uses two ports per partition from there.
	PortBase int `json:"port_base,omitempty"`
}

// Multicast defaults.
const (
	DefaultMulticastMaxWait  = 2 * time.Minute
	DefaultMulticastPortBase = 2232
)

// Wait is MaxWait or its default.
func (m MulticastSettings) Wait() time.Duration {
	if m.MaxWait <= 0 {
		return DefaultMulticastMaxWait
	}
	return time.Duration(m.MaxWait)
}

// Ports is PortBase or its default.
func (m MulticastSettings) Ports() int {
	if m.PortBase == 0 {
		return DefaultMulticastPortBase
	}
	return m.PortBase
}

// MailSettings is the SMTP account without its password.
type MailSettings struct {
	Host     string   `json:"host,omitempty"`
	Port     int      `json:"port,omitempty"`
	Username string   `json:"username,omitempty"`
	From     string   `json:"from,omitempty"`
	To       []string `json:"to,omitempty"`
	TLS      string   `json:"tls,omitempty"` // starttls (default) or tls
	// Language of the report mails: "en" (default when empty) or "es".
	Language string `json:"language,omitempty"`
	// CACertPEM trusts an institution's own CA in addition to the system's.
	CACertPEM string `json:"ca_cert_pem,omitempty"`
}

// SSHLogin is the login for the seats of a room or of an image.
type SSHLogin struct {
	Scope string `json:"scope"` // "room" or "image"
	Name  string `json:"name"`
	User  string `json:"user"`
}

// NetbootSettings is what the admin sets for DHCP/TFTP on the lab interface.
type NetbootSettings struct {
	Mode      string     `json:"mode"`                // off, proxy or full
	Interface string     `json:"interface,omitempty"` // lab interface
	ServerIP  netip.Addr `json:"server_ip,omitzero"`  // pumi's address there; zero: the interface's first IPv4
	// HTTPBase is the URL lab PCs reach pumi's HTTP server at; empty means
	// http://<ServerIP>:<HTTP port>.
	HTTPBase string `json:"http_base,omitempty"`

	// full mode
	Subnet     netip.Prefix `json:"subnet,omitzero"`
	RangeStart netip.Addr   `json:"range_start,omitzero"`
	RangeEnd   netip.Addr   `json:"range_end,omitzero"`
	Router     netip.Addr   `json:"router,omitzero"`
	DNS        []netip.Addr `json:"dns,omitempty"`
	LeaseTime  Duration     `json:"lease_time,omitzero"`
}

// ErrInvalid is wrapped by every refusal of a setting (the API answers 400).
var ErrInvalid = errors.New("invalid configuration")

// Validate checks what can be checked without touching the network; the
// netboot server checks the rest (interface exists, address on it) when it
// starts and its error is shown in the status.
func (c Config) Validate() error {
	var probs []string
	mode, err := netboot.ParseMode(c.Netboot.Mode)
	if err != nil {
		probs = append(probs, err.Error())
	}
	if mode == netboot.ModeProxy || mode == netboot.ModeFull {
		if c.Netboot.Interface == "" {
			probs = append(probs, "netboot needs the lab interface (netboot.interface)")
		}
		if c.Netboot.ServerIP.IsValid() && !c.Netboot.ServerIP.Is4() {
			probs = append(probs, "netboot.server_ip must be an IPv4 address")
		}
		if c.Netboot.HTTPBase != "" && !strings.HasPrefix(c.Netboot.HTTPBase, "http://") {
			probs = append(probs, "netboot.http_base must start with http:// (iPXE and Clonezilla fetch over plain HTTP)")
		}
	}
	if mode == netboot.ModeFull {
		n := c.Netboot
		switch {
		case !n.Subnet.IsValid() || !n.Subnet.Addr().Is4():
			probs = append(probs, "full DHCP needs the lab subnet (netboot.subnet, e.g. 10.20.0.0/24)")
		case !n.RangeStart.IsValid() || !n.RangeEnd.IsValid():
			probs = append(probs, "full DHCP needs an address range (netboot.range_start, netboot.range_end)")
		case !n.Subnet.Contains(n.RangeStart) || !n.Subnet.Contains(n.RangeEnd):
			probs = append(probs, fmt.Sprintf("address range %v-%v is not inside subnet %v", n.RangeStart, n.RangeEnd, n.Subnet))
		case n.RangeEnd.Less(n.RangeStart):
			probs = append(probs, "range_end is before range_start")
		}
	}
	if c.Repository != "" && !filepath.IsAbs(c.Repository) {
		probs = append(probs, "repository must be an absolute path")
	}
	if strings.ContainsAny(c.LiveVersion, "/\\") || c.LiveVersion == ".." || c.LiveVersion == "." {
		probs = append(probs, "live_version must be a folder name below the live directory")
	}
	switch c.Network.Mode {
	case "", "dhcp":
	case "static":
		// The same check the host network supervisor applies, so the API
		// refuses what gokrazy's DHCP client could not configure.
		if _, err := hostnet.DHCPArgs(c.Network); err != nil {
			probs = append(probs, err.Error())
		}
	default:
		probs = append(probs, "network.mode must be dhcp or static")
	}
	if c.TimeZone != "" {
		if _, err := time.LoadLocation(c.TimeZone); err != nil {
			probs = append(probs, fmt.Sprintf("time zone %q is not an IANA zone name like Europe/Madrid", c.TimeZone))
		}
	}
	if c.Mail.TLS != "" && c.Mail.TLS != "starttls" && c.Mail.TLS != "tls" {
		probs = append(probs, "mail.tls must be starttls or tls")
	}
	if w := time.Duration(c.Multicast.MaxWait); w != 0 && (w < 10*time.Second || w > 30*time.Minute) {
		probs = append(probs, "multicast.max_wait must be between 10s and 30m")
	}
	if c.Multicast.MaxBitrateMbit < 0 || c.Multicast.MaxBitrateMbit > 100000 {
		probs = append(probs, "multicast.max_bitrate_mbit must be between 0 (no cap) and 100000")
	}
	if p := c.Multicast.PortBase; p != 0 && (p < 1024 || p > 60000) {
		probs = append(probs, "multicast.port_base must be between 1024 and 60000")
	}
	if c.Mail.Language != "" && c.Mail.Language != "en" && c.Mail.Language != "es" {
		probs = append(probs, "mail.language must be en or es")
	}
	for _, l := range c.SSH {
		if (l.Scope != "room" && l.Scope != "image") || l.Name == "" || l.User == "" {
			probs = append(probs, fmt.Sprintf("ssh login %q: needs scope room or image, a name and a user", l.Name))
		}
	}
	if len(probs) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalid, strings.Join(probs, "; "))
	}
	return nil
}

// NetbootConfig turns the settings into netboot's Config; seats with an IP
// inside the lab subnet become DHCP reservations so that full mode hands each
// PC its inventory address.
func (c Config) NetbootConfig(httpPort int, seats []inventory.Seat) (netboot.Config, error) {
	mode, err := netboot.ParseMode(c.Netboot.Mode)
	if err != nil {
		return netboot.Config{}, err
	}
	n := c.Netboot
	cfg := netboot.Config{
		Interface:  n.Interface,
		Mode:       mode,
		ServerIP:   n.ServerIP,
		HTTPBase:   n.HTTPBase,
		RangeStart: n.RangeStart,
		RangeEnd:   n.RangeEnd,
		Netmask:    n.Subnet,
		Router:     n.Router,
		DNS:        n.DNS,
		LeaseTime:  time.Duration(n.LeaseTime),
	}
	if mode == netboot.ModeFull {
		for _, s := range seats {
			m, err := macaddr.Parse(s.MAC)
			if err == nil && s.IP.IsValid() && n.Subnet.Contains(s.IP) {
				cfg.Reservations = append(cfg.Reservations, netboot.Reservation{MAC: m, IP: s.IP, Hostname: s.Hostname})
			}
		}
	}
	if cfg.HTTPBase == "" && cfg.ServerIP.IsValid() {
		cfg.HTTPBase = fmt.Sprintf("http://%s:%d", cfg.ServerIP, httpPort)
	}
	return cfg, nil
}

// Duration is a time.Duration written as text ("12h", "30m") in JSON, so the
// config stays readable.
type Duration time.Duration

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("duration %q: want e.g. 12h or 30m: %w", b, err)
	}
	if v < 0 {
		return fmt.Errorf("duration %q must not be negative", b)
	}
	*d = Duration(v)
	return nil
}

// Location is the appliance's time zone (UTC when unset or unknown).
func (c Config) Location() *time.Location {
	if c.TimeZone == "" {
		return time.UTC
	}
	if loc, err := time.LoadLocation(c.TimeZone); err == nil {
		return loc
	}
	return time.UTC
}

// Login is the SSH login for a seat of room running image: the image's
// login, else the room's, else none (ok false: pumi's own key as the
// inventory's user). secret names the password (SSHSecretName).
func (c Config) Login(room, image string) (user, secret string, ok bool) {
	for _, scope := range []struct{ kind, name string }{{"image", image}, {"room", room}} {
		if scope.name == "" {
			continue
		}
		for _, l := range c.SSH {
			if l.Scope == scope.kind && l.Name == scope.name {
				return l.User, SSHSecretName(scope.kind, scope.name), true
			}
		}
	}
	return "", "", false
}

var (
	configBucket = store.NewBucket[Config]("appliance-config")
	secretBucket = store.NewBucket[string]("secrets")
)

const configKey = "config"

// Load reads the settings inside tx: the zero Config (netboot off) before an
// admin saved one.
func Load(tx *store.Tx) (Config, error) {
	c, _, err := configBucket.Get(tx, configKey)
	if c.Netboot.Mode == "" {
		c.Netboot.Mode = string(netboot.ModeOff)
	}
	return c, err
}

// Save validates and stores c inside tx; an invalid Config changes nothing.
func Save(tx *store.Tx, c Config) error {
	if c.Netboot.Mode == "" {
		c.Netboot.Mode = string(netboot.ModeOff)
	}
	if err := c.Validate(); err != nil {
		return err
	}
	return configBucket.Put(tx, configKey, c)
}

// Secret names.
const SecretMail = "mail"

// SSHSecretName names the SSH password of a room or an image.
func SSHSecretName(scope, name string) string { return "ssh:" + scope + ":" + name }

// SetSecret stores (value != "") or clears (value == "") a secret.
func SetSecret(ctx context.Context, st *store.Store, name, value string) error {
	if name == "" || len(name) > 200 {
		return fmt.Errorf("%w: bad secret name", ErrInvalid)
	}
	return st.Update(ctx, func(tx *store.Tx) error {
		if value == "" {
			return secretBucket.Delete(tx, name)
		}
		return secretBucket.Put(tx, name, value)
	})
}

// HasSecret reports whether a secret is set, for "set"/"not set" displays.
func HasSecret(ctx context.Context, st *store.Store, name string) (bool, error) {
	var ok bool
	err := st.View(ctx, func(tx *store.Tx) error {
		var err error
		ok, err = secretBucket.Has(tx, name)
		return err
	})
	return ok, err
}

// Secret returns a secret's value ("" when unset). Callers hand it to the
// program that needs it and never log or show it.
func Secret(ctx context.Context, st *store.Store, name string) (string, error) {
	var v string
	err := st.View(ctx, func(tx *store.Tx) error {
		var err error
		v, _, err = secretBucket.Get(tx, name)
		return err
	})
	return v, err
}

// Mailer is the SMTP client for the stored mail settings and password.
func Mailer(ctx context.Context, st *store.Store) (notify.Mailer, error) {
	var (
		c   Config
		pw  string
		err error
	)
	err = st.View(ctx, func(tx *store.Tx) error {
		if c, err = Load(tx); err != nil {
			return err
		}
		pw, _, err = secretBucket.Get(tx, SecretMail)
		return err
	})
	if err != nil {
		return notify.Mailer{}, err
	}
	if c.Mail.Host == "" {
		return notify.Mailer{}, fmt.Errorf("%w: no mail server configured", ErrInvalid)
	}
	m := c.Mail
	return notify.Mailer{Host: m.Host, Port: m.Port, Username: m.Username, Password: pw, From: m.From, To: m.To,
		TLS: notify.TLSMode(m.TLS), CACertPEM: m.CACertPEM}, nil
}

// LoadOrCreateToken reads the admin API token file, or (create) makes one:
// 32 random bytes, URL-safe base64, written 0600 crash-safely.
func LoadOrCreateToken(path string, create bool) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		if t := strings.TrimSpace(string(b)); len(t) >= 32 {
			return t, nil
		}
		return "", fmt.Errorf("API token file %s is damaged: delete it and restart pumi to get a new token", path)
	}
	if !errors.Is(err, os.ErrNotExist) || !create {
		return "", fmt.Errorf("API token: %w", err)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	t := base64.RawURLEncoding.EncodeToString(raw[:])
	if err := atomicfile.Write(path, []byte(t+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("API token: %w", err)
	}
	return t, nil
}
