package netboot

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"
)

// How long an address stays held for a client that was OFFERed it but has not
// yet REQUESTed it, and how long an address a client DECLINEd (someone else
// answers ARP for it) is kept out of the pool.
//
// A real client REQUESTs within a second of the OFFER (firmware) or a few
// (dhclient's select timeout), so a few seconds suffice. An offer is also
// only a preference: when the range has no free address, a new client is
// offered the address of the oldest pending offer, and a REQUEST for an
// address that is merely offered to another MAC is granted. So DISCOVERs
// from any number of made-up MACs cannot lock a real client out (dnsmasq
// does not hold offers at all).
const (
	offerHold   = 10 * time.Second
	declineHold = 10 * time.Minute
)

// entry is one MAC's address: offered (held briefly) or bound (committed and
// persisted).
type entry struct {
	mac      string
	ip       netip.Addr
	expiry   time.Time
	bound    bool
	hostname string
	// offered: an OFFER holds the address (not a REQUEST being written,
	// which must not be taken away); another client may take it over.
	offered bool
}

// pool is the full-mode address book. It is not safe for concurrent use; the
// handler serialises access.
type pool struct {
	subnet     netip.Prefix
	start, end netip.Addr
	serverIP   netip.Addr
	router     netip.Addr
	leaseTime  time.Duration

	reservedByMAC map[string]Reservation
	reservedByIP  map[netip.Addr]string // ip -> mac
	byMAC         map[string]*entry
	byIP          map[netip.Addr]*entry
	declined      map[netip.Addr]time.Time // ip -> usable again after

	// fresh is where the search for a never-used address starts: every
	// range address below it is in byIP, reserved, or the server's or
	// router's own. It only moves up past such addresses and moves back
	// down whenever an address leaves byIP, so a burst of new clients costs
	// one step each instead of a scan of the range each.
	fresh uint32

	// offers lists offered entries, oldest first, so the range being full
	// of pending offers costs one step to take the oldest over. Entries no
	// longer offered are skipped when met and swept when the list grows.
	offers []*entry
}

func newPool(cfg Config) *pool {
	p := &pool{
		subnet:        cfg.Netmask.Masked(),
		start:         cfg.RangeStart,
		end:           cfg.RangeEnd,
		serverIP:      cfg.ServerIP,
		router:        cfg.Router,
		leaseTime:     cfg.LeaseTime,
		reservedByMAC: map[string]Reservation{},
		reservedByIP:  map[netip.Addr]string{},
		byMAC:         map[string]*entry{},
		byIP:          map[netip.Addr]*entry{},
		declined:      map[netip.Addr]time.Time{},
		fresh:         addrToU32(cfg.RangeStart),
	}
	if p.leaseTime == 0 {
		p.leaseTime = DefaultLeaseTime
	}
	for _, r := range cfg.Reservations {
		p.reservedByMAC[r.MAC.String()] = r
		p.reservedByIP[r.IP] = r.MAC.String()
	}
	return p
}

// restore puts a persisted lease back. It returns an error (and keeps
// nothing) when the configuration changed so the lease no longer fits.
func (p *pool) restore(l Lease) error {
	mac := l.MAC.String()
	if len(l.MAC) != 6 || !l.IP.Is4() {
		return fmt.Errorf("lease %s -> %s is malformed", mac, l.IP)
	}
	if r, ok := p.reservedByMAC[mac]; ok && r.IP != l.IP {
		return fmt.Errorf("lease %s -> %s: the MAC is now reserved %s", mac, l.IP, r.IP)
	}
	if !p.assignable(l.IP, mac) {
		return fmt.Errorf("lease %s -> %s is outside the range or reserved for another MAC", mac, l.IP)
	}
	if e, ok := p.byIP[l.IP]; ok && e.mac != mac {
		return fmt.Errorf("lease %s -> %s: the address is already leased to %s", mac, l.IP, e.mac)
	}
	p.set(&entry{mac: mac, ip: l.IP, expiry: l.Expiry, bound: true, hostname: l.Hostname})
	return nil
}

func (p *pool) set(e *entry) {
	if old, ok := p.byMAC[e.mac]; ok && p.byIP[old.ip] == old {
		p.unindex(old.ip)
	}
	p.byMAC[e.mac] = e
	p.byIP[e.ip] = e
}

func (p *pool) drop(mac string) {
	if e, ok := p.byMAC[mac]; ok {
		if p.byIP[e.ip] == e {
			p.unindex(e.ip)
		}
		delete(p.byMAC, mac)
	}
}

// unindex removes ip from byIP; it may be never-used-free again, so the
// search cursor must not stay above it.
func (p *pool) unindex(ip netip.Addr) {
	delete(p.byIP, ip)
	if v := addrToU32(ip); p.inRange(ip) && v < p.fresh {
		p.fresh = v
	}
}

func (p *pool) inRange(ip netip.Addr) bool {
	return ip.Is4() && !ip.Less(p.start) && !p.end.Less(ip)
}

// assignable: ip may be given to mac by configuration (its reservation, or a
// range address that is not reserved for anyone and not the server's own).
func (p *pool) assignable(ip netip.Addr, mac string) bool {
	if owner, ok := p.reservedByIP[ip]; ok {
		return owner == mac
	}
	if _, ok := p.reservedByMAC[mac]; ok {
		return false // a reserved MAC gets its reservation and nothing else
	}
	return p.inRange(ip) && ip != p.serverIP && ip != p.router
}

// free: ip is assignable to mac and nobody else holds it right now.
func (p *pool) free(ip netip.Addr, mac string, now time.Time) bool {
	if !p.assignable(ip, mac) {
		return false
	}
	if until, ok := p.declined[ip]; ok {
		if now.Before(until) {
			return false
		}
		delete(p.declined, ip)
	}
	e, ok := p.byIP[ip]
	return !ok || e.mac == mac || !now.Before(e.expiry)
}

// choose picks the address to offer mac: its reservation, its current or
// previous address, the address it asks for, else the lowest free one,
// preferring addresses never used over expired ones so a PC that was off for
// a while usually gets its old address back. ok=false: pool exhausted.
func (p *pool) choose(mac string, requested netip.Addr, now time.Time) (netip.Addr, bool) {
	if r, ok := p.reservedByMAC[mac]; ok {
		return r.IP, true
	}
	if e, ok := p.byMAC[mac]; ok && p.free(e.ip, mac, now) {
		return e.ip, true
	}
	if requested.IsValid() && p.free(requested, mac, now) {
		return requested, true
	}
	if ip, ok := p.lowestUnused(mac, now); ok {
		return ip, true
	}

	// Every address has been used: reclaim the lowest expired one. This full
	// scan only happens when the range is exhausted of fresh addresses.
	for v := addrToU32(p.start); v <= addrToU32(p.end) && v != 0; v++ {
		ip := u32ToAddr(v)
		if _, used := p.byIP[ip]; used && p.free(ip, mac, now) {
			return ip, true
		}
		if v == ^uint32(0) {
			break
		}
	}
	// Nothing free at all: take the oldest pending offer over.
	if e, ok := p.oldestOffer(mac); ok {
		return e.ip, true
	}
	return netip.Addr{}, false
}

// lowestUnused is the lowest free address that is in no entry, found from
// the fresh cursor. The cursor steps over addresses that stay unusable until
// they leave byIP (in use) or for good (reserved, server, router); it stops
// at a declined one, which becomes usable again by time alone.
func (p *pool) lowestUnused(mac string, now time.Time) (netip.Addr, bool) {
	advance := true
	for v := max(p.fresh, addrToU32(p.start)); v <= addrToU32(p.end) && v != 0; v++ {
		ip := u32ToAddr(v)
		_, used := p.byIP[ip]
		_, reserved := p.reservedByIP[ip]
		if !used && p.free(ip, mac, now) {
			return ip, true
		}
		if !used && !reserved && ip != p.serverIP && ip != p.router {
			advance = false // declined (or, for a reserved MAC, not its own): look again next time
		}
		if advance {
			p.fresh = v + 1
		}
		if v == ^uint32(0) {
			break
		}
	}
	return netip.Addr{}, false
}

// offer holds ip for mac for offerHold, unless mac already has a bound
// lease on it (that lease stays as it is).
func (p *pool) offer(mac string, ip netip.Addr, now time.Time) {
	if e, ok := p.byMAC[mac]; ok && e.bound && e.ip == ip && now.Before(e.expiry) {
		return
	}
	if e, ok := p.byIP[ip]; ok && e.mac != mac {
		p.drop(e.mac) // an expired lease or another MAC's offer being taken over
	}
	e := &entry{mac: mac, ip: ip, expiry: now.Add(offerHold), offered: true}
	p.set(e)
	p.offers = append(p.offers, e)
	if len(p.offers) > 2*len(p.byIP)+64 {
		p.offers = slices.DeleteFunc(p.offers, func(o *entry) bool { return !p.isOffer(o) })
	}
}

// isOffer: e is still the current, offered entry of its address.
func (p *pool) isOffer(e *entry) bool {
	return e.offered && !e.bound && p.byIP[e.ip] == e && p.byMAC[e.mac] == e
}

// oldestOffer is the oldest pending offer to another MAC whose address mac
// may have, for when the range has nothing free.
func (p *pool) oldestOffer(mac string) (*entry, bool) {
	for len(p.offers) > 0 && !p.isOffer(p.offers[0]) {
		p.offers = p.offers[1:]
	}
	for _, e := range p.offers {
		if p.isOffer(e) && e.mac != mac && p.assignable(e.ip, mac) {
			return e, true
		}
	}
	return nil, false
}

// requestable: a REQUEST from mac for ip may be granted: ip is free, or only
// offered to another MAC (a binding beats an offer; that MAC gets a NAK for
// it and starts over).
func (p *pool) requestable(ip netip.Addr, mac string, now time.Time) bool {
	if p.free(ip, mac, now) {
		return true
	}
	e, ok := p.byIP[ip]
	return ok && e.mac != mac && p.isOffer(e) && p.assignable(ip, mac) && !p.isDeclined(ip, now)
}

func (p *pool) isDeclined(ip netip.Addr, now time.Time) bool {
	until, ok := p.declined[ip]
	return ok && now.Before(until)
}

// hold keeps ip for mac (as an offer does) while its lease is being
// written, so no other client is offered or ACKed ip meanwhile. The returned
// undo puts back what hold replaced, for a write that failed.
func (p *pool) hold(mac string, ip netip.Addr, now time.Time) (undo func()) {
	prev := p.byMAC[mac]
	if prev != nil && prev.ip == ip && now.Before(prev.expiry) {
		return func() {} // already mac's (offered or bound): nothing changes
	}
	displaced := p.byIP[ip] // an expired entry of another MAC, if any
	if displaced != nil && displaced.mac != mac {
		p.drop(displaced.mac)
	}
	held := &entry{mac: mac, ip: ip, expiry: now.Add(offerHold)}
	p.set(held)
	return func() {
		if p.byMAC[mac] == held {
			p.drop(mac)
		}
		for _, e := range []*entry{prev, displaced} {
			if e == nil {
				continue
			}
			if _, taken := p.byIP[e.ip]; !taken && p.byMAC[e.mac] == nil {
				p.set(e)
			}
		}
	}
}

// commit binds ip to mac for the lease time and returns the lease to persist.
func (p *pool) commit(mac net.HardwareAddr, ip netip.Addr, now time.Time) Lease {
	m := mac.String()
	if e, ok := p.byIP[ip]; ok && e.mac != m {
		p.drop(e.mac)
	}
	host := p.reservedByMAC[m].Hostname
	p.set(&entry{mac: m, ip: ip, expiry: now.Add(p.leaseTime), bound: true, hostname: host})
	return Lease{MAC: mac, IP: ip, Expiry: now.Add(p.leaseTime), Hostname: host}
}

// leasedTo returns the address mac currently holds (offered or bound and not
// expired).
func (p *pool) leasedTo(mac string, now time.Time) (netip.Addr, bool) {
	e, ok := p.byMAC[mac]
	if !ok || !now.Before(e.expiry) {
		return netip.Addr{}, false
	}
	return e.ip, true
}

func (p *pool) decline(ip netip.Addr, now time.Time) {
	p.declined[ip] = now.Add(declineHold)
}
