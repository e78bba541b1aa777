package netboot

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// TestConcurrentClientsGetDistinctDurableLeases: 300 clients doing
// DISCOVER/REQUEST at the same time, each on its own goroutine as on the
// socket, all get an ACK, no address twice, and each ACKed lease is already
// in the lease file on disk when its ACK is returned; a restart (a fresh
// store and handler on the same file) knows every one of them.
func TestConcurrentClientsGetDistinctDurableLeases(t *testing.T) {
	const n = 300
	cfg := fullConfig()
	cfg.RangeStart, cfg.RangeEnd = netip.MustParseAddr("10.99.0.2"), netip.MustParseAddr("10.99.1.250")
	cfg.Netmask = netip.MustParsePrefix("10.99.0.0/23")
	path := filepath.Join(t.TempDir(), "leases.json")
	store := FileLeaseStore(path)
	h, err := newHandler(cfg, NewStaticAdmission(nil, nil), store, discardLog(), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	do := func(m *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, error) {
		parsed, err := dhcpv4.FromBytes(m.ToBytes())
		if err != nil {
			return nil, err
		}
		return h.reply(parsed, PortServer)
	}
	acked := make([]netip.Addr, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			errs[i] = func() error {
				mac := net.HardwareAddr{2, 0, 0, 1, byte(i >> 8), byte(i)}
				d, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover))
				o, err := do(d)
				if err != nil || o == nil || o.MessageType() != dhcpv4.MessageTypeOffer {
					return fmt.Errorf("DISCOVER: %v, %v", o, err)
				}
				r, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
					dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(o.YourIPAddr)), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(srvIP.AsSlice()))))
				a, err := do(r)
				if err != nil || a == nil || a.MessageType() != dhcpv4.MessageTypeAck {
					return fmt.Errorf("REQUEST: %v, %v", a, err)
				}
				ip, _ := netipFrom(a.YourIPAddr)
				// Durable before the ACK: the file on disk has it now.
				b, err := os.ReadFile(path)
				if err != nil {
					return err
				}
				ls, err := parseLeaseFile(b)
				if err != nil {
					return err
				}
				for _, l := range ls {
					if l.MAC.String() == mac.String() {
						if l.IP != ip {
							return fmt.Errorf("ACKed %s, file says %s", ip, l.IP)
						}
						acked[i] = ip
						return nil
					}
				}
				return fmt.Errorf("ACK for %s returned before its lease was in the file", ip)
			}()
		})
	}
	close(start)
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		if j, dup := seen[acked[i]]; dup {
			t.Fatalf("clients %d and %d both got %s", j, i, acked[i])
		}
		seen[acked[i]] = i
	}
	store.mu.Lock()
	writes := store.writes
	store.mu.Unlock()
	t.Logf("%d leases in %d file writes", n, writes)
	if writes >= n {
		t.Errorf("%d leases took %d file writes: concurrent writes were not coalesced", n, writes)
	}

	// Restart: every ACKed lease is known, to the same MAC.
	ls, err := FileLeaseStore(path).Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != n {
		t.Fatalf("%d leases after restart, want %d", len(ls), n)
	}
	h2, err := newHandler(cfg, NewStaticAdmission(nil, nil), FileLeaseStore(path), discardLog(), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	for i, ip := range acked {
		mac := net.HardwareAddr{2, 0, 0, 1, byte(i >> 8), byte(i)}
		if e := h2.pool.byIP[ip]; e == nil || e.mac != mac.String() || !e.bound {
			t.Fatalf("after restart %s is %+v, want bound to %s", ip, e, mac)
		}
	}
}

// TestLeaseFileFailedBatchIsUndone: a write that fails reports the error to
// its caller and leaves nothing of its change behind, in memory or on disk;
// the next write holds only the changes that succeeded.
func TestLeaseFileFailedBatchIsUndone(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "leases.json")
	s := FileLeaseStore(path)
	exp := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := s.Put(Lease{MAC: macA, IP: netip.MustParseAddr("10.0.0.5"), Expiry: exp}); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil { // the disk went away
		t.Fatal(err)
	}
	if err := s.Put(Lease{MAC: macB, IP: netip.MustParseAddr("10.0.0.6"), Expiry: exp}); err == nil {
		t.Fatal("Put with its directory gone succeeded")
	}
	if err := s.Delete(macA); err == nil {
		t.Fatal("Delete with its directory gone succeeded")
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(Lease{MAC: macC, IP: netip.MustParseAddr("10.0.0.7"), Expiry: exp}); err != nil {
		t.Fatal(err)
	}
	ls, err := FileLeaseStore(path).Load()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range ls {
		got = append(got, l.MAC.String()+"="+l.IP.String())
	}
	if want := fmt.Sprint([]string{macA.String() + "=10.0.0.5", macC.String() + "=10.0.0.7"}); fmt.Sprint(got) != want {
		t.Fatalf("file after a failed batch: %v, want %v", got, want)
	}
}

// TestLeaseFileEncoding: the hand-written encoder produces JSON that the
// parser (and encoding/json) reads back to the same leases, hostnames that
// need escaping included.
func TestLeaseFileEncoding(t *testing.T) {
	exp := time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.FixedZone("x", 3600))
	in := map[string]Lease{
		macA.String(): {MAC: macA, IP: netip.MustParseAddr("10.0.0.5"), Expiry: exp, Hostname: "seat-1.lab"},
		macB.String(): {MAC: macB, IP: netip.MustParseAddr("10.0.0.6"), Expiry: exp, Hostname: "we\"ird\\<&>\n\u00e9"},
		macC.String(): {MAC: macC, IP: netip.MustParseAddr("10.0.0.7")},
	}
	ls, err := parseLeaseFile(encodeLeaseFile(in))
	if err != nil {
		t.Fatalf("%v:\n%s", err, encodeLeaseFile(in))
	}
	if len(ls) != len(in) {
		t.Fatalf("%d leases back, want %d", len(ls), len(in))
	}
	for _, l := range ls {
		w := in[l.MAC.String()]
		if l.IP != w.IP || !l.Expiry.Equal(w.Expiry) || l.Hostname != w.Hostname {
			t.Errorf("round trip: %+v, want %+v", l, w)
		}
	}
}
