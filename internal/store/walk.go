package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
)

// walkFile validates the page structure of a bbolt file before bbolt maps
// it. bbolt trusts page ids and element offsets read from the file; its own
// Tx.Check runs in a goroutine of its own, where a page id pointing past the
// mapping is a segmentation fault (fatal, not a recoverable panic) and a
// page that refers back to an ancestor recurses until the stack overflows.
// A randomly damaged file found both (see TestOpenRandomCorruptionNeverPanics).
// This walk reads with ReadAt, checks every bound and every id, and visits
// each page once, so bbolt is only handed files whose tree it can traverse.
//
// The layout (bbolt v1.5.0, file format version 2):
//
//	page header (16 B): id u64, flags u16, count u16, overflow u32
//	meta (after the header): magic u32, version u32, pageSize u32, flags u32,
//	  root bucket {root u64, sequence u64}, freelist u64, pgid u64, txid u64,
//	  checksum u64 = FNV-64a of the 64 bytes before it
//	branch element (16 B): pos u32, ksize u32, pgid u64
//	leaf element (16 B): flags u32, pos u32, ksize u32, vsize u32;
//	  pos counts from the element itself; flags&1 = the value is a bucket:
//	  {root u64, sequence u64} followed, when root == 0, by an inline page
//	freelist page: count ids (u64); count 0xFFFF means the first u64 is the count
func walkFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	w := &walker{f: f, size: fi.Size(), seen: map[uint64]bool{}}
	return w.run()
}

const (
	pageHeaderSize = 16
	elementSize    = 16
	flagBranch     = 0x01
	flagLeaf       = 0x02
	flagMeta       = 0x04
	flagFreelist   = 0x10
	bucketLeafFlag = 0x01
	boltMagic      = 0xED0CDAED
	boltVersion    = 2
	noFreelist     = ^uint64(0)
	maxDepth       = 64 // a B+tree of a few GiB is a handful of levels deep
)

type meta struct {
	pageSize           uint32
	root, freelist, hw uint64 // hw: high-water page id (meta.pgid)
	txid               uint64
}

type walker struct {
	f        io.ReaderAt
	size     int64
	pageSize int64
	hw       uint64
	seen     map[uint64]bool
}

var le = binary.LittleEndian

func readMeta(f io.ReaderAt, off int64) (meta, error) {
	var b [pageHeaderSize + 64]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		return meta{}, fmt.Errorf("meta page at %d: %w", off, err)
	}
	m := b[pageHeaderSize:]
	if le.Uint32(m[0:]) != boltMagic {
		return meta{}, errors.New("not a bbolt file (bad magic)")
	}
	if le.Uint32(m[4:]) != boltVersion {
		return meta{}, fmt.Errorf("unsupported bbolt format version %d", le.Uint32(m[4:]))
	}
	h := fnv.New64a()
	h.Write(m[:56])
	if h.Sum64() != le.Uint64(m[56:]) {
		return meta{}, errors.New("meta page checksum mismatch")
	}
	return meta{
		pageSize: le.Uint32(m[8:]),
		root:     le.Uint64(m[16:]),
		freelist: le.Uint64(m[32:]),
		hw:       le.Uint64(m[40:]),
		txid:     le.Uint64(m[48:]),
	}, nil
}

func (w *walker) run() error {
	// bbolt uses the valid meta page with the highest txid; so do we.
	m0, err0 := readMeta(w.f, 0)
	var m1 meta
	err1 := errors.New("second meta page not found")
	for ps := int64(1024); ps <= 1<<24 && ps+pageHeaderSize+64 <= w.size; ps <<= 1 {
		if err0 == nil && ps != int64(m0.pageSize) {
			continue
		}
		if m, err := readMeta(w.f, ps); err == nil && int64(m.pageSize) == ps {
			m1, err1 = m, nil
			break
		}
	}
	var m meta
	switch {
	case err0 != nil && err1 != nil:
		return fmt.Errorf("both meta pages are invalid: %v; %v", err0, err1)
	case err0 != nil:
		m = m1
	case err1 != nil || m0.txid >= m1.txid:
		m = m0
	default:
		m = m1
	}
	if m.pageSize < 512 || m.pageSize > 1<<24 || m.pageSize&(m.pageSize-1) != 0 {
		return fmt.Errorf("implausible page size %d", m.pageSize)
	}
	w.pageSize = int64(m.pageSize)
	w.hw = m.hw
	if m.hw < 2 || m.hw > uint64(w.size/w.pageSize) {
		return fmt.Errorf("file holds %d pages but its metadata claims %d (truncated?)", w.size/w.pageSize, m.hw)
	}
	if m.freelist != noFreelist {
		if err := w.freelist(m.freelist); err != nil {
			return err
		}
	}
	return w.tree(m.root, 0)
}

// page reads page id with its overflow pages after checking every bound.
func (w *walker) page(id uint64, wantFlags uint16) ([]byte, error) {
	if id < 2 || id >= w.hw {
		return nil, fmt.Errorf("page id %d outside 2..%d", id, w.hw-1)
	}
	if w.seen[id] {
		return nil, fmt.Errorf("page %d is referenced twice", id)
	}
	w.seen[id] = true
	var h [pageHeaderSize]byte
	if _, err := w.f.ReadAt(h[:], int64(id)*w.pageSize); err != nil {
		return nil, fmt.Errorf("page %d: %w", id, err)
	}
	if got := le.Uint64(h[0:]); got != id {
		return nil, fmt.Errorf("page %d identifies itself as %d", id, got)
	}
	flags := le.Uint16(h[8:])
	if flags&wantFlags == 0 || flags&(flags-1) != 0 {
		return nil, fmt.Errorf("page %d has unexpected type %#x", id, flags)
	}
	overflow := uint64(le.Uint32(h[12:]))
	if id+overflow >= w.hw {
		return nil, fmt.Errorf("page %d overflows past the end (%d more pages)", id, overflow)
	}
	for i := uint64(1); i <= overflow; i++ {
		if w.seen[id+i] {
			return nil, fmt.Errorf("page %d overlaps page %d", id, id+i)
		}
		w.seen[id+i] = true
	}
	buf := make([]byte, int64(overflow+1)*w.pageSize)
	if _, err := w.f.ReadAt(buf, int64(id)*w.pageSize); err != nil {
		return nil, fmt.Errorf("page %d: %w", id, err)
	}
	return buf, nil
}

func (w *walker) freelist(id uint64) error {
	buf, err := w.page(id, flagFreelist)
	if err != nil {
		return fmt.Errorf("freelist: %w", err)
	}
	count, start := uint64(le.Uint16(buf[10:])), uint64(pageHeaderSize)
	if count == 0xFFFF {
		count, start = le.Uint64(buf[pageHeaderSize:]), pageHeaderSize+8
	}
	if count > (uint64(len(buf))-start)/8 {
		return fmt.Errorf("freelist: %d ids do not fit in its page", count)
	}
	for i := range count {
		if fid := le.Uint64(buf[start+8*i:]); fid < 2 || fid >= w.hw {
			return fmt.Errorf("freelist: free page id %d outside 2..%d", fid, w.hw-1)
		}
	}
	return nil
}

// tree walks the bucket rooted at page root.
func (w *walker) tree(root uint64, depth int) error {
	if depth > maxDepth {
		return errors.New("bucket tree too deep (a reference loop?)")
	}
	buf, err := w.page(root, flagBranch|flagLeaf)
	if err != nil {
		return err
	}
	return w.node(buf, root, depth)
}

// node checks one branch or leaf page image (a real page or an inline
// bucket's page) and descends into its children.
func (w *walker) node(buf []byte, id uint64, depth int) error {
	if len(buf) < pageHeaderSize {
		return fmt.Errorf("page %d: shorter than its header", id)
	}
	flags, count := le.Uint16(buf[8:]), int(le.Uint16(buf[10:]))
	if pageHeaderSize+count*elementSize > len(buf) {
		return fmt.Errorf("page %d: %d elements do not fit", id, count)
	}
	for i := range count {
		e := pageHeaderSize + i*elementSize
		switch flags {
		case flagBranch:
			pos, ksize, child := int64(le.Uint32(buf[e:])), int64(le.Uint32(buf[e+4:])), le.Uint64(buf[e+8:])
			if int64(e)+pos+ksize > int64(len(buf)) {
				return fmt.Errorf("page %d: element %d points outside the page", id, i)
			}
			if err := w.tree(child, depth+1); err != nil {
				return err
			}
		case flagLeaf:
			lf := le.Uint32(buf[e:])
			pos, ksize, vsize := int64(le.Uint32(buf[e+4:])), int64(le.Uint32(buf[e+8:])), int64(le.Uint32(buf[e+12:]))
			end := int64(e) + pos + ksize + vsize
			if end > int64(len(buf)) {
				return fmt.Errorf("page %d: element %d points outside the page", id, i)
			}
			if lf&bucketLeafFlag == 0 {
				continue
			}
			val := buf[int64(e)+pos+ksize : end]
			if len(val) < 16 {
				return fmt.Errorf("page %d: element %d: bucket header too short", id, i)
			}
			if sub := le.Uint64(val); sub != 0 {
				if err := w.tree(sub, depth+1); err != nil {
					return err
				}
			} else if err := w.inline(val[16:], id, depth+1); err != nil {
				return err
			}
		default:
			return fmt.Errorf("page %d has unexpected type %#x", id, flags)
		}
	}
	return nil
}

func (w *walker) inline(buf []byte, parent uint64, depth int) error {
	if depth > maxDepth {
		return errors.New("bucket tree too deep")
	}
	if len(buf) < pageHeaderSize || le.Uint16(buf[8:]) != flagLeaf {
		return fmt.Errorf("page %d: inline bucket is not a leaf page", parent)
	}
	return w.node(buf, parent, depth)
}
