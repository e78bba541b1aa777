package netboot

import (
	"bytes"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

func randomMAC(rng *rand.Rand) net.HardwareAddr {
	m := make(net.HardwareAddr, 6)
	for i := range m {
		m[i] = byte(rng.IntN(256))
	}
	m[0] = m[0]&^1 | 2 // unicast, locally administered
	return m
}

// TestOffersCannotExhaustTheRange: DISCOVERs from 1,000 made-up MACs hold
// every address of the range with offers; a new client still gets an
// address at once (the oldest offer's), and a client whose offer was taken
// over still gets its REQUEST granted.
func TestOffersCannotExhaustTheRange(t *testing.T) {
	x := newHarness(t, fullConfig())
	rng := rand.New(rand.NewPCG(3, 4))
	first := randomMAC(rng)
	firstOffer := x.do(msg(t, dhcpv4.MessageTypeDiscover, first), PortServer)
	wantType(t, firstOffer, dhcpv4.MessageTypeOffer)
	for range 1000 {
		wantType(t, x.do(msg(t, dhcpv4.MessageTypeDiscover, randomMAC(rng)), PortServer), dhcpv4.MessageTypeOffer)
		x.clock = x.clock.Add(time.Millisecond)
	}
	ack := x.dora(macA) // a real client right after the flood
	if ip := ack.YourIPAddr.String(); ip == "10.99.0.101" {
		t.Fatalf("got the reserved address %s", ip)
	}
	// The first junk client's offer was taken over long ago; its REQUEST
	// (a binding beats an offer) is still granted while an address is
	// merely offered to someone else.
	req := msg(t, dhcpv4.MessageTypeRequest, first, requested(firstOffer.YourIPAddr.String()), serverID(srvIP.String()))
	resp := x.do(req, PortServer)
	if resp == nil || (resp.MessageType() != dhcpv4.MessageTypeAck && resp.MessageType() != dhcpv4.MessageTypeNak) {
		t.Fatalf("REQUEST after the takeover: %v, want ACK (or NAK if the address is bound)", resp)
	}
	if resp.MessageType() == dhcpv4.MessageTypeAck && resp.YourIPAddr.Equal(ack.YourIPAddr) {
		t.Fatalf("%s ACKed to two clients", ack.YourIPAddr)
	}
	// Bound leases are never taken over: with every unreserved address
	// bound, a new MAC gets nothing.
	bound := 1 // macA
	if resp.MessageType() == dhcpv4.MessageTypeAck {
		bound++
	}
	for _, m := range []net.HardwareAddr{macB, macC}[:3-bound] {
		x.dora(m)
	}
	if o := x.do(msg(t, dhcpv4.MessageTypeDiscover, macStray), PortServer); o != nil {
		leases := x.h.pool.byMAC
		t.Fatalf("offered %s with the range bound (%d entries)", o.YourIPAddr, len(leases))
	}
}

// TestSameMACGetsTheSameOffer: a client that DISCOVERs again, before or
// after its short offer hold ran out, is offered the same address as long
// as nobody else took it.
func TestSameMACGetsTheSameOffer(t *testing.T) {
	x := newHarness(t, fullConfig())
	o1 := x.do(msg(t, dhcpv4.MessageTypeDiscover, macA), PortServer)
	o2 := x.do(msg(t, dhcpv4.MessageTypeDiscover, macA), PortServer)
	x.clock = x.clock.Add(offerHold * 3)
	o3 := x.do(msg(t, dhcpv4.MessageTypeDiscover, macA), PortServer)
	for _, o := range []*dhcpv4.DHCPv4{o1, o2, o3} {
		wantType(t, o, dhcpv4.MessageTypeOffer)
	}
	if !o1.YourIPAddr.Equal(o2.YourIPAddr) || !o1.YourIPAddr.Equal(o3.YourIPAddr) {
		t.Errorf("offers %s, %s, %s: want the same address each time", o1.YourIPAddr, o2.YourIPAddr, o3.YourIPAddr)
	}
	if offerHold > 15*time.Second {
		t.Errorf("offerHold %v: an offer should hold its address only briefly", offerHold)
	}
}

// TestJunkLoggingIsRateLimited: 5,000 DISCOVERs from unknown PXE MACs and
// 5,000 REQUESTs that are NAKed log a bounded number of lines, and the
// lines let through after a pause carry the counts of what was left out.
func TestJunkLoggingIsRateLimited(t *testing.T) {
	var buf bytes.Buffer
	cfg := fullConfig()
	x := newHarness(t, cfg)
	h, err := newHandler(cfg, x.adm, x.store, slog.New(slog.NewTextHandler(&buf, nil)), func() time.Time { return x.clock })
	if err != nil {
		t.Fatal(err)
	}
	x.h = h
	rng := rand.New(rand.NewPCG(5, 6))
	for range 5000 {
		m := randomMAC(rng)
		x.do(msg(t, dhcpv4.MessageTypeDiscover, m, pxe(7)), PortServer)
		x.do(msg(t, dhcpv4.MessageTypeRequest, m, requested("192.168.0.1")), PortServer)
	}
	lines := strings.Count(buf.String(), "\n")
	if lines > 4*limitedLogBurst {
		t.Fatalf("%d log lines for 10,000 junk packets, want at most %d", lines, 4*limitedLogBurst)
	}
	x.clock = x.clock.Add(limitedLogEvery)
	buf.Reset()
	x.do(msg(t, dhcpv4.MessageTypeRequest, randomMAC(rng), requested("192.168.0.1")), PortServer)
	if !strings.Contains(buf.String(), "msg=NAK") || !strings.Contains(buf.String(), "suppressed=4980") || !strings.Contains(buf.String(), "total=5001") {
		t.Errorf("line after the pause %q: want the NAK with suppressed=4980 total=5001", buf.String())
	}
}
