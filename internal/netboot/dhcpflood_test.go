package netboot

import (
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/pumi-lab/pumi/assets"
	"github.com/pumi-lab/pumi/internal/testnet"
)

// junkPacket is one of the kinds of garbage an outsider sends to port 67:
// random bytes, a truncated DHCP header, or a well-formed BOOTP header with
// random options.
func junkPacket(rng *rand.Rand, valid []byte) []byte {
	switch rng.IntN(3) {
	case 0:
		b := make([]byte, 1+rng.IntN(600))
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		return b
	case 1:
		return valid[:rng.IntN(len(valid))]
	default:
		b := append([]byte(nil), valid[:240]...)
		for range 1 + rng.IntN(40) {
			b = append(b, byte(rng.IntN(256)))
		}
		return b
	}
}

// TestIntegrationJunkFlood: 100,000 junk packets and 1,000 DISCOVERs from
// random MACs (every address of the 21-address range offered many times
// over), then a new PC's real DHCP client (busybox udhcpc) asks: it has a
// lease within 5 s. The log stays short.
func TestIntegrationJunkFlood(t *testing.T) {
	testnet.Require(t, "busybox")
	ns := testnet.New(t)
	ns.Bridge("br0", "10.99.73.1/24")
	cfg := fullNetConfig(73)
	sink := &logSink{}
	log := slog.New(slog.NewJSONHandler(sink, nil))
	srv, err := New(cfg, NewStaticAdmission(nil, log), FileLeaseStore(filepath.Join(t.TempDir(), "leases.json")), assets.IPXE(), log)
	if err != nil {
		t.Fatal(err)
	}
	startServer(t, ns, srv)

	attacker := ns.Host("br0", "52:54:00:73:00:02", "")
	flood := newPXEClient(t, attacker, net.HardwareAddr{0x52, 0x54, 0, 0x73, 0, 2})
	rng := rand.New(rand.NewPCG(7, 8))
	valid, err := dhcpv4.NewDiscovery(net.HardwareAddr{2, 0, 0, 0, 0, 1})
	if err != nil {
		t.Fatal(err)
	}
	validBytes := valid.ToBytes()
	bcast := &net.UDPAddr{IP: net.IPv4bcast, Port: PortServer}
	const junk, discovers = 100_000, 1000
	start := time.Now()
	for i := range junk + discovers {
		if i%((junk+discovers)/discovers) == 0 {
			m := make(net.HardwareAddr, 6)
			for j := range m {
				m[j] = byte(rng.IntN(256))
			}
			m[0] = m[0]&^1 | 2
			mods := []dhcpv4.Modifier{dhcpv4.WithHwAddr(m), dhcpv4.WithBroadcast(true)}
			if i%2 == 0 { // half of them look like PXE firmware
				mods = append(mods, dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003000")),
					dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64)))
			}
			d, err := dhcpv4.NewDiscovery(m, mods...)
			if err != nil {
				t.Fatal(err)
			}
			flood.send(d, bcast)
		} else {
			flood.conn.WriteToUDP(junkPacket(rng, validBytes), bcast)
		}
		if i%2000 == 1999 {
			time.Sleep(10 * time.Millisecond) // bounded rate: ~1 s per 100k on an idle machine
		}
	}
	t.Logf("FIGURE dhcp flood: %d junk packets and %d random-MAC DISCOVERs sent in %v", junk, discovers, time.Since(start).Round(time.Millisecond))

	script := writeExec(t, "udhcpc.sh", udhcpcScript)
	pc := ns.Host("br0", "52:54:00:73:00:09", "")
	asked := time.Now()
	got := udhcpc(t, pc, script)
	took := time.Since(asked)
	t.Logf("FIGURE dhcp flood: a new MAC got %s %v after asking", got[0], took.Round(time.Millisecond))
	if ip := netip.MustParseAddr(got[0]); ip.Less(cfg.RangeStart) || cfg.RangeEnd.Less(ip) {
		t.Errorf("lease %s outside the range", ip)
	}
	if took > 5*time.Second {
		t.Errorf("the new MAC waited %v for its lease, want under 5 s", took)
	}
	lines := strings.Count(sink.String(), "\n")
	t.Logf("FIGURE dhcp flood: %d log lines for %d packets", lines, junk+discovers)
	if testing.Verbose() {
		count := map[string]int{}
		for _, l := range strings.Split(sink.String(), "\n") {
			if i := strings.Index(l, `"msg":"`); i >= 0 {
				m, _, _ := strings.Cut(l[i+7:], `"`)
				count[m]++
			}
		}
		t.Logf("log lines by message: %v", count)
	}
	if lines > 300 {
		t.Errorf("%d log lines for %d junk packets: not rate-limited", lines, junk+discovers)
	}
}
