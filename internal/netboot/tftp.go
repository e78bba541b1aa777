package netboot

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/pumi-lab/pumi/internal/macaddr"
)

const (
	// tftpMaxBlockSize caps the negotiated blksize at what fits one Ethernet
	// frame (1500 MTU - 20 IP - 8 UDP - 4 TFTP), the value UEFI firmware asks
	// for itself. Clients asking for less get exactly what they asked for;
	// larger requests (tftp-hpa and curl allow up to 65464) would only produce
	// IP fragments, which cheap switches and firmware stacks handle badly.
	tftpMaxBlockSize = 1468
	// tftpMaxWindow caps the RFC 7440 windowsize (blocks sent before waiting
	// for an ACK). EDK2 asks for 4 when configured to, atftp for what its
	// user says. 64 blocks of 1468 bytes are ~94 KB in flight per client,
	// which a switch port buffers easily; beyond it only losses grow.
	tftpMaxWindow = 64
	// tftpTimeout is how long the server waits for an ACK before sending the
	// window again (the client's RFC 2349 "timeout" option overrides it);
	// tftpRetries bounds how often. A vanished client thus holds a transfer
	// (one goroutine, one socket, one open file) for at most ~10 s.
	tftpTimeout = 2 * time.Second
	tftpRetries = 5
	// tftpMaxNameLen bounds the requested file name. Real boot file names are
	// short; anything longer is an attack or garbage.
	tftpMaxNameLen = 255
	// tftpMaxTransfers bounds the transfers running at once, i.e. the
	// sockets, open files and goroutines an outsider can make pumi hold
	// (each transfer costs two fds and ~2 KB of buffers besides its
	// goroutine). A lab of 40 seats booting together needs 40. The appliance
	// shares its process, and so its fd limit, with HTTP and NFS.
	tftpMaxTransfers = 128
	// tftpMaxPerClient bounds the transfers one client address runs at once,
	// so one address cannot take every slot with transfers it keeps alive.
	// A PC fetches one file at a time, but several may share an address
	// (behind a relay's NAT, or a test's client namespace), so it is a
	// quarter of the total rather than 1.
	tftpMaxPerClient = tftpMaxTransfers / 4
)

// TFTP error codes used (RFC 1350).
const (
	tftpErrUndefined = 0
	tftpErrNotFound  = 1
	tftpErrAccess    = 2
	tftpErrIllegalOp = 4
)

// TFTP opcodes.
const (
	tftpRRQ   = 1
	tftpWRQ   = 2
	tftpDATA  = 3
	tftpACK   = 4
	tftpERROR = 5
	tftpOACK  = 6
)

// TFTP serves a read-only file tree (the iPXE binaries) over TFTP (RFC 1350).
// Write requests are refused with a TFTP error. It negotiates blksize (RFC
// 2348, up to tftpMaxBlockSize), tsize and timeout (RFC 2349) and windowsize
// (RFC 7440, up to tftpMaxWindow), and logs one line per transfer.
//
// What an outsider can make it hold is bounded: at most tftpMaxTransfers
// transfers (tftpMaxPerClient per client address), each with one socket, one
// open file and one packet buffer. When the bound is reached, the oldest
// transfer that never got a single ACK (a request whose sender does not
// answer: a flood, or a client that went away) makes room for the new one;
// if every transfer is alive, the new request gets a "busy" error and the
// client retries. So a flood of requests that are never acknowledged cannot
// lock a real client out.
type TFTP struct {
	files fs.FS
	log   *slog.Logger
	noisy *limitedLog // lines an outsider can trigger at will

	maxTransfers, maxPerClient int

	mu       sync.Mutex
	active   map[*tftpTransfer]struct{}
	perIP    map[netip.Addr]int
	peakSeen int // highest number of transfers at once, for tests and logs
}

// tftpTransfer is one running read transfer.
type tftpTransfer struct {
	conn    *net.UDPConn
	peer    netip.AddrPort
	started time.Time
	acked   bool // under TFTP.mu: the client acknowledged something
	evicted bool // under TFTP.mu
}

// NewTFTP returns a server for the files in files (e.g. assets.IPXE()).
func NewTFTP(files fs.FS, log *slog.Logger) *TFTP {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &TFTP{
		files:        files,
		log:          log,
		noisy:        newLimitedLog(log, nil),
		maxTransfers: tftpMaxTransfers,
		maxPerClient: tftpMaxPerClient,
		active:       map[*tftpTransfer]struct{}{},
		perIP:        map[netip.Addr]int{},
	}
}

// Serve answers TFTP read requests arriving on conn until ctx is done, then
// aborts running transfers, waits for their goroutines and returns nil.
// Serve takes ownership of conn and closes it.
//
// Each transfer gets its own socket (standard TFTP TIDs), created by the
// goroutine that called Serve. A caller that locked its OS thread into a
// network namespace therefore keeps every transfer socket in that namespace;
// Serve deliberately does not move the request loop to another goroutine.
func (t *TFTP) Serve(ctx context.Context, conn *net.UDPConn) error {
	if conn == nil {
		return errors.New("tftp: no socket: pass a UDP socket bound to port 69")
	}
	if t.files == nil {
		conn.Close()
		return errors.New("tftp: no files to serve: pass the iPXE binaries (assets.IPXE())")
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	local := conn.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()
	t.log.Info("tftp: serving", "addr", conn.LocalAddr().String(), "max_blksize", tftpMaxBlockSize,
		"max_windowsize", tftpMaxWindow, "max_transfers", t.maxTransfers)

	var wg sync.WaitGroup
	// An RRQ is one datagram; its name and options fit in 512 bytes in
	// practice (RFC 2347 asks clients to keep it so). Longer ones arrive
	// truncated and are refused by the parser.
	buf := make([]byte, 1024)
	var err error
	for {
		var n int
		var peer netip.AddrPort
		n, peer, err = conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				err = nil
				break
			}
			t.noisy.Log(slog.LevelWarn, "tftp: read failed", "err", err)
			continue
		}
		peer = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
		t.request(ctx, conn, local, buf[:n], peer, &wg)
	}
	conn.Close()
	t.mu.Lock()
	for x := range t.active {
		x.conn.Close()
	}
	t.mu.Unlock()
	wg.Wait()
	t.noisy.Flush()
	if err != nil {
		return fmt.Errorf("tftp: serving on %s stopped: %w", conn.LocalAddr(), err)
	}
	return nil
}

// tftpOptions is what was negotiated for one transfer.
type tftpOptions struct {
	blksize, window int
	timeout         time.Duration
	oack            []string // name, value pairs to acknowledge; empty: no OACK
}

// parseRRQ reads an RRQ's file name, mode and options. Unknown options are
// ignored (RFC 2347); malformed ones are an error.
func parseRRQ(p []byte) (name, mode string, opts map[string]string, err error) {
	if len(p) < 2 || p[len(p)-1] != 0 {
		return "", "", nil, errors.New("request is not NUL-terminated")
	}
	f := strings.Split(string(p[:len(p)-1]), "\x00")
	if len(f) < 2 || len(f)%2 != 0 {
		return "", "", nil, errors.New("request has no mode or an option without a value")
	}
	name, mode = f[0], strings.ToLower(f[1])
	if mode != "octet" && mode != "netascii" {
		return "", "", nil, fmt.Errorf("transfer mode %q not supported", f[1])
	}
	opts = map[string]string{}
	for i := 2; i+1 < len(f); i += 2 {
		opts[strings.ToLower(f[i])] = f[i+1]
	}
	return name, mode, opts, nil
}

// negotiate turns the client's options into what this transfer uses and what
// the OACK says. An option out of its valid range is ignored, as RFC 2347
// allows, so the client falls back to the RFC 1350 default.
func negotiate(opts map[string]string, size int64) tftpOptions {
	o := tftpOptions{blksize: 512, window: 1, timeout: tftpTimeout}
	num := func(name string, lo, hi int) (int, bool) {
		v, ok := opts[name]
		if !ok {
			return 0, false
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < lo {
			return 0, false
		}
		return min(n, hi), true
	}
	// Fixed order, so OACKs are reproducible.
	if n, ok := num("blksize", 8, 65464); ok {
		o.blksize = min(n, tftpMaxBlockSize)
		o.oack = append(o.oack, "blksize", strconv.Itoa(o.blksize))
	}
	if v, ok := opts["tsize"]; ok && v == "0" {
		o.oack = append(o.oack, "tsize", strconv.FormatInt(size, 10))
	}
	if n, ok := num("timeout", 1, 255); ok {
		o.timeout = time.Duration(n) * time.Second
		o.oack = append(o.oack, "timeout", strconv.Itoa(n))
	}
	if n, ok := num("windowsize", 1, 65535); ok {
		o.window = min(n, tftpMaxWindow)
		o.oack = append(o.oack, "windowsize", strconv.Itoa(o.window))
	}
	return o
}

// request handles one datagram that arrived on port 69.
func (t *TFTP) request(ctx context.Context, conn *net.UDPConn, local netip.Addr, p []byte, peer netip.AddrPort, wg *sync.WaitGroup) {
	if len(p) < 2 {
		t.noisy.Log(slog.LevelInfo, "tftp: junk packet ignored", "client", peer.String(), "bytes", len(p))
		return
	}
	switch op := binary.BigEndian.Uint16(p); op {
	case tftpRRQ:
	case tftpWRQ:
		t.noisy.Log(slog.LevelWarn, "tftp: transfer failed", "client", peer.String(), "err", "write request refused")
		sendError(conn, peer, tftpErrAccess, "server does not support write requests")
		return
	default:
		// DATA/ACK/ERROR on port 69 belong to no transfer (a late packet of
		// an ended one, or junk): no answer, which could be reflected.
		t.noisy.Log(slog.LevelInfo, "tftp: junk packet ignored", "client", peer.String(), "opcode", op)
		return
	}
	name, _, opts, err := parseRRQ(p[2:])
	if err != nil {
		t.noisy.Log(slog.LevelWarn, "tftp: transfer failed", "client", peer.String(), "err", err)
		sendError(conn, peer, tftpErrIllegalOp, err.Error())
		return
	}
	clean, err := cleanTFTPPath(name)
	if err != nil {
		t.noisy.Log(slog.LevelWarn, "tftp: transfer failed", "file", name, "client", peer.String(), "err", err)
		sendError(conn, peer, tftpErrAccess, "refused: "+err.Error())
		return
	}
	f, err := t.files.Open(clean)
	if err != nil {
		t.noisy.Log(slog.LevelWarn, "tftp: transfer failed", "file", clean, "client", peer.String(), "err", "file not found")
		sendError(conn, peer, tftpErrNotFound, "file not found: "+clean)
		return
	}
	st, err := f.Stat()
	r, isReaderAt := f.(io.ReaderAt)
	if !isReaderAt {
		if rs, ok := f.(io.ReadSeeker); ok {
			r, isReaderAt = &seekReaderAt{rs: rs}, true
		}
	}
	if err != nil || !st.Mode().IsRegular() || !isReaderAt {
		f.Close()
		t.noisy.Log(slog.LevelWarn, "tftp: transfer failed", "file", clean, "client", peer.String(), "err", "not a regular file")
		sendError(conn, peer, tftpErrNotFound, "file not found: "+clean)
		return
	}
	if !t.admit(peer.Addr()) {
		f.Close()
		t.noisy.Log(slog.LevelWarn, "tftp: transfer limit reached: request refused as busy",
			"client", peer.String(), "max_transfers", t.maxTransfers, "max_per_client", t.maxPerClient)
		sendError(conn, peer, tftpErrUndefined, "server busy, try again")
		return
	}
	// The transfer's socket is made here, on Serve's goroutine (see Serve).
	// Connected to the client: the kernel drops datagrams from anyone else
	// (another TID), and each send skips the destination lookup.
	tc, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0)), net.UDPAddrFromAddrPort(peer))
	if err != nil {
		t.release(nil, peer.Addr())
		f.Close()
		t.noisy.Log(slog.LevelWarn, "tftp: transfer failed", "file", clean, "client", peer.String(), "err", fmt.Errorf("no transfer socket: %w", err))
		sendError(conn, peer, tftpErrUndefined, "server out of resources, try again")
		return
	}
	x := &tftpTransfer{conn: tc, peer: peer, started: time.Now()}
	t.mu.Lock()
	t.active[x] = struct{}{}
	t.peakSeen = max(t.peakSeen, len(t.active))
	t.mu.Unlock()
	o := negotiate(opts, st.Size())
	wg.Go(func() {
		defer f.Close()
		defer tc.Close()
		defer t.release(x, peer.Addr())
		st := t.send(ctx, x, r, st.Size(), o)
		t.logTransfer(name, x, o, st) // the name as asked, which the client's own log shows
	})
}

// admit reserves a transfer slot for a client at ip, evicting the oldest
// never-acknowledged transfer (of that client when it is the one at its
// bound) if needed. false: every slot holds a live transfer.
func (t *TFTP) admit(ip netip.Addr) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.perIP[ip] >= t.maxPerClient && !t.evictLocked(func(x *tftpTransfer) bool { return x.peer.Addr() == ip }) {
		return false
	}
	if t.reserved() >= t.maxTransfers && !t.evictLocked(func(*tftpTransfer) bool { return true }) {
		return false
	}
	t.perIP[ip]++
	return true
}

// reserved counts the slots in use (under mu): perIP counts every admitted
// transfer, including one whose socket is being made.
func (t *TFTP) reserved() int {
	n := 0
	for _, c := range t.perIP {
		n += c
	}
	return n
}

// evictLocked aborts the oldest transfer matching which that never got an
// ACK; its slot is free when evictLocked returns true.
func (t *TFTP) evictLocked(which func(*tftpTransfer) bool) bool {
	var victim *tftpTransfer
	for x := range t.active {
		if !x.acked && !x.evicted && which(x) && (victim == nil || x.started.Before(victim.started)) {
			victim = x
		}
	}
	if victim == nil {
		return false
	}
	victim.evicted = true
	victim.conn.Close() // its goroutine's read fails at once
	delete(t.active, victim)
	t.decIP(victim.peer.Addr())
	return true
}

func (t *TFTP) decIP(ip netip.Addr) {
	if t.perIP[ip]--; t.perIP[ip] <= 0 {
		delete(t.perIP, ip)
	}
}

// release frees x's slot (x nil: a slot admitted without a transfer).
func (t *TFTP) release(x *tftpTransfer, ip netip.Addr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if x != nil {
		if _, ok := t.active[x]; !ok {
			return // evicted: its slot was freed then
		}
		delete(t.active, x)
	}
	t.decIP(ip)
}

// Active is the number of transfers running now.
func (t *TFTP) Active() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.active)
}

// tftpStats is what one transfer did.
type tftpStats struct {
	bytes       int64
	datagrams   int
	resent      int
	err         error
	clientAbort string // the client's ERROR message, if it ended the transfer
	hi          int64  // highest block sent
}

// send runs one transfer: the OACK (if any options were accepted), then the
// file in windows of o.window blocks, each window sent again from the first
// unacknowledged block when the client's ACK says it missed one (RFC 7440)
// or when no ACK comes within o.timeout.
func (t *TFTP) send(ctx context.Context, x *tftpTransfer, r io.ReaderAt, size int64, o tftpOptions) (st tftpStats) {
	ack := make([]byte, 516) // an ACK is 4 bytes; an ERROR carries a message
	var deadlineSet time.Time
	chunk := newChunkReader(r, size, o.blksize)
	pkt := make([]byte, 4+o.blksize)
	bs := int64(o.blksize)
	nblocks := size/bs + 1 // the last block is short, possibly empty
	var acked int64        // blocks 1..acked are acknowledged

	rc, err := x.conn.SyscallConn()
	if err != nil {
		st.err = err
		return st
	}
	// exchange sends what send writes, then reads until an ACK for a block
	// in (acked, last] arrives; it returns that block, or -1 after the
	// timeout. The sending happens inside the poller's read callback, i.e.
	// after the poller forgot any earlier readiness: the answer cannot come
	// before the send, so the first read can wait for readiness instead of
	// trying and failing with EAGAIN, as net.UDPConn.Read would. In
	// lock-step that is one system call less per block.
	exchange := func(send func(fd int) error, last int64) (int64, error) {
		// Moving the deadline costs a timer update per block; it is moved
		// only when a quarter of the timeout has passed, so the wait is
		// between 3/4 of the timeout and all of it.
		if now := time.Now(); now.Sub(deadlineSet) > o.timeout/4 {
			if err := x.conn.SetReadDeadline(now.Add(o.timeout)); err != nil {
				return 0, err
			}
			deadlineSet = now
		}
		sent := false
		got := int64(-1)
		var ferr error
		err := rc.Read(func(fd uintptr) bool {
			if !sent {
				sent = true
				if ferr = send(int(fd)); ferr != nil {
					return true
				}
				return false
			}
			for {
				n, rerr := unix.Read(int(fd), ack)
				switch {
				case rerr == unix.EINTR:
					continue
				case rerr == unix.EAGAIN:
					return false // drained: wait for the next datagram
				case rerr != nil:
					ferr = rerr // e.g. ECONNREFUSED: the client's port is closed
					return true
				case n < 4:
					continue
				}
				switch binary.BigEndian.Uint16(ack) {
				case tftpACK:
					// Block numbers are 16 bits and wrap (to 0, as
					// tftp-hpa, dnsmasq and iPXE do): find the block in
					// (acked, last] with these low bits; anything else is
					// a duplicate or stale ACK and is ignored (no
					// Sorcerer's Apprentice).
					d := int64(binary.BigEndian.Uint16(ack[2:]) - uint16(acked))
					if d >= 1 && d <= last-acked {
						got = acked + d
						return true
					}
					if acked == 0 && last == 0 && d == 0 {
						got = 0 // ACK 0 for the OACK
						return true
					}
				case tftpERROR:
					msg, _, _ := strings.Cut(string(ack[4:n]), "\x00")
					st.clientAbort = fmt.Sprintf("code %d: %q", binary.BigEndian.Uint16(ack[2:]), msg)
					ferr = errClientAbort
					return true
				}
			}
		})
		if ferr != nil {
			return 0, ferr
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				deadlineSet = time.Time{}
				return -1, nil
			}
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
			t.mu.Lock()
			evicted := x.evicted
			t.mu.Unlock()
			if evicted {
				return 0, errors.New("aborted to make room: the client never acknowledged anything")
			}
			return 0, err
		}
		return got, nil
	}
	write := func(fd int, p []byte) error {
		st.datagrams++
		for {
			_, err := unix.Write(fd, p)
			if err == unix.EINTR {
				continue
			}
			if err == unix.EAGAIN || err == unix.ENOBUFS {
				return nil // as if lost on the wire: sent again after the timeout
			}
			return err
		}
	}

	if len(o.oack) > 0 {
		p := []byte{0, tftpOACK}
		for _, s := range o.oack {
			p = append(append(p, s...), 0)
		}
		for try := 0; ; try++ {
			if try > tftpRetries {
				st.err = errors.New("no ACK for the option acknowledgement")
				return st
			}
			if try > 0 {
				st.resent++
			}
			got, err := exchange(func(fd int) error { return write(fd, p) }, 0)
			if err != nil {
				st.err = err
				return st
			}
			if got == 0 {
				break
			}
		}
		t.markAcked(x)
	}

	sendWindow := func(last int64) func(fd int) error {
		return func(fd int) error {
			for b := acked + 1; b <= last; b++ {
				off := (b - 1) * bs
				n := int(min(bs, size-off))
				if n > 0 {
					m, err := chunk.ReadAt(pkt[4:4+n], off)
					if m < n {
						if err == nil {
							err = io.ErrUnexpectedEOF
						}
						write(fd, errorPacket(tftpErrUndefined, "read error"))
						return fmt.Errorf("reading block %d: %w", b, err)
					}
				}
				binary.BigEndian.PutUint16(pkt, tftpDATA)
				binary.BigEndian.PutUint16(pkt[2:], uint16(b))
				if b <= st.hi {
					st.resent++ // sent before: lost, or the ACK was
				}
				if err := write(fd, pkt[:4+n]); err != nil {
					return err
				}
			}
			return nil
		}
	}
	for try := 0; acked < nblocks; {
		last := min(acked+int64(o.window), nblocks)
		got, err := exchange(sendWindow(last), last)
		st.hi = max(st.hi, last)
		if err != nil {
			st.err = err
			return st
		}
		if got < 0 {
			if try++; try > tftpRetries {
				st.err = fmt.Errorf("no ACK after %d tries (block %d)", try, acked+1)
				return st
			}
			continue
		}
		if acked == 0 {
			t.markAcked(x)
		}
		try = 0
		acked = got
		st.bytes = min(acked*bs, size)
	}
	return st
}

var errClientAbort = errors.New("the client ended the transfer")

func (t *TFTP) markAcked(x *tftpTransfer) {
	t.mu.Lock()
	x.acked = true
	t.mu.Unlock()
}

// logTransfer writes one line per transfer. A client that ends a transfer
// right after the OACK is a firmware asking for the size only (UEFI PXE
// does this before every download): that is logged at debug level.
func (t *TFTP) logTransfer(file string, x *tftpTransfer, o tftpOptions, st tftpStats) {
	attrs := []any{
		"file", file,
		"client", x.peer.String(),
		"bytes", st.bytes,
		"duration", time.Since(x.started),
	}
	switch {
	case errors.Is(st.err, errClientAbort) && st.hi == 0:
		t.log.Debug("tftp: options answered; the client ended the transfer (size query)", append(attrs, "client_error", st.clientAbort)...)
		return
	case errors.Is(st.err, errClientAbort):
		t.noisy.Log(slog.LevelWarn, "tftp: transfer failed", append(attrs, "err", st.err, "client_error", st.clientAbort)...)
		return
	case st.err != nil:
		t.noisy.Log(slog.LevelWarn, "tftp: transfer failed", append(attrs, "err", st.err)...)
		return
	}
	attrs = append(attrs, "blksize", o.blksize, "windowsize", o.window)
	for i := 0; i+1 < len(o.oack); i += 2 {
		if o.oack[i] == "tsize" {
			attrs = append(attrs, "tsize", o.oack[i+1])
		}
	}
	attrs = append(attrs, "datagrams", st.datagrams, "resent", st.resent)
	t.log.Info("tftp: transfer done", attrs...)
}

// sendError sends a TFTP ERROR packet; a failure to send is not worth more
// than the packet itself.
func sendError(conn *net.UDPConn, to netip.AddrPort, code uint16, msg string) {
	conn.WriteToUDPAddrPort(errorPacket(code, msg), to)
}

func errorPacket(code uint16, msg string) []byte {
	p := make([]byte, 4, 5+len(msg))
	binary.BigEndian.PutUint16(p, tftpERROR)
	binary.BigEndian.PutUint16(p[2:], code)
	return append(append(p, msg...), 0)
}

// tftpChunk is how much of the file a transfer reads at once: one read per
// ~11 blocks of 1468 bytes instead of one per block. It is also the
// transfer's only buffer besides one packet, so it bounds per-transfer
// memory: tftpMaxTransfers * tftpChunk = 2 MiB at most for all of them.
const tftpChunk = 16 << 10

// chunkReader serves a transfer's block reads from one buffered chunk of
// the file; a window sent again after a loss usually finds its blocks
// still in the chunk.
type chunkReader struct {
	r      io.ReaderAt
	size   int64
	buf    []byte
	off    int64 // file offset of buf[0]
	filled int
}

func newChunkReader(r io.ReaderAt, size int64, blksize int) *chunkReader {
	return &chunkReader{r: r, size: size, buf: make([]byte, max(tftpChunk, blksize)), off: -1}
}

// ReadAt fills p (one block, never longer than the chunk) from off.
func (c *chunkReader) ReadAt(p []byte, off int64) (int, error) {
	if c.off < 0 || off < c.off || off+int64(len(p)) > c.off+int64(c.filled) {
		n, err := c.r.ReadAt(c.buf[:min(int64(len(c.buf)), c.size-off)], off)
		if n < len(p) {
			return copy(p, c.buf[:n]), err
		}
		c.off, c.filled = off, n
	}
	return copy(p, c.buf[off-c.off:]), nil
}

// seekReaderAt adapts a file that can seek but not ReadAt; each transfer has
// its own handle, so seeking is safe.
type seekReaderAt struct{ rs io.ReadSeeker }

func (s *seekReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if _, err := s.rs.Seek(off, io.SeekStart); err != nil {
		return 0, err
	}
	return io.ReadFull(s.rs, p)
}

// cleanTFTPPath turns a requested TFTP file name into a path inside the
// served fs.FS, or refuses it. Accepted: "bootx64.efi", "/bootx64.efi" and a
// per-client prefix "<mac>/bootx64.efi" (any macaddr spelling, e.g. the
// "52-54-00-ab-cd-ef" iPXE's ${mac:hexhyp} gives), which is dropped. Refused:
// empty or over-long names, invalid UTF-8, control characters (NUL
// included), backslashes (Windows-style paths could mean a different tree),
// and any ".", ".." or empty element, so nothing can leave the tree.
func cleanTFTPPath(name string) (string, error) {
	if name == "" {
		return "", errors.New("empty file name")
	}
	if len(name) > tftpMaxNameLen {
		return "", fmt.Errorf("file name longer than %d bytes", tftpMaxNameLen)
	}
	if !utf8.ValidString(name) {
		return "", errors.New("file name is not UTF-8")
	}
	for _, r := range name {
		switch {
		case r < 0x20 || r == 0x7f:
			return "", errors.New("control character in file name")
		case r == '\\':
			return "", errors.New(`backslash in file name: use "/"`)
		}
	}
	p := strings.TrimLeft(name, "/")
	if p == "" || p == "." || !fs.ValidPath(p) {
		return "", fmt.Errorf("file name %q: no \".\", \"..\" or empty path elements allowed", name)
	}
	if first, rest, ok := strings.Cut(p, "/"); ok && strings.TrimSpace(first) == first {
		if _, err := macaddr.Parse(first); err == nil {
			p = rest
		}
	}
	return p, nil
}
