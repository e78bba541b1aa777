// Package seen keeps the list of MACs that network-booted, known or not, so
// the admin can add unknown PCs to the inventory with one click. Anyone on the
// lab VLAN can make pumi see a MAC (one forged DHCP packet each), so the list
// is bounded in entries and age, and it is written in batches off the DHCP
// handler's path: a packet costs a map update, never an fsync.
package seen

import (
	"context"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/pumi-lab/pumi/internal/store"
)

var bucket = store.NewBucket[MAC]("seen")

// Bounds: a lab has tens to hundreds of PCs; random-MAC floods are cut here.
const (
	MaxEntries    = 2000
	MaxAge        = 30 * 24 * time.Hour
	FlushInterval = 2 * time.Second
)

// MAC is one network-booting MAC as pumi saw it.
type MAC struct {
	MAC      string    `json:"mac"`
	Known    bool      `json:"known"`
	Firmware string    `json:"firmware"`
	Arch     int       `json:"arch"`
	IP       string    `json:"ip,omitempty"` // the address the client claimed: shown, never trusted
	First    time.Time `json:"first"`
	Last     time.Time `json:"last"`
	Count    int       `json:"count"`
}

// Recorder batches sightings into the state file.
type Recorder struct {
	st  *store.Store
	log *slog.Logger

	mu      sync.Mutex
	pending map[string]MAC // since the last flush
	dropped int            // sightings not kept because pending was full
}

// New returns a recorder; Run flushes it.
func New(st *store.Store, log *slog.Logger) *Recorder {
	return &Recorder{st: st, log: log, pending: map[string]MAC{}}
}

// Record notes a sighting; it never blocks on the disk.
func (r *Recorder) Record(mac net.HardwareAddr, known bool, firmware string, arch int, ip netip.Addr, now time.Time) {
	k := mac.String()
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.pending[k]
	if !ok {
		if len(r.pending) >= MaxEntries {
			r.dropped++
			return
		}
		s = MAC{MAC: k, First: now}
	}
	s.Known, s.Firmware, s.Arch, s.Last = known, firmware, arch, now
	if ip.IsValid() {
		s.IP = ip.String()
	}
	s.Count++
	r.pending[k] = s
}

// Run flushes every FlushInterval until ctx ends, then once more.
func (r *Recorder) Run(ctx context.Context) {
	t := time.NewTicker(FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			r.Flush(context.WithoutCancel(ctx), time.Now())
			return
		case now := <-t.C:
			r.Flush(ctx, now)
		}
	}
}

// Flush writes the pending sightings in one transaction, merged with what is
// stored, and prunes the list to MaxEntries newest within MaxAge.
func (r *Recorder) Flush(ctx context.Context, now time.Time) error {
	r.mu.Lock()
	batch, dropped := r.pending, r.dropped
	r.pending, r.dropped = map[string]MAC{}, 0
	r.mu.Unlock()
	if dropped > 0 {
		r.log.Warn("seen list: too many new MACs at once; some not recorded", "dropped", dropped)
	}
	if len(batch) == 0 {
		return nil
	}
	err := r.st.Update(ctx, func(tx *store.Tx) error {
		all := map[string]MAC{}
		if err := bucket.ForEach(tx, func(k string, v MAC) error { all[k] = v; return nil }); err != nil {
			return err
		}
		for k, s := range batch {
			if old, ok := all[k]; ok {
				s.First, s.Count = old.First, old.Count+s.Count
			}
			all[k] = s
		}
		keep := slices.SortedFunc(maps.Values(all), func(a, b MAC) int { return b.Last.Compare(a.Last) })
		for i, s := range keep {
			if i >= MaxEntries || now.Sub(s.Last) > MaxAge {
				if err := bucket.Delete(tx, s.MAC); err != nil {
					return err
				}
				continue
			}
			if b, ok := batch[s.MAC]; ok {
				if err := bucket.Put(tx, s.MAC, all[b.MAC]); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		r.log.Error("recording seen MACs", "err", err)
	}
	return err
}

// List returns the stored sightings, newest first.
func (r *Recorder) List(ctx context.Context) ([]MAC, error) {
	var out []MAC
	err := r.st.View(ctx, func(tx *store.Tx) error {
		var err error
		out, err = bucket.List(tx)
		return err
	})
	slices.SortFunc(out, func(a, b MAC) int { return b.Last.Compare(a.Last) })
	return out, err
}
