package gokrazy

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pumi-lab/pumi/internal/hostnet"
)

// TestCommittedInstance checks the committed gokrazy/pumi instance: a valid
// amd64 pumi appliance config with no password in it, and a builddir whose
// replace points at this repository by a relative path.
func TestCommittedInstance(t *testing.T) {
	c, err := LoadConfig(filepath.Join("pumi", "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Check(); err != nil {
		t.Fatal(err)
	}
	if c.Update.HTTPPassword != "" || c.Update.NoPassword {
		t.Error("the committed config must not set a password (or disable it): pumi-image injects one")
	}
	flags := strings.Join(c.PackageConfig[AppliancePackage].CommandLineFlags, " ")
	for _, f := range []string{"-state=/perm/pumi", "-listen=:80", "-manage-network=dhcp"} {
		if !strings.Contains(flags, f) {
			t.Errorf("pumi-appliance flags %q lack %s", flags, f)
		}
	}
	if strings.Contains(flags, "api-token") {
		t.Error("the committed config must not bake an API token file")
	}
	if strings.Join(c.KernelExtraArgs, " ") != "rootdelay=0 rootwait" || c.SerialConsole != "ttyS0,115200" {
		t.Errorf("kernel args %v / serial console %q", c.KernelExtraArgs, c.SerialConsole)
	}
	gomod, err := os.ReadFile(filepath.Join("pumi", "builddir", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(gomod), "\nreplace github.com/pumi-lab/pumi => ../../..\n") {
		t.Errorf("builddir/go.mod must replace pumi with ../../.. (relative, so every clone builds its own tree):\n%s", gomod)
	}
	// prepare resolves the replace against this repository.
	repo, err := FindRepo(".")
	if err != nil {
		t.Fatal(err)
	}
	if got := filepath.Join(mustAbs(t, "pumi/builddir"), "../../.."); got != repo {
		t.Errorf("replace resolves to %s, repository is %s", got, repo)
	}
}

func mustAbs(t *testing.T, p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestConfigRoundTrip: every field of the committed config survives
// LoadConfig + Marshal, and unknown fields are refused.
func TestConfigRoundTrip(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("pumi", "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseConfig(raw)
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var a, b any
	if err := json.Unmarshal(raw, &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out, &b); err != nil {
		t.Fatal(err)
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	if string(ja) != string(jb) {
		t.Errorf("round trip changed the config:\n%s\n%s", ja, jb)
	}
	if _, err := ParseConfig([]byte(`{"Hostname":"pumi","Pakages":[]}`)); err == nil || !strings.Contains(err.Error(), "Pakages") {
		t.Errorf("misspelt field: %v", err)
	}
	if _, err := ParseConfig([]byte(`{"Hostname":"pumi"} {}`)); err == nil {
		t.Error("trailing data accepted")
	}
	bad := *c
	bad.Update = &UpdateConfig{HTTPPort: "80"}
	if err := bad.Check(); err == nil || !strings.Contains(err.Error(), "HTTPPort") {
		t.Errorf("UI on port 80: %v", err)
	}
}

func TestStaticNetwork(t *testing.T) {
	for _, tc := range []struct {
		in, lease, err string
	}{
		{in: "10.20.0.2/24", lease: `{"IP":"10.20.0.2","Netmask":"////AA=="}`},
		{in: "10.20.0.2/24,router=10.20.0.1,dns=10.20.0.1+9.9.9.9",
			lease: `{"IP":"10.20.0.2","Netmask":"////AA==","Router":"10.20.0.1","DNS":["10.20.0.1","9.9.9.9"]}`},
		{in: "172.16.5.9/22", lease: `{"IP":"172.16.5.9","Netmask":"///8AA=="}`},
		{in: "10.20.0.2", err: "prefix length"},
		{in: "10.20.0.0/24", err: "network address"},
		{in: "fd00::2/64", err: "IPv4"},
		{in: "10.20.0.2/24,router=10.21.0.1", err: "router"},
		{in: "10.20.0.2/24,router=10.20.0.2", err: "router"},
		{in: "10.20.0.2/24,gw=10.20.0.1", err: "only router= and dns="},
		{in: "10.20.0.2/24,dns=x", err: "dns"},
		{in: "10.20.0.2/24,router", err: "key=value"},
	} {
		n, err := ParseStaticNetwork(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want one about %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if got := n.LeaseJSON(); got != tc.lease {
			t.Errorf("%q: lease %s, want %s", tc.in, got, tc.lease)
		}
	}
	// The flag replaces an earlier one instead of adding a second.
	var c Config
	c.SetStaticNetwork(StaticNetwork{Address: netip.MustParsePrefix("10.1.0.2/16")})
	c.SetStaticNetwork(StaticNetwork{Address: netip.MustParsePrefix("10.1.0.3/16")})
	if f := c.PackageConfig[dhcpPackage].CommandLineFlags; len(f) != 1 || !strings.Contains(f[0], `"10.1.0.3"`) {
		t.Errorf("dhcp flags %q", f)
	}
}

// TestStaticNetworkManaged: with pumi running gokrazy's dhcp itself, the
// build-time address becomes -manage-network's value, which pumi reads back
// as the same settings, and gokrazy's dhcp gets no flag of its own.
func TestStaticNetworkManaged(t *testing.T) {
	c, err := LoadConfig(filepath.Join("pumi", "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !c.managesNetwork() {
		// The committed instance may not have switched yet: do it here.
		c.AddFlags(AppliancePackage, "-manage-network=dhcp")
		pc := c.Package(dhcpPackage)
		pc.DontStart = true
		c.SetPackage(dhcpPackage, pc)
	}
	n, err := ParseStaticNetwork("10.20.0.2/24,router=10.20.0.1,dns=10.20.0.1+9.9.9.9")
	if err != nil {
		t.Fatal(err)
	}
	c.SetStaticNetwork(n)
	c.SetStaticNetwork(n) // replaces, does not add a second flag
	var vals []string
	for _, f := range c.PackageConfig[AppliancePackage].CommandLineFlags {
		if v, ok := strings.CutPrefix(f, "-manage-network="); ok {
			vals = append(vals, v)
		}
	}
	if len(vals) != 1 {
		t.Fatalf("-manage-network flags: %q", vals)
	}
	got, on, err := hostnet.ParseManageNetwork(vals[0])
	if err != nil || !on || got.Mode != "static" || got.Address != n.Address || got.Gateway != n.Router ||
		!slices.Equal(got.DNS, n.DNS) {
		t.Errorf("pumi reads %s as %+v (on %v, err %v), want %+v", vals[0], got, on, err, n)
	}
	if f := c.PackageConfig[dhcpPackage].CommandLineFlags; len(f) != 0 {
		t.Errorf("gokrazy's dhcp (not started) got flags %q", f)
	}
	if err := c.Check(); err != nil {
		t.Error(err)
	}
	// Two programs configuring eth0, or none, is refused.
	pc := c.PackageConfig[dhcpPackage]
	pc.DontStart = false
	c.PackageConfig[dhcpPackage] = pc
	if err := c.Check(); err == nil || !strings.Contains(err.Error(), "DontStart") {
		t.Errorf("pumi and gokrazy both running dhcp: %v", err)
	}
}

// checkLease re-parses LeaseJSON the way gokrazy's dhcp does (net.IP and
// net.IPMask fields) and compares with n.
func checkLease(t *testing.T, n StaticNetwork) {
	var l struct {
		IP      string
		Netmask []byte
		Router  string
		DNS     []string
	}
	if err := json.Unmarshal([]byte(n.LeaseJSON()), &l); err != nil {
		t.Fatalf("lease JSON %s: %v", n.LeaseJSON(), err)
	}
	ones := 0
	for _, b := range l.Netmask {
		for i := 7; i >= 0; i-- {
			if b&(1<<i) != 0 {
				ones++
			}
		}
	}
	if l.IP != n.Address.Addr().String() || ones != n.Address.Bits() || len(l.Netmask) != 4 {
		t.Fatalf("lease %s does not match %v", n.LeaseJSON(), n.Address)
	}
}

func FuzzParseStaticNetwork(f *testing.F) {
	for _, s := range []string{"10.20.0.2/24", "10.20.0.2/24,router=10.20.0.1,dns=1.1.1.1+8.8.8.8", "1.2.3.4/30", ",", "10.0.0.1/8,dns="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseStaticNetwork(s)
		if err != nil {
			return
		}
		checkLease(t, n)
	})
}

func FuzzParseConfig(f *testing.F) {
	if b, err := os.ReadFile(filepath.Join("pumi", "config.json")); err == nil {
		f.Add(b)
	}
	f.Add([]byte(`{"Hostname":"x","PackageConfig":{"a":{"ExtraFileContents":{"/etc/x":"y"}}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err != nil {
			return
		}
		_ = c.Check()
		out, err := c.Marshal()
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		if _, err := ParseConfig(out); err != nil {
			t.Fatalf("re-parse of own output: %v\n%s", err, out)
		}
	})
}
