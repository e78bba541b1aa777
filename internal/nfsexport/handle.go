package nfsexport

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash/fnv"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync"
	"time"
)

// File handles are derived from the export and the path, never from server
// memory, so a handle issued before a restart resolves after it without any
// prior LOOKUP (a restore in flight just continues):
//
//	byte 0      handleVersion
//	byte 1      kind: kindInline or kindHashed
//	bytes 2..3  zero
//	bytes 4..7  export tag: FNV-32a of the export path ("/images")
//	inline:     the slash-separated path relative to the export root
//	            (<= 56 bytes), NUL-padded to a multiple of 4
//	hashed:     the first 24 bytes of SHA-256 of that path
//
// Handles are always a multiple of 4 bytes long: go-nfs reads handles with
// an XDR opaque reader that does not skip padding, so any other length
// misreads the arguments that follow (ACCESS then grants nothing).
//
// NFSv3 handles are at most 64 bytes, so paths longer than maxInline are
// hashed. The hash -> path map is not persisted: it is filled by every
// handle pumi hands out and, after a restart, re-derived by walking the
// export once when an unknown hash arrives (image trees are a few hundred
// entries). A handle goes stale only when its path is really gone; a file
// replaced under the same name gets the same handle, which is what a
// Clonezilla image repository wants.
const (
	handleVersion = 0x81
	kindInline    = 0
	kindHashed    = 1
	handleHeader  = 8
	maxHandle     = 64
	maxInline     = maxHandle - handleHeader
	hashLen       = 24

	// rewalkEvery bounds how often unknown hashes may trigger a walk, so a
	// client flooding forged handles cannot keep the disk busy.
	rewalkEvery = 5 * time.Second
)

var (
	errBadHandle   = errors.New("malformed file handle")
	errStaleHandle = errors.New("file handle refers to nothing in this export")
)

func exportTag(exportPath string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(exportPath))
	return h.Sum32()
}

// decodedHandle is a handle taken apart; for hashed handles rel is empty
// and hash is set until the table resolves it.
type decodedHandle struct {
	tag    uint32
	hashed bool
	rel    string
	hash   [hashLen]byte
}

// decodeHandle parses a handle without consulting any table. It never
// panics and rejects every path that could name something outside the export
// (absolute, "..", ".", empty components, NUL).
func decodeHandle(b []byte) (decodedHandle, error) {
	var d decodedHandle
	if len(b) < handleHeader || len(b) > maxHandle || len(b)%4 != 0 ||
		b[0] != handleVersion || b[2] != 0 || b[3] != 0 {
		return d, errBadHandle
	}
	d.tag = binary.BigEndian.Uint32(b[4:8])
	switch b[1] {
	case kindInline:
		body := b[handleHeader:]
		n := len(body)
		for n > 0 && body[n-1] == 0 {
			n--
		}
		// Exactly the minimal padding, so every path has one handle.
		if (n+3)&^3 != len(body) {
			return d, errBadHandle
		}
		rel := string(body[:n])
		if !validRel(rel) {
			return d, errBadHandle
		}
		d.rel = rel
	case kindHashed:
		if len(b) != handleHeader+hashLen {
			return d, errBadHandle
		}
		d.hashed = true
		copy(d.hash[:], b[handleHeader:])
	default:
		return d, errBadHandle
	}
	return d, nil
}

// validRel reports whether rel is "" (the export root) or a clean relative
// path of real names.
func validRel(rel string) bool {
	if rel == "" {
		return true
	}
	if strings.IndexByte(rel, 0) >= 0 {
		return false
	}
	for _, c := range strings.Split(rel, "/") {
		if c == "" || c == "." || c == ".." {
			return false
		}
	}
	return true
}

// cleanRel turns go-nfs path components into a clean relative path; it can
// never climb above the root.
func cleanRel(parts []string) string {
	p := path.Clean("/" + strings.Join(parts, "/"))
	return strings.TrimPrefix(p, "/")
}

func splitRel(rel string) []string {
	if rel == "" {
		return []string{}
	}
	return strings.Split(rel, "/")
}

func hashRel(rel string) [hashLen]byte {
	s := sha256.Sum256([]byte(rel))
	var h [hashLen]byte
	copy(h[:], s[:hashLen])
	return h
}

// handleTable holds one export's hash -> path map for long paths. With
// per-client directories (Export.DirFor) one map serves them all: it maps
// hashes of relative paths, whichever directory they are in.
type handleTable struct {
	tag uint32

	mu       sync.Mutex
	long     map[[hashLen]byte]string
	lastWalk time.Time
}

func newHandleTable(exportPath string) *handleTable {
	return &handleTable{tag: exportTag(exportPath), long: map[[hashLen]byte]string{}}
}

// encode returns the handle for rel (a clean relative path).
func (t *handleTable) encode(rel string) []byte {
	b := make([]byte, handleHeader, maxHandle)
	b[0] = handleVersion
	binary.BigEndian.PutUint32(b[4:8], t.tag)
	if len(rel) <= maxInline {
		b[1] = kindInline
		b = append(b, rel...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	b[1] = kindHashed
	h := hashRel(rel)
	t.mu.Lock()
	t.long[h] = rel
	t.mu.Unlock()
	return append(b, h[:]...)
}

// resolve maps a decoded handle of this export to its relative path; an
// unknown hash makes it walk root (the client's directory of the export).
func (t *handleTable) resolve(d decodedHandle, root *os.Root) (string, error) {
	if d.tag != t.tag {
		return "", errStaleHandle
	}
	if !d.hashed {
		return d.rel, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if rel, ok := t.long[d.hash]; ok {
		return rel, nil
	}
	if time.Since(t.lastWalk) < rewalkEvery {
		return "", errStaleHandle
	}
	t.lastWalk = time.Now()
	t.walkLocked(root)
	if rel, ok := t.long[d.hash]; ok {
		return rel, nil
	}
	return "", errStaleHandle
}

// walkLocked re-derives the long-path map from the export tree, through
// the root (symlinks are not followed, and nothing leads out of it).
func (t *handleTable) walkLocked(root *os.Root) {
	if root == nil {
		return
	}
	_ = fs.WalkDir(root.FS(), ".", func(rel string, de fs.DirEntry, err error) error {
		if err != nil {
			return nil // unreadable subtree: its handles stay unknown
		}
		if rel == "." {
			return nil
		}
		if len(rel) > maxInline {
			t.long[hashRel(rel)] = rel
		}
		return nil
	})
}
