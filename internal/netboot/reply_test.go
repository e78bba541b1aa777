package netboot

import (
	"bytes"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

var (
	srvIP    = netip.MustParseAddr("10.99.0.1")
	macA     = net.HardwareAddr{0x52, 0x54, 0x00, 0, 0, 0x0a}
	macB     = net.HardwareAddr{0x52, 0x54, 0x00, 0, 0, 0x0b}
	macC     = net.HardwareAddr{0x52, 0x54, 0x00, 0, 0, 0x0c}
	macRes   = net.HardwareAddr{0x52, 0x54, 0x00, 0, 0, 0x99}
	macStray = net.HardwareAddr{0x52, 0x54, 0x00, 0xee, 0xee, 0xee}
	t0       = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	guid     = append([]byte{0}, bytes.Repeat([]byte{0x42}, 16)...)
)

func fullConfig() Config {
	return Config{
		Interface:  "br0",
		Mode:       ModeFull,
		ServerIP:   srvIP,
		HTTPBase:   "http://10.99.0.1:8080",
		RangeStart: netip.MustParseAddr("10.99.0.100"),
		RangeEnd:   netip.MustParseAddr("10.99.0.103"),
		Netmask:    netip.MustParsePrefix("10.99.0.0/24"),
		Router:     netip.MustParseAddr("10.99.0.254"),
		DNS:        []netip.Addr{netip.MustParseAddr("10.99.0.53")},
		LeaseTime:  time.Hour,
		Reservations: []Reservation{
			// inside the range on purpose: it must never go to anyone else
			{MAC: macRes, IP: netip.MustParseAddr("10.99.0.101"), Hostname: "seat-99"},
		},
	}
}

type harness struct {
	t     *testing.T
	h     *handler
	clock time.Time
	adm   *StaticAdmission
	store *LeaseFile
	path  string
}

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	path := filepath.Join(t.TempDir(), "leases.json")
	return newHarnessAt(t, cfg, path)
}

func newHarnessAt(t *testing.T, cfg Config, path string) *harness {
	t.Helper()
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	x := &harness{t: t, clock: t0, path: path}
	x.adm = NewStaticAdmission([]net.HardwareAddr{macA, macB, macRes}, nil)
	x.store = FileLeaseStore(path)
	h, err := newHandler(cfg, x.adm, x.store, discardLog(), func() time.Time { return x.clock })
	if err != nil {
		t.Fatal(err)
	}
	x.h = h
	return x
}

func (x *harness) do(req *dhcpv4.DHCPv4, port int) *dhcpv4.DHCPv4 {
	x.t.Helper()
	// Every request goes through the wire format, as on the socket.
	parsed, err := dhcpv4.FromBytes(req.ToBytes())
	if err != nil {
		x.t.Fatalf("test request does not round-trip: %v", err)
	}
	resp, err := x.h.reply(parsed, port)
	if err != nil {
		x.t.Fatalf("reply: %v", err)
	}
	if resp != nil {
		if _, err := dhcpv4.FromBytes(resp.ToBytes()); err != nil {
			x.t.Fatalf("reply does not parse: %v", err)
		}
	}
	return resp
}

func msg(t *testing.T, mt dhcpv4.MessageType, mac net.HardwareAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	m, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(mt)}, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func requested(ip string) dhcpv4.Modifier {
	return dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP(ip)))
}

func serverID(ip string) dhcpv4.Modifier {
	return dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP(ip)))
}

func pxe(arch iana.Arch) dhcpv4.Modifier {
	return func(d *dhcpv4.DHCPv4) {
		vc := "PXEClient:Arch:00007:UNDI:003000"
		if arch == iana.EFI_X86_64_HTTP {
			vc = "HTTPClient:Arch:00016:UNDI:003001"
		}
		d.UpdateOption(dhcpv4.OptClassIdentifier(vc))
		d.UpdateOption(dhcpv4.OptClientArch(arch))
		d.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, guid))
	}
}

// ipxeUC is how iPXE identifies itself: a raw (non-RFC 3004) user class.
func ipxeUC(d *dhcpv4.DHCPv4) { d.UpdateOption(dhcpv4.OptUserClass("iPXE")) }

// ipxe175 is iPXE's feature option 175 without a user class.
func ipxe175(d *dhcpv4.DHCPv4) { d.UpdateOption(dhcpv4.OptGeneric(optIPXE, []byte{0x13, 1, 1})) }

func ip(s string) net.IP { return net.ParseIP(s).To4() }

func wantType(t *testing.T, resp *dhcpv4.DHCPv4, mt dhcpv4.MessageType) {
	t.Helper()
	if resp == nil {
		t.Fatalf("no reply, want %s", mt)
	}
	if got := resp.MessageType(); got != mt {
		t.Fatalf("reply %s (%q), want %s", got, resp.Message(), mt)
	}
}

func wantSilent(t *testing.T, resp *dhcpv4.DHCPv4) {
	t.Helper()
	if resp != nil {
		t.Fatalf("want no reply, got %s", resp.Summary())
	}
}

func wantNoPXE(t *testing.T, resp *dhcpv4.DHCPv4) {
	t.Helper()
	if resp.BootFileName != "" || resp.Options.Has(dhcpv4.OptionBootfileName) || resp.Options.Has(dhcpv4.OptionVendorSpecificInformation) {
		t.Fatalf("unexpected PXE options: %s", resp.Summary())
	}
}

// dora runs DISCOVER, REQUEST (selecting) and returns the ACK.
func (x *harness) dora(mac net.HardwareAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	x.t.Helper()
	offer := x.do(msg(x.t, dhcpv4.MessageTypeDiscover, mac, mods...), PortServer)
	wantType(x.t, offer, dhcpv4.MessageTypeOffer)
	req := msg(x.t, dhcpv4.MessageTypeRequest, mac, append(mods, requested(offer.YourIPAddr.String()), serverID(srvIP.String()))...)
	ack := x.do(req, PortServer)
	wantType(x.t, ack, dhcpv4.MessageTypeAck)
	if !ack.YourIPAddr.Equal(offer.YourIPAddr) {
		x.t.Fatalf("ACK %s differs from OFFER %s", ack.YourIPAddr, offer.YourIPAddr)
	}
	return ack
}

func TestFullOfferCarriesNetworkOptions(t *testing.T) {
	x := newHarness(t, fullConfig())
	offer := x.do(msg(t, dhcpv4.MessageTypeDiscover, macA), PortServer)
	wantType(t, offer, dhcpv4.MessageTypeOffer)
	if !offer.YourIPAddr.Equal(ip("10.99.0.100")) {
		t.Errorf("yiaddr %s, want the first range address 10.99.0.100", offer.YourIPAddr)
	}
	if got := offer.ServerIdentifier(); !got.Equal(ip("10.99.0.1")) {
		t.Errorf("server id %s", got)
	}
	if got := net.IP(offer.SubnetMask()).String(); got != "255.255.255.0" {
		t.Errorf("netmask %s", got)
	}
	if r := offer.Router(); len(r) != 1 || !r[0].Equal(ip("10.99.0.254")) {
		t.Errorf("router %v", r)
	}
	if d := offer.DNS(); len(d) != 1 || !d[0].Equal(ip("10.99.0.53")) {
		t.Errorf("dns %v", d)
	}
	if lt := offer.IPAddressLeaseTime(0); lt != time.Hour {
		t.Errorf("lease time %s", lt)
	}
	if t1, t2 := offer.IPAddressRenewalTime(0), offer.IPAddressRebindingTime(0); t1 != 30*time.Minute || t2 != 52*time.Minute+30*time.Second {
		t.Errorf("T1 %s T2 %s", t1, t2)
	}
	if offer.Options.Has(dhcpv4.OptionHostName) {
		t.Errorf("hostname for an unreserved MAC")
	}
	wantNoPXE(t, offer) // not a PXE client
	if _, err := os.Stat(x.path); err == nil {
		t.Errorf("an OFFER must not be persisted")
	}
}

func TestFullReservation(t *testing.T) {
	x := newHarness(t, fullConfig())
	ack := x.dora(macRes)
	if !ack.YourIPAddr.Equal(ip("10.99.0.101")) {
		t.Fatalf("reserved MAC got %s, want 10.99.0.101", ack.YourIPAddr)
	}
	if ack.HostName() != "seat-99" {
		t.Errorf("hostname %q, want seat-99", ack.HostName())
	}
	// The reserved MAC cannot take another address...
	nak := x.do(msg(t, dhcpv4.MessageTypeRequest, macRes, requested("10.99.0.102")), PortServer)
	wantType(t, nak, dhcpv4.MessageTypeNak)
	// ...and nobody else gets the reserved one, even when all else is gone.
	var got []string
	for _, m := range []net.HardwareAddr{macA, macB, macC, macStray} {
		o := x.do(msg(t, dhcpv4.MessageTypeDiscover, m), PortServer)
		if o != nil {
			got = append(got, o.YourIPAddr.String())
		}
	}
	for _, g := range got {
		if g == "10.99.0.101" {
			t.Fatalf("reserved address offered to another MAC: %v", got)
		}
	}
	// The fourth MAC finds the range full of pending offers and is offered
	// the oldest one's address (never the reserved one).
	if strings.Join(got, " ") != "10.99.0.100 10.99.0.102 10.99.0.103 10.99.0.100" {
		t.Errorf("offers %v: want the 3 unreserved range addresses, then the oldest offer's again", got)
	}
	nak = x.do(msg(t, dhcpv4.MessageTypeRequest, macStray, requested("10.99.0.101")), PortServer)
	wantType(t, nak, dhcpv4.MessageTypeNak)
	// A reserved client asking for its address after a reboot gets it.
	ack = x.do(msg(t, dhcpv4.MessageTypeRequest, macRes, requested("10.99.0.101")), PortServer)
	wantType(t, ack, dhcpv4.MessageTypeAck)
}

func TestFullReservationOutsideRange(t *testing.T) {
	cfg := fullConfig()
	cfg.Reservations[0].IP = netip.MustParseAddr("10.99.0.20")
	x := newHarness(t, cfg)
	if ack := x.dora(macRes); !ack.YourIPAddr.Equal(ip("10.99.0.20")) {
		t.Fatalf("got %s", ack.YourIPAddr)
	}
	// An unreserved MAC may not claim an out-of-range address.
	nak := x.do(msg(t, dhcpv4.MessageTypeRequest, macA, requested("10.99.0.21")), PortServer)
	wantType(t, nak, dhcpv4.MessageTypeNak)
}

func TestFullRequestCommitsAndPersists(t *testing.T) {
	x := newHarness(t, fullConfig())
	ack := x.dora(macA)
	b, err := os.ReadFile(x.path)
	if err != nil {
		t.Fatalf("lease not persisted: %v", err)
	}
	ls, err := parseLeaseFile(b)
	if err != nil || len(ls) != 1 || ls[0].MAC.String() != macA.String() || ls[0].IP.String() != ack.YourIPAddr.String() {
		t.Fatalf("lease file lacks the lease (%v):\n%s", err, b)
	}
	// Another client cannot take it.
	nak := x.do(msg(t, dhcpv4.MessageTypeRequest, macB, requested(ack.YourIPAddr.String())), PortServer)
	wantType(t, nak, dhcpv4.MessageTypeNak)
	if o := x.do(msg(t, dhcpv4.MessageTypeDiscover, macB), PortServer); o.YourIPAddr.Equal(ack.YourIPAddr) {
		t.Fatalf("leased address offered to another MAC")
	}
}

func TestFullOfferHold(t *testing.T) {
	x := newHarness(t, fullConfig())
	o1 := x.do(msg(t, dhcpv4.MessageTypeDiscover, macA), PortServer)
	o2 := x.do(msg(t, dhcpv4.MessageTypeDiscover, macB), PortServer)
	if o1.YourIPAddr.Equal(o2.YourIPAddr) {
		t.Fatalf("one address offered to two MACs at once")
	}
	// Same MAC again: same offer.
	if o := x.do(msg(t, dhcpv4.MessageTypeDiscover, macA), PortServer); !o.YourIPAddr.Equal(o1.YourIPAddr) {
		t.Errorf("repeated DISCOVER got %s, first %s", o.YourIPAddr, o1.YourIPAddr)
	}
	// After the hold, an unanswered offer can go to someone else.
	x.clock = x.clock.Add(offerHold + time.Second)
	ack := x.do(msg(t, dhcpv4.MessageTypeRequest, macC, requested(o1.YourIPAddr.String()), serverID("10.99.0.1")), PortServer)
	wantType(t, ack, dhcpv4.MessageTypeAck)
}

func TestFullRequestForOtherServer(t *testing.T) {
	x := newHarness(t, fullConfig())
	o := x.do(msg(t, dhcpv4.MessageTypeDiscover, macA), PortServer)
	// The client selected another server's offer: pumi stays silent (a NAK
	// would break the other server's lease) and frees its offer at once.
	resp := x.do(msg(t, dhcpv4.MessageTypeRequest, macA, requested("10.99.0.150"), serverID("10.99.0.2")), PortServer)
	wantSilent(t, resp)
	o2 := x.do(msg(t, dhcpv4.MessageTypeDiscover, macB), PortServer)
	if !o2.YourIPAddr.Equal(o.YourIPAddr) {
		t.Errorf("released offer %s not reused (got %s)", o.YourIPAddr, o2.YourIPAddr)
	}
}

func TestFullNAK(t *testing.T) {
	cases := []struct {
		name string
		mods []dhcpv4.Modifier
	}{
		{"foreign address, init-reboot", []dhcpv4.Modifier{requested("192.168.7.10")}},
		{"foreign address, selecting", []dhcpv4.Modifier{requested("192.168.7.10"), serverID("10.99.0.1")}},
		{"subnet address outside range", []dhcpv4.Modifier{requested("10.99.0.50")}},
		{"server's own address", []dhcpv4.Modifier{requested("10.99.0.1")}},
		{"renew of a foreign ciaddr", []dhcpv4.Modifier{dhcpv4.WithClientIP(ip("172.16.0.9"))}},
		{"no address at all", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			x := newHarness(t, fullConfig())
			resp := x.do(msg(t, dhcpv4.MessageTypeRequest, macA, c.mods...), PortServer)
			wantType(t, resp, dhcpv4.MessageTypeNak)
			if resp.YourIPAddr != nil && !resp.YourIPAddr.IsUnspecified() {
				t.Errorf("NAK with yiaddr %s", resp.YourIPAddr)
			}
			if !resp.ServerIdentifier().Equal(ip("10.99.0.1")) {
				t.Errorf("NAK without server id")
			}
			if d := destination(resp, resp, nil, PortServer); !d.IP.Equal(net.IPv4bcast) || d.Port != PortClient {
				t.Errorf("NAK sent to %s, want broadcast", d)
			}
			if _, err := os.Stat(x.path); err == nil {
				t.Errorf("a NAK must not write leases")
			}
		})
	}
}

func TestFullInitRebootAndRenew(t *testing.T) {
	x := newHarness(t, fullConfig())
	ack := x.dora(macA)
	a := ack.YourIPAddr.String()
	// INIT-REBOOT: requested address, no server id.
	wantType(t, x.do(msg(t, dhcpv4.MessageTypeRequest, macA, requested(a)), PortServer), dhcpv4.MessageTypeAck)
	// RENEWING: ciaddr, no option 50; the lease is extended.
	x.clock = x.clock.Add(40 * time.Minute)
	req := msg(t, dhcpv4.MessageTypeRequest, macA, dhcpv4.WithClientIP(ack.YourIPAddr))
	renew := x.do(req, PortServer)
	wantType(t, renew, dhcpv4.MessageTypeAck)
	if !renew.YourIPAddr.Equal(ack.YourIPAddr) {
		t.Fatalf("renew gave %s", renew.YourIPAddr)
	}
	if d := destination(req, renew, &net.UDPAddr{IP: ack.YourIPAddr, Port: 68}, PortServer); !d.IP.Equal(ack.YourIPAddr) || d.Port != 68 {
		t.Errorf("renew ACK to %s, want unicast %s:68", d, a)
	}
	// 40+40 min after the first ACK the original 1 h lease would be over;
	// the renewal keeps it ours.
	x.clock = x.clock.Add(40 * time.Minute)
	wantType(t, x.do(msg(t, dhcpv4.MessageTypeRequest, macB, requested(a)), PortServer), dhcpv4.MessageTypeNak)
	ls, _ := FileLeaseStore(x.path).Load()
	if len(ls) != 1 || !ls[0].Expiry.Equal(t0.Add(40*time.Minute+time.Hour)) {
		t.Fatalf("persisted leases %+v, want one expiring at renewal+1h", ls)
	}
}

func TestFullExpiredLeaseIsReclaimed(t *testing.T) {
	cfg := fullConfig()
	cfg.RangeEnd = cfg.RangeStart // one address
	cfg.Reservations = nil
	x := newHarness(t, cfg)
	x.dora(macA)
	wantSilent(t, x.do(msg(t, dhcpv4.MessageTypeDiscover, macB), PortServer))
	x.clock = x.clock.Add(time.Hour + time.Second)
	ack := x.dora(macB)
	if !ack.YourIPAddr.Equal(ip("10.99.0.100")) {
		t.Fatalf("got %s", ack.YourIPAddr)
	}
	// The old owner's renewal is refused now.
	wantType(t, x.do(msg(t, dhcpv4.MessageTypeRequest, macA, dhcpv4.WithClientIP(ip("10.99.0.100"))), PortServer), dhcpv4.MessageTypeNak)
}

func TestFullDecline(t *testing.T) {
	x := newHarness(t, fullConfig())
	ack := x.dora(macA)
	resp := x.do(msg(t, dhcpv4.MessageTypeDecline, macA, requested(ack.YourIPAddr.String()), serverID("10.99.0.1")), PortServer)
	wantSilent(t, resp)
	for _, m := range []net.HardwareAddr{macA, macB} {
		o := x.do(msg(t, dhcpv4.MessageTypeDiscover, m), PortServer)
		if o.YourIPAddr.Equal(ack.YourIPAddr) {
			t.Fatalf("declined address %s offered again to %s", ack.YourIPAddr, m)
		}
	}
	if ls, _ := FileLeaseStore(x.path).Load(); len(ls) != 0 {
		t.Errorf("declined lease still stored: %+v", ls)
	}
	// After the hold it is usable again.
	x.clock = x.clock.Add(declineHold + time.Second)
	wantType(t, x.do(msg(t, dhcpv4.MessageTypeRequest, macC, requested(ack.YourIPAddr.String())), PortServer), dhcpv4.MessageTypeAck)
}

func TestFullDeclineOfSomeoneElsesAddressIsIgnored(t *testing.T) {
	x := newHarness(t, fullConfig())
	ack := x.dora(macA)
	x.do(msg(t, dhcpv4.MessageTypeDecline, macB, requested(ack.YourIPAddr.String())), PortServer)
	wantType(t, x.do(msg(t, dhcpv4.MessageTypeRequest, macA, dhcpv4.WithClientIP(ack.YourIPAddr)), PortServer), dhcpv4.MessageTypeAck)
}

func TestFullRelease(t *testing.T) {
	x := newHarness(t, fullConfig())
	ack := x.dora(macA)
	x.dora(macB)
	wantSilent(t, x.do(msg(t, dhcpv4.MessageTypeRelease, macA, dhcpv4.WithClientIP(ack.YourIPAddr), serverID("10.99.0.1")), PortServer))
	ls, _ := FileLeaseStore(x.path).Load()
	if len(ls) != 1 || ls[0].MAC.String() != macB.String() {
		t.Fatalf("after RELEASE stored %+v, want only macB", ls)
	}
	// The address is free for others...
	wantType(t, x.do(msg(t, dhcpv4.MessageTypeRequest, macC, requested(ack.YourIPAddr.String())), PortServer), dhcpv4.MessageTypeAck)
}

func TestFullReleaseKeepsAddressForSameMAC(t *testing.T) {
	x := newHarness(t, fullConfig())
	ack := x.dora(macA)
	x.do(msg(t, dhcpv4.MessageTypeRelease, macA, dhcpv4.WithClientIP(ack.YourIPAddr)), PortServer)
	if o := x.do(msg(t, dhcpv4.MessageTypeDiscover, macA), PortServer); !o.YourIPAddr.Equal(ack.YourIPAddr) {
		t.Fatalf("after RELEASE the same PC got %s, want its old %s", o.YourIPAddr, ack.YourIPAddr)
	}
}

func TestFullInform(t *testing.T) {
	x := newHarness(t, fullConfig())
	req := msg(t, dhcpv4.MessageTypeInform, macA, dhcpv4.WithClientIP(ip("10.99.0.40")))
	resp := x.do(req, PortServer)
	wantType(t, resp, dhcpv4.MessageTypeAck)
	if !resp.YourIPAddr.IsUnspecified() {
		t.Errorf("INFORM answered with yiaddr %s", resp.YourIPAddr)
	}
	if resp.Options.Has(dhcpv4.OptionIPAddressLeaseTime) {
		t.Errorf("INFORM answered with a lease time")
	}
	if net.IP(resp.SubnetMask()).String() != "255.255.255.0" || len(resp.Router()) != 1 {
		t.Errorf("INFORM answer lacks options: %s", resp.Summary())
	}
	if d := destination(req, resp, &net.UDPAddr{IP: ip("10.99.0.40"), Port: 68}, PortServer); !d.IP.Equal(ip("10.99.0.40")) {
		t.Errorf("INFORM answer to %s", d)
	}
	if _, err := os.Stat(x.path); err == nil {
		t.Errorf("INFORM wrote leases")
	}
}

func TestFullStoreFailureSendsNoACK(t *testing.T) {
	x := newHarnessAt(t, fullConfig(), filepath.Join(t.TempDir(), "missing-dir", "leases.json"))
	o := x.do(msg(t, dhcpv4.MessageTypeDiscover, macA), PortServer)
	wantType(t, o, dhcpv4.MessageTypeOffer)
	req, _ := dhcpv4.FromBytes(msg(t, dhcpv4.MessageTypeRequest, macA, requested(o.YourIPAddr.String()), serverID("10.99.0.1")).ToBytes())
	resp, err := x.h.reply(req, PortServer)
	if err == nil || resp != nil {
		t.Fatalf("store failure: reply %v, err %v; want no reply and an error", resp, err)
	}
	if !strings.Contains(err.Error(), "directory") {
		t.Errorf("error does not say what to fix: %v", err)
	}
	if e := x.h.pool.byMAC[macA.String()]; e != nil && e.bound {
		t.Errorf("lease committed in memory although not stored")
	}
}

func TestFullIgnoresPort4011AndNonEthernet(t *testing.T) {
	x := newHarness(t, fullConfig())
	wantSilent(t, x.do(msg(t, dhcpv4.MessageTypeRequest, macA, pxe(iana.EFI_X86_64)), PortPXE))
	m := msg(t, dhcpv4.MessageTypeDiscover, macA)
	m.HWType = iana.HWTypeIEEE802
	wantSilent(t, x.do(m, PortServer))
	m = msg(t, dhcpv4.MessageTypeDiscover, net.HardwareAddr{1, 2, 3, 4, 5, 6, 7, 8})
	wantSilent(t, x.do(m, PortServer))
	m = msg(t, dhcpv4.MessageTypeDiscover, macA)
	m.OpCode = dhcpv4.OpcodeBootReply
	wantSilent(t, x.do(m, PortServer))
}

func TestFullPoolExhausted(t *testing.T) {
	cfg := fullConfig()
	cfg.Reservations = nil
	x := newHarness(t, cfg)
	for i := 0; i < 4; i++ {
		x.dora(net.HardwareAddr{2, 0, 0, 0, 0, byte(i)})
	}
	wantSilent(t, x.do(msg(t, dhcpv4.MessageTypeDiscover, macA), PortServer))
}

func TestPXEFull(t *testing.T) {
	cases := []struct {
		name     string
		mac      net.HardwareAddr
		mods     []dhcpv4.Modifier
		file     string // "" = no PXE options
		vc       string
		opt175   bool
		siaddrOK bool
	}{
		{"uefi arch 7", macA, []dhcpv4.Modifier{pxe(iana.EFI_X86_64)}, "bootx64.efi", "PXEClient", false, true},
		{"uefi arch 9", macA, []dhcpv4.Modifier{pxe(iana.EFI_BC)}, "bootx64.efi", "PXEClient", false, true},
		{"uefi http arch 16", macA, []dhcpv4.Modifier{pxe(iana.EFI_X86_64_HTTP)}, "http://10.99.0.1:8080/ipxe/bootx64.efi", "HTTPClient", false, true},
		{"bios arch 0", macA, []dhcpv4.Modifier{pxe(iana.INTEL_X86PC)}, "undionly.kpxe", "PXEClient", false, true},
		{"ipxe by user class", macA, []dhcpv4.Modifier{pxe(iana.EFI_X86_64), ipxeUC}, "http://10.99.0.1:8080/boot/52-54-00-00-00-0a.ipxe", "PXEClient", true, true},
		{"ipxe by option 175", macA, []dhcpv4.Modifier{pxe(iana.EFI_X86_64), ipxe175}, "http://10.99.0.1:8080/boot/52-54-00-00-00-0a.ipxe", "PXEClient", true, true},
		{"arm64 unsupported", macA, []dhcpv4.Modifier{pxe(iana.EFI_ARM64)}, "", "", false, false},
		{"unknown MAC", macStray, []dhcpv4.Modifier{pxe(iana.EFI_X86_64)}, "", "", false, false},
		{"unknown MAC ipxe", macStray, []dhcpv4.Modifier{pxe(iana.EFI_X86_64), ipxeUC}, "", "", false, false},
	}
	for _, c := range cases {
		for _, mt := range []dhcpv4.MessageType{dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest} {
			t.Run(c.name+"/"+mt.String(), func(t *testing.T) {
				x := newHarness(t, fullConfig())
				var resp *dhcpv4.DHCPv4
				if mt == dhcpv4.MessageTypeDiscover {
					resp = x.do(msg(t, mt, c.mac, c.mods...), PortServer)
					wantType(t, resp, dhcpv4.MessageTypeOffer)
				} else {
					resp = x.dora(c.mac, c.mods...)
				}
				// Everyone gets an address in full mode.
				if resp.YourIPAddr.IsUnspecified() {
					t.Fatalf("no address")
				}
				if c.file == "" {
					wantNoPXE(t, resp)
				} else {
					checkPXE(t, resp, c.file, c.vc)
				}
				if got := resp.Options.Has(optIPXE); got != c.opt175 {
					t.Errorf("option 175 present=%v, want %v", got, c.opt175)
				}
				if c.opt175 && !bytes.Equal(resp.Options.Get(optIPXE), []byte{176, 1, 1}) {
					t.Errorf("option 175 = %x, want no-pxedhcp b00101", resp.Options.Get(optIPXE))
				}
				if seen := x.adm.SeenMACs(); len(seen) != 1 || seen[0] != c.mac.String() {
					t.Errorf("Seen %v, want %s reported", seen, c.mac)
				}
			})
		}
	}
}

func checkPXE(t *testing.T, resp *dhcpv4.DHCPv4, file, vc string) {
	t.Helper()
	if resp.BootFileName != file || resp.BootFileNameOption() != file {
		t.Errorf("boot file %q / option 67 %q, want %q", resp.BootFileName, resp.BootFileNameOption(), file)
	}
	if !resp.ServerIPAddr.Equal(ip("10.99.0.1")) || resp.ServerHostName != "10.99.0.1" || !resp.ServerIdentifier().Equal(ip("10.99.0.1")) {
		t.Errorf("siaddr %s sname %q opt54 %s", resp.ServerIPAddr, resp.ServerHostName, resp.ServerIdentifier())
	}
	if resp.ClassIdentifier() != vc {
		t.Errorf("option 60 %q, want %q", resp.ClassIdentifier(), vc)
	}
	if got := resp.Options.Get(dhcpv4.OptionVendorSpecificInformation); !bytes.Equal(got, []byte{6, 1, 8}) {
		t.Errorf("option 43 %x, want 060108", got)
	}
	if got := resp.Options.Get(dhcpv4.OptionClientMachineIdentifier); !bytes.Equal(got, guid) {
		t.Errorf("option 97 %x not echoed", got)
	}
}

func proxyConfig() Config {
	return Config{Interface: "br0", Mode: ModeProxy, ServerIP: srvIP, HTTPBase: "http://10.99.0.1:8080"}
}

func TestProxy(t *testing.T) {
	cases := []struct {
		name string
		mt   dhcpv4.MessageType
		port int
		mac  net.HardwareAddr
		mods []dhcpv4.Modifier
		want dhcpv4.MessageType // 0: silent
		file string
	}{
		{"discover 67", dhcpv4.MessageTypeDiscover, PortServer, macA, []dhcpv4.Modifier{pxe(iana.EFI_X86_64)}, dhcpv4.MessageTypeOffer, "bootx64.efi"},
		{"request 4011", dhcpv4.MessageTypeRequest, PortPXE, macA, []dhcpv4.Modifier{pxe(iana.EFI_X86_64), dhcpv4.WithClientIP(ip("10.99.0.150"))}, dhcpv4.MessageTypeAck, "bootx64.efi"},
		{"request 67 to us", dhcpv4.MessageTypeRequest, PortServer, macA, []dhcpv4.Modifier{pxe(iana.EFI_BC), serverID("10.99.0.1")}, dhcpv4.MessageTypeAck, "bootx64.efi"},
		{"request 67 for an address, shared server id", dhcpv4.MessageTypeRequest, PortServer, macA, []dhcpv4.Modifier{pxe(iana.EFI_X86_64), serverID("10.99.0.1"), requested("10.99.0.150")}, 0, ""},
		{"request 67 to school server", dhcpv4.MessageTypeRequest, PortServer, macA, []dhcpv4.Modifier{pxe(iana.EFI_X86_64), serverID("10.99.0.2"), requested("10.99.0.150")}, 0, ""},
		{"bios", dhcpv4.MessageTypeDiscover, PortServer, macA, []dhcpv4.Modifier{pxe(iana.INTEL_X86PC)}, dhcpv4.MessageTypeOffer, "undionly.kpxe"},
		{"uefi http", dhcpv4.MessageTypeDiscover, PortServer, macA, []dhcpv4.Modifier{pxe(iana.EFI_X86_64_HTTP)}, dhcpv4.MessageTypeOffer, "http://10.99.0.1:8080/ipxe/bootx64.efi"},
		{"ipxe", dhcpv4.MessageTypeDiscover, PortServer, macA, []dhcpv4.Modifier{pxe(iana.EFI_X86_64), ipxeUC}, dhcpv4.MessageTypeOffer, "http://10.99.0.1:8080/boot/52-54-00-00-00-0a.ipxe"},
		{"ipxe on 4011", dhcpv4.MessageTypeRequest, PortPXE, macA, []dhcpv4.Modifier{pxe(iana.EFI_X86_64), ipxe175}, dhcpv4.MessageTypeAck, "http://10.99.0.1:8080/boot/52-54-00-00-00-0a.ipxe"},
		{"not pxe", dhcpv4.MessageTypeDiscover, PortServer, macA, nil, 0, ""},
		{"not pxe vendor class", dhcpv4.MessageTypeDiscover, PortServer, macA, []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("MSFT 5.0"))}, 0, ""},
		{"unknown MAC", dhcpv4.MessageTypeDiscover, PortServer, macStray, []dhcpv4.Modifier{pxe(iana.EFI_X86_64)}, 0, ""},
		{"unsupported arch", dhcpv4.MessageTypeDiscover, PortServer, macA, []dhcpv4.Modifier{pxe(iana.EFI_ARM64)}, 0, ""},
		{"decline", dhcpv4.MessageTypeDecline, PortServer, macA, []dhcpv4.Modifier{pxe(iana.EFI_X86_64)}, 0, ""},
		{"release", dhcpv4.MessageTypeRelease, PortServer, macA, []dhcpv4.Modifier{pxe(iana.EFI_X86_64)}, 0, ""},
		{"discover on 4011", dhcpv4.MessageTypeDiscover, PortPXE, macA, []dhcpv4.Modifier{pxe(iana.EFI_X86_64)}, 0, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			x := newHarness(t, proxyConfig())
			resp := x.do(msg(t, c.mt, c.mac, c.mods...), c.port)
			if c.want == 0 {
				wantSilent(t, resp)
				return
			}
			wantType(t, resp, c.want)
			if !resp.YourIPAddr.IsUnspecified() {
				t.Errorf("proxy gave an address: %s", resp.YourIPAddr)
			}
			if resp.Options.Has(dhcpv4.OptionIPAddressLeaseTime) || resp.Options.Has(dhcpv4.OptionSubnetMask) {
				t.Errorf("proxy sent lease options: %s", resp.Summary())
			}
			vc := "PXEClient"
			if strings.HasSuffix(c.file, ".efi") && strings.HasPrefix(c.file, "http") {
				vc = "HTTPClient"
			}
			checkPXE(t, resp, c.file, vc)
			if resp.Options.Has(optIPXE) {
				t.Errorf("no-pxedhcp must not be sent in proxy mode (iPXE needs the proxy answer)")
			}
		})
	}
}

func TestProxyGUIDEcho(t *testing.T) {
	x := newHarness(t, proxyConfig())
	bad := func(d *dhcpv4.DHCPv4) {
		d.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, []byte{1, 2, 3}))
	}
	resp := x.do(msg(t, dhcpv4.MessageTypeDiscover, macA, pxe(iana.EFI_X86_64), bad), PortServer)
	wantType(t, resp, dhcpv4.MessageTypeOffer)
	if resp.Options.Has(dhcpv4.OptionClientMachineIdentifier) {
		t.Errorf("malformed option 97 echoed")
	}
	noGUID := func(d *dhcpv4.DHCPv4) { d.Options.Del(dhcpv4.OptionClientMachineIdentifier) }
	resp = x.do(msg(t, dhcpv4.MessageTypeDiscover, macA, pxe(iana.EFI_X86_64), noGUID), PortServer)
	wantType(t, resp, dhcpv4.MessageTypeOffer) // ROMs in the wild omit it
}

func TestArchFromVendorClassWhenOption93Missing(t *testing.T) {
	x := newHarness(t, proxyConfig())
	m := msg(t, dhcpv4.MessageTypeDiscover, macA, dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003000")))
	resp := x.do(m, PortServer)
	wantType(t, resp, dhcpv4.MessageTypeOffer)
	if resp.BootFileName != FileUEFI {
		t.Errorf("file %q", resp.BootFileName)
	}
}

func TestDestination(t *testing.T) {
	mk := func(mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 { return msg(t, dhcpv4.MessageTypeRequest, macA, mods...) }
	ack := msg(t, dhcpv4.MessageTypeAck, macA)
	nak := msg(t, dhcpv4.MessageTypeNak, macA)
	cases := []struct {
		name      string
		req, resp *dhcpv4.DHCPv4
		peer      *net.UDPAddr
		port      int
		want      string
	}{
		{"relay", mk(dhcpv4.WithGatewayIP(ip("10.1.2.1")), dhcpv4.WithClientIP(ip("10.1.2.50"))), ack, &net.UDPAddr{IP: ip("10.1.2.1"), Port: 67}, 67, "10.1.2.1:67"},
		{"relay nak", mk(dhcpv4.WithGatewayIP(ip("10.1.2.1"))), nak, nil, 67, "10.1.2.1:67"},
		{"nak with ciaddr", mk(dhcpv4.WithClientIP(ip("10.99.0.5"))), nak, nil, 67, "255.255.255.255:68"},
		{"ciaddr", mk(dhcpv4.WithClientIP(ip("10.99.0.5"))), ack, &net.UDPAddr{IP: ip("10.99.0.5"), Port: 68}, 67, "10.99.0.5:68"},
		{"no address", mk(), ack, &net.UDPAddr{IP: net.IPv4zero, Port: 68}, 67, "255.255.255.255:68"},
		{"pxe 4011 back to sender", mk(dhcpv4.WithClientIP(ip("10.99.0.5"))), ack, &net.UDPAddr{IP: ip("10.99.0.5"), Port: 4011}, 4011, "10.99.0.5:4011"},
		{"pxe 4011 no peer ip", mk(), ack, &net.UDPAddr{IP: net.IPv4zero, Port: 68}, 4011, "255.255.255.255:68"},
	}
	for _, c := range cases {
		if got := destination(c.req, c.resp, c.peer, c.port).String(); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}

func TestRelayedNAKHasBroadcastFlag(t *testing.T) {
	x := newHarness(t, fullConfig())
	resp := x.do(msg(t, dhcpv4.MessageTypeRequest, macA, requested("192.168.1.1"), dhcpv4.WithGatewayIP(ip("10.99.0.254"))), PortServer)
	wantType(t, resp, dhcpv4.MessageTypeNak)
	if !resp.IsBroadcast() {
		t.Errorf("relayed NAK without broadcast flag")
	}
	if !resp.GatewayIPAddr.Equal(ip("10.99.0.254")) {
		t.Errorf("giaddr not kept: %s", resp.GatewayIPAddr)
	}
}

func TestReservedAddressNeverGivenToOthers(t *testing.T) {
	// The reserved PC has not shown up yet: its address must stay free.
	x := newHarness(t, fullConfig())
	var got []string
	for _, m := range []net.HardwareAddr{macA, macB, macC, macStray} {
		if o := x.do(msg(t, dhcpv4.MessageTypeDiscover, m), PortServer); o != nil {
			got = append(got, o.YourIPAddr.String())
		}
	}
	if strings.Join(got, " ") != "10.99.0.100 10.99.0.102 10.99.0.103 10.99.0.100" {
		t.Fatalf("offers %v: want the 3 unreserved range addresses, then the oldest offer's again", got)
	}
	for _, req := range []*dhcpv4.DHCPv4{
		msg(t, dhcpv4.MessageTypeRequest, macStray, requested("10.99.0.101")),
		msg(t, dhcpv4.MessageTypeRequest, macStray, requested("10.99.0.101"), serverID("10.99.0.1")),
		msg(t, dhcpv4.MessageTypeRequest, macStray, dhcpv4.WithClientIP(ip("10.99.0.101"))),
	} {
		wantType(t, x.do(req, PortServer), dhcpv4.MessageTypeNak)
	}
}
