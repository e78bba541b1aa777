package hostnet

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/change"
	"github.com/pumi-lab/pumi/internal/testnet"
)

// gokrazyLease mirrors rtr7/dhcp4's Lease with the same field types, so
// decoding the rendered flag here is what gokrazy's dhcp does with it.
type gokrazyLease struct {
	IP      net.IP
	Netmask net.IPMask
	Router  net.IP
	DNS     []net.IP
}

func decodeStatic(t testing.TB, args []string) gokrazyLease {
	t.Helper()
	if len(args) != 1 || !strings.HasPrefix(args[0], "-static_network_config={") {
		t.Fatalf("dhcp flags %q, want one -static_network_config={...}", args)
	}
	var l gokrazyLease
	if err := json.Unmarshal([]byte(strings.TrimPrefix(args[0], "-static_network_config=")), &l); err != nil {
		t.Fatalf("gokrazy's dhcp could not decode %s: %v", args[0], err)
	}
	return l
}

func TestDHCPArgs(t *testing.T) {
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	// DHCP client: no flags.
	for _, n := range []NetworkSettings{{}, {Mode: "dhcp"}, {Mode: "dhcp", Address: pfx("10.0.0.2/24")}} {
		if args, err := DHCPArgs(n); err != nil || args != nil {
			t.Errorf("DHCPArgs(%+v) = %q, %v; want no flags", n, args, err)
		}
	}
	// The exact text gokrazy's dhcp gets: the mask base64 (a net.IPMask).
	args, err := DHCPArgs(NetworkSettings{Mode: "static", Address: pfx("10.20.0.2/24"), Gateway: addr("10.20.0.1"),
		DNS: []netip.Addr{addr("10.20.0.1"), addr("192.0.2.53")}})
	if err != nil {
		t.Fatal(err)
	}
	want := `-static_network_config={"IP":"10.20.0.2","Netmask":"////AA==","Router":"10.20.0.1","DNS":["10.20.0.1","192.0.2.53"]}`
	if len(args) != 1 || args[0] != want {
		t.Errorf("dhcpArgs = %q\nwant %q", args, want)
	}
	for _, tc := range []struct {
		n      NetworkSettings
		ones   int
		router string
	}{
		{NetworkSettings{Mode: "static", Address: pfx("172.16.5.9/16")}, 16, "<nil>"},
		{NetworkSettings{Mode: "static", Address: pfx("10.1.2.3/8"), Gateway: addr("10.255.255.254")}, 8, "10.255.255.254"},
		{NetworkSettings{Mode: "static", Address: pfx("192.0.2.1/30"), Gateway: addr("192.0.2.2")}, 30, "192.0.2.2"},
		{NetworkSettings{Mode: "static", Address: pfx("10.9.0.130/25")}, 25, "<nil>"},
	} {
		args, err := DHCPArgs(tc.n)
		if err != nil {
			t.Errorf("%+v: %v", tc.n, err)
			continue
		}
		l := decodeStatic(t, args)
		ones, bits := l.Netmask.Size()
		if !l.IP.Equal(net.IP(tc.n.Address.Addr().AsSlice())) || ones != tc.ones || bits != 32 || l.Router.String() != tc.router {
			t.Errorf("%+v: dhcp reads IP %v mask /%d (%d bits) router %v", tc.n, l.IP, ones, bits, l.Router)
		}
	}
	bad := map[string]NetworkSettings{
		"unknown mode":      {Mode: "auto"},
		"no address":        {Mode: "static"},
		"IPv6":              {Mode: "static", Address: pfx("2001:db8::2/64")},
		"network address":   {Mode: "static", Address: pfx("10.20.0.0/24")},
		"broadcast address": {Mode: "static", Address: pfx("10.20.0.255/24")},
		"/31":               {Mode: "static", Address: pfx("10.20.0.2/31")},
		"/32":               {Mode: "static", Address: pfx("10.20.0.2/32")},
		"/0":                {Mode: "static", Address: pfx("10.20.0.2/0")},
		"gateway outside":   {Mode: "static", Address: pfx("10.20.0.2/24"), Gateway: addr("10.21.0.1")},
		"gateway is self":   {Mode: "static", Address: pfx("10.20.0.2/24"), Gateway: addr("10.20.0.2")},
		"gateway broadcast": {Mode: "static", Address: pfx("10.20.0.2/24"), Gateway: addr("10.20.0.255")},
		"gateway IPv6":      {Mode: "static", Address: pfx("10.20.0.2/24"), Gateway: addr("fe80::1")},
		"DNS IPv6":          {Mode: "static", Address: pfx("10.20.0.2/24"), DNS: []netip.Addr{addr("2001:db8::53")}},
	}
	for name, n := range bad {
		if args, err := DHCPArgs(n); err == nil {
			t.Errorf("%s (%+v): got flags %q, want an error", name, n, args)
		}
	}
}

func TestParseManageNetwork(t *testing.T) {
	if _, on, err := ParseManageNetwork(""); on || err != nil {
		t.Errorf(`"": on %v, err %v; want off`, on, err)
	}
	if n, on, err := ParseManageNetwork("dhcp"); !on || err != nil || n.Mode != "dhcp" {
		t.Errorf(`"dhcp": %+v on %v err %v`, n, on, err)
	}
	n, on, err := ParseManageNetwork(`{"mode":"static","address":"10.20.0.2/24","gateway":"10.20.0.1","dns":["10.20.0.1"]}`)
	if !on || err != nil || n.Mode != "static" || n.Address != netip.MustParsePrefix("10.20.0.2/24") ||
		n.Gateway != netip.MustParseAddr("10.20.0.1") || len(n.DNS) != 1 {
		t.Errorf("static object: %+v on %v err %v", n, on, err)
	}
	// The network object the setup page stores reads back the same.
	b, _ := json.Marshal(n)
	if m, _, err := ParseManageNetwork(string(b)); err != nil || !slices.Equal(m.DNS, n.DNS) || m.Address != n.Address {
		t.Errorf("round trip of %s: %+v, %v", b, m, err)
	}
	for _, s := range []string{"static", "yes", "{", `{"mode":"static"}`, `{"mode":"static","address":"10.20.0.0/24"}`,
		`{"mode":"dhcp","adress":"10.20.0.2/24"}`, `{"mode":"dhcp"} {}`, `{"mode":"static","address":"10.20.0.2/24","gateway":"10.30.0.1"}`} {
		if n, on, err := ParseManageNetwork(s); err == nil || on {
			t.Errorf("%q: %+v on %v, want an error", s, n, on)
		}
	}
}

// FuzzParseManageNetwork: any flag value either fails cleanly or yields
// settings gokrazy's dhcp accepts, with the address it was given.
func FuzzParseManageNetwork(f *testing.F) {
	for _, s := range []string{"", "dhcp", `{"mode":"static","address":"10.20.0.2/24","gateway":"10.20.0.1","dns":["10.20.0.1"]}`,
		`{"mode":"dhcp"}`, `{"address":"10.0.0.1/8"}`, `{"mode":"static","address":"10.20.0.255/24"}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, on, err := ParseManageNetwork(s)
		if err != nil || !on {
			return
		}
		args, err := DHCPArgs(n)
		if err != nil {
			t.Fatalf("%q parsed to %+v, which dhcpArgs refuses: %v", s, n, err)
		}
		if n.Mode != "static" {
			if args != nil {
				t.Fatalf("%q: DHCP mode with flags %q", s, args)
			}
			return
		}
		l := decodeStatic(t, args)
		ones, _ := l.Netmask.Size()
		if !l.IP.Equal(net.IP(n.Address.Addr().AsSlice())) || ones != n.Address.Bits() {
			t.Fatalf("%q: dhcp would read %v/%d for %s", s, l.IP, ones, n.Address)
		}
	})
}

// TestHostNetworkGokrazyDHCP runs the supervisor against gokrazy's real
// dhcp program (built from the version the image pins) on a veth "machine"
// in a namespace, with dnsmasq as the LAN's DHCP server: DHCP client, then
// a static address from the settings (dhcp exits 125, the leased address
// goes), another static one (the first goes), an unrelated config change
// (no restart), and back to DHCP.
func TestHostNetworkGokrazyDHCP(t *testing.T) {
	testnet.Require(t, "dnsmasq", "unshare", "sh", "go")
	dir := t.TempDir()
	dhcpBin := filepath.Join(dir, "dhcp")
	// The builddir module pins gokrazy; GOFLAGS=-mod=mod as gok builds it.
	build := exec.Command("go", "-C", "../../gokrazy/pumi/builddir", "build", "-o", dhcpBin, "github.com/gokrazy/gokrazy/cmd/dhcp")
	build.Env = append(build.Environ(), "GOFLAGS=-mod=mod")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building gokrazy's dhcp: %v\n%s", err, out)
	}

	ns := testnet.New(t)
	ns.Bridge("br0", "10.93.0.1/24")
	dm := ns.Command(context.Background(), "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
		"--interface=br0", "--bind-interfaces", "--except-interface=lo", "--user=root",
		"--dhcp-range=10.93.0.100,10.93.0.150,255.255.255.0,1h", "--dhcp-option=3,10.93.0.1", "--dhcp-authoritative",
		"--dhcp-leasefile="+filepath.Join(dir, "leases"), "--pid-file="+filepath.Join(dir, "pid"))
	if err := ns.Start(dm); err != nil {
		t.Fatal(err)
	}
	// The appliance's interface has a name no real machine uses, so even a
	// mistake could never touch the test machine's own eth0.
	const iface = "pumilab0"
	host := ns.Host("br0", "", "")
	host.MustIP("link", "set", "eth0", "down")
	host.MustIP("link", "set", "eth0", "name", iface)
	host.MustIP("link", "set", iface, "up")

	var (
		mu       sync.Mutex
		settings NetworkSettings
		changes  change.Broadcast
	)
	set := func(n NetworkSettings) {
		mu.Lock()
		settings = n
		mu.Unlock()
		changes.Notify()
	}
	logs := &testnet.LockedBuffer{}
	h := &hostNet{
		// dhcp signals PID 1 (gokrazy's init) after configuring; in its own
		// PID namespace that is a shell, which ignores it.
		program: []string{"ip", "netns", "exec", host.Name, "unshare", "--pid", "--fork", "--kill-child",
			"sh", "-c", `"$0" "$@"; exit $?`, dhcpBin},
		iface: iface,
		def:   NetworkSettings{Mode: "dhcp"},
		settings: func(ctx context.Context) (NetworkSettings, <-chan struct{}, error) {
			ch := changes.Wait()
			mu.Lock()
			defer mu.Unlock()
			return settings, ch, nil
		},
		flush: func(iface string, keep netip.Prefix) error {
			return host.Do(func() error { return flushIPv4(iface, keep) })
		},
		settle:  10 * time.Millisecond,
		backoff: 100 * time.Millisecond,
		log:     slog.New(slog.NewTextHandler(logs, nil)),
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); h.run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("supervisor log:\n%s", logs.String())
		}
	})

	leased := regexp.MustCompile(`^10\.93\.0\.(1[0-4][0-9]|150)/24$`)
	// wait polls the interface until its IPv4 addresses and default route
	// are as wanted (dhcp works in the background; the limit only bounds
	// a broken run).
	wait := func(what string, ok func(addrs []string, route string) bool) []string {
		t.Helper()
		var addrs []string
		var route string
		for end := time.Now().Add(45 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
			addrs = strings.Fields(host.MustIP("-4", "-o", "addr", "show", "dev", iface))
			var got []string
			for i, f := range addrs {
				if f == "inet" && i+1 < len(addrs) {
					got = append(got, addrs[i+1])
				}
			}
			addrs = got
			route = strings.TrimSpace(host.MustIP("-4", "route", "show", "default"))
			if ok(addrs, route) {
				return addrs
			}
		}
		t.Fatalf("%s: interface has %q, default route %q", what, addrs, route)
		return nil
	}
	viaGW := func(route string) bool { return strings.HasPrefix(route, "default via 10.93.0.1 dev "+iface) }

	wait("DHCP client at start", func(a []string, r string) bool {
		return len(a) == 1 && leased.MatchString(a[0]) && viaGW(r)
	})
	set(NetworkSettings{Mode: "static", Address: netip.MustParsePrefix("10.93.0.5/24"), Gateway: netip.MustParseAddr("10.93.0.1")})
	wait("static 10.93.0.5", func(a []string, r string) bool { return slices.Equal(a, []string{"10.93.0.5/24"}) && viaGW(r) })
	for end := time.Now().Add(10 * time.Second); !strings.Contains(logs.String(), "static address applied"); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("no exit 125 (static address applied) seen from gokrazy's dhcp")
		}
	}
	// The same settings again (another part of the config changed): no
	// restart. Then a new static address replaces the old one.
	set(NetworkSettings{Mode: "static", Address: netip.MustParsePrefix("10.93.0.5/24"), Gateway: netip.MustParseAddr("10.93.0.1")})
	set(NetworkSettings{Mode: "static", Address: netip.MustParsePrefix("10.93.0.6/24")})
	wait("static 10.93.0.6", func(a []string, r string) bool { return slices.Equal(a, []string{"10.93.0.6/24"}) && r == "" })
	// Settings dhcp would fail on change nothing.
	set(NetworkSettings{Mode: "static", Address: netip.MustParsePrefix("10.93.0.7/24"), Gateway: netip.MustParseAddr("10.94.0.1")})
	for end := time.Now().Add(10 * time.Second); !strings.Contains(logs.String(), "cannot be applied"); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("bad settings were not reported")
		}
	}
	wait("bad settings keep 10.93.0.6", func(a []string, r string) bool { return slices.Equal(a, []string{"10.93.0.6/24"}) })
	set(NetworkSettings{Mode: "dhcp"})
	wait("back to DHCP", func(a []string, r string) bool { return len(a) == 1 && leased.MatchString(a[0]) && viaGW(r) })
	if n := strings.Count(logs.String(), "starting gokrazy's dhcp"); n != 4 {
		t.Errorf("dhcp started %d times, want 4 (dhcp, .5, .6, dhcp: unchanged and bad settings restart nothing)", n)
	}
	cancel()
	<-done
	if out, _ := exec.Command("ip", "netns", "pids", host.Name).Output(); len(strings.Fields(string(out))) != 0 {
		t.Errorf("processes left in the appliance's namespace after the supervisor stopped: %s", out)
	}
}

// TestManageNetworkOff: without the flag pumi never touches the machine's
// network (development machines); a bad flag falls back to the DHCP client.
func TestManageNetworkOff(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	if h := newHostNet("", log, nil); h != nil {
		t.Errorf("-manage-network unset: supervisor %+v, want none", h)
	}
	h := newHostNet(`{"mode":"static","address":"10.20.0.0/24"}`, log, nil)
	if h == nil || h.def.Mode != "dhcp" || h.program[0] != DHCPProgram || h.iface != "eth0" {
		t.Errorf("bad -manage-network: %+v, want gokrazy's dhcp on eth0 as a DHCP client", h)
	}
}
