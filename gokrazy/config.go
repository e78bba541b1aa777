// Package gokrazy builds pumi's gokrazy appliance image: a disk image with
// gokrazy's read-only root, the pumi appliance started at boot, and a
// formatted /perm, ready to be written to a USB stick; and it updates a
// running appliance with `gok update`.
//
// The committed instance is gokrazy/pumi (config.json + builddir with a
// relative replace of this module, so the image is built from the working
// tree). Build never edits it: it copies the instance into a temporary
// folder, sets the secrets and per-site settings there (the gokrazy web UI
// password, a static address) and runs gok on the copy.
package gokrazy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
)

// AppliancePackage is the pumi program in the image.
const AppliancePackage = "github.com/pumi-lab/pumi/cmd/pumi-appliance"

// dhcpPackage is gokrazy's network configuration program: a DHCP client by
// default, a static address with -static_network_config.
const dhcpPackage = "github.com/gokrazy/gokrazy/cmd/dhcp"

// Config is gokrazy's instance config.json (github.com/gokrazy/internal/config
// Struct, which cannot be imported). Fields pumi never touches are kept as
// raw JSON so that a config edited by hand survives a round trip.
type Config struct {
	Hostname                   string
	DeviceType                 string                   `json:",omitempty"`
	Update                     *UpdateConfig            `json:",omitempty"`
	Environment                []string                 `json:",omitempty"`
	Packages                   []string                 `json:",omitempty"`
	PackageConfig              map[string]PackageConfig `json:",omitempty"`
	SerialConsole              string                   `json:",omitempty"`
	GokrazyPackages            *[]string                `json:",omitempty"`
	KernelPackage              *string                  `json:",omitempty"`
	FirmwarePackage            *string                  `json:",omitempty"`
	EEPROMPackage              *string                  `json:",omitempty"`
	KernelExtraArgs            []string                 `json:",omitempty"`
	BootloaderExtraLines       []string                 `json:",omitempty"`
	BootloaderExtraEEPROM      []string                 `json:",omitempty"`
	MountDevices               json.RawMessage          `json:",omitempty"`
	InternalCompatibilityFlags json.RawMessage          `json:",omitempty"`
}

// UpdateConfig is gokrazy's Update section: the web UI / update API.
type UpdateConfig struct {
	Hostname     string `json:",omitempty"` // gok update target (not baked into the image)
	UseTLS       string `json:",omitempty"`
	NoPassword   bool   `json:",omitempty"`
	HTTPPort     string `json:",omitempty"`
	HTTPSPort    string `json:",omitempty"`
	HTTPPassword string `json:",omitempty"`
	CertPEM      string `json:",omitempty"`
	KeyPEM       string `json:",omitempty"`
}

// PackageConfig is gokrazy's per-package settings.
type PackageConfig struct {
	GoBuildEnvironment []string          `json:",omitempty"`
	GoBuildFlags       []string          `json:",omitempty"`
	GoBuildTags        []string          `json:",omitempty"`
	Environment        []string          `json:",omitempty"`
	CommandLineFlags   []string          `json:",omitempty"`
	DontStart          bool              `json:",omitempty"`
	WaitForClock       bool              `json:",omitempty"`
	Basename           string            `json:",omitempty"`
	ExtraFilePaths     map[string]string `json:",omitempty"`
	ExtraFileContents  map[string]string `json:",omitempty"`
}

// LoadConfig reads an instance config.json. Unknown fields are an error
// (a typo would otherwise be silently dropped from the image).
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("gokrazy instance config: %w", err)
	}
	return ParseConfig(b)
}

// ParseConfig parses config.json text; see LoadConfig.
func ParseConfig(b []byte) (*Config, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("gokrazy config.json: %w (fix the file; field names are gokrazy's, see gokrazy.org/userguide/instance-config)", err)
	}
	if dec.More() {
		return nil, errors.New("gokrazy config.json: trailing data after the JSON object")
	}
	return &c, nil
}

// Marshal returns the config as indented JSON, as gok writes it.
func (c *Config) Marshal() ([]byte, error) {
	b, err := json.MarshalIndent(c, "", "    ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Check reports what would make the image unusable as a pumi appliance, so
// a broken instance fails before a two-minute build instead of at boot.
func (c *Config) Check() error {
	var probs []string
	if !slices.Contains(c.Packages, AppliancePackage) {
		probs = append(probs, "Packages lacks "+AppliancePackage)
	}
	if !slices.Contains(c.Environment, "GOARCH=amd64") {
		probs = append(probs, `Environment must contain "GOARCH=amd64" (pumi's appliance is a PC)`)
	}
	if c.KernelPackage == nil || *c.KernelPackage != "github.com/gokrazy/kernel.amd64" {
		probs = append(probs, `KernelPackage must be "github.com/gokrazy/kernel.amd64"`)
	}
	if c.FirmwarePackage == nil || c.EEPROMPackage == nil {
		probs = append(probs, `FirmwarePackage and EEPROMPackage must be "" (no Raspberry Pi firmware on a PC)`)
	}
	if c.Update == nil || c.Update.HTTPPort == "" || c.Update.HTTPPort == "80" {
		probs = append(probs, `Update.HTTPPort must move gokrazy's web UI off port 80 (pumi serves there), e.g. "8080"`)
	}
	// Exactly one program must configure eth0: two DHCP clients fight over
	// it, none leaves the box unreachable.
	if manages, dontStart := c.managesNetwork(), c.PackageConfig[dhcpPackage].DontStart; manages != dontStart {
		probs = append(probs, fmt.Sprintf("pumi-appliance's %s and %s's DontStart go together (pumi runs gokrazy's dhcp itself, gokrazy must not also start it)", manageNetworkFlag, dhcpPackage))
	}
	if len(probs) > 0 {
		return fmt.Errorf("gokrazy config.json: %s", strings.Join(probs, "; "))
	}
	return nil
}

// Package returns the settings of pkg for editing (created if absent).
func (c *Config) Package(pkg string) *PackageConfig {
	if c.PackageConfig == nil {
		c.PackageConfig = map[string]PackageConfig{}
	}
	pc := c.PackageConfig[pkg]
	return &pc
}

// SetPackage stores pc as pkg's settings (after Package and edits).
func (c *Config) SetPackage(pkg string, pc *PackageConfig) {
	if c.PackageConfig == nil {
		c.PackageConfig = map[string]PackageConfig{}
	}
	c.PackageConfig[pkg] = *pc
}

// AddFlags appends command-line flags for pkg.
func (c *Config) AddFlags(pkg string, flags ...string) {
	pc := c.Package(pkg)
	pc.CommandLineFlags = append(pc.CommandLineFlags, flags...)
	c.SetPackage(pkg, pc)
}

// AddFile puts a file with content into the image's read-only root, for
// pkg (gokrazy refuses paths below /perm).
func (c *Config) AddFile(pkg, path, content string) {
	pc := c.Package(pkg)
	if pc.ExtraFileContents == nil {
		pc.ExtraFileContents = map[string]string{}
	}
	pc.ExtraFileContents[path] = content
	c.SetPackage(pkg, pc)
}

// StaticNetwork is the appliance's own fixed address on eth0, instead of
// gokrazy's DHCP client: needed when pumi is itself the lab's DHCP server.
type StaticNetwork struct {
	Address netip.Prefix // e.g. 10.20.0.2/24
	Router  netip.Addr   // optional
	DNS     []netip.Addr // optional
}

// ParseStaticNetwork parses "ADDR/LEN[,router=IP][,dns=IP[+IP...]]", e.g.
// "10.20.0.2/24,router=10.20.0.1,dns=10.20.0.1".
func ParseStaticNetwork(s string) (StaticNetwork, error) {
	var n StaticNetwork
	parts := strings.Split(strings.TrimSpace(s), ",")
	p, err := netip.ParsePrefix(parts[0])
	if err != nil || !p.Addr().Is4() || p.Bits() < 1 || p.Bits() > 30 {
		return n, fmt.Errorf("static address %q: want an IPv4 address with prefix length, e.g. 10.20.0.2/24", parts[0])
	}
	if p.Addr() == p.Masked().Addr() {
		return n, fmt.Errorf("static address %q is the network address itself; give the appliance's own address", parts[0])
	}
	n.Address = p
	for _, kv := range parts[1:] {
		k, v, ok := strings.Cut(kv, "=")
		switch {
		case !ok:
			return n, fmt.Errorf("static network option %q: want key=value (router=IP or dns=IP+IP)", kv)
		case k == "router":
			a, err := netip.ParseAddr(v)
			if err != nil || !a.Is4() || !p.Contains(a) || a == p.Addr() {
				return n, fmt.Errorf("router %q: want an IPv4 address in %s other than the appliance's", v, p.Masked())
			}
			n.Router = a
		case k == "dns":
			for _, d := range strings.Split(v, "+") {
				a, err := netip.ParseAddr(d)
				if err != nil || !a.Is4() {
					return n, fmt.Errorf("dns %q: want IPv4 addresses separated by +", v)
				}
				n.DNS = append(n.DNS, a)
			}
		default:
			return n, fmt.Errorf("static network option %q: only router= and dns= are known", k)
		}
	}
	return n, nil
}

// LeaseJSON is n as gokrazy's dhcp program reads it (-static_network_config
// takes an rtr7/dhcp4 Lease). Netmask is a net.IPMask, which JSON carries
// as base64: a dotted mask there makes dhcp fail at every start and leaves
// the box without an address.
func (n StaticNetwork) LeaseJSON() string {
	type lease struct {
		IP      string
		Netmask []byte   `json:",omitempty"`
		Router  string   `json:",omitempty"`
		DNS     []string `json:",omitempty"`
	}
	l := lease{IP: n.Address.Addr().String()}
	mask := make([]byte, 4)
	for i := 0; i < n.Address.Bits(); i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	l.Netmask = mask
	if n.Router.IsValid() {
		l.Router = n.Router.String()
	}
	for _, d := range n.DNS {
		l.DNS = append(l.DNS, d.String())
	}
	b, _ := json.Marshal(l)
	return string(b)
}

// manageNetworkFlag is pumi-appliance's flag that makes it run gokrazy's
// dhcp itself, so that the setup page can change the address at run time.
const manageNetworkFlag = "-manage-network"

// NetworkJSON is n as pumi stores the appliance's network settings (the
// config's "network" object), the form -manage-network takes.
func (n StaticNetwork) NetworkJSON() string {
	type network struct {
		Mode    string   `json:"mode"`
		Address string   `json:"address"`
		Gateway string   `json:"gateway,omitempty"`
		DNS     []string `json:"dns,omitempty"`
	}
	v := network{Mode: "static", Address: n.Address.String()}
	if n.Router.IsValid() {
		v.Gateway = n.Router.String()
	}
	for _, d := range n.DNS {
		v.DNS = append(v.DNS, d.String())
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// managesNetwork reports whether pumi-appliance runs gokrazy's dhcp itself.
func (c *Config) managesNetwork() bool {
	return slices.ContainsFunc(c.PackageConfig[AppliancePackage].CommandLineFlags, func(f string) bool {
		return f == manageNetworkFlag || strings.HasPrefix(f, manageNetworkFlag+"=")
	})
}

// SetStaticNetwork gives the appliance the fixed address n. When pumi runs
// gokrazy's dhcp itself (-manage-network), n becomes the address the image
// starts with until the setup page sets one; otherwise gokrazy's dhcp gets
// it as -static_network_config.
func (c *Config) SetStaticNetwork(n StaticNetwork) {
	if c.managesNetwork() {
		pc := c.Package(AppliancePackage)
		pc.CommandLineFlags = slices.DeleteFunc(pc.CommandLineFlags, func(f string) bool {
			return f == manageNetworkFlag || strings.HasPrefix(f, manageNetworkFlag+"=")
		})
		pc.CommandLineFlags = append(pc.CommandLineFlags, manageNetworkFlag+"="+n.NetworkJSON())
		c.SetPackage(AppliancePackage, pc)
		return
	}
	pc := c.Package(dhcpPackage)
	pc.CommandLineFlags = slices.DeleteFunc(pc.CommandLineFlags, func(f string) bool {
		return strings.HasPrefix(f, "-static_network_config")
	})
	pc.CommandLineFlags = append(pc.CommandLineFlags, "-static_network_config="+n.LeaseJSON())
	c.SetPackage(dhcpPackage, pc)
}
