package inventory

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/pumi-lab/pumi/internal/store"
)

// Found is one host that answered the ARP sweep.
type Found struct {
	IP    netip.Addr
	MAC   string // canonical
	Known bool   // a seat with this MAC is in the inventory
}

// SweepOptions tune an ARP sweep; the zero value is sensible.
type SweepOptions struct {
	// Interval between two requests (default 2 ms): small NICs and
	// switches drop floods, and a /24 still takes only half a second.
	Interval time.Duration
	// Wait for late replies after the last request (default 1 s).
	Wait time.Duration
	// Passes over the addresses that have not answered yet (default 2),
	// so one lost frame does not hide a PC.
	Passes int
	Log    *slog.Logger
}

// maxSweepBits bounds a sweep to a /16 (65534 requests, about two minutes
// at the default pace); a larger prefix is almost certainly a typo.
const maxSweepBits = 16

// Sweep asks every address of prefix "who has?" on interface ifname and
// returns who answered, ordered by IP. It replaces `nmap -sP`: Windows PCs
// answer ARP even when their firewall drops ping. The interface must have
// an IPv4 address inside prefix (it is the requests' sender address), and
// the caller needs CAP_NET_RAW. It stops early, returning ctx's error, when
// ctx ends.
func Sweep(ctx context.Context, ifname string, prefix netip.Prefix, opt SweepOptions) ([]Found, error) {
	if opt.Interval <= 0 {
		opt.Interval = 2 * time.Millisecond
	}
	if opt.Wait <= 0 {
		opt.Wait = time.Second
	}
	if opt.Passes <= 0 {
		opt.Passes = 2
	}
	log := opt.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if !prefix.IsValid() || !prefix.Addr().Is4() {
		return nil, fmt.Errorf("arp sweep: %v is not an IPv4 prefix: give one like 10.0.5.0/24", prefix)
	}
	prefix = prefix.Masked()
	if prefix.Bits() < maxSweepBits {
		return nil, fmt.Errorf("arp sweep: %s has %d addresses; sweeps are limited to a /%d: sweep the lab's subnets one by one",
			prefix, uint64(1)<<(32-prefix.Bits()), maxSweepBits)
	}
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("arp sweep: interface %q: %w: name the lab interface (see `ip link`)", ifname, err)
	}
	if ifi.Flags&net.FlagUp == 0 {
		return nil, fmt.Errorf("arp sweep: interface %s is down: bring it up first", ifname)
	}
	if len(ifi.HardwareAddr) != 6 {
		return nil, fmt.Errorf("arp sweep: interface %s is not Ethernet", ifname)
	}
	src, have, err := sourceAddr(ifi, prefix)
	if err != nil {
		return nil, err
	}
	if !src.IsValid() {
		return nil, fmt.Errorf("arp sweep: interface %s has no IPv4 address in %s (it has %s): sweep a subnet the interface is on, or add an address",
			ifname, prefix, have)
	}
	c, err := arp.Dial(ifi)
	if err != nil {
		return nil, fmt.Errorf("arp sweep on %s: %w (needs root or CAP_NET_RAW)", ifname, err)
	}
	defer c.Close()

	sw := &sweep{c: c, prefix: prefix, src: src, answers: map[netip.Addr]map[string]bool{}}
	readerDone := make(chan struct{})
	go func() { defer close(readerDone); sw.read() }()
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Now()) })
	defer stop()

	err = sw.send(ctx, ifi.HardwareAddr, opt)
	if err == nil {
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-time.After(opt.Wait):
		}
	}
	c.SetReadDeadline(time.Now())
	<-readerDone

	found := sw.results()
	log.Info("arp sweep done", "interface", ifname, "prefix", prefix, "found", len(found), "err", err)
	return found, err
}

// sourceAddr returns the interface's IPv4 address inside prefix, and the
// list of its addresses for the error message.
func sourceAddr(ifi *net.Interface, prefix netip.Prefix) (netip.Addr, string, error) {
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Addr{}, "", fmt.Errorf("arp sweep: addresses of %s: %w", ifi.Name, err)
	}
	var have []string
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		have = append(have, a.String())
		if ip.Is4() && prefix.Contains(ip) {
			return ip, "", nil
		}
	}
	if len(have) == 0 {
		have = []string{"no address"}
	}
	return netip.Addr{}, strings.Join(have, ", "), nil
}

type sweep struct {
	c      *arp.Client
	prefix netip.Prefix
	src    netip.Addr

	mu      sync.Mutex
	answers map[netip.Addr]map[string]bool // IP -> MACs (two MACs = an address conflict)
}

// read collects replies until the read deadline is set in the past.
func (sw *sweep) read() {
	for {
		p, _, err := sw.c.Read()
		if err != nil {
			// Socket errors (the deadline set to stop us, a closed socket)
			// come wrapped in *net.OpError; anything else is a malformed
			// frame from some other host.
			var oe *net.OpError
			if errors.As(err, &oe) || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
			continue
		}
		if p.Operation != arp.OperationReply || p.TargetIP != sw.src || p.SenderIP == sw.src || !sw.prefix.Contains(p.SenderIP) {
			continue
		}
		sw.mu.Lock()
		if sw.answers[p.SenderIP] == nil {
			sw.answers[p.SenderIP] = map[string]bool{}
		}
		sw.answers[p.SenderIP][p.SenderHardwareAddr.String()] = true
		sw.mu.Unlock()
	}
}

func (sw *sweep) answered(ip netip.Addr) bool {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	return sw.answers[ip] != nil
}

func (sw *sweep) send(ctx context.Context, hw net.HardwareAddr, opt SweepOptions) error {
	tick := time.NewTicker(opt.Interval)
	defer tick.Stop()
	for pass := range opt.Passes {
		if pass > 0 {
			// Give the previous pass's replies time to arrive before deciding
			// who did not answer.
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(opt.Wait / 2):
			}
		}
		for ip := range hosts(sw.prefix) {
			if ip == sw.src || sw.answered(ip) {
				continue
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-tick.C:
			}
			p, err := arp.NewPacket(arp.OperationRequest, hw, sw.src, ethernet.Broadcast, ip)
			if err != nil {
				return fmt.Errorf("arp sweep: %w", err)
			}
			if err := sw.c.WriteTo(p, ethernet.Broadcast); err != nil {
				if errors.Is(err, syscall.ENOBUFS) {
					continue // the queue is full; the next pass asks again
				}
				return fmt.Errorf("arp sweep: send to %s: %w", ip, err)
			}
		}
	}
	return nil
}

// hosts yields the host addresses of prefix: without the network and
// broadcast addresses, except in /31 and /32 where every address is a host.
func hosts(prefix netip.Prefix) func(yield func(netip.Addr) bool) {
	return func(yield func(netip.Addr) bool) {
		first := prefix.Addr()
		n := uint64(1) << (32 - prefix.Bits())
		if prefix.Bits() < 31 {
			first, n = first.Next(), n-2
		}
		ip := first
		for range n {
			if !yield(ip) {
				return
			}
			ip = ip.Next()
		}
	}
}

func (sw *sweep) results() []Found {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	var out []Found
	for ip, macs := range sw.answers {
		for mac := range macs {
			out = append(out, Found{IP: ip, MAC: mac})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].IP.Compare(out[j].IP); c != 0 {
			return c < 0
		}
		return out[i].MAC < out[j].MAC
	})
	return out
}

// Discover sweeps like Sweep and marks the hosts whose MAC is a seat.
// Nothing is added to the inventory: the caller shows the list and lets
// the operator import the unknown ones.
func (inv *Inventory) Discover(ctx context.Context, ifname string, prefix netip.Prefix, opt SweepOptions) ([]Found, error) {
	found, err := Sweep(ctx, ifname, prefix, opt)
	if len(found) == 0 {
		return found, err
	}
	verr := inv.st.View(context.WithoutCancel(ctx), func(tx *store.Tx) error {
		for i := range found {
			ok, err := seatsBucket.Has(tx, found[i].MAC)
			if err != nil {
				return err
			}
			found[i].Known = ok
		}
		return nil
	})
	return found, errors.Join(err, verr)
}
