package netboot

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/pumi-lab/pumi/internal/macaddr"
)

// FileConfig is pumi-netboot's JSON configuration file:
//
//	{
//	  "server_ip":   "10.99.0.1",              // optional: the interface's first IPv4
//	  "http_base":   "http://10.99.0.1:8080",  // -http-base overrides it
//	  "range_start": "10.99.0.100",            // full mode only, as the next five
//	  "range_end":   "10.99.0.199",
//	  "netmask":     "255.255.255.0",          // or "10.99.0.0/24"
//	  "router":      "10.99.0.1",
//	  "dns":         ["10.99.0.1"],
//	  "lease_time":  "12h",
//	  "reservations": [{"mac": "52:54:00:12:34:56", "ip": "10.99.0.20", "hostname": "seat-01"}],
//	  "known_macs":  ["52:54:00:12:34:56"],    // may PXE boot (with the boot entries' MACs)
//	  "boot": {"52:54:00:12:34:56": "local"},  // boot.StaticDecider's format
//	  "default_chain": "ipxe",                 // UEFI boot program: ipxe (default) or signed (Secure Boot on)
//	  "chains": {"52:54:00:12:34:56": "signed"} // per MAC, overrides default_chain
//	}
//
// Interface and mode come from flags. Unknown keys are refused, so a typo is
// an error rather than a silently ignored setting.
type FileConfig struct {
	Config Config             // Interface and Mode left empty
	Known  []net.HardwareAddr // known_macs
	Boot   json.RawMessage    // the "boot" object, for boot.ParseStatic; nil if absent

	DefaultChain Chain            // default_chain; "" when absent (ChainIPXE)
	Chains       map[string]Chain // chains, by canonical MAC (net.HardwareAddr.String())
}

type fileConfigJSON struct {
	ServerIP     string            `json:"server_ip"`
	HTTPBase     string            `json:"http_base"`
	RangeStart   string            `json:"range_start"`
	RangeEnd     string            `json:"range_end"`
	Netmask      string            `json:"netmask"`
	Router       string            `json:"router"`
	DNS          []string          `json:"dns"`
	LeaseTime    string            `json:"lease_time"`
	Reservations []reservationJS   `json:"reservations"`
	KnownMACs    []string          `json:"known_macs"`
	Boot         json.RawMessage   `json:"boot"`
	DefaultChain string            `json:"default_chain"`
	Chains       map[string]string `json:"chains"`
}

type reservationJS struct {
	MAC      string `json:"mac"`
	IP       string `json:"ip"`
	Hostname string `json:"hostname"`
}

// LoadFileConfig reads and parses a configuration file.
func LoadFileConfig(path string) (*FileConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	fc, err := ParseFileConfig(b)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return fc, nil
}

// ParseFileConfig parses the JSON text of a configuration file. It checks
// syntax and spelling of every value; Config.validate (in New) checks that
// they fit together once the mode is known.
func ParseFileConfig(b []byte) (*FileConfig, error) {
	var j fileConfigJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return nil, fmt.Errorf("want a JSON object (see pumi-netboot -help): %w", err)
	}
	if dec.More() {
		return nil, errors.New("trailing data after the JSON object")
	}
	var fc FileConfig
	c := &fc.Config
	var err error
	c.HTTPBase = j.HTTPBase
	if c.ServerIP, err = optAddr("server_ip", j.ServerIP); err != nil {
		return nil, err
	}
	if c.RangeStart, err = optAddr("range_start", j.RangeStart); err != nil {
		return nil, err
	}
	if c.RangeEnd, err = optAddr("range_end", j.RangeEnd); err != nil {
		return nil, err
	}
	if c.Router, err = optAddr("router", j.Router); err != nil {
		return nil, err
	}
	for _, d := range j.DNS {
		a, err := optAddr("dns", d)
		if err != nil || !a.IsValid() {
			return nil, fmt.Errorf("dns %q: want an IPv4 address", d)
		}
		c.DNS = append(c.DNS, a)
	}
	if j.Netmask != "" {
		if c.Netmask, err = parseNetmask(j.Netmask, c.RangeStart, c.ServerIP); err != nil {
			return nil, err
		}
	}
	if j.LeaseTime != "" {
		if c.LeaseTime, err = time.ParseDuration(j.LeaseTime); err != nil || c.LeaseTime <= 0 {
			return nil, fmt.Errorf("lease_time %q: want a duration such as 12h or 30m", j.LeaseTime)
		}
	}
	for i, r := range j.Reservations {
		mac, err := macaddr.Parse(r.MAC)
		if err != nil {
			return nil, fmt.Errorf("reservations[%d]: %w", i, err)
		}
		ip, err := optAddr(fmt.Sprintf("reservations[%d].ip", i), r.IP)
		if err != nil || !ip.IsValid() {
			return nil, fmt.Errorf("reservations[%d] (%s): ip %q: want an IPv4 address", i, mac, r.IP)
		}
		c.Reservations = append(c.Reservations, Reservation{MAC: mac, IP: ip, Hostname: r.Hostname})
	}
	for i, s := range j.KnownMACs {
		mac, err := macaddr.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("known_macs[%d]: %w", i, err)
		}
		fc.Known = append(fc.Known, mac)
	}
	if len(j.Boot) > 0 && string(j.Boot) != "null" {
		fc.Boot = j.Boot
	}
	if err := parseChains(&fc, j.DefaultChain, j.Chains); err != nil {
		return nil, err
	}
	return &fc, nil
}

func optAddr(what, s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Errorf("%s %q: want an IPv4 address like 10.99.0.1", what, s)
	}
	return a, nil
}

// parseNetmask accepts "255.255.255.0" (the subnet is then taken from the
// range start, or the server IP) or a prefix "10.99.0.0/24".
func parseNetmask(s string, rangeStart, serverIP netip.Addr) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil || !p.Addr().Is4() {
			return netip.Prefix{}, fmt.Errorf("netmask %q: want 255.255.255.0 or 10.99.0.0/24", s)
		}
		return p.Masked(), nil
	}
	m, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil || !m.Is4() {
		return netip.Prefix{}, fmt.Errorf("netmask %q: want 255.255.255.0 or 10.99.0.0/24", s)
	}
	ones, bits := net.IPMask(m.AsSlice()).Size()
	if bits != 32 {
		return netip.Prefix{}, fmt.Errorf("netmask %q: not a contiguous mask", s)
	}
	base := rangeStart
	if !base.IsValid() {
		base = serverIP
	}
	if !base.IsValid() {
		return netip.Prefix{}, errors.New("netmask given as a mask but there is no range_start or server_ip to apply it to: write it as 10.99.0.0/24")
	}
	return netip.PrefixFrom(base, ones).Masked(), nil
}

// parseChains fills fc's chain fields from default_chain and chains.
func parseChains(fc *FileConfig, def string, per map[string]string) error {
	if def != "" {
		c, err := ParseChain(def)
		if err != nil {
			return fmt.Errorf("default_chain: %w", err)
		}
		fc.DefaultChain = c
	}
	for k, v := range per {
		mac, err := macaddr.Parse(k)
		if err != nil {
			return fmt.Errorf("chains %q: %w", k, err)
		}
		c, err := ParseChain(v)
		if err != nil || v == "" {
			return fmt.Errorf("chains %q: want \"ipxe\" or \"signed\", got %q", k, v)
		}
		if fc.Chains == nil {
			fc.Chains = map[string]Chain{}
		}
		if _, dup := fc.Chains[mac.String()]; dup {
			return fmt.Errorf("chains: MAC %s is listed twice (in different spellings); keep one", mac)
		}
		fc.Chains[mac.String()] = c
	}
	return nil
}
