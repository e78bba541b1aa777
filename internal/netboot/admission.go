package netboot

import (
	"log/slog"
	"net"
	"slices"
	"sync"
)

// StaticAdmission admits a fixed set of MACs (pumi-netboot's known_macs) and
// remembers the PXE clients it has seen (at most maxSeen; made-up MACs
// cannot grow it further), logging an unknown one once (rate-limited).
type StaticAdmission struct {
	known map[string]bool
	log   *slog.Logger
	// chains: per-MAC boot chain (chain.go); set before serving, read-only after.
	chains       map[string]Chain
	defaultChain Chain
	noisy        *limitedLog

	mu   sync.Mutex
	seen map[string]ClientInfo
}

// maxSeen bounds the remembered clients: a lab has hundreds of PCs; a flood
// of DISCOVERs from random MACs has as many as it likes.
const maxSeen = 4096

// NewStaticAdmission admits exactly macs.
func NewStaticAdmission(macs []net.HardwareAddr, log *slog.Logger) *StaticAdmission {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &StaticAdmission{known: map[string]bool{}, log: log, noisy: newLimitedLog(log, nil), seen: map[string]ClientInfo{}}
	for _, m := range macs {
		a.known[m.String()] = true
	}
	return a
}

// Allow implements Admission.
func (a *StaticAdmission) Allow(mac net.HardwareAddr) bool { return a.known[mac.String()] }

// Seen implements Admission: the first request of an unknown MAC is logged
// as "seen" so an operator can add it to the known list.
func (a *StaticAdmission) Seen(mac net.HardwareAddr, info ClientInfo) {
	k := mac.String()
	a.mu.Lock()
	_, before := a.seen[k]
	if before || len(a.seen) < maxSeen || a.known[k] {
		a.seen[k] = info
	}
	a.mu.Unlock()
	if !before && !a.known[k] {
		a.noisy.Log(slog.LevelInfo, "seen", "mac", k, "firmware", info.Firmware, "arch", info.Arch, "vendor_class", info.VendorClass, "note", "unknown MAC: add it to known_macs to let it netboot")
	}
}

// SeenMACs lists every PXE client seen so far, sorted.
func (a *StaticAdmission) SeenMACs() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]string, 0, len(a.seen))
	for k := range a.seen {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
