package netboot

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/pumi-lab/pumi/internal/atomicfile"
	"github.com/pumi-lab/pumi/internal/macaddr"
)

// LeaseFile keeps the leases in one compact JSON file, replaced atomically
// (internal/atomicfile: temp file, fsync, rename, directory fsync), so a
// power cut leaves either the old or the new set. It suits pumi-netboot and
// labs of a few thousand seats; the appliance keeps leases in its bbolt store
// instead.
//
// Writes are group-committed: Put and Delete may be called concurrently, and
// every change that arrives while the file is being written joins the next
// write. Each caller returns only after the write holding its change has been
// fsynced, so "durable before the ACK" still holds, but a burst of a thousand
// REQUESTs costs a few file writes instead of a thousand. A lone change is
// written at once (no timer), so a quiet lab sees no added latency.
type LeaseFile struct {
	path string

	mu      sync.Mutex
	cond    *sync.Cond // signalled (with mu) when a write finishes
	loaded  bool
	leases  map[string]Lease // what the file holds, by canonical MAC; only the writer changes it
	next    *leaseBatch      // changes waiting for the next write; nil: none
	writing bool             // a writer is between taking a batch and releasing it
	writes  int              // file writes attempted, to see (and test) the coalescing
}

// leaseBatch is the changes one file write makes durable, and its outcome
// for every caller whose change it holds.
type leaseBatch struct {
	changes map[string]*Lease // by canonical MAC; nil value: delete
	done    bool
	err     error
}

// FileLeaseStore returns a LeaseStore backed by the file at path; the file is
// created on the first lease. Its directory must exist.
func FileLeaseStore(path string) *LeaseFile {
	s := &LeaseFile{path: path, leases: map[string]Lease{}}
	s.cond = sync.NewCond(&s.mu)
	return s
}

type leaseFile struct {
	Version int             `json:"version"`
	Leases  []leaseFileItem `json:"leases"`
}

type leaseFileItem struct {
	MAC      string    `json:"mac"`
	IP       string    `json:"ip"`
	Expiry   time.Time `json:"expiry"`
	Hostname string    `json:"hostname,omitempty"`
}

// Load reads the file; a missing file is an empty lease set.
func (s *LeaseFile) Load() ([]Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.writing {
		s.cond.Wait() // report only what is on disk, not a batch being written
	}
	if err := s.loadLocked(); err != nil {
		return nil, err
	}
	out := make([]Lease, 0, len(s.leases))
	for _, k := range slices.Sorted(maps.Keys(s.leases)) {
		out = append(out, s.leases[k])
	}
	return out, nil
}

func (s *LeaseFile) loadLocked() error {
	if s.loaded {
		return nil
	}
	b, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		s.loaded = true
		return nil
	}
	if err != nil {
		return fmt.Errorf("lease file: %w", err)
	}
	leases, err := parseLeaseFile(b)
	if err != nil {
		return fmt.Errorf("lease file %s is damaged (%w): move it aside to start with no leases", s.path, err)
	}
	for _, l := range leases {
		s.leases[l.MAC.String()] = l
	}
	s.loaded = true
	return nil
}

// parseLeaseFile decodes and checks a lease file; it never panics on any
// input (see FuzzLeaseFile).
func parseLeaseFile(b []byte) ([]Lease, error) {
	var f leaseFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, err
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("unknown version %d (this pumi reads version 1)", f.Version)
	}
	var out []Lease
	seen := map[string]bool{}
	for i, it := range f.Leases {
		mac, err := macaddr.Parse(it.MAC)
		if err != nil {
			return nil, fmt.Errorf("lease %d: %w", i, err)
		}
		ip, err := netip.ParseAddr(it.IP)
		if err != nil || !ip.Is4() {
			return nil, fmt.Errorf("lease %d: address %q is not IPv4", i, it.IP)
		}
		if !expiryWritable(it.Expiry) {
			return nil, fmt.Errorf("lease %d: expiry %s is out of range", i, it.Expiry)
		}
		if seen[mac.String()] {
			return nil, fmt.Errorf("lease %d: MAC %s appears twice", i, mac)
		}
		seen[mac.String()] = true
		out = append(out, Lease{MAC: mac, IP: ip, Expiry: it.Expiry, Hostname: it.Hostname})
	}
	return out, nil
}

// expiryWritable: the file stores expiries in UTC as RFC 3339, which has
// four-digit years; an offset can push a readable time out of that range.
func expiryWritable(t time.Time) bool {
	y := t.UTC().Year()
	return y >= 0 && y <= 9999
}

// encodeLeaseFile renders the version 1 file, compact and sorted by MAC.
// It appends by hand instead of using encoding/json's reflection because it
// runs once per group commit over every lease; the output is plain JSON that
// parseLeaseFile reads back (FuzzLeaseFile checks the round trip).
func encodeLeaseFile(leases map[string]Lease) []byte {
	keys := slices.Sorted(maps.Keys(leases))
	b := make([]byte, 0, 32+len(keys)*96)
	b = append(b, `{"version":1,"leases":[`...)
	for i, k := range keys {
		l := leases[k]
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"mac":`...)
		b = appendJSONString(b, k)
		b = append(b, `,"ip":"`...)
		b = l.IP.AppendTo(b)
		b = append(b, `","expiry":"`...)
		b = l.Expiry.UTC().AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
		if l.Hostname != "" {
			b = append(b, `,"hostname":`...)
			b = appendJSONString(b, l.Hostname)
		}
		b = append(b, '}')
	}
	return append(b, "]}\n"...)
}

// appendJSONString quotes s as encoding/json does; MACs and validated
// hostnames never need escaping, so the fast path is a plain copy.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// Put records l durably, replacing the MAC's previous lease. It may be
// called concurrently; it returns once a file write holding l is fsynced.
func (s *LeaseFile) Put(l Lease) error {
	if len(l.MAC) != 6 || !l.IP.Is4() || !expiryWritable(l.Expiry) {
		return fmt.Errorf("lease file: refusing malformed lease %s -> %s until %s", l.MAC, l.IP, l.Expiry)
	}
	l.MAC = slices.Clone(l.MAC)
	return s.change(l.MAC.String(), &l)
}

// Delete forgets mac's lease durably; deleting a missing lease is fine.
func (s *LeaseFile) Delete(mac net.HardwareAddr) error {
	return s.change(mac.String(), nil)
}

// change queues one change for the next write and waits for that write. The
// first caller that finds no write in progress becomes the writer of the
// batch it joined; everyone arriving meanwhile queues behind it.
func (s *LeaseFile) change(k string, l *Lease) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.loadLocked(); err != nil {
		return err
	}
	if l == nil && s.next == nil && !s.writing {
		if _, had := s.leases[k]; !had {
			return nil // nothing stored and nothing pending: no write needed
		}
	}
	if s.next == nil {
		s.next = &leaseBatch{changes: map[string]*Lease{}}
	}
	b := s.next
	b.changes[k] = l
	for !b.done {
		if s.writing {
			s.cond.Wait()
			continue
		}
		// No write in progress and b not written: b is still s.next
		// (only a writer takes it, and a writer finishes what it takes).
		s.writeLocked()
	}
	return b.err
}

// writeLocked takes the pending batch, applies it to the file's contents and
// writes the file with s.mu released, so new changes queue for the next batch
// meanwhile. A failed write undoes the batch: the file, and so s.leases,
// still hold the previous set, and every caller in the batch gets the error.
func (s *LeaseFile) writeLocked() {
	b := s.next
	s.next = nil
	s.writing = true
	undo := make(map[string]*Lease, len(b.changes))
	for k, l := range b.changes {
		if old, had := s.leases[k]; had {
			undo[k] = &old
		} else {
			undo[k] = nil
		}
		if l == nil {
			delete(s.leases, k)
		} else {
			s.leases[k] = *l
		}
	}
	// While writing is set nobody else changes s.leases; Load only reads it.
	s.writes++
	s.mu.Unlock()
	data := encodeLeaseFile(s.leases)
	err := atomicfile.Write(s.path, data, 0o644)
	s.mu.Lock()
	if err != nil {
		for k, old := range undo {
			if old == nil {
				delete(s.leases, k)
			} else {
				s.leases[k] = *old
			}
		}
		err = fmt.Errorf("lease file: %w (is its directory there and writable?)", err)
	}
	b.err, b.done = err, true
	s.writing = false
	s.cond.Broadcast()
}
