package udpcast

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// inQueue bounds the messages waiting for the engine; beyond it packets are
// dropped (receivers repeat what matters).
const inQueue = 4096

// dataHello is the HELLO interval during the data phase while a receiver
// has not answered yet: the whole room waits for it, and a HELLO is 28
// bytes.
const dataHello = 100 * time.Millisecond

// ipUDPHeaders is added to each UDP payload for Stats.WireBytes.
const ipUDPHeaders = 28

type inMsg struct {
	from     netip.AddrPort
	m        message
	received bitmap // copy of RETRANSMIT's map
}

type receiver struct {
	addr      netip.AddrPort
	clNr      int
	joinedAt  time.Time
	lastHeard time.Time
	heard     bool // answered anything since the data started
	finished  bool // acknowledged the end of the stream
	droppedAt time.Time
	silent    bool // dropped for silence: maybe alive
	state     ReceiverState
	reason    string
	acked     int64
}

type slice struct {
	no      int32
	buf     []byte // owned buffer (returned to the reader when acked)
	data    []byte
	blocks  int
	next    int // next block of the first transmission
	ready   bitmap
	answers bitmap // answered the current REQACK round (ready or retransmit)
	rxmit   bitmap // blocks somebody is missing
	needRx  bool
	round   int32 // rxmit id of the current REQACK round
	epoch   int32 // first round after the last retransmission
	askedAt time.Time
	first   time.Time // first REQACK
	backoff int
	// best and worst are the fewest and most blocks a receiver missed in
	// the first round (answers counts them): the rate controller's signal.
	best, worst, answers0 int
	adapted               bool
}

func (sl *slice) note(missing int) {
	if sl.answers0 == 0 || missing < sl.best {
		sl.best = missing
	}
	sl.worst = max(sl.worst, missing)
	sl.answers0++
}

func (sl *slice) sent() bool { return sl.next >= sl.blocks }

type chunk struct {
	buf []byte
	n   int
	err error // io.EOF: end of stream (n == 0)
}

type engine struct {
	s    *Session
	cfg  Config
	ctrl *net.UDPConn
	rdv  *net.UDPConn
	in   chan inMsg
	done chan struct{}

	data    netip.AddrPort // data group, receivers' port
	hello   netip.AddrPort // rendezvous group, receivers' port
	byAddr  map[netip.Addr]*receiver
	order   []*receiver
	expect  map[netip.Addr]bool
	started bool

	prev, cur *slice
	nextNo    int32
	atEnd     bool
	chunks    chan chunk
	free      chan []byte

	srtt      time.Duration
	rate      float64 // pacing, bytes/s of IP packets
	burst     int     // bytes the pacer may send back-to-back to catch up
	slowStart bool
	pace      time.Time // token bucket: when the next packet may leave
	lastHello time.Time
	refuseTok float64
	refuseAt  time.Time
	pkt       []byte

	st Stats // engine-owned, published to Session.stats
}

func newEngine(s *Session) (*engine, error) {
	cfg := s.cfg
	e := &engine{
		s: s, cfg: cfg,
		in:        make(chan inMsg, inQueue),
		done:      make(chan struct{}),
		data:      netip.AddrPortFrom(cfg.DataAddr, uint16(cfg.PortBase)),
		hello:     netip.AddrPortFrom(cfg.Rendezvous, uint16(cfg.PortBase)),
		byAddr:    map[netip.Addr]*receiver{},
		expect:    map[netip.Addr]bool{},
		srtt:      5 * time.Millisecond,
		rate:      initialRate,
		burst:     256 << 10,
		slowStart: true,
		pkt:       make([]byte, 0, dataHeaderLen+BlockSize),
	}
	for _, a := range cfg.Expect {
		e.expect[a] = true
	}
	if cfg.MaxBitrate > 0 {
		e.rate = min(e.rate, float64(cfg.MaxBitrate))
	}
	var err error
	e.ctrl, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(cfg.LocalAddr, uint16(cfg.PortBase+1))))
	if err != nil {
		return nil, fmt.Errorf("udpcast: %w", err)
	}
	if err := setMulticastOpts(e.ctrl, s.ifi.Index, cfg.TTL); err != nil {
		e.ctrl.Close()
		return nil, fmt.Errorf("udpcast: %w", err)
	}
	e.rdv, err = listenGroup(cfg.Rendezvous, cfg.PortBase+1, s.ifi.Index)
	if err != nil {
		e.ctrl.Close()
		return nil, fmt.Errorf("udpcast: rendezvous group: %w", err)
	}
	go e.read(e.ctrl)
	go e.read(e.rdv)
	return e, nil
}

// listenGroup binds group:port itself (net.ListenMulticastUDP would bind the
// wildcard address, which collides with the control socket's port and would
// see unicast too) and joins the group on the lab NIC.
func listenGroup(group netip.Addr, port, ifindex int) (*net.UDPConn, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "rendezvous")
	defer f.Close()
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return nil, fmt.Errorf("SO_REUSEADDR: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port, Addr: group.As4()}); err != nil {
		return nil, fmt.Errorf("bind %s:%d: %w", group, port, err)
	}
	if err := unix.SetsockoptIPMreqn(fd, unix.IPPROTO_IP, unix.IP_ADD_MEMBERSHIP, &unix.IPMreqn{Multiaddr: group.As4(), Ifindex: int32(ifindex)}); err != nil {
		return nil, fmt.Errorf("join %s: %w", group, err)
	}
	pc, err := net.FilePacketConn(f)
	if err != nil {
		return nil, err
	}
	c, ok := pc.(*net.UDPConn)
	if !ok {
		pc.Close()
		return nil, fmt.Errorf("not a UDP socket: %T", pc)
	}
	return c, nil
}

// setMulticastOpts: send multicast out of the lab NIC with the TTL, without
// looping it back to ourselves, and keep a large receive buffer for the
// acknowledgements of a full room.
func setMulticastOpts(c *net.UDPConn, ifindex, ttl int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		f := int(fd)
		if serr = unix.SetsockoptIPMreqn(f, unix.IPPROTO_IP, unix.IP_MULTICAST_IF, &unix.IPMreqn{Ifindex: int32(ifindex)}); serr != nil {
			serr = fmt.Errorf("IP_MULTICAST_IF: %w", serr)
			return
		}
		if serr = unix.SetsockoptInt(f, unix.IPPROTO_IP, unix.IP_MULTICAST_TTL, ttl); serr != nil {
			serr = fmt.Errorf("IP_MULTICAST_TTL: %w", serr)
			return
		}
		if serr = unix.SetsockoptInt(f, unix.IPPROTO_IP, unix.IP_MULTICAST_LOOP, 0); serr != nil {
			serr = fmt.Errorf("IP_MULTICAST_LOOP: %w", serr)
			return
		}
		_ = unix.SetsockoptInt(f, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
		// The send buffer stays at the kernel default on purpose: it bounds
		// what waits in a shaping qdisc (tc tbf, a slow link) to ~200 KiB,
		// so acknowledgements and retransmissions are not queued behind
		// seconds of data.
	})
	if err != nil {
		return err
	}
	return serr
}

func (e *engine) close() {
	close(e.done)
	e.ctrl.Close()
	e.rdv.Close()
}

// read forwards parsed receiver messages until the socket is closed.
func (e *engine) read(c *net.UDPConn) {
	buf := make([]byte, 2048)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		m, err := parseMessage(buf[:n])
		if err != nil {
			continue
		}
		im := inMsg{from: netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), m: m}
		if m.received != nil {
			copy(im.received[:], m.received)
			im.m.received = nil
		}
		select {
		case e.in <- im:
		case <-e.done:
			return
		default: // full: drop, the receiver repeats
		}
	}
}

// reader fills slices from src ahead of the sender (two buffers in flight
// plus two being read), so a slow source never stalls acknowledgements.
func (e *engine) reader(src io.Reader) {
	for {
		var buf []byte
		select {
		case buf = <-e.free:
		case <-e.done:
			return
		}
		n, err := io.ReadFull(src, buf)
		switch {
		case err == nil:
		case errors.Is(err, io.ErrUnexpectedEOF):
			err = nil // a short last slice; EOF follows
		case errors.Is(err, io.EOF):
		default:
			err = fmt.Errorf("udpcast: reading the stream: %w", err)
		}
		if n > 0 {
			select {
			case e.chunks <- chunk{buf: buf, n: n}:
			case <-e.done:
				return
			}
			if err == nil {
				continue
			}
			err = io.EOF
		}
		if err == nil {
			err = io.EOF
		}
		select {
		case e.chunks <- chunk{err: err}:
		case <-e.done:
		}
		return
	}
}

func (e *engine) run(ctx context.Context, src io.Reader) error {
	sliceBytes := e.cfg.SliceBlocks * BlockSize
	e.chunks = make(chan chunk, 2)
	e.free = make(chan []byte, 4)
	for range 4 {
		e.free <- make([]byte, sliceBytes)
	}
	go e.reader(src)

	if err := e.rendezvous(ctx); err != nil {
		return err
	}
	e.started = true
	now := time.Now()
	e.st.DataFrom = now
	for _, r := range e.order {
		r.lastHeard = now
	}
	e.publish()
	e.s.log.Info("multicast data starts", "receivers", len(e.order), "data", e.data, "slice_blocks", e.cfg.SliceBlocks)
	err := e.stream(ctx)
	if err != nil {
		e.abort()
		return err
	}
	e.endKick(ctx)
	return nil
}

// endKick: a receiver dropped for silence in the last slices may be alive
// (a stalled disk) and would wait for more data forever. Once the finished
// receivers have exited (udp-receiver leaves 0.5 s after the last packet),
// a data packet ahead of the stream makes it exit with an error too.
func (e *engine) endKick(ctx context.Context) {
	need := false
	for _, r := range e.order {
		need = need || r.silent
	}
	if !need {
		return
	}
	t := time.NewTimer(2 * time.Second)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
		e.kick(e.data)
	}
}

// rendezvous answers connect requests until every expected receiver joined
// or MaxWait passed.
func (e *engine) rendezvous(ctx context.Context) error {
	wait, joined := e.cfg.MaxWait, false
	if e.cfg.FirstWait > 0 {
		wait = e.cfg.FirstWait
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(e.cfg.HelloInterval)
	defer tick.Stop()
	if err := e.sendHello(); err != nil {
		return err
	}
	for !e.allExpectedJoined() {
		select {
		case <-ctx.Done():
			e.refuseAll()
			return ctx.Err()
		case <-tick.C:
			if err := e.sendHello(); err != nil {
				return err
			}
		case <-deadline.C:
			if e.live() == 0 {
				return fmt.Errorf("udpcast: after %v: %w", wait, ErrNoReceivers)
			}
			e.s.log.Info("multicast max wait passed", "joined", len(e.order), "expected", len(e.expect))
			return nil
		case im := <-e.in:
			e.handleRendezvous(im)
			if !joined && e.live() > 0 {
				joined = true
				if e.cfg.FirstWait > 0 {
					// The room's wait starts with its first ready seat.
					deadline.Reset(e.cfg.MaxWait)
					wait = e.cfg.MaxWait
				}
			}
		}
	}
	return nil
}

func (e *engine) allExpectedJoined() bool {
	if len(e.expect) == 0 {
		return false
	}
	for a := range e.expect {
		if _, ok := e.byAddr[a]; !ok {
			return false
		}
	}
	return true
}

func (e *engine) admitted(a netip.Addr) bool {
	if e.expect[a] {
		return true
	}
	return e.cfg.Admit != nil && e.cfg.Admit(a)
}

func (e *engine) handleRendezvous(im inMsg) {
	a := im.from.Addr()
	switch im.m.op {
	case opConnectReq:
		if r, ok := e.byAddr[a]; ok {
			r.addr = im.from // a restarted receiver may have a new port
			e.reply(r)
			return
		}
		if !e.admitted(a) {
			e.refuse(im.from, "not admitted")
			return
		}
		if len(e.order) >= maxClients {
			e.refuse(im.from, "session full")
			return
		}
		r := &receiver{addr: im.from, clNr: len(e.order), joinedAt: time.Now(), state: Joined}
		e.byAddr[a] = r
		e.order = append(e.order, r)
		e.s.log.Info("multicast receiver joined", "addr", im.from, "client", r.clNr, "rcvbuf", im.m.rcvbuf)
		// Bursts stay within half the smallest receive buffer announced
		// (udp-receiver sends its SO_RCVBUF), between 32 and 256 KiB.
		if b := int(im.m.rcvbuf / 2); b > 0 {
			e.burst = min(e.burst, max(b, 32<<10))
		}
		e.reply(r)
		e.publish()
	case opDisconnect:
		// A receiver that gives up before the start (e.g. its start timeout)
		// must not hold the room: forget it, the slot number stays unique.
		if r, ok := e.byAddr[a]; ok && r.addr == im.from && r.state == Joined {
			r.state, r.reason, r.droppedAt = Dropped, "disconnected before the start", time.Now()
			delete(e.byAddr, a)
			e.publish()
		}
	}
}

// reply sends r its CONNECT_REPLY (again, if asked again).
func (e *engine) reply(r *receiver) {
	e.sendTo(appendConnectReply(e.pkt[:0], int32(r.clNr), e.cfg.DataAddr), r.addr)
}

// refuse answers a connect request with client number -1, which makes
// udp-receiver exit at once. Rate-limited (50/s): the source address of a
// request is not trusted, so pumi must not become a reflector.
func (e *engine) refuse(to netip.AddrPort, why string) {
	now := time.Now()
	e.refuseTok += now.Sub(e.refuseAt).Seconds() * 50
	if e.refuseTok > 50 {
		e.refuseTok = 50
	}
	e.refuseAt = now
	e.st.Refused++
	first := len(e.st.RefusedAddrs) < 16
	for _, a := range e.st.RefusedAddrs {
		if a == to.Addr() {
			first = false
		}
	}
	if first {
		e.st.RefusedAddrs = append(e.st.RefusedAddrs, to.Addr())
		e.s.log.Warn("multicast receiver refused", "addr", to, "why", why)
	}
	if e.refuseTok < 1 {
		return
	}
	e.refuseTok--
	e.sendTo(appendConnectReply(e.pkt[:0], -1, e.cfg.DataAddr), to)
}

// refuseAll tells every joined receiver to give up (cancelled before the
// start): one that is still waiting for its reply gets a refusal, one that
// has it waits for data and gets a data packet far ahead of the stream.
func (e *engine) refuseAll() {
	e.kick(e.data)
	for _, r := range e.order {
		if r.state == Joined {
			e.sendTo(appendConnectReply(e.pkt[:0], -1, e.cfg.DataAddr), r.addr)
			e.kick(r.addr)
			r.state, r.reason, r.droppedAt = Dropped, "session cancelled before the start", time.Now()
		}
	}
}

func (e *engine) sendHello() error {
	e.lastHello = time.Now()
	return e.sendTo(appendHello(e.pkt[:0], e.cfg.DataAddr), e.hello)
}

func (e *engine) sendTo(p []byte, to netip.AddrPort) error {
	e.waitPace(len(p))
	err := e.write(p, to)
	if err != nil {
		if errors.Is(err, net.ErrClosed) {
			return err
		}
		// ENOBUFS, EHOSTUNREACH for a vanished receiver: like loss.
		e.s.log.Debug("multicast send", "to", to, "err", err)
		return nil
	}
	e.st.WireBytes += int64(len(p) + ipUDPHeaders)
	return nil
}

// Rate control. Loss on the wire (before the switch copies a packet) hits
// every receiver alike; a receiver that cannot keep up (its socket buffer
// overflows: a slow CPU or disk) misses blocks the others got. So the
// signal is the spread between the receiver that missed most blocks of a
// slice's first transmission and the one that missed fewest: random loss
// does not slow the sender down, a receiver falling behind does. AIMD on
// the pacing rate: fast growth until the first sign of overload, then
// gentler growth (×1.08 per clean slice), ×0.8 when the spread passes 4 %
// of the slice (tuned on this project's loaded 2-core CI machine with 10
// receivers: wire bytes stay near 1.05-1.1× the image).
const (
	initialRate = 8 << 20
	minRate     = 256 << 10
)

func (e *engine) adapt(sl *slice) {
	// Slices 0 and 1 also carry the receivers' start (joining the group,
	// opening their output): no signal.
	if sl.adapted || sl.no < 2 || sl.blocks < 32 || sl.answers0 == 0 {
		return
	}
	sl.adapted = true
	spread := float64(sl.worst-sl.best) / float64(sl.blocks)
	defer func() {
		e.s.log.Debug("rate", "slice", sl.no, "best", sl.best, "worst", sl.worst, "answers", sl.answers0, "rate_MiBps", e.rate/(1<<20), "srtt", e.srtt)
	}()
	switch {
	case spread > 0.04:
		e.rate = max(e.rate*0.8, minRate)
		e.slowStart = false
	case spread <= 0.01:
		if e.slowStart {
			e.rate *= 1.25
		} else {
			e.rate *= 1.08
		}
	}
	if e.cfg.MaxBitrate > 0 && e.rate > float64(e.cfg.MaxBitrate) {
		e.rate = float64(e.cfg.MaxBitrate)
	}
}

// write sends one datagram. When the socket buffer is full it waits in
// poll(2) on this thread, not in Go's network poller: on a busy machine the
// poller's wake-up (another thread, then the scheduler) costs milliseconds
// per full buffer, which at the receivers' pace is most packets.
func (e *engine) write(p []byte, to netip.AddrPort) error {
	rc, err := e.ctrl.SyscallConn()
	if err != nil {
		return err
	}
	sa := &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}
	var serr error
	cerr := rc.Control(func(fd uintptr) {
		// A buffer that stays full for a second (link down) counts as
		// loss; the caller's context is checked between packets.
		for range 10 {
			serr = unix.Sendto(int(fd), p, 0, sa)
			if serr != unix.EAGAIN {
				return
			}
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
			if _, err := unix.Poll(pfd, 100); err != nil && err != unix.EINTR {
				serr = err
				return
			}
		}
	})
	if cerr != nil {
		return cerr
	}
	return serr
}

// waitPace holds the sender to its rate (a token bucket of ~1 ms).
func (e *engine) waitPace(n int) {
	if e.rate <= 0 {
		return
	}
	// Credit of up to e.burst bytes: a sleep that overshoots (a loaded
	// machine wakes the sender late) is made up by a burst that fits the
	// receivers' socket buffers, instead of silently lowering the rate.
	now := time.Now()
	credit := time.Duration(float64(e.burst) / e.rate * float64(time.Second))
	if floor := now.Add(-credit); e.pace.Before(floor) {
		e.pace = floor
	}
	if d := e.pace.Sub(now); d > time.Millisecond {
		time.Sleep(d)
	}
	e.pace = e.pace.Add(time.Duration(float64(n+ipUDPHeaders) / e.rate * float64(time.Second)))
}

func (e *engine) live() int {
	n := 0
	for _, r := range e.order {
		if r.state == Joined {
			n++
		}
	}
	return n
}

// stream is the data phase: at most two slices in flight (udp-receiver
// exits with "Dropped by server" when slice n+2 arrives before it has slice
// n): cur is transmitted while prev is being acknowledged.
func (e *engine) stream(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	lastPublish := time.Now()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		// At most one queue's worth per turn: a flood on the VLAN must not
		// keep the sender from sending.
	drain:
		for range inQueue {
			select {
			case im := <-e.in:
				e.handleData(im)
			default:
				break drain
			}
		}
		now := time.Now()
		if now.Sub(lastPublish) > 200*time.Millisecond {
			e.publish()
			lastPublish = now
		}
		e.dropDead(now)
		if e.live() == 0 {
			return ErrAllDropped
		}
		if e.prev != nil && e.allReady(e.prev) {
			e.adapt(e.prev)
			e.acked(e.prev)
			e.prev = nil
		}
		if e.prev == nil && e.cur != nil && e.cur.sent() {
			e.prev, e.cur = e.cur, nil
			e.prev.first = now
			e.reqAck(e.prev)
			continue
		}
		if e.prev == nil && e.cur == nil && e.atEnd {
			return nil
		}
		if e.hasUnheard() && now.Sub(e.lastHello) >= min(e.cfg.HelloInterval, dataHello) {
			// A receiver whose CONNECT_REPLY was lost waits for a HELLO to
			// ask again (udp-sender stalls here until it drops it).
			if err := e.sendHello(); err != nil {
				return err
			}
		}
		if p := e.prev; p != nil && (e.allAnswered(p) || !now.Before(p.askedAt.Add(e.rto(p)))) {
			if e.allAnswered(p) {
				e.sample(now.Sub(p.askedAt))
				p.backoff = 0
			} else {
				p.backoff++
			}
			e.adapt(p)
			p.round++
			if p.needRx {
				if err := e.retransmit(p); err != nil {
					return err
				}
				// Answers from before the retransmission ask for blocks
				// just sent again: from now on only this round counts.
				p.epoch = p.round
				p.answers = p.ready
			}
			e.reqAck(p)
			continue
		}
		if e.cur == nil && !e.atEnd {
			select {
			case c := <-e.chunks:
				if err := e.newSlice(c); err != nil {
					return err
				}
			default:
			}
		}
		// A receiver that has not answered yet may still be connecting (its
		// reply was lost): it must see slice 0 before any block of slice 1,
		// or udp-receiver dies with "Previous slice size not known". So
		// slice 1 waits until every receiver answered once.
		if c := e.cur; c != nil && !c.sent() && (c.no == 0 || !e.hasUnheard()) {
			if err := e.sendBlocks(c, 16); err != nil {
				return err
			}
			continue
		}
		// Nothing to send: wait for an answer, the source or a timeout.
		wait := e.cfg.HelloInterval
		if e.hasUnheard() {
			wait = min(wait, dataHello)
		}
		if e.prev != nil {
			if d := time.Until(e.prev.askedAt.Add(e.rto(e.prev))); d < wait {
				wait = d
			}
		}
		if wait < 0 {
			wait = 0
		}
		timer.Reset(wait)
		var chunks chan chunk
		if e.cur == nil && !e.atEnd {
			chunks = e.chunks
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case im := <-e.in:
			e.handleData(im)
		case c := <-chunks:
			if err := e.newSlice(c); err != nil {
				return err
			}
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

func (e *engine) newSlice(c chunk) error {
	if c.err != nil && !errors.Is(c.err, io.EOF) {
		return c.err
	}
	sl := &slice{no: e.nextNo}
	e.nextNo++
	if c.err != nil { // EOF: the zero-length slice that ends the stream
		e.atEnd = true
	} else {
		sl.buf, sl.data = c.buf, c.buf[:c.n]
		sl.blocks = (c.n + BlockSize - 1) / BlockSize
	}
	e.cur = sl
	e.st.Slices++
	return nil
}

// sendBlocks sends the next up-to-n blocks of sl's first transmission.
func (e *engine) sendBlocks(sl *slice, n int) error {
	for ; n > 0 && sl.next < sl.blocks; n-- {
		if err := e.sendBlock(sl, sl.next); err != nil {
			return err
		}
		sl.next++
	}
	return nil
}

func (e *engine) sendBlock(sl *slice, i int) error {
	lo := i * BlockSize
	hi := min(lo+BlockSize, len(sl.data))
	p := e.pkt[:dataHeaderLen]
	putDataHeader(p, sl.no, uint16(i), int32(len(sl.data)))
	p = append(p, sl.data[lo:hi]...)
	e.st.DataPackets++
	return e.sendTo(p, e.data)
}

// retransmit sends every block somebody missed, once, and clears the map.
func (e *engine) retransmit(sl *slice) error {
	for i := 0; i < sl.blocks; i++ {
		if sl.rxmit.has(i) {
			if err := e.sendBlock(sl, i); err != nil {
				return err
			}
			e.st.Retransmitted++
		}
	}
	sl.rxmit = bitmap{}
	sl.needRx = false
	return nil
}

func (e *engine) reqAck(sl *slice) {
	sl.askedAt = time.Now()
	e.sendTo(appendReqAck(e.pkt[:0], sl.no, int32(len(sl.data)), sl.round, &sl.ready), e.data)
}

// maxRTO bounds the wait for answers to a REQACK: a lost REQACK (it goes to
// every receiver at once) costs at most this.
const maxRTO = 500 * time.Millisecond

// rto is how long a REQACK round waits for the answers before it is
// repeated: a few round trips, doubled on each silent round.
func (e *engine) rto(sl *slice) time.Duration {
	d := 2*e.srtt + 10*time.Millisecond
	for i := 0; i < sl.backoff && d < maxRTO; i++ {
		d *= 2
	}
	return min(d, maxRTO)
}

func (e *engine) sample(d time.Duration) {
	e.srtt = (7*e.srtt + d) / 8
}

func (e *engine) allReady(sl *slice) bool {
	for _, r := range e.order {
		if r.state == Joined && !sl.ready.has(r.clNr) {
			return false
		}
	}
	return true
}

func (e *engine) allAnswered(sl *slice) bool {
	for _, r := range e.order {
		if r.state == Joined && !sl.answers.has(r.clNr) {
			return false
		}
	}
	return true
}

func (e *engine) hasUnheard() bool {
	for _, r := range e.order {
		if r.state == Joined && !r.heard {
			return true
		}
	}
	return false
}

// acked: every live receiver has the slice.
func (e *engine) acked(sl *slice) {
	n := int64(len(sl.data))
	e.st.PayloadBytes += n
	for _, r := range e.order {
		if r.state == Joined {
			r.acked += n
			if sl.blocks == 0 {
				r.state = Done
			}
		}
	}
	if sl.buf != nil {
		e.free <- sl.buf
	}
}

func (e *engine) find(no int32) *slice {
	if e.prev != nil && e.prev.no == no {
		return e.prev
	}
	if e.cur != nil && e.cur.no == no {
		return e.cur
	}
	return nil
}

func (e *engine) handleData(im inMsg) {
	a := im.from.Addr()
	r, ok := e.byAddr[a]
	if !ok || r.state != Joined || r.addr != im.from {
		if im.m.op == opConnectReq {
			why := "asked after the data started"
			if !ok && !e.admitted(a) {
				why = "not admitted"
			}
			e.refuse(im.from, why)
		}
		return
	}
	r.lastHeard = time.Now()
	switch im.m.op {
	case opConnectReq:
		if !r.heard {
			// Its CONNECT_REPLY was lost: nothing was acknowledged without
			// it, so slice 0 is still in flight and it can start now.
			e.reply(r)
			return
		}
		e.drop(r, "restarted during the stream")
		e.refuse(im.from, "restarted during the stream")
	case opOK:
		r.heard = true
		if sl := e.find(im.m.slice); sl != nil {
			if sl.epoch == 0 && !sl.answers.has(r.clNr) {
				sl.note(0)
			}
			sl.ready.set(r.clNr)
			sl.answers.set(r.clNr)
			if sl.blocks == 0 {
				r.finished = true
			}
		}
	case opRetransmit:
		r.heard = true
		sl := e.find(im.m.slice)
		if sl == nil || im.m.rxmit < sl.epoch || im.m.rxmit > sl.round {
			return // an answer from before the last retransmission
		}
		missing := 0
		for i := 0; i < sl.blocks; i++ {
			if !im.received.has(i) {
				sl.rxmit.set(i)
				sl.needRx = true
				missing++
			}
		}
		if sl.epoch == 0 && !sl.answers.has(r.clNr) {
			sl.note(missing)
		}
		sl.answers.set(r.clNr)
	case opDisconnect:
		if r.finished {
			// It has the whole stream and left after its exit wait while
			// others still answer: that is success.
			r.state = Done
			e.publish()
			return
		}
		e.drop(r, "receiver exited before the end")
	}
}

// dropDead drops receivers that owe prev an answer and have said nothing
// for DeadAfter.
func (e *engine) dropDead(now time.Time) {
	p := e.prev
	if p == nil {
		return
	}
	for _, r := range e.order {
		if r.state != Joined || p.ready.has(r.clNr) {
			continue
		}
		since := r.lastHeard
		if p.first.After(since) {
			since = p.first
		}
		if now.Sub(since) > e.cfg.DeadAfter {
			r.silent = true
			e.drop(r, fmt.Sprintf("silent for %v", now.Sub(since).Round(time.Second)))
		}
	}
}

// drop leaves r out of the session. A receiver that is still alive is told
// to stop: a data packet two slices ahead makes udp-receiver exit with
// "Dropped by server" rather than wait forever.
func (e *engine) drop(r *receiver, why string) {
	r.state, r.reason, r.droppedAt = Dropped, why, time.Now()
	e.s.log.Warn("multicast receiver dropped", "addr", r.addr, "client", r.clNr, "why", why)
	e.kick(r.addr)
	e.publish()
}

func (e *engine) kick(to netip.AddrPort) {
	p := e.pkt[:dataHeaderLen]
	putDataHeader(p, e.nextNo+10, 0, BlockSize)
	p = append(p, make([]byte, BlockSize)...)
	for range 2 {
		e.sendTo(p, to)
	}
}

// abort: the stream will not finish; make every live receiver exit with an
// error now (the ones that never got their reply, too).
func (e *engine) abort() {
	e.kick(e.data)
	for _, r := range e.order {
		if r.state != Joined {
			continue
		}
		if r.heard {
			e.kick(r.addr)
		} else {
			e.sendTo(appendConnectReply(e.pkt[:0], -1, e.cfg.DataAddr), r.addr)
		}
		r.state, r.reason, r.droppedAt = Dropped, "session aborted", time.Now()
	}
}

// publish copies the engine's view into Session.stats for Stats().
func (e *engine) publish() {
	rs := make([]Receiver, 0, len(e.order))
	for _, r := range e.order {
		rs = append(rs, Receiver{Addr: r.addr.Addr(), ClientNo: r.clNr, JoinedAt: r.joinedAt, State: r.state, Reason: r.reason, DroppedAt: r.droppedAt, Acked: r.acked})
	}
	var missing []netip.Addr
	for _, a := range e.cfg.Expect {
		if _, ok := e.byAddr[a]; !ok {
			missing = append(missing, a)
		}
	}
	e.s.mu.Lock()
	defer e.s.mu.Unlock()
	st := &e.s.stats
	st.Missing = missing
	st.DataFrom = e.st.DataFrom
	st.Receivers = rs
	st.Refused = e.st.Refused
	st.RefusedAddrs = append([]netip.Addr(nil), e.st.RefusedAddrs...)
	st.PayloadBytes = e.st.PayloadBytes
	st.WireBytes = e.st.WireBytes
	st.DataPackets = e.st.DataPackets
	st.Retransmitted = e.st.Retransmitted
	st.Slices = e.st.Slices
}
