package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime/pprof"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/pumi-lab/pumi/assets"
	"github.com/pumi-lab/pumi/internal/netboot"
)

// dhcpServe runs pumi's netboot server (internal/netboot, as pumi-netboot
// and the appliance run it) in full mode until it is signalled.
func dhcpServe(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("dhcp-serve", flag.ContinueOnError)
	iface := fl.String("iface", "", "interface to serve")
	serverIP := fl.String("server-ip", "", "pumi's address on -iface")
	prefix := fl.String("subnet", "", "lab subnet, e.g. 10.98.0.0/16")
	start := fl.String("range-start", "", "first address to lease")
	end := fl.String("range-end", "", "last address to lease")
	leases := fl.String("leases", "", "lease file")
	profile := fl.String("cpuprofile", "", "write a CPU profile here")
	if err := fl.Parse(args); err != nil {
		return err
	}
	var cfg netboot.Config
	var err error
	cfg.Interface, cfg.Mode = *iface, netboot.ModeFull
	if cfg.ServerIP, err = netip.ParseAddr(*serverIP); err != nil {
		return fmt.Errorf("dhcp-serve: -server-ip: %w", err)
	}
	if cfg.Netmask, err = netip.ParsePrefix(*prefix); err != nil {
		return fmt.Errorf("dhcp-serve: -subnet: %w", err)
	}
	if cfg.RangeStart, err = netip.ParseAddr(*start); err != nil {
		return fmt.Errorf("dhcp-serve: -range-start: %w", err)
	}
	if cfg.RangeEnd, err = netip.ParseAddr(*end); err != nil {
		return fmt.Errorf("dhcp-serve: -range-end: %w", err)
	}
	cfg.Router = cfg.ServerIP
	cfg.HTTPBase = "http://" + cfg.ServerIP.String() + ":8080"
	cfg.LeaseTime = 12 * time.Hour
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)) // info, as deployed
	srv, err := netboot.New(cfg, netboot.NewStaticAdmission(nil, log), netboot.FileLeaseStore(*leases), assets.IPXE(), log)
	if err != nil {
		return err
	}
	if *profile != "" {
		f, err := os.Create(*profile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	return srv.Run(ctx)
}

// dhcpResult is one burst.
type dhcpResult struct {
	MACs      int     `json:"macs"`
	Offers    int     `json:"offers"`
	Acks      int     `json:"acks"`
	AcksFirst int     `json:"acks_first_try"` // ACKed without any retransmission
	Naks      int     `json:"naks"`
	Retrans   int     `json:"retransmissions"`
	DupIPs    int     `json:"duplicate_ips"`
	SendSec   float64 `json:"send_seconds"` // time to put all first DISCOVERs on the wire
	Seconds   float64 `json:"seconds"`      // first DISCOVER to last ACK
	OfferP50  float64 `json:"offer_p50_ms"`
	OfferP99  float64 `json:"offer_p99_ms"`
	AckP50    float64 `json:"ack_p50_ms"` // first DISCOVER sent → ACK received, per MAC
	AckP99    float64 `json:"ack_p99_ms"`
	AckMax    float64 `json:"ack_max_ms"`
	Unmatched int     `json:"unmatched_replies"`
	// filled in by the orchestrator
	ServerDrops int     `json:"server_drops"`
	ServerCPU   float64 `json:"server_cpu_seconds"`
}

// retransmitAfter is when a client that got no answer sends its DISCOVER or
// REQUEST again: RFC 2131's 4 s, then 8 s (PXE ROMs do about the same), each
// moved by a random -1..+1 s as RFC 2131 asks, so that retransmissions do not
// arrive as one second burst.
var retransmitAfter = []time.Duration{4 * time.Second, 8 * time.Second}

func jitter() int64 {
	var b [8]byte
	rand.Read(b[:])
	return int64(binary.BigEndian.Uint64(b[:])%uint64(2*time.Second)) - int64(time.Second)
}

// macState is one simulated client.
type macState struct {
	sentFirst int64  // unix nanos of the first DISCOVER
	lastTx    int64  // last transmission
	tries     int    // retransmissions so far in the current phase
	due       int64  // when the next retransmission is due
	request   []byte // the REQUEST once an OFFER came; nil before
	offerAt   int64
	ackAt     int64
	retrans   bool
}

// dhcpLoad sends DISCOVERs for n distinct MACs as fast as it can from one
// socket on iface, answers every OFFER with a REQUEST at once, retransmits
// like a real client (after 4 s, then 8 s) and measures per MAC the time from
// its first DISCOVER to its OFFER and to its ACK.
func dhcpLoad(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("dhcp-load", flag.ContinueOnError)
	iface := fl.String("iface", "", "interface to send from")
	n := fl.Int("n", 1000, "distinct MACs")
	pace := fl.Duration("pace", 0, "gap between first DISCOVERs (0: back to back)")
	pxe := fl.Bool("pxe", false, "send PXE options (class PXEClient, arch 7) as UEFI firmware does")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if *n < 1 || *n > 65535 {
		return errors.New("dhcp-load: -n must be 1..65535")
	}
	conn, err := server4.NewIPv4UDPConn(*iface, &net.UDPAddr{Port: dhcpv4.ClientPort})
	if err != nil {
		return fmt.Errorf("dhcp-load: %w", err)
	}
	defer conn.Close()
	// Our own socket must not be what drops answers.
	if rc, err := conn.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, 16<<20)
		})
	}
	bcast := &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ServerPort}

	var base [4]byte
	rand.Read(base[:])
	xid0 := binary.BigEndian.Uint32(base[:])
	var pxeMods []dhcpv4.Modifier
	if *pxe {
		pxeMods = []dhcpv4.Modifier{
			dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003016")),
			dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64)),
		}
	}
	macs := make([]net.HardwareAddr, *n)
	discovers := make([][]byte, *n)
	index := make(map[dhcpv4.TransactionID]int, *n)
	for i := range macs {
		macs[i] = net.HardwareAddr{0x02, 0x42, 0x98, byte(i >> 16), byte(i >> 8), byte(i)}
		var x dhcpv4.TransactionID
		binary.BigEndian.PutUint32(x[:], xid0+uint32(i))
		index[x] = i
		d, err := dhcpv4.NewDiscovery(macs[i], append([]dhcpv4.Modifier{dhcpv4.WithTransactionID(x), dhcpv4.WithBroadcast(true)}, pxeMods...)...)
		if err != nil {
			return err
		}
		discovers[i] = d.ToBytes()
	}
	var (
		mu       sync.Mutex // guards st, res, ips
		st       = make([]macState, *n)
		res      = dhcpResult{MACs: *n}
		ips      = map[string]bool{}
		allAcked = make(chan struct{})
	)
	go func() {
		buf := make([]byte, 1500)
		for {
			m, _, err := conn.ReadFrom(buf)
			now := time.Now().UnixNano()
			if err != nil {
				return // closed at the end
			}
			p, err := dhcpv4.FromBytes(buf[:m])
			if err != nil || p.OpCode != dhcpv4.OpcodeBootReply {
				continue
			}
			mu.Lock()
			i, ok := index[p.TransactionID]
			if !ok || p.ClientHWAddr.String() != macs[i].String() {
				res.Unmatched++
				mu.Unlock()
				continue
			}
			s := &st[i]
			switch p.MessageType() {
			case dhcpv4.MessageTypeOffer:
				if s.offerAt == 0 {
					s.offerAt = now
					res.Offers++
					req, err := dhcpv4.NewRequestFromOffer(p, append([]dhcpv4.Modifier{dhcpv4.WithBroadcast(true)}, pxeMods...)...)
					if err == nil {
						s.request = req.ToBytes()
						s.lastTx, s.tries = now, 0
						s.due = now + int64(retransmitAfter[0]) + jitter()
						conn.WriteTo(s.request, bcast)
					}
				}
			case dhcpv4.MessageTypeAck:
				if s.ackAt == 0 && s.request != nil {
					s.ackAt = now
					res.Acks++
					if !s.retrans {
						res.AcksFirst++
					}
					ip := p.YourIPAddr.String()
					if ips[ip] {
						res.DupIPs++
					}
					ips[ip] = true
					if res.Acks == *n {
						close(allAcked)
					}
				}
			case dhcpv4.MessageTypeNak:
				res.Naks++
			}
			mu.Unlock()
		}
	}()

	start := time.Now()
	for i := range macs {
		if *pace > 0 {
			// Sleep until this DISCOVER's slot; sleeping per packet would
			// drift by the timer's slack.
			time.Sleep(time.Until(start.Add(time.Duration(i) * *pace)))
		}
		mu.Lock()
		st[i].sentFirst = time.Now().UnixNano()
		st[i].lastTx = st[i].sentFirst
		st[i].due = st[i].sentFirst + int64(retransmitAfter[0]) + jitter()
		mu.Unlock()
		if _, err := conn.WriteTo(discovers[i], bcast); err != nil {
			return fmt.Errorf("dhcp-load: sending DISCOVER %d: %w", i, err)
		}
	}
	res.SendSec = time.Since(start).Seconds()

	// Retransmit what went unanswered, until everyone is ACKed or the last
	// retransmission has had its 4 s too.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
loop:
	for {
		select {
		case <-allAcked:
			break loop
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		mu.Lock()
		now := time.Now().UnixNano()
		pending := false
		for i := range st {
			s := &st[i]
			if s.ackAt != 0 {
				continue
			}
			if s.tries < len(retransmitAfter) {
				pending = true
				if now >= s.due {
					pkt := discovers[i]
					if s.request != nil {
						pkt = s.request
					}
					conn.WriteTo(pkt, bcast)
					s.lastTx, s.retrans = now, true
					s.tries++
					if s.tries < len(retransmitAfter) {
						s.due = now + int64(retransmitAfter[s.tries]) + jitter()
					}
					res.Retrans++
				}
			} else if now-s.lastTx < int64(4*time.Second) {
				pending = true
			}
		}
		mu.Unlock()
		if !pending {
			break
		}
	}
	conn.Close()

	mu.Lock()
	defer mu.Unlock()
	var offers, acks []float64
	var last int64
	for i := range st {
		s := &st[i]
		if s.offerAt != 0 {
			offers = append(offers, float64(s.offerAt-s.sentFirst)/1e6)
		}
		if s.ackAt != 0 {
			acks = append(acks, float64(s.ackAt-s.sentFirst)/1e6)
			last = max(last, s.ackAt)
		}
	}
	if last != 0 {
		res.Seconds = float64(last-start.UnixNano()) / 1e9
	}
	res.OfferP50, res.OfferP99, _ = percentiles(offers)
	res.AckP50, res.AckP99, res.AckMax = percentiles(acks)
	return json.NewEncoder(os.Stdout).Encode(res)
}

// percentiles returns p50, p99 and max (nearest rank); zeros for no data.
func percentiles(v []float64) (p50, p99, maxv float64) {
	if len(v) == 0 {
		return 0, 0, 0
	}
	sort.Float64s(v)
	rank := func(p float64) float64 {
		i := int(p*float64(len(v))+0.999999) - 1
		return v[max(0, min(i, len(v)-1))]
	}
	return rank(0.50), rank(0.99), v[len(v)-1]
}

// dhcpSpoof sends n PXE DISCOVERs from random MACs (a visitor's flood, as
// the "Seat jobs" issue measured it) back to back and exits: it never
// requests, so each costs the server an OFFER, the admission's look-up and a
// "seen" record. It sends from its own port, so the measured client's port 68
// stays its own.
func dhcpSpoof(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("dhcp-spoof", flag.ContinueOnError)
	iface := fl.String("iface", "", "interface to send from")
	n := fl.Int("n", 10000, "DISCOVERs from random MACs (at most 100000)")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if *n < 1 || *n > 100000 {
		return errors.New("dhcp-spoof: -n must be 1..100000")
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) {
			if serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_BROADCAST, 1); serr == nil {
				serr = syscall.BindToDevice(int(fd), *iface)
			}
		})
		return serr
	}}
	pc, err := lc.ListenPacket(ctx, "udp4", ":0")
	if err != nil {
		return fmt.Errorf("dhcp-spoof: %w", err)
	}
	defer pc.Close()
	bcast := &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ServerPort}
	start := time.Now()
	for i := 0; i < *n; i++ {
		mac := make(net.HardwareAddr, 6)
		rand.Read(mac)
		mac[0] = mac[0]&^1 | 2 // unicast, locally administered
		d, err := dhcpv4.NewDiscovery(mac, dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003016")),
			dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64)))
		if err != nil {
			return err
		}
		if _, err := pc.WriteTo(d.ToBytes(), bcast); err != nil {
			return fmt.Errorf("dhcp-spoof: %w", err)
		}
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]any{"sent": *n, "seconds": time.Since(start).Seconds()})
}
