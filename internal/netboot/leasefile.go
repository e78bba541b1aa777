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

// LeaseFile keeps the leases in one JSON file, replaced atomically on
// every change (internal/atomicfile), so a power cut leaves either the old or
// the new set. It suits pumi-netboot and labs of a few hundred seats; the
// appliance keeps leases in its bbolt store instead.
type LeaseFile struct {
	path string

	mu     sync.Mutex
	loaded bool
	leases map[string]Lease // by canonical MAC
}

// FileLeaseStore returns a LeaseStore backed by the file at path; the file is
// created on the first lease. Its directory must exist.
func FileLeaseStore(path string) *LeaseFile {
	return &LeaseFile{path: path, leases: map[string]Lease{}}
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
		if seen[mac.String()] {
			return nil, fmt.Errorf("lease %d: MAC %s appears twice", i, mac)
		}
		seen[mac.String()] = true
		out = append(out, Lease{MAC: mac, IP: ip, Expiry: it.Expiry, Hostname: it.Hostname})
	}
	return out, nil
}

func (s *LeaseFile) saveLocked() error {
	f := leaseFile{Version: 1, Leases: []leaseFileItem{}}
	for _, k := range slices.Sorted(maps.Keys(s.leases)) {
		l := s.leases[k]
		f.Leases = append(f.Leases, leaseFileItem{MAC: k, IP: l.IP.String(), Expiry: l.Expiry.UTC(), Hostname: l.Hostname})
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("lease file: %w", err)
	}
	if err := atomicfile.Write(s.path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("lease file: %w (is its directory there and writable?)", err)
	}
	return nil
}

// Put records l durably, replacing the MAC's previous lease.
func (s *LeaseFile) Put(l Lease) error {
	if len(l.MAC) != 6 || !l.IP.Is4() {
		return fmt.Errorf("lease file: refusing malformed lease %s -> %s", l.MAC, l.IP)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.loadLocked(); err != nil {
		return err
	}
	k := l.MAC.String()
	old, had := s.leases[k]
	l.MAC = slices.Clone(l.MAC)
	s.leases[k] = l
	if err := s.saveLocked(); err != nil {
		if had {
			s.leases[k] = old
		} else {
			delete(s.leases, k)
		}
		return err
	}
	return nil
}

// Delete forgets mac's lease durably; deleting a missing lease is fine.
func (s *LeaseFile) Delete(mac net.HardwareAddr) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.loadLocked(); err != nil {
		return err
	}
	k := mac.String()
	old, had := s.leases[k]
	if !had {
		return nil
	}
	delete(s.leases, k)
	if err := s.saveLocked(); err != nil {
		s.leases[k] = old
		return err
	}
	return nil
}
