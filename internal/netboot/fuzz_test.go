package netboot

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// FuzzReply feeds raw packets through the same path as the socket loop
// (dhcpv4.FromBytes, then reply) in both modes and on both ports. Whatever
// the bytes, reply must not panic, and a reply must serialise and parse.
func FuzzReply(f *testing.F) {
	// Seeds are in testdata/fuzz/FuzzReply (DISCOVER/REQUEST/DECLINE/RELEASE/
	// INFORM, PXE and iPXE variants, relayed, truncated).
	dir := f.TempDir()
	full := fullConfig()
	proxy := proxyConfig()
	clock := t0
	now := func() time.Time { return clock }
	adm := NewStaticAdmission([]net.HardwareAddr{macA, macB, macRes}, nil)
	hFull, err := newHandler(full, adm, FileLeaseStore(filepath.Join(dir, "leases.json")), discardLog(), now)
	if err != nil {
		f.Fatal(err)
	}
	hProxy, err := newHandler(proxy, adm, nil, discardLog(), now)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := dhcpv4.FromBytes(b)
		if err != nil {
			return
		}
		clock = clock.Add(7 * time.Second) // let offers and leases expire now and then
		for _, h := range []*handler{hFull, hProxy} {
			for _, port := range []int{PortServer, PortPXE} {
				resp, err := h.reply(req, port)
				if err != nil || resp == nil {
					continue
				}
				if _, err := dhcpv4.FromBytes(resp.ToBytes()); err != nil {
					t.Fatalf("reply does not parse: %v\n%s", err, resp.Summary())
				}
				if h.mode == ModeProxy && !resp.YourIPAddr.IsUnspecified() {
					t.Fatalf("proxy reply with an address: %s", resp.Summary())
				}
				if h.mode == ModeFull && resp.MessageType() != dhcpv4.MessageTypeNak {
					y := resp.YourIPAddr
					if !y.IsUnspecified() {
						a, _ := netipFrom(y)
						if _, reserved := h.pool.reservedByIP[a]; reserved && h.pool.reservedByIP[a] != req.ClientHWAddr.String() {
							t.Fatalf("reserved %s given to %s", y, req.ClientHWAddr)
						}
						if !h.pool.subnet.Contains(a) {
							t.Fatalf("address %s outside the subnet", y)
						}
					}
				}
				_ = destination(req, resp, &net.UDPAddr{IP: req.ClientIPAddr, Port: 68}, port)
			}
		}
	})
}

// FuzzLeaseFile: the lease file parser refuses garbage with an error and
// never panics, and whatever it accepts the writer's encoder writes back so
// that it parses to the same leases.
func FuzzLeaseFile(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		ls, err := parseLeaseFile(b)
		if err != nil {
			return
		}
		byMAC := map[string]Lease{}
		for _, l := range ls {
			if len(l.MAC) != 6 || !l.IP.Is4() {
				t.Fatalf("accepted malformed lease %+v", l)
			}
			byMAC[l.MAC.String()] = l
		}
		enc := encodeLeaseFile(byMAC)
		back, err := parseLeaseFile(enc)
		if err != nil {
			t.Fatalf("re-encoded file does not parse: %v\n%s", err, enc)
		}
		if len(back) != len(ls) {
			t.Fatalf("re-encoded %d leases, read %d", len(ls), len(back))
		}
		for _, l := range back {
			w := byMAC[l.MAC.String()]
			if l.IP != w.IP || !l.Expiry.Equal(w.Expiry) || l.Hostname != w.Hostname {
				t.Fatalf("round trip changed %+v into %+v", w, l)
			}
		}
	})
}
