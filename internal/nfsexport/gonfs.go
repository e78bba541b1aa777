package nfsexport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/go-git/go-billy/v5"
	nfs "github.com/willscott/go-nfs"
	"golang.org/x/sys/unix"
)

// goNFSHandler is what one client connection's embedded go-nfs server
// sees: pumi's exports, in the client's directories, with deterministic
// handles. Access control has already happened in dispatch before a call
// reaches go-nfs. go-nfs handles one call at a time per connection, so
// last needs no lock.
type goNFSHandler struct {
	s  *Server
	ip netip.Addr
}

type exportFS interface{ export() *export }

// Mount is never reached: pumi answers MOUNT itself (dispatch.go).
func (h *goNFSHandler) Mount(context.Context, net.Conn, nfs.MountRequest) (nfs.MountStatus, billy.Filesystem, []nfs.AuthFlavor) {
	return nfs.MountStatusErrAcces, nil, nil
}

func (h *goNFSHandler) Change(fs billy.Filesystem) billy.Change {
	if rf, ok := fs.(*rootFS); ok && rf.writable() {
		return rf
	}
	return nil
}

// FSStat reports the real free space of the export's file system.
func (h *goNFSHandler) FSStat(_ context.Context, fs billy.Filesystem, st *nfs.FSStat) error {
	rf, ok := fs.(*rootFS)
	if !ok {
		return errors.New("nfsexport: FSSTAT on a foreign file system")
	}
	var sf unix.Statfs_t
	if err := unix.Statfs(rf.er.dir, &sf); err != nil {
		return fmt.Errorf("nfsexport: statfs %s: %w", rf.er.dir, err)
	}
	bs := uint64(sf.Bsize)
	st.TotalSize = sf.Blocks * bs
	st.FreeSize = sf.Bfree * bs
	st.AvailableSize = sf.Bavail * bs
	st.TotalFiles = sf.Files
	st.FreeFiles = sf.Ffree
	st.AvailableFiles = sf.Ffree
	if !rf.writable() {
		// Nothing can be written through a read-only export.
		st.AvailableSize, st.AvailableFiles = 0, 0
	}
	st.CacheHint = time.Second
	return nil
}

func (h *goNFSHandler) ToHandle(fs billy.Filesystem, p []string) []byte {
	ef, ok := fs.(exportFS)
	if !ok {
		return nil
	}
	return ef.export().table.encode(cleanRel(p))
}

// FromHandle resolves a handle to a path that exists now in this client's
// directory of the export; a handle whose file is gone is stale.
func (h *goNFSHandler) FromHandle(fh []byte) (billy.Filesystem, []string, error) {
	exp, d, status := h.s.decode(fh)
	if status != nfs3OK {
		return nil, nil, errStaleHandle
	}
	er, status := h.s.rootFor(exp, h.ip)
	if status != nfs3OK {
		return nil, nil, errStaleHandle
	}
	rel, status := h.s.relIn(exp, d, er)
	if status != nfs3OK {
		return nil, nil, errStaleHandle
	}
	if _, err := er.fs.Lstat(rel); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", errStaleHandle, err)
	}
	return er.fs, splitRel(rel), nil
}

func (h *goNFSHandler) InvalidateHandle(billy.Filesystem, []byte) error { return nil }

// HandleLimit only caps go-nfs's READDIR page size: handles themselves are
// unlimited because none are stored.
func (h *goNFSHandler) HandleLimit() int { return 1 << 20 }
