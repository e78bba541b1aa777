package nfsexport

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io/fs"
	"path"
	"sort"
	"sync"
	"time"

	nfs "github.com/willscott/go-nfs"
)

// READDIR and READDIRPLUS are served here, not by go-nfs: go-nfs reads,
// stats and sorts the whole directory for every page and, estimating 512
// bytes per entry, fits 15 entries in libnfs's 8 KiB pages, so 20,000
// entries took 123 s. The first page (cookie 0) reads the directory once
// and stores the sorted listing under a new random cookie verifier; later
// pages present that verifier and are served from the stored listing,
// starting at the index their cookie names, packed to the client's byte
// counts exactly. Listings are bounded in age and in total entries; a page
// whose listing has gone gets NFS3ERR_BAD_COOKIE and the client lists again
// from the start. A listing too large to store gets verifier 0, and its
// pages re-read the directory (slow, but right).
const (
	dirListingAge      = 30 * time.Second
	dirCacheMaxEntries = 64 << 10 // ~256 bytes each: 16 MiB at most
)

type dirListing struct {
	key      string // export + client directory + path
	contents []fs.FileInfo
	at       time.Time
}

type dirCache struct {
	mu      sync.Mutex
	m       map[uint64]*dirListing
	order   []uint64 // oldest first
	entries int
}

func newDirCache() *dirCache { return &dirCache{m: map[uint64]*dirListing{}} }

// put stores a fresh listing and returns its verifier (never 0: go-nfs and
// clients treat 0 as "no verifier").
func (c *dirCache) put(key string, contents []fs.FileInfo) uint64 {
	var b [8]byte
	var v uint64
	for v == 0 {
		_, _ = rand.Read(b[:])
		v = binary.BigEndian.Uint64(b[:])
	}
	if len(contents) > dirCacheMaxEntries {
		return 0 // not cacheable: every page lists again
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[v] = &dirListing{key: key, contents: contents, at: now}
	c.order = append(c.order, v)
	c.entries += len(contents)
	for len(c.order) > 0 {
		old := c.m[c.order[0]]
		if old != nil && c.entries <= dirCacheMaxEntries && now.Sub(old.at) < dirListingAge {
			break
		}
		if old != nil {
			c.entries -= len(old.contents)
			delete(c.m, c.order[0])
		}
		c.order = c.order[1:]
	}
	return v
}

// get returns the listing stored under verifier for key, or nil.
func (c *dirCache) get(key string, verifier uint64) []fs.FileInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.m[verifier]
	if l == nil || l.key != key || time.Since(l.at) >= dirListingAge {
		return nil
	}
	return l.contents
}

const (
	procReaddir     = 16
	procReaddirPlus = 17
	nfs3ErrNotDir   = 20
	nfs3ErrBadCook  = 10003
	nfs3ErrTooSmall = 10005

	// Cookies: "." is 1, ".." is 2, listing entry i is i+3 (0 means "from
	// the start").
	cookieFirst = 3
	// A fattr3 is 84 bytes; post_op_attr adds its boolean.
	postOpAttrSize = 4 + 84
)

func xdrPad(n int) int { return (n + 3) &^ 3 }

// readdir answers READDIR (plus == false) and READDIRPLUS from x, the
// arguments after the directory handle.
func (c *clientConn) readdir(xid uint32, plus bool, er *exportRoot, rel string, x *xdrReader) {
	proc := uint32(procReaddir)
	if plus {
		proc = procReaddirPlus
	}
	fail := func(status uint32) { c.nfsFail(xid, proc, status) }
	cookie, verf := x.u64(), x.u64()
	maxcount := x.u32()
	dircount := maxcount
	if plus {
		dircount, maxcount = maxcount, x.u32()
	}
	if x.err != nil {
		c.reply(xid, acceptGarbageArgs)
		return
	}
	dirInfo, err := er.fs.Lstat(rel)
	switch {
	case err != nil:
		fail(nfs3ErrStale)
		return
	case !dirInfo.IsDir():
		fail(nfs3ErrNotDir)
		return
	}
	key := er.exp.Path + "\x00" + er.dir + "\x00" + rel
	var contents []fs.FileInfo
	if cookie != 0 && verf != 0 {
		if contents = c.s.dirs.get(key, verf); contents == nil {
			fail(nfs3ErrBadCook)
			return
		}
	}
	if contents == nil {
		contents, err = er.fs.ReadDir(rel)
		if err != nil {
			if errors.Is(err, fs.ErrPermission) {
				fail(nfs3ErrAcces)
			} else {
				fail(nfs3ErrIO)
			}
			return
		}
		sort.Slice(contents, func(i, j int) bool { return contents[i].Name() < contents[j].Name() })
		verf = c.s.dirs.put(key, contents)
	}

	w := replyHeader(xid, acceptSuccess)
	w.u32(nfs3OK)
	dirAttr := nfs.ToFileAttribute(dirInfo, rel)
	_ = nfs.WritePostOpAttrs(w, dirAttr)
	w.u64(verf)
	start := len(w.b)
	// What must still fit after the entries: the list's end and eof.
	budget := int(maxcount) - (start - 4 - 24) - 8
	dirBytes, n := 0, 0
	add := func(fileid uint64, name string, ck uint64, attr *nfs.FileAttribute, fh []byte) bool {
		size := 4 + 8 + 4 + xdrPad(len(name)) + 8
		dsize := 8 + 4 + xdrPad(len(name)) + 8
		if plus {
			size += 4 + 4 // attributes_follow, handle_follows
			if attr != nil {
				size += 84
			}
			if fh != nil {
				size += 4 + len(fh)
			}
		}
		if len(w.b)-start+size > budget || dirBytes+dsize > int(dircount) {
			return false
		}
		dirBytes += dsize
		w.u32(1)
		w.u64(fileid)
		w.opaque([]byte(name))
		w.u64(ck)
		if plus {
			_ = nfs.WritePostOpAttrs(w, attr)
			if fh != nil {
				w.u32(1)
				w.opaque(fh)
			} else {
				w.u32(0)
			}
		}
		n++
		return true
	}
	eof := true
	full := false
	if cookie == 0 {
		full = !add(dirAttr.Fileid, ".", 1, dirAttr, nil)
	}
	if !full && cookie <= 1 {
		parent := path.Dir("/" + rel)[1:]
		pid := dirAttr.Fileid
		if pi, err := er.fs.Lstat(parent); err == nil {
			pid = nfs.ToFileAttribute(pi, parent).Fileid
		}
		full = !add(pid, "..", 2, nil, nil)
	}
	first := 0
	if cookie >= cookieFirst {
		first = int(min(cookie-cookieFirst+1, uint64(len(contents))))
	}
	if full {
		eof = false
	} else {
		for i := first; i < len(contents); i++ {
			info := contents[i]
			childRel := path.Join(rel, info.Name())
			attr := nfs.ToFileAttribute(info, childRel)
			var fh []byte
			if plus {
				fh = er.exp.table.encode(childRel)
			}
			if !add(attr.Fileid, info.Name(), uint64(i+cookieFirst), attr, fh) {
				eof = false
				break
			}
		}
	}
	if n == 0 && !eof {
		fail(nfs3ErrTooSmall)
		return
	}
	w.u32(0)
	if eof {
		w.u32(1)
	} else {
		w.u32(0)
	}
	c.send(w.frame())
}
