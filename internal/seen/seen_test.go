package seen

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/store"
)

func openStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "state"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func mac(i int) net.HardwareAddr {
	return net.HardwareAddr{0x52, 0x54, 0, byte(i >> 16), byte(i >> 8), byte(i)}
}

// TestFloodIsBounded: 10,000 random MACs (one forged DHCP packet each) keep
// at most MaxEntries records, cost one commit per flush, and a real seat
// seen after the flood is listed.
func TestFloodIsBounded(t *testing.T) {
	st := openStore(t)
	r := New(st, slog.New(slog.DiscardHandler))
	now := time.Now().UTC()
	for i := range 10000 {
		r.Record(mac(i), false, "uefi", 7, netip.Addr{}, now)
		if i%1000 == 999 {
			if err := r.Flush(t.Context(), now); err != nil {
				t.Fatal(err)
			}
		}
	}
	seat := mac(0xabcdef)
	r.Record(seat, true, "uefi", 7, netip.MustParseAddr("10.0.0.5"), now.Add(time.Second))
	if err := r.Flush(t.Context(), now.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	list, err := r.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) > MaxEntries {
		t.Fatalf("%d records kept, want at most %d", len(list), MaxEntries)
	}
	if list[0].MAC != seat.String() || !list[0].Known {
		t.Fatalf("newest record %+v, want the real seat", list[0])
	}
	st2, _ := os.Stat(st.Path())
	t.Logf("FIGURE 10,000 random MACs: %d records kept, state file %d bytes", len(list), st2.Size())
}

func TestCountsAndAgeOut(t *testing.T) {
	st := openStore(t)
	r := New(st, slog.New(slog.DiscardHandler))
	old := time.Now().UTC().Add(-MaxAge - time.Hour)
	r.Record(mac(1), false, "bios", 0, netip.Addr{}, old)
	r.Flush(t.Context(), old)
	now := time.Now().UTC()
	for range 3 {
		r.Record(mac(2), true, "uefi", 7, netip.Addr{}, now)
	}
	r.Flush(t.Context(), now)
	r.Record(mac(2), true, "uefi", 7, netip.Addr{}, now)
	r.Flush(t.Context(), now)
	list, err := r.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].MAC != mac(2).String() || list[0].Count != 4 {
		t.Fatalf("list %+v, want only mac 2 seen 4 times (mac 1 aged out)", list)
	}
}
