// Package udpcast is pumi's multicast sender: one stream (one partition
// image) to a room of lab PCs at once, wire-compatible with udpcast's
// udp-receiver, which every Clonezilla live runs for multicast_restoredisk:
//
//	udp-receiver --nokbd --mcast-all-addr 224.0.0.1 --portbase P --ttl 1
//
// It replaces udp-sender on the appliance and fixes where udp-sender stalls a
// whole room: the HELLO is repeated (a lost HELLO no longer blocks the
// rendezvous), connect requests are answered idempotently, also after the
// data started, for a receiver that never got its reply (udp-sender stalls
// every receiver on slice 1 until it drops that one, ~193 s), and a silent
// receiver is dropped after Config.DeadAfter (udp-sender: ~193 s by default)
// so the others finish.
//
// Admission is by pumi's records only (Config.Expect, Config.Admit), never by
// a packet field; a receiver that asks after the data started is refused
// (udp-receiver exits at once with "Too many clients already connected")
// and never joins mid-stream.
package udpcast

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Defaults, chosen for Clonezilla's client (ocs-sr multicast_restoredisk).
const (
	DefaultRendezvous    = "224.0.0.1" // Clonezilla's --mcast-all-addr
	DefaultMaxWait       = 2 * time.Minute
	DefaultDeadAfter     = 30 * time.Second
	DefaultHelloInterval = time.Second
	// DefaultSliceBlocks is the slice (acknowledgement window) size in
	// blocks. udp-sender uses 112 in full-duplex mode; larger slices need
	// fewer acknowledgement rounds, the receiver allows up to 1024.
	DefaultSliceBlocks = 256
)

// Errors Run returns (wrapped).
var (
	// ErrNoReceivers: nobody pumi admits joined before MaxWait. Nothing was
	// sent; the seats fall back to unicast.
	ErrNoReceivers = errors.New("no receiver joined")
	// ErrAllDropped: every receiver was dropped or left before the end of
	// the stream; nobody got the whole stream.
	ErrAllDropped = errors.New("every receiver was dropped")
)

// Config is one multicast session: one stream on one port pair.
type Config struct {
	// Interface is the NIC facing the lab VLAN; multicast leaves through
	// it. Required.
	Interface string
	// LocalAddr is the IPv4 address to send from (receivers see it as the
	// server). Zero: the first IPv4 address of Interface.
	LocalAddr netip.Addr
	// PortBase is Clonezilla's --mcast-port for this partition (2232 for
	// the first one): receivers listen on PortBase, the sender on
	// PortBase+1.
	PortBase int
	// Rendezvous is the group receivers send their connect requests to and
	// the sender its HELLOs to (udp-receiver --mcast-all-addr). Zero:
	// 224.0.0.1.
	Rendezvous netip.Addr
	// DataAddr is the multicast group for the data. Zero: udp-sender's
	// default, DefaultDataAddr(LocalAddr).
	DataAddr netip.Addr
	// TTL of multicast packets. Zero: 1 (the lab VLAN only).
	TTL int
	// MaxBitrate caps the sender in bytes per second of IP packets
	// (payload, headers and retransmissions). 0: no cap.
	MaxBitrate int64
	// Expect are the seats pumi expects in this session; the data starts
	// as soon as all of them joined. They are admitted.
	Expect []netip.Addr
	// Admit, if set, is asked about a receiver that is not in Expect; false
	// refuses it. Without Admit only Expect is admitted. It is called from
	// Run's goroutine for each connect request from an address outside
	// Expect (possibly many: the VLAN is not trusted), so it must be fast
	// and must not block; answer from pumi's records (inventory, the run's
	// seats), never from anything in the packet but its source address.
	Admit func(netip.Addr) bool
	// MaxWait bounds the rendezvous: when it passes, the data starts with
	// whoever joined. Zero: DefaultMaxWait.
	MaxWait time.Duration
	// FirstWait, if set, is how long the rendezvous waits for its first
	// receiver; MaxWait then counts from that first join. A Clonezilla
	// client prepares the disk (partition table, checks) before its first
	// udp-receiver starts, which takes minutes on a slow PC, so the room's
	// wait must start when the first seat is actually ready. Zero: MaxWait
	// counts from Run.
	FirstWait time.Duration
	// DeadAfter drops a receiver that has not answered an acknowledgement
	// request for this long, so that the others go on. Zero:
	// DefaultDeadAfter. Keep it ≤ 40 s.
	DeadAfter time.Duration
	// HelloInterval is how often HELLO is repeated while the rendezvous is
	// open or a joined receiver has not answered yet. Zero:
	// DefaultHelloInterval.
	HelloInterval time.Duration
	// SliceBlocks is the number of 1456-byte blocks per slice (1..1024).
	// Zero: DefaultSliceBlocks.
	SliceBlocks int
}

// ReceiverState says where a receiver is.
type ReceiverState string

const (
	Joined  ReceiverState = "joined"  // connected, the stream is under way
	Done    ReceiverState = "done"    // acknowledged the whole stream
	Dropped ReceiverState = "dropped" // left out; Reason says why
)

// Receiver is one joined receiver in Stats.
type Receiver struct {
	Addr      netip.Addr
	ClientNo  int
	JoinedAt  time.Time
	State     ReceiverState
	Reason    string // why it was dropped
	DroppedAt time.Time
	// Acked is the number of stream bytes this receiver acknowledged.
	Acked int64
}

// Stats is a snapshot of a session (Session.Stats) and its result (Run).
type Stats struct {
	Started  time.Time // Run was called
	DataFrom time.Time // the data started (zero: still in the rendezvous)
	Finished time.Time
	// Receivers in the order they joined.
	Receivers []Receiver
	// Missing are the Expect addresses that have not joined (yet): after
	// the start, seats that never came (fall back to unicast for them).
	Missing []netip.Addr
	// Refused counts connect requests refused (not admitted, too late, or a
	// receiver that restarted mid-stream); RefusedAddrs lists the first 16
	// addresses.
	Refused      int
	RefusedAddrs []netip.Addr
	// PayloadBytes is the stream bytes acknowledged by every live receiver.
	PayloadBytes int64
	// WireBytes is every IP packet the session sent (data, retransmissions,
	// control; IP+UDP headers included, Ethernet framing not).
	WireBytes     int64
	DataPackets   int64
	Retransmitted int64 // data packets sent again
	Slices        int
}

// Throughput is PayloadBytes per second of the data phase.
func (s Stats) Throughput() float64 {
	end := s.Finished
	if end.IsZero() {
		end = time.Now()
	}
	d := end.Sub(s.DataFrom).Seconds()
	if s.DataFrom.IsZero() || d <= 0 {
		return 0
	}
	return float64(s.PayloadBytes) / d
}

// Session is one multicast stream. The run engine creates one per partition
// (each on its own PortBase), calls Run once, and may call Stats from any
// goroutine at any time for the run page.
type Session struct {
	cfg Config
	log *slog.Logger
	ifi *net.Interface

	mu    sync.Mutex
	stats Stats
	ran   bool
}

// NewSession checks cfg and fills its defaults. It opens nothing; Run binds
// the sockets.
func NewSession(cfg Config, log *slog.Logger) (*Session, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Interface == "" {
		return nil, errors.New("udpcast: no interface")
	}
	ifi, err := net.InterfaceByName(cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("udpcast: %w", err)
	}
	if !cfg.LocalAddr.IsValid() {
		addrs, err := ifi.Addrs()
		if err != nil {
			return nil, fmt.Errorf("udpcast: addresses of %s: %w", cfg.Interface, err)
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap().Is4() {
					cfg.LocalAddr = ip.Unmap()
					break
				}
			}
		}
		if !cfg.LocalAddr.IsValid() {
			return nil, fmt.Errorf("udpcast: %s has no IPv4 address", cfg.Interface)
		}
	}
	if !cfg.LocalAddr.Is4() {
		return nil, fmt.Errorf("udpcast: local address %s is not IPv4", cfg.LocalAddr)
	}
	if cfg.PortBase <= 0 || cfg.PortBase > 65534 {
		return nil, fmt.Errorf("udpcast: port base %d out of range", cfg.PortBase)
	}
	if !cfg.Rendezvous.IsValid() {
		cfg.Rendezvous = netip.MustParseAddr(DefaultRendezvous)
	}
	if !cfg.DataAddr.IsValid() {
		cfg.DataAddr = DefaultDataAddr(cfg.LocalAddr)
	}
	for _, a := range []netip.Addr{cfg.Rendezvous, cfg.DataAddr} {
		if !a.Is4() || !a.IsMulticast() {
			return nil, fmt.Errorf("udpcast: %s is not an IPv4 multicast group", a)
		}
	}
	if cfg.DataAddr == cfg.Rendezvous {
		// udp-receiver does not join the data group when it equals the
		// rendezvous group, and 224.0.0.1 reaches every host anyway.
		return nil, errors.New("udpcast: data group must differ from the rendezvous group")
	}
	if cfg.TTL == 0 {
		cfg.TTL = 1
	}
	if cfg.TTL < 1 || cfg.TTL > 255 {
		return nil, fmt.Errorf("udpcast: TTL %d out of range", cfg.TTL)
	}
	if cfg.MaxBitrate < 0 {
		return nil, errors.New("udpcast: negative bitrate")
	}
	if len(cfg.Expect) == 0 && cfg.Admit == nil {
		return nil, errors.New("udpcast: neither Expect nor Admit: nobody could join")
	}
	if len(cfg.Expect) > maxClients {
		return nil, fmt.Errorf("udpcast: %d expected receivers, udpcast allows %d", len(cfg.Expect), maxClients)
	}
	for _, a := range cfg.Expect {
		if !a.Is4() {
			return nil, fmt.Errorf("udpcast: expected receiver %s is not IPv4", a)
		}
	}
	if cfg.MaxWait == 0 {
		cfg.MaxWait = DefaultMaxWait
	}
	if cfg.DeadAfter == 0 {
		cfg.DeadAfter = DefaultDeadAfter
	}
	if cfg.HelloInterval == 0 {
		cfg.HelloInterval = DefaultHelloInterval
	}
	if cfg.SliceBlocks == 0 {
		cfg.SliceBlocks = DefaultSliceBlocks
	}
	if cfg.SliceBlocks < 1 || cfg.SliceBlocks > maxSliceBlocks {
		return nil, fmt.Errorf("udpcast: slice of %d blocks out of 1..%d", cfg.SliceBlocks, maxSliceBlocks)
	}
	if cfg.MaxWait < 0 || cfg.DeadAfter < 0 || cfg.HelloInterval < 0 {
		return nil, errors.New("udpcast: negative duration")
	}
	return &Session{cfg: cfg, log: log.With("portbase", cfg.PortBase), ifi: ifi}, nil
}

// Config returns the configuration with its defaults filled in.
func (s *Session) Config() Config { return s.cfg }

// Stats returns a snapshot; safe from any goroutine, also during Run.
func (s *Session) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Receivers = append([]Receiver(nil), s.stats.Receivers...)
	st.RefusedAddrs = append([]netip.Addr(nil), s.stats.RefusedAddrs...)
	st.Missing = append([]netip.Addr(nil), s.stats.Missing...)
	return st
}

// Run sends src to the receivers that join, once, and returns when every
// live receiver acknowledged the end of the stream, when nobody is left, or
// when ctx is done. It binds PortBase+1 on LocalAddr and on the rendezvous
// group for its whole duration and releases both before it returns; nothing
// of the session outlives Run.
//
// Timeline: HELLO now and every HelloInterval; admitted receivers join;
// the data starts when every Expect address joined or MaxWait passed (with
// whoever joined: ErrNoReceivers if nobody). Receivers that go silent for
// DeadAfter are dropped (Stats.Receivers says why); the others go on.
//
// The error is nil when the stream reached the end with at least one
// receiver (some may have been dropped: check Stats.Receivers per seat);
// ErrNoReceivers, ErrAllDropped, ctx's error or a socket/source error
// otherwise. On an error after the data started pumi tells the receivers
// still connected to stop (udp-receiver exits with an error instead of
// waiting forever). src is read from a goroutine: a Read that blocks forever
// is released by closing src.
func (s *Session) Run(ctx context.Context, src io.Reader) (Stats, error) {
	s.mu.Lock()
	if s.ran {
		s.mu.Unlock()
		return Stats{}, errors.New("udpcast: Run called twice")
	}
	s.ran = true
	s.stats.Started = time.Now()
	s.mu.Unlock()

	e, err := newEngine(s)
	if err != nil {
		return s.Stats(), err
	}
	defer e.close()
	// The engine runs on a goroutine of its own: the sockets are bound, and
	// a caller that locked its thread (to bind in a network namespace) would
	// otherwise make every sleep and wake-up of the sender a thread hand-off.
	errc := make(chan error, 1)
	go func() { errc <- e.run(ctx, src) }()
	err = <-errc
	s.mu.Lock()
	s.stats.Finished = time.Now()
	s.mu.Unlock()
	e.publish()
	st := s.Stats()
	if err != nil {
		s.log.Warn("multicast session failed", "err", err, "receivers", len(st.Receivers))
	} else {
		s.log.Info("multicast session done", "bytes", st.PayloadBytes, "wire", st.WireBytes,
			"MiB/s", fmt.Sprintf("%.1f", st.Throughput()/(1<<20)), "receivers", len(st.Receivers))
	}
	return st, err
}
