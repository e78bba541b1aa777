package nfsexport

import (
	"crypto/rand"
	"encoding/binary"
	"io/fs"
	"sync"
	"time"
)

// Directory listings for READDIR/READDIRPLUS. go-nfs reads, stats and sorts
// the whole directory for every page unless its handler caches listings;
// with 20,000 entries that made a listing quadratic (123 s). The first page
// (cookie 0) reads the directory and stores the sorted listing under a new
// random cookie verifier; later pages present that verifier and are served
// from the stored listing. Listings are bounded in age and in total
// entries; a page whose listing has gone gets NFS3ERR_BAD_COOKIE from
// go-nfs and the client lists again from the start.
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
	if key == "" || len(contents) > dirCacheMaxEntries {
		return v // not cacheable: every page lists again
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
