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
//   - fragment reassembly and size limits on records.
//
// Everything else (LOOKUP, GETATTR, READDIR, WRITE, ...) is forwarded to an
// in-process go-nfs server over an in-memory pipe per client connection.
package nfsexport

import (
	"bufio"
	"context"
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

	"github.com/go-git/go-billy/v5"
	"github.com/go-git/go-billy/v5/osfs"
	nfs "github.com/willscott/go-nfs"
)

// sendTimeout bounds how long one reply may wait for the client to read.
const sendTimeout = time.Minute

// Allow decides which client may use which export; the appliance implements
// it from the seats of the active runs. It is asked on every MOUNT and every
// NFS call (so revoking a seat takes effect at its next call, mounted or
// not); export is the export's Path ("/images"). write is true for calls
// that modify the export (WRITE, CREATE, REMOVE, SETATTR, ...) and false
// for MOUNT and reads. It must be fast and safe for concurrent use.
type Allow interface {
	AllowClient(ip netip.Addr, export string, write bool) bool
}

// Export is one directory served under a path.
type Export struct {
	Path     string // what clients mount, e.g. "/images"
	Dir      string // host directory
	Writable bool   // false: every modifying call gets NFS3ERR_ROFS
}

// Config configures a Server.
type Config struct {
	Exports []Export
	// OpenFiles bounds the READ fast path's cache of open files (default 64).
	OpenFiles int
	// ReadWorkers bounds parallel READs per client connection (default 8).
	ReadWorkers int
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
	workers    int
	goNFSReads bool

	serveMu sync.Mutex
	serving int // running Serve calls; the file cache is closed after the last
	bufPool sync.Pool

	// readHook, when set (tests only), sees every READ before it is served.
	readHook func(exportPath, rel string, off uint64)
}

type export struct {
	Export
	fs    billy.Filesystem // roFS or rwFS over an osfs.BoundOS
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
	}
	if s.workers <= 0 {
		s.workers = 8
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
		dir, err := filepath.Abs(e.Dir)
		if err != nil {
			return nil, fmt.Errorf("nfsexport: export %s: directory %q: %w", e.Path, e.Dir, err)
		}
		// The handle table walks and BoundOS joins on the real path, so a
		// symlinked repository directory is resolved once here.
		if real, err := filepath.EvalSymlinks(dir); err == nil {
			dir = real
		}
		st, err := os.Stat(dir)
		if err != nil {
			return nil, fmt.Errorf("nfsexport: export %s: %w (create the directory or fix the path)", e.Path, err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("nfsexport: export %s: %s is not a directory", e.Path, dir)
		}
		ex := &export{Export: e, table: newHandleTable(e.Path, dir)}
		ex.Dir = dir
		base := osfs.New(dir, osfs.WithBoundOS())
		if e.Writable {
			ex.fs = &rwFS{Filesystem: base, exp: ex}
		} else {
			ex.fs = &roFS{Filesystem: base, exp: ex}
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

// Serve accepts NFS/MOUNT clients on l until ctx ends (then it returns nil)
// or l fails. It closes l and every client connection before returning.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.serveMu.Lock()
	s.serving++
	s.serveMu.Unlock()

	pl := newPipeListener(l.Addr())
	gs := &nfs.Server{Handler: &goNFSHandler{s: s}, Context: ctx}
	gsDone := make(chan struct{})
	go func() { defer close(gsDone); _ = gs.Serve(pl) }()

	var (
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
		wg    sync.WaitGroup
	)
	go func() {
		<-ctx.Done()
		l.Close()
		pl.Close()
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
		mu.Lock()
		conns[nc] = struct{}{}
		if ctx.Err() != nil {
			nc.Close() // accepted while shutting down, after the close sweep
		}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(ctx, nc, pl)
			mu.Lock()
			delete(conns, nc)
			mu.Unlock()
		}()
	}
	cancel()
	wg.Wait()
	<-gsDone
	s.serveMu.Lock()
	s.serving--
	if s.serving == 0 {
		s.files.closeAll()
	}
	s.serveMu.Unlock()
	return err
}

func (s *Server) exportNames() []string {
	var n []string
	for _, e := range s.exports {
		mode := "ro"
		if e.Writable {
			mode = "rw"
		}
		n = append(n, e.Path+"("+mode+")="+e.Dir)
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
	pl      *pipeListener
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

func (s *Server) serveConn(ctx context.Context, nc net.Conn, pl *pipeListener) {
	c := &clientConn{s: s, nc: nc, ip: remoteIP(nc.RemoteAddr()), pl: pl}
	c.log = s.log.With("client", c.ip.String())
	defer func() {
		nc.Close()
		if c.pipe != nil {
			close(c.fwd)
			c.pipe.Close()
		}
	}()
	br := bufio.NewReaderSize(nc, 64<<10)
	sem := make(chan struct{}, s.workers)
	var reads sync.WaitGroup
	defer reads.Wait()
	for {
		rec, err := readRecord(br, nil)
		if err != nil {
			if !errors.Is(err, io.EOF) && ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				c.log.Debug("nfs: dropping connection", "err", err)
			}
			return
		}
		if err := c.dispatch(ctx, rec, sem, &reads); err != nil {
			c.log.Debug("nfs: dropping connection", "err", err)
			return
		}
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

// forward hands a record to go-nfs. The pipe and its two pumps are made on
// the first forwarded call, so READ-only traffic never touches go-nfs.
func (c *clientConn) forward(ctx context.Context, rec []byte) error {
	c.fwdOnce.Do(func() {
		ours, theirs := net.Pipe()
		c.pipe = ours
		c.fwd = make(chan []byte, 64)
		c.pl.push(&addrConn{Conn: theirs, remote: c.nc.RemoteAddr()})
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

// pipeListener feeds in-memory connections to the embedded go-nfs server.
type pipeListener struct {
	addr   net.Addr
	ch     chan net.Conn
	done   chan struct{}
	closed sync.Once
}

func newPipeListener(a net.Addr) *pipeListener {
	return &pipeListener{addr: a, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (p *pipeListener) push(c net.Conn) {
	select {
	case p.ch <- c:
	case <-p.done:
		c.Close()
	}
}

func (p *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-p.ch:
		return c, nil
	case <-p.done:
		return nil, net.ErrClosed
	}
}

func (p *pipeListener) Close() error   { p.closed.Do(func() { close(p.done) }); return nil }
func (p *pipeListener) Addr() net.Addr { return p.addr }
