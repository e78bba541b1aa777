package netboot

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"
)

// linearChoose is the pool's original search, kept as the reference: the
// lowest free never-used address, else the lowest free expired one, else
// (since offers can be taken over) the oldest pending offer.
func linearChoose(p *pool, mac string, now time.Time) (netip.Addr, bool) {
	var expired netip.Addr
	for v := addrToU32(p.start); v <= addrToU32(p.end); v++ {
		ip := u32ToAddr(v)
		if !p.free(ip, mac, now) {
			continue
		}
		if _, used := p.byIP[ip]; !used {
			return ip, true
		}
		if !expired.IsValid() {
			expired = ip
		}
	}
	if expired.IsValid() {
		return expired, true
	}
	for _, e := range p.offers {
		if p.isOffer(e) && e.mac != mac && p.assignable(e.ip, mac) {
			return e.ip, true
		}
	}
	return netip.Addr{}, false
}

// TestPoolCursorMatchesLinearScan drives a small pool through random offers,
// commits, holds (and their undo), declines, drops and expiries, and checks
// after every step that the cursor-based search picks exactly what a scan of
// the whole range would.
func TestPoolCursorMatchesLinearScan(t *testing.T) {
	cfg := fullConfig()
	cfg.RangeStart, cfg.RangeEnd = netip.MustParseAddr("10.99.0.90"), netip.MustParseAddr("10.99.0.130")
	rng := rand.New(rand.NewPCG(1, 2))
	p := newPool(cfg)
	now := t0
	macs := make([]net.HardwareAddr, 60)
	for i := range macs {
		macs[i] = net.HardwareAddr{2, 0, 0, 2, 0, byte(i)}
	}
	randIP := func() netip.Addr { return u32ToAddr(addrToU32(cfg.RangeStart) + uint32(rng.IntN(41))) }
	for step := range 20000 {
		m := macs[rng.IntN(len(macs))]
		mac := m.String()
		if _, reserved := p.reservedByMAC[mac]; !reserved {
			// The reference must not see the cursor's side effects first:
			// free() forgets expired declines, so compare on the same state.
			want, wok := linearChoose(p, mac, now)
			got, gok := p.choose(mac, netip.Addr{}, now)
			if e, ok := p.byMAC[mac]; ok && p.free(e.ip, mac, now) {
				want, wok = e.ip, true // choose prefers the MAC's own address
			}
			if got != want || gok != wok {
				t.Fatalf("step %d: choose(%s) = %s %v, linear scan %s %v", step, mac, got, gok, want, wok)
			}
		}
		switch rng.IntN(8) {
		case 0, 1:
			if ip, ok := p.choose(mac, netip.Addr{}, now); ok {
				p.offer(mac, ip, now)
			}
		case 2:
			if ip, ok := p.leasedTo(mac, now); ok && p.free(ip, mac, now) {
				p.commit(m, ip, now)
			}
		case 3:
			if ip := randIP(); p.free(ip, mac, now) {
				undo := p.hold(mac, ip, now)
				if rng.IntN(2) == 0 {
					undo()
				} else {
					p.commit(m, ip, now)
				}
			}
		case 4:
			if e, ok := p.byMAC[mac]; ok && rng.IntN(4) == 0 {
				p.decline(e.ip, now)
				p.drop(mac)
			}
		case 5:
			p.drop(mac)
		case 6:
			now = now.Add(time.Duration(rng.IntN(90)) * time.Second)
		case 7:
			if ip := randIP(); p.free(ip, mac, now) {
				p.offer(mac, ip, now)
			}
		}
	}
}
