package nfsexport

import (
	"container/list"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	nfs "github.com/willscott/go-nfs"
)

// rtmax is the largest READ/WRITE pumi offers in FSINFO and serves. Linux
// caps rsize at 1 MiB anyway, and one 1 MiB buffer per in-flight READ keeps
// memory bounded (ReadWorkers x connections x 1 MiB).
const rtmax = 1 << 20

// revalidateAfter: a cached open file is checked against its path at most
// this often, so a file replaced or removed under the same name is noticed
// without a stat per READ.
const revalidateAfter = time.Second

var errNotRegular = errors.New("not a regular file")

type fileKey struct {
	exp *export
	dir string // the client's directory of exp
	rel string
}

// statFile is what billy's osfs files offer beyond billy.File (they embed
// *os.File): pread and fstat on the descriptor.
type statFile interface {
	io.ReaderAt
	io.Closer
	Stat() (os.FileInfo, error)
	Name() string
}

type openFile struct {
	key     fileKey
	f       statFile
	refs    int
	evicted bool
	checked time.Time
	elem    *list.Element
}

// fileCache keeps recently read files open, so a sequential stream of
// 1 MiB READs costs one pread each instead of open+stat+close.
type fileCache struct {
	mu  sync.Mutex
	max int
	m   map[fileKey]*openFile
	lru *list.List // front = most recently used
}

func newFileCache(max int) *fileCache {
	if max <= 0 {
		max = 64
	}
	return &fileCache{max: max, m: map[fileKey]*openFile{}, lru: list.New()}
}

// get returns an open file for exp/rel with a reference the caller must
// release. The file is opened through the export's os.Root, so symlinks
// cannot lead out of the export.
func (fc *fileCache) get(er *exportRoot, rel string) (*openFile, error) {
	k := fileKey{er.exp, er.dir, rel}
	now := time.Now()
	fc.mu.Lock()
	if of, ok := fc.m[k]; ok {
		if now.Sub(of.checked) < revalidateAfter {
			of.refs++
			fc.lru.MoveToFront(of.elem)
			fc.mu.Unlock()
			return of, nil
		}
		fc.mu.Unlock()
		// Stat outside the lock: it touches the disk.
		cur, err := er.fs.Stat(rel)
		held, herr := of.f.Stat()
		fc.mu.Lock()
		if err == nil && herr == nil && os.SameFile(cur, held) && !of.evicted {
			of.checked = now
			of.refs++
			fc.lru.MoveToFront(of.elem)
			fc.mu.Unlock()
			return of, nil
		}
		fc.evictLocked(of)
	}
	fc.mu.Unlock()

	// Only regular files are opened: opening a FIFO would block this
	// worker until someone writes to it.
	// The descriptor opened is checked too: the name may have been
	// replaced by a FIFO between the Stat and the open (O_NONBLOCK keeps
	// that open from blocking).
	st, err := er.fs.Stat(rel)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, &fs.PathError{Op: "read", Path: rel, Err: errNotRegular}
	}
	osf, err := er.root.OpenFile(rootName(rel), os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if st, err := osf.Stat(); err != nil || !st.Mode().IsRegular() {
		osf.Close()
		return nil, &fs.PathError{Op: "read", Path: rel, Err: errNotRegular}
	}
	of := &openFile{key: k, f: osf, refs: 1, checked: now}
	fc.mu.Lock()
	if old, ok := fc.m[k]; ok {
		fc.evictLocked(old)
	}
	fc.m[k] = of
	of.elem = fc.lru.PushFront(of)
	for fc.lru.Len() > fc.max {
		fc.evictLocked(fc.lru.Back().Value.(*openFile))
	}
	fc.mu.Unlock()
	return of, nil
}

func (fc *fileCache) evictLocked(of *openFile) {
	if of.evicted {
		return
	}
	of.evicted = true
	fc.lru.Remove(of.elem)
	if fc.m[of.key] == of {
		delete(fc.m, of.key)
	}
	if of.refs == 0 {
		of.f.Close()
	}
}

func (fc *fileCache) release(of *openFile) {
	fc.mu.Lock()
	of.refs--
	if of.refs == 0 && of.evicted {
		of.f.Close()
	}
	fc.mu.Unlock()
}

// closeAll closes every cached file (used when a Server stops).
func (fc *fileCache) closeAll() {
	fc.mu.Lock()
	for _, of := range fc.m {
		fc.evictLocked(of)
	}
	fc.mu.Unlock()
}

// Write lets go-nfs's attribute encoder append to the reply.
func (w *xdrWriter) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }

// read serves one READ: pread into a pooled buffer, reply with one writev.
func (c *clientConn) read(xid uint32, er *exportRoot, rel string, off uint64, count uint32) {
	fail := func(status uint32) { c.nfsFail(xid, procRead, status) }
	if c.s.readHook != nil {
		c.s.readHook(er.exp.Path, rel, off)
	}
	of, err := c.s.files.get(er, rel)
	if err != nil {
		switch {
		case errors.Is(err, errNotRegular):
			if st, serr := er.fs.Stat(rel); serr == nil && st.IsDir() {
				fail(nfs3ErrIsDir)
			} else {
				fail(nfs3ErrInval)
			}
		case errors.Is(err, fs.ErrNotExist):
			fail(nfs3ErrStale)
		case errors.Is(err, fs.ErrPermission):
			fail(nfs3ErrAcces)
		default:
			fail(nfs3ErrIO)
		}
		return
	}
	defer c.s.files.release(of)
	info, err := of.f.Stat()
	if err != nil {
		fail(nfs3ErrIO)
		return
	}
	if info.IsDir() {
		fail(nfs3ErrIsDir)
		return
	}
	if !info.Mode().IsRegular() {
		fail(nfs3ErrInval)
		return
	}
	if count > rtmax {
		count = rtmax
	}
	bp := c.s.bufPool.Get().(*[]byte)
	defer c.s.bufPool.Put(bp)
	buf := (*bp)[:count]
	n := 0
	size := info.Size()
	if off < uint64(size) {
		n, err = of.f.ReadAt(buf, int64(off))
		if err != nil && !errors.Is(err, io.EOF) {
			fail(nfs3ErrIO)
			return
		}
	}
	eof := uint32(0)
	if off+uint64(n) >= uint64(size) {
		eof = 1
	}
	w := replyHeader(xid, acceptSuccess)
	w.u32(nfs3OK)
	// Same attribute encoding (and fileid = inode) as go-nfs's GETATTR, so
	// the client's attribute cache sees one consistent file.
	_ = nfs.WritePostOpAttrs(w, nfs.ToFileAttribute(info, of.f.Name()))
	w.u32(uint32(n))
	w.u32(eof)
	w.u32(uint32(n))
	pad := (4 - n%4) % 4
	hdr := w.b
	total := len(hdr) - 4 + n + pad
	hdr[0], hdr[1], hdr[2], hdr[3] = byte(total>>24)|0x80, byte(total>>16), byte(total>>8), byte(total)
	c.send(hdr, buf[:n], make([]byte, pad))
}

// fsinfo answers FSINFO with transfer sizes suited to streaming images.
func (c *clientConn) fsinfo(xid uint32, er *exportRoot, rel string) {
	exp := er.exp
	info, err := er.fs.Lstat(rel)
	if err != nil {
		c.nfsFail(xid, procFSInfo, nfs3ErrStale)
		return
	}
	w := replyHeader(xid, acceptSuccess)
	w.u32(nfs3OK)
	_ = nfs.WritePostOpAttrs(w, nfs.ToFileAttribute(info, filepath.Join(er.dir, rel)))
	w.u32(rtmax)         // rtmax
	w.u32(rtmax)         // rtpref
	w.u32(4096)          // rtmult
	w.u32(rtmax)         // wtmax
	w.u32(rtmax)         // wtpref
	w.u32(4096)          // wtmult
	w.u32(64 << 10)      // dtpref
	w.u64(1<<63 - 1)     // maxfilesize
	w.u32(0)             // time_delta seconds
	w.u32(1)             // time_delta nanoseconds
	props := uint32(0x8) // HOMOGENEOUS; no LINK or SYMLINK: both are refused
	if exp.Writable {
		props |= 0x10 // CANSETTIME
	}
	w.u32(props)
	c.send(w.frame())
}
