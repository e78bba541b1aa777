package netboot

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

func TestLeasesSurviveRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.json")
	x := newHarnessAt(t, fullConfig(), path)
	ackA := x.dora(macA)
	ackB := x.dora(macB)
	ackR := x.dora(macRes)

	// A new process: same file, fresh memory.
	y := newHarnessAt(t, fullConfig(), path)
	y.clock = x.clock.Add(10 * time.Minute)
	// Renewal by ciaddr is ACKed with the same address...
	renew := y.do(msg(t, dhcpv4.MessageTypeRequest, macA, dhcpv4.WithClientIP(ackA.YourIPAddr)), PortServer)
	wantType(t, renew, dhcpv4.MessageTypeAck)
	// ...a rebooting client is offered its old address...
	if o := y.do(msg(t, dhcpv4.MessageTypeDiscover, macB), PortServer); !o.YourIPAddr.Equal(ackB.YourIPAddr) {
		t.Errorf("after restart macB offered %s, had %s", o.YourIPAddr, ackB.YourIPAddr)
	}
	// ...and nobody else can take a stored lease.
	wantType(t, y.do(msg(t, dhcpv4.MessageTypeRequest, macC, requested(ackA.YourIPAddr.String())), PortServer), dhcpv4.MessageTypeNak)
	if o := y.do(msg(t, dhcpv4.MessageTypeDiscover, macC), PortServer); o.YourIPAddr.Equal(ackA.YourIPAddr) || o.YourIPAddr.Equal(ackB.YourIPAddr) || o.YourIPAddr.Equal(ackR.YourIPAddr) {
		t.Errorf("new client offered a stored lease %s", o.YourIPAddr)
	}
}

func TestStaleLeasesDroppedWhenConfigChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.json")
	x := newHarnessAt(t, fullConfig(), path)
	x.dora(macA) // 10.99.0.100
	x.dora(macB) // 10.99.0.102
	cfg := fullConfig()
	cfg.RangeStart = netip.MustParseAddr("10.99.0.102") // .100 no longer in range
	y := newHarnessAt(t, cfg, path)
	ls, err := FileLeaseStore(path).Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 1 || ls[0].MAC.String() != macB.String() {
		t.Fatalf("stored after reload: %+v, want only macB's", ls)
	}
	wantType(t, y.do(msg(t, dhcpv4.MessageTypeRequest, macA, dhcpv4.WithClientIP(ip("10.99.0.100"))), PortServer), dhcpv4.MessageTypeNak)
}

func TestLeaseFileDamagedIsAClearError(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"truncated":   `{"version":1,"leases":[{"mac":"52:54:00:00:00:0a","ip":"10.9`,
		"bad mac":     `{"version":1,"leases":[{"mac":"zz","ip":"10.99.0.100"}]}`,
		"bad ip":      `{"version":1,"leases":[{"mac":"52:54:00:00:00:0a","ip":"fe80::1"}]}`,
		"duplicate":   `{"version":1,"leases":[{"mac":"52:54:00:00:00:0a","ip":"10.99.0.100"},{"mac":"52-54-00-00-00-0A","ip":"10.99.0.101"}]}`,
		"new version": `{"version":2,"leases":[]}`,
	} {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := New(func() Config { c := fullConfig(); c.Interface = "lo"; return c }(), NewStaticAdmission(nil, nil), FileLeaseStore(path), os.DirFS(dir), nil)
		if err == nil || !strings.Contains(err.Error(), "move it aside") {
			t.Errorf("%s: err %v, want a 'damaged ... move it aside' error", name, err)
		}
		if b, _ := os.ReadFile(path); string(b) != content {
			t.Errorf("%s: damaged file was modified", name)
		}
	}
}

func TestLeaseFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l.json")
	s := FileLeaseStore(path)
	exp := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := s.Put(Lease{MAC: macA, IP: netip.MustParseAddr("10.0.0.5"), Expiry: exp, Hostname: "a"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(Lease{MAC: macB, IP: netip.MustParseAddr("10.0.0.6"), Expiry: exp}); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(macA); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(macC); err != nil { // absent: fine
		t.Fatal(err)
	}
	ls, err := FileLeaseStore(path).Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 1 || ls[0].MAC.String() != macB.String() || ls[0].IP.String() != "10.0.0.6" || !ls[0].Expiry.Equal(exp) {
		t.Fatalf("reloaded %+v", ls)
	}
	if err := s.Put(Lease{MAC: net.HardwareAddr{1, 2}, IP: netip.MustParseAddr("10.0.0.7")}); err == nil {
		t.Errorf("malformed lease accepted")
	}
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*tmp*")); len(m) != 0 {
		t.Errorf("temporary files left: %v", m)
	}
}

func TestConfigValidation(t *testing.T) {
	mut := func(f func(*Config)) Config { c := fullConfig(); f(&c); return c }
	cases := []struct {
		cfg  Config
		want string
	}{
		{mut(func(c *Config) { c.Mode = "dhcp" }), "want off, proxy or full"},
		{mut(func(c *Config) { c.Interface = "" }), "no interface"},
		{mut(func(c *Config) { c.HTTPBase = "" }), "no HTTP base"},
		{mut(func(c *Config) { c.HTTPBase = "ftp://x" }), "must start with http"},
		{mut(func(c *Config) { c.HTTPBase = "http://" + strings.Repeat("a", 120) }), "longer than"},
		{mut(func(c *Config) { c.Netmask = netip.Prefix{} }), "needs the lab subnet"},
		{mut(func(c *Config) { c.RangeEnd = netip.MustParseAddr("10.99.0.10") }), "end is before the start"},
		{mut(func(c *Config) { c.RangeEnd = netip.MustParseAddr("10.99.1.10") }), "outside the subnet"},
		{mut(func(c *Config) { c.RangeEnd = netip.MustParseAddr("10.99.0.255") }), "broadcast"},
		{mut(func(c *Config) { c.RangeStart = netip.Addr{} }), "range start and end"},
		{mut(func(c *Config) { c.ServerIP = netip.MustParseAddr("10.98.0.1") }), "outside the subnet"},
		{mut(func(c *Config) { c.Router = netip.MustParseAddr("10.98.0.1") }), "router"},
		{mut(func(c *Config) { c.LeaseTime = time.Second }), "at least 1m"},
		{mut(func(c *Config) { c.Reservations = append(c.Reservations, c.Reservations[0]) }), "reserved twice"},
		{mut(func(c *Config) {
			c.Reservations = append(c.Reservations, Reservation{MAC: macA, IP: c.Reservations[0].IP})
		}), "reserved for both"},
		{mut(func(c *Config) { c.Reservations[0].IP = netip.MustParseAddr("10.99.5.1") }), "must be a host address"},
		{mut(func(c *Config) { c.Reservations[0].IP = srvIP }), "server's or router's"},
		{mut(func(c *Config) { c.Reservations[0].Hostname = "a b" }), "hostname"},
		{mut(func(c *Config) { c.Reservations[0].MAC = net.HardwareAddr{1} }), "6-byte"},
	}
	for _, c := range cases {
		err := c.cfg.validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("err %v, want one containing %q", err, c.want)
		}
	}
	for _, ok := range []Config{fullConfig(), proxyConfig(), {Mode: ModeOff}} {
		if err := ok.validate(); err != nil {
			t.Errorf("valid config refused: %v", err)
		}
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"proxy": ModeProxy, "FULL": ModeFull, " off ": ModeOff, "": ModeOff} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseMode("on"); err == nil {
		t.Errorf("ParseMode(on) accepted")
	}
}

func TestBroadcastOf(t *testing.T) {
	for in, want := range map[string]string{"10.99.0.0/24": "10.99.0.255", "10.0.0.0/8": "10.255.255.255", "192.168.4.0/22": "192.168.7.255", "10.99.0.7/30": "10.99.0.7"} {
		if got := broadcastOf(netip.MustParsePrefix(in)).String(); got != want {
			t.Errorf("broadcastOf(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestServerLeases(t *testing.T) {
	x := newHarness(t, fullConfig())
	s := &Server{h: x.h}
	x.dora(macB)
	x.dora(macRes)
	x.do(msg(t, dhcpv4.MessageTypeDiscover, macA), PortServer) // an offer is not a lease
	ls := s.Leases()
	if len(ls) != 2 || ls[0].IP.String() != "10.99.0.100" || ls[1].IP.String() != "10.99.0.101" || ls[1].Hostname != "seat-99" {
		t.Fatalf("Leases() = %+v", ls)
	}
	x.clock = x.clock.Add(2 * time.Hour)
	if ls := s.Leases(); len(ls) != 0 {
		t.Fatalf("expired leases listed: %+v", ls)
	}
}

// BenchmarkFullDORA: one DISCOVER/OFFER/REQUEST/ACK with a fresh MAC,
// including the durable lease-file write (fsync) before the ACK.
func BenchmarkFullDORA(b *testing.B) {
	cfg := fullConfig()
	cfg.RangeStart, cfg.RangeEnd = netip.MustParseAddr("10.99.0.2"), netip.MustParseAddr("10.99.0.250")
	cfg.Netmask = netip.MustParsePrefix("10.99.0.0/24")
	cfg.Router = netip.Addr{}
	cfg.Reservations = nil
	h, err := newHandler(cfg, NewStaticAdmission(nil, nil), FileLeaseStore(filepath.Join(b.TempDir(), "l.json")), discardLog(), time.Now)
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; b.Loop(); i++ {
		mac := net.HardwareAddr{2, 0, 0, 0, byte(i >> 8), byte(i)}
		d, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover))
		o, err := h.reply(d, PortServer)
		if err != nil || o == nil {
			// range full: forget everything and go on
			h.pool = newPool(cfg)
			h.pool.serverIP = h.serverIP
			continue
		}
		r, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(o.YourIPAddr)), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(srvIP.AsSlice()))))
		if a, err := h.reply(r, PortServer); err != nil || a == nil || a.MessageType() != dhcpv4.MessageTypeAck {
			b.Fatalf("no ACK: %v", err)
		}
	}
}
