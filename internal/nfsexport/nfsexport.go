// Package nfsexport serves pumi's image repository (read-only) and capture
// area (writable) over NFSv3/TCP, with MOUNT on the same port, so that
// Clonezilla live on a lab PC can mount them with
// `vers=3,proto=tcp,port=2049,mountport=2049,mountproto=tcp,nolock`.
//
// The NFS procedures themselves come from github.com/willscott/go-nfs. pumi
// sits in front of it and parses every RPC record first, because go-nfs
// cannot do what a lab restore needs:
//   - access control per call: every MOUNT and NFS call is checked against
//     Allow with the client's address, so a seat that leaves the run loses
//     the export at once, mounted or not;
//   - stable file handles (handle.go), so a restore survives a pumi restart;
//   - a READ fast path with cached open files, pooled buffers and parallel
//     reads per connection (go-nfs opens, stats and allocates per READ and
//     handles one call per connection at a time);
//   - honest FSINFO (1 MiB transfers) and FSSTAT (statfs of the export);
//   - fragment reassembly and size limits on records, with buffers that
//     grow only with the bytes that arrive, a server-wide memory budget for
//     large records and connection caps (per address and in total; a
//     client with no job is refused at accept);
//   - every path resolved beneath the export by the kernel (rootfs.go), and
//     per-client directories (Export.DirFor) for captures;
//   - durable WRITE and a real COMMIT (write.go);
//   - cached directory listings, so READDIR pages do not re-read the
//     directory (readdir.go).
//
// Everything else (LOOKUP, GETATTR, READDIR, WRITE, ...) is forwarded to an
// in-process go-nfs server over an in-memory pipe per client connection.
package nfsexport

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"sync"
	"time"

	nfs "github.com/willscott/go-nfs"
)

// sendTimeout bounds how long one reply may wait for the client to read.
const sendTimeout = time.Minute

// recordTimeout bounds how long a client may take to send one record once
// its first byte has arrived: a client that starts a large record and
// stalls would otherwise hold its share of the memory budget for ever.
const recordTimeout = 30 * time.Second

// Allow decides which client may use which export; the appliance implements
// it from the seats' active jobs. Both methods must be fast and safe for
// concurrent use.
type Allow interface {
	// AllowConnect is asked once per TCP connection, at accept, before
	// anything is read from it: false closes the connection at once (an
	// address with no active job of any kind). It does not replace
	// AllowClient, which is still asked on every call.
	AllowConnect(ip netip.Addr) bool
	// AllowClient is asked on every MOUNT and every NFS call (so revoking
	// a seat takes effect at its next call, mounted or not); export is the
	// export's Path ("/images"). write is true for calls that modify the
	// export (WRITE, CREATE, REMOVE, SETATTR, COMMIT, ...) and false for
	// MOUNT and reads.
	AllowClient(ip netip.Addr, export string, write bool) bool
}

// Export is one directory served under a path.
type Export struct {
	Path     string // what clients mount, e.g. "/images"
	Dir      string // host directory; unused when DirFor is set
	Writable bool   // false: every modifying call gets NFS3ERR_ROFS
	// DirFor, if set, chooses the host directory per client, so a capture
	// writes only into its own job's folder: the export's root for that
	// client is the returned dir (an existing directory, ideally outside
	// every other export). It is asked on every MOUNT and every call on
	// this export, after AllowClient said yes, with the client's address;
	// it must be fast and safe for concurrent use. ok == false refuses the
	// client (MNT3ERR_ACCES / NFS3ERR_ACCES); a dir that cannot be opened
	// is refused the same way and logged. Handles are relative to the
	// client's dir, so a client whose dir changes (a new job) sees its old
	// handles go stale, never another job's files.
	DirFor func(ip netip.Addr) (dir string, ok bool)
}

// Config configures a Server.
type Config struct {
	Exports []Export
	// OpenFiles bounds the READ fast path's cache of open files (default 64).
	OpenFiles int
	// ReadWorkers bounds parallel READs per client connection (default 8).
	ReadWorkers int
	// MaxConns bounds client connections in total (default 256) and
	// MaxConnsPerAddr per client address (default 16, Linux's nconnect
	// maximum); connections beyond are closed at accept.
	MaxConns, MaxConnsPerAddr int
	// RecordMemory bounds the bytes all connections together may hold in
	// records larger than 64 KiB (WRITEs) while they arrive (default
	// 32 MiB); a connection over it waits, within recordTimeout.
	RecordMemory int
	// GoNFSReads serves READ through go-nfs's own path (open, stat and
	// allocate per call, one call at a time per connection) instead of
	// pumi's fast path. Only for measuring the fast path (bench/nfs).
	GoNFSReads bool
}

// Server serves the exports. One Server may Serve several listeners.
type Server struct {
	log        *slog.Logger
	allow      Allow
	exports    []*export
	byTag      map[uint32]*export
	byPath     map[string]*export
	files      *fileCache
	roots      *rootCache
	dirs       *dirCache
	budget     *memBudget
	workers    int
	goNFSReads bool
	verf       [8]byte       // write verifier: new for every Server, so a restart makes clients resend
	recordTime time.Duration // recordTimeout; shorter in tests

	maxConns, maxPerAddr int
	connMu               sync.Mutex
	total                int
	perAddr              map[netip.Addr]int
	lastRefusal          time.Time

	serveMu sync.Mutex
	serving int // running Serve calls; the file cache is closed after the last
	bufPool sync.Pool

	// readHook, when set (tests only), sees every READ before it is served;
	// stableHook sees every WRITE reply's committed level and every COMMIT
	// (stableCommit) after its fsyncs.
	readHook   func(exportPath, rel string, off uint64)
	stableHook func(exportPath, rel string, committed uint32)
}

type export struct {
	Export
	root  *exportRoot // nil when DirFor is set
	table *handleTable
}

// New checks cfg and prepares the exports. It fails with a message that names
// the bad entry; nothing is served until Serve.
func New(cfg Config, allow Allow, log *slog.Logger) (*Server, error) {
	if allow == nil {
		return nil, errors.New("nfsexport: no Allow given: pass the appliance's client allow-list")
	}
	if log == nil {
		log = slog.Default()
	}
	if len(cfg.Exports) == 0 {
		return nil, errors.New("nfsexport: no exports configured: add at least the image repository")
	}
	s := &Server{
		log:        log,
		allow:      allow,
		byTag:      map[uint32]*export{},
		byPath:     map[string]*export{},
		workers:    cfg.ReadWorkers,
		goNFSReads: cfg.GoNFSReads,
		roots:      &rootCache{max: 256, m: map[string]*exportRoot{}},
		dirs:       newDirCache(),
		maxConns:   cfg.MaxConns,
		maxPerAddr: cfg.MaxConnsPerAddr,
		perAddr:    map[netip.Addr]int{},
		recordTime: recordTimeout,
	}
	if s.workers <= 0 {
		s.workers = 8
	}
	if s.maxConns <= 0 {
		s.maxConns = 256
	}
	if s.maxPerAddr <= 0 {
		s.maxPerAddr = 16
	}
	mem := cfg.RecordMemory
	if mem <= 0 {
		mem = 32 << 20
	}
	s.budget = newMemBudget(mem)
	if _, err := rand.Read(s.verf[:]); err != nil {
		return nil, fmt.Errorf("nfsexport: write verifier: %w", err)
	}
	s.files = newFileCache(cfg.OpenFiles)
	s.bufPool.New = func() any { b := make([]byte, rtmax); return &b }
	for _, e := range cfg.Exports {
		if e.Path == "" || e.Path[0] != '/' || path.Clean(e.Path) != e.Path {
			return nil, fmt.Errorf("nfsexport: export path %q must be a clean absolute path such as /images", e.Path)
		}
		if _, dup := s.byPath[e.Path]; dup {
			return nil, fmt.Errorf("nfsexport: export %s configured twice", e.Path)
		}
		ex := &export{Export: e, table: newHandleTable(e.Path)}
		if e.DirFor == nil {
			dir, err := filepath.Abs(e.Dir)
			if err != nil {
				return nil, fmt.Errorf("nfsexport: export %s: directory %q: %w", e.Path, e.Dir, err)
			}
			st, err := os.Stat(dir)
			if err != nil {
				return nil, fmt.Errorf("nfsexport: export %s: %w (create the directory or fix the path)", e.Path, err)
			}
			if !st.IsDir() {
				return nil, fmt.Errorf("nfsexport: export %s: %s is not a directory", e.Path, dir)
			}
			ex.Dir = dir
			if ex.root, err = openExportRoot(ex, dir); err != nil {
				return nil, fmt.Errorf("nfsexport: export %s: %w", e.Path, err)
			}
		}
		if other, clash := s.byTag[ex.table.tag]; clash {
			return nil, fmt.Errorf("nfsexport: exports %s and %s hash to the same handle tag: rename one", other.Path, e.Path)
		}
		s.byTag[ex.table.tag] = ex
		s.byPath[e.Path] = ex
		s.exports = append(s.exports, ex)
	}
	return s, nil
}

// rootFor returns the directory exp is served from for the client ip, or
// NFS3ERR_ACCES when DirFor refuses the client or its dir cannot be opened.
func (s *Server) rootFor(exp *export, ip netip.Addr) (*exportRoot, uint32) {
	if exp.DirFor == nil {
		return exp.root, nfs3OK
	}
	dir, ok := exp.DirFor(ip)
	if !ok {
		return nil, nfs3ErrAcces
	}
	if !filepath.IsAbs(dir) {
		s.log.Error("nfs: DirFor gave a relative directory", "export", exp.Path, "client", ip.String(), "dir", dir)
		return nil, nfs3ErrAcces
	}
	r, err := s.roots.get(exp, filepath.Clean(dir))
	if err != nil {
		s.log.Error("nfs: client's export directory cannot be opened", "export", exp.Path, "client", ip.String(), "err", err)
		return nil, nfs3ErrAcces
	}
	return r, nfs3OK
}

// Serve accepts NFS/MOUNT clients on l until ctx ends (then it returns nil)
// or l fails. It closes l and every client connection before returning.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.serveMu.Lock()
	s.serving++
	s.serveMu.Unlock()

	var (
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
		wg    sync.WaitGroup
	)
	go func() {
		<-ctx.Done()
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()

	s.log.Info("nfs: serving", "addr", l.Addr().String(), "exports", s.exportNames())
	var err error
	for {
		nc, aerr := l.Accept()
		if aerr != nil {
			if ctx.Err() == nil {
				err = fmt.Errorf("nfsexport: accept on %s: %w", l.Addr(), aerr)
			}
			break
		}
		ip := remoteIP(nc.RemoteAddr())
		if !s.admit(ip) {
			nc.Close()
			continue
		}
		mu.Lock()
		conns[nc] = struct{}{}
		if ctx.Err() != nil {
			nc.Close() // accepted while shutting down, after the close sweep
		}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer s.leave(ip)
			s.serveConn(ctx, nc, ip)
			mu.Lock()
			delete(conns, nc)
			mu.Unlock()
		}()
	}
	cancel()
	wg.Wait()
	s.serveMu.Lock()
	s.serving--
	if s.serving == 0 {
		s.files.closeAll()
	}
	s.serveMu.Unlock()
	return err
}

// admit decides at accept whether a connection from ip is served: its
// address must have a job (Allow.AllowConnect) and be under the connection
// caps. Refusals are logged at most once a second: a flood must not become
// a log flood.
func (s *Server) admit(ip netip.Addr) bool {
	reason := ""
	jobless := !s.allow.AllowConnect(ip) // outside connMu: it may read the state file
	s.connMu.Lock()
	switch {
	case jobless:
		reason = "no active job for this address"
	case s.total >= s.maxConns:
		reason = "too many connections in total"
	case s.perAddr[ip] >= s.maxPerAddr:
		reason = "too many connections from this address"
	default:
		s.total++
		s.perAddr[ip]++
		s.connMu.Unlock()
		return true
	}
	logIt := time.Since(s.lastRefusal) >= time.Second
	if logIt {
		s.lastRefusal = time.Now()
	}
	s.connMu.Unlock()
	if logIt {
		s.log.Warn("nfs: connection refused", "client", ip.String(), "reason", reason)
	}
	return false
}

func (s *Server) leave(ip netip.Addr) {
	s.connMu.Lock()
	s.total--
	if s.perAddr[ip]--; s.perAddr[ip] <= 0 {
		delete(s.perAddr, ip)
	}
	s.connMu.Unlock()
}

func (s *Server) exportNames() []string {
	var n []string
	for _, e := range s.exports {
		mode := "ro"
		if e.Writable {
			mode = "rw"
		}
		dir := e.Dir
		if e.DirFor != nil {
			dir = "(per client)"
		}
		n = append(n, e.Path+"("+mode+")="+dir)
	}
	return n
}

// clientConn is one client TCP connection.
type clientConn struct {
	s   *Server
	nc  net.Conn
	ip  netip.Addr
	log *slog.Logger

	wmu sync.Mutex // one reply record at a time on the wire

	fwdOnce sync.Once
	fwd     chan []byte // records for go-nfs
	pipe    net.Conn
	gl      *oneConnListener
	gsDone  chan struct{}
}

func remoteIP(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

func (s *Server) serveConn(ctx context.Context, nc net.Conn, ip netip.Addr) {
	c := &clientConn{s: s, nc: nc, ip: ip}
	c.log = s.log.With("client", c.ip.String())
	defer func() {
		nc.Close()
		if c.pipe != nil {
			close(c.fwd)
			c.pipe.Close()
			c.gl.Close()
			<-c.gsDone
		}
	}()
	br := bufio.NewReaderSize(nc, 32<<10)
	sem := make(chan struct{}, s.workers)
	var reads sync.WaitGroup
	defer reads.Wait()
	held := 0 // budget units this connection holds for the record being read
	defer func() { s.budget.release(held) }()
	for {
		// Wait for the next record as long as the client likes (idle
		// mounts are normal), then give it recordTimeout to arrive.
		_ = nc.SetReadDeadline(time.Time{})
		if _, err := br.Peek(1); err != nil {
			c.dropped(ctx, err)
			return
		}
		deadline := time.Now().Add(s.recordTime)
		_ = nc.SetReadDeadline(deadline)
		rec, err := readRecord(br, func(newCap int) error {
			need := budgetUnits(newCap-recordChunk) - held
			for ; need > 0; need-- {
				if err := s.budget.acquire(ctx, deadline); err != nil {
					return err
				}
				held++
			}
			return nil
		})
		if err != nil {
			c.dropped(ctx, err)
			return
		}
		err = c.dispatch(ctx, rec, sem, &reads)
		s.budget.release(held)
		held = 0
		if err != nil {
			c.log.Debug("nfs: dropping connection", "err", err)
			return
		}
	}
}

func (c *clientConn) dropped(ctx context.Context, err error) {
	if !errors.Is(err, io.EOF) && ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
		c.log.Debug("nfs: dropping connection", "err", err)
	}
}

// send writes one framed reply; extra buffers (READ data) follow the
// header in a single writev.
func (c *clientConn) send(bufs ...[]byte) {
	nb := net.Buffers(bufs)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	// A client that stops taking replies would otherwise pin this
	// goroutine and its read buffer for as long as TCP keeps the socket.
	_ = c.nc.SetWriteDeadline(time.Now().Add(sendTimeout))
	if _, err := nb.WriteTo(c.nc); err != nil {
		c.nc.Close()
	}
}

func (c *clientConn) reply(xid, stat uint32) {
	c.send(replyHeader(xid, stat).frame())
}

// forward hands a record to go-nfs. Each client connection gets its own
// go-nfs server over an in-memory pipe, made on the first forwarded call
// (READ-only traffic never touches go-nfs), because go-nfs resolves handles
// without knowing the client and per-client exports need to.
func (c *clientConn) forward(ctx context.Context, rec []byte) error {
	c.fwdOnce.Do(func() {
		ours, theirs := net.Pipe()
		c.pipe = ours
		c.fwd = make(chan []byte, 16)
		c.gsDone = make(chan struct{})
		gs := &nfs.Server{Handler: &goNFSHandler{s: c.s, ip: c.ip}, Context: ctx}
		c.gl = newOneConnListener(&addrConn{Conn: theirs, remote: c.nc.RemoteAddr()})
		go func() {
			defer close(c.gsDone)
			_ = gs.Serve(c.gl)
		}()
		go func() { // to go-nfs
			for r := range c.fwd {
				var hdr [4]byte
				hdr[0] = byte(len(r)>>24) | 0x80
				hdr[1], hdr[2], hdr[3] = byte(len(r)>>16), byte(len(r)>>8), byte(len(r))
				nb := net.Buffers{hdr[:], r}
				if _, err := nb.WriteTo(ours); err != nil {
					return
				}
			}
		}()
		go func() { // from go-nfs
			br := bufio.NewReaderSize(ours, 64<<10)
			for {
				r, err := readRecord(br, nil)
				if err != nil {
					c.nc.Close() // go-nfs dropped the call stream: the client must reconnect
					return
				}
				w := &xdrWriter{b: make([]byte, 4, 4+len(r))}
				w.b = append(w.b, r...)
				c.send(w.frame())
			}
		}()
	})
	select {
	case c.fwd <- rec:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// addrConn reports the real client address to go-nfs (for its logs).
type addrConn struct {
	net.Conn
	remote net.Addr
}

func (a *addrConn) RemoteAddr() net.Addr { return a.remote }

// oneConnListener hands go-nfs a single in-memory connection; Accept then
// blocks until the connection is closed, which ends go-nfs's Serve.
type oneConnListener struct {
	c      net.Conn
	once   sync.Once
	closed sync.Once
	done   chan struct{}
}

func newOneConnListener(c net.Conn) *oneConnListener {
	l := &oneConnListener{c: c, done: make(chan struct{})}
	return l
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	var c net.Conn
	l.once.Do(func() { c = &closeNotify{Conn: l.c, l: l} })
	if c != nil {
		return c, nil
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error   { l.closed.Do(func() { close(l.done) }); return nil }
func (l *oneConnListener) Addr() net.Addr { return l.c.LocalAddr() }

type closeNotify struct {
	net.Conn
	l *oneConnListener
}

func (c *closeNotify) Close() error {
	c.l.Close()
	return c.Conn.Close()
}
