package nfsexport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/go-git/go-billy/v5"
	nfs "github.com/willscott/go-nfs"
	"golang.org/x/sys/unix"
)

// goNFSHandler is what the embedded go-nfs server sees: pumi's exports with
// deterministic handles. Access control has already happened in dispatch
// before a call reaches go-nfs.
type goNFSHandler struct{ s *Server }

type exportFS interface{ export() *export }

// Mount is never reached: pumi answers MOUNT itself (dispatch.go).
func (h *goNFSHandler) Mount(context.Context, net.Conn, nfs.MountRequest) (nfs.MountStatus, billy.Filesystem, []nfs.AuthFlavor) {
	return nfs.MountStatusErrAcces, nil, nil
}

func (h *goNFSHandler) Change(fs billy.Filesystem) billy.Change {
	if rw, ok := fs.(*rwFS); ok {
		return rw
	}
	return nil
}

// FSStat reports the real free space of the export's file system.
func (h *goNFSHandler) FSStat(_ context.Context, fs billy.Filesystem, st *nfs.FSStat) error {
	ef, ok := fs.(exportFS)
	if !ok {
		return errors.New("nfsexport: FSSTAT on a foreign file system")
	}
	var sf unix.Statfs_t
	if err := unix.Statfs(ef.export().Dir, &sf); err != nil {
		return fmt.Errorf("nfsexport: statfs %s: %w", ef.export().Dir, err)
	}
	bs := uint64(sf.Bsize)
	st.TotalSize = sf.Blocks * bs
	st.FreeSize = sf.Bfree * bs
	st.AvailableSize = sf.Bavail * bs
	st.TotalFiles = sf.Files
	st.FreeFiles = sf.Ffree
	st.AvailableFiles = sf.Ffree
	if !ef.export().Writable {
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

// FromHandle resolves a handle to a path that exists now; a handle whose
// file is gone is stale.
func (h *goNFSHandler) FromHandle(fh []byte) (billy.Filesystem, []string, error) {
	exp, rel, status := h.s.resolve(fh)
	if status != nfs3OK {
		return nil, nil, errStaleHandle
	}
	if _, err := exp.fs.Lstat(rel); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", errStaleHandle, err)
	}
	return exp.fs, splitRel(rel), nil
}

func (h *goNFSHandler) InvalidateHandle(billy.Filesystem, []byte) error { return nil }

// HandleLimit only caps go-nfs's READDIR page size: handles themselves are
// unlimited because none are stored.
func (h *goNFSHandler) HandleLimit() int { return 1 << 20 }

// roFS hides billy's write capability, so go-nfs itself also answers any
// modifying call with NFS3ERR_ROFS (dispatch refuses them first).
type roFS struct {
	billy.Filesystem
	exp *export
}

func (f *roFS) export() *export { return f.exp }
func (f *roFS) Capabilities() billy.Capability {
	return billy.ReadCapability | billy.SeekCapability
}

// rwFS is the capture export: billy.Change on top of a BoundOS, with every
// path component checked so chmod/chown/utimes cannot follow a symlink out.
type rwFS struct {
	billy.Filesystem
	exp *export
}

func (f *rwFS) export() *export { return f.exp }

var errSymlinkInPath = errors.New("path goes through a symlink: refused so nothing outside the export is changed")

// hostPath returns the host path of rel after checking that no component
// (and, unless lastMayLink, not the last one either) is a symlink.
func (f *rwFS) hostPath(rel string, lastMayLink bool) (string, error) {
	rel = cleanRel([]string{filepath.ToSlash(rel)})
	parts := splitRel(rel)
	p := f.exp.Dir
	for i, c := range parts {
		p = filepath.Join(p, c)
		st, err := os.Lstat(p)
		if err != nil {
			return "", err
		}
		if st.Mode()&os.ModeSymlink != 0 && !(lastMayLink && i == len(parts)-1) {
			return "", &os.PathError{Op: "resolve", Path: rel, Err: errSymlinkInPath}
		}
	}
	return p, nil
}

func (f *rwFS) Chmod(name string, mode os.FileMode) error {
	p, err := f.hostPath(name, false)
	if err != nil {
		return err
	}
	return os.Chmod(p, mode)
}

func (f *rwFS) Lchown(name string, uid, gid int) error {
	p, err := f.hostPath(name, true)
	if err != nil {
		return err
	}
	return os.Lchown(p, uid, gid)
}

func (f *rwFS) Chown(name string, uid, gid int) error {
	p, err := f.hostPath(name, false)
	if err != nil {
		return err
	}
	return os.Chown(p, uid, gid)
}

func (f *rwFS) Chtimes(name string, atime, mtime time.Time) error {
	p, err := f.hostPath(name, false)
	if err != nil {
		return err
	}
	return os.Chtimes(p, atime, mtime)
}
