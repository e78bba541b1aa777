package nfsexport

import (
	"errors"
	"io/fs"
	"math"
	"os"
	"path"
	"syscall"

	nfs "github.com/willscott/go-nfs"
)

// WRITE and COMMIT are served here, not by go-nfs: go-nfs answers every
// WRITE FILE_SYNC without syncing anything and its COMMIT does nothing, so
// a capture reported "finished" could be lost to a power cut.
//
// A WRITE the client asks to be stable (DATA_SYNC or FILE_SYNC) is fsynced
// before the reply says FILE_SYNC. An UNSTABLE WRITE is answered UNSTABLE
// with the server's write verifier, and COMMIT fsyncs the file and the
// directories from it up to the export root before it answers. The verifier
// is random per Server, so after a restart (which may have lost unsynced
// data) clients see a new verifier and send their uncommitted data again.

const (
	stableUnstable = 0
	stableFileSync = 2
	stableCommit   = 100 // stableHook's value for a COMMIT

	nfs3ErrFBig  = 27
	nfs3ErrNoSpc = 28
	nfs3ErrDQuot = 69
)

// writeStatus maps an OS error of a WRITE or COMMIT to an NFS status.
func writeStatus(err error) uint32 {
	var errno syscall.Errno
	switch {
	case errors.Is(err, errNotRegular):
		return nfs3ErrInval
	case errors.Is(err, fs.ErrNotExist):
		return nfs3ErrStale
	case errors.Is(err, fs.ErrPermission):
		return nfs3ErrAcces
	case errors.As(err, &errno):
		switch errno {
		case syscall.EISDIR:
			return nfs3ErrIsDir
		case syscall.ENOSPC:
			return nfs3ErrNoSpc
		case syscall.EDQUOT:
			return nfs3ErrDQuot
		case syscall.EFBIG:
			return nfs3ErrFBig
		case syscall.EROFS:
			return nfs3ErrROFS
		}
	}
	return nfs3ErrIO
}

// openRegular opens rel beneath er and refuses anything but a regular
// file; O_NONBLOCK keeps a FIFO from blocking the open.
func openRegular(er *exportRoot, rel string, flag int) (*os.File, error) {
	f, err := er.root.OpenFile(rootName(rel), flag|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		if st.IsDir() {
			return nil, syscall.EISDIR
		}
		return nil, &fs.PathError{Op: "open", Path: rel, Err: errNotRegular}
	}
	return f, nil
}

func (c *clientConn) write(xid uint32, er *exportRoot, rel string, off uint64, stable uint32, data []byte) {
	fail := func(status uint32) { c.nfsFail(xid, procWrite, status) }
	if off > math.MaxInt64-uint64(len(data)) {
		fail(nfs3ErrFBig)
		return
	}
	f, err := openRegular(er, rel, os.O_WRONLY)
	if err != nil {
		fail(writeStatus(err))
		return
	}
	defer f.Close()
	if _, err := f.WriteAt(data, int64(off)); err != nil {
		c.log.Warn("nfs: WRITE failed", "export", er.exp.Path, "path", rel, "err", err)
		fail(writeStatus(err))
		return
	}
	committed := uint32(stableUnstable)
	if stable != stableUnstable {
		if err := f.Sync(); err != nil {
			c.log.Warn("nfs: fsync after WRITE failed", "export", er.exp.Path, "path", rel, "err", err)
			fail(writeStatus(err))
			return
		}
		committed = stableFileSync
	}
	info, err := f.Stat()
	if err != nil {
		fail(nfs3ErrIO)
		return
	}
	if c.s.stableHook != nil {
		c.s.stableHook(er.exp.Path, rel, committed)
	}
	w := replyHeader(xid, acceptSuccess)
	w.u32(nfs3OK)
	w.u32(0) // pre_op_attr: none
	_ = nfs.WritePostOpAttrs(w, nfs.ToFileAttribute(info, rel))
	w.u32(uint32(len(data)))
	w.u32(committed)
	w.b = append(w.b, c.s.verf[:]...)
	c.send(w.frame())
}

// commit fsyncs the file and every directory from its parent up to the
// export root (the names of a new capture's folder and files), then answers
// with the verifier.
func (c *clientConn) commit(xid uint32, er *exportRoot, rel string) {
	fail := func(status uint32) { c.nfsFail(xid, procCommit, status) }
	f, err := er.root.OpenFile(rootName(rel), os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		fail(writeStatus(err))
		return
	}
	info, err := f.Stat()
	if err == nil {
		err = f.Sync()
	}
	f.Close()
	if err != nil {
		c.log.Warn("nfs: COMMIT failed", "export", er.exp.Path, "path", rel, "err", err)
		fail(writeStatus(err))
		return
	}
	for dir := rel; dir != "" && dir != "."; {
		dir = path.Dir(dir)
		if dir == "/" {
			break
		}
		if err := syncDir(er, dir); err != nil {
			c.log.Warn("nfs: COMMIT: directory fsync failed", "export", er.exp.Path, "path", dir, "err", err)
			fail(writeStatus(err))
			return
		}
	}
	if c.s.stableHook != nil {
		c.s.stableHook(er.exp.Path, rel, stableCommit)
	}
	w := replyHeader(xid, acceptSuccess)
	w.u32(nfs3OK)
	w.u32(0) // pre_op_attr: none
	_ = nfs.WritePostOpAttrs(w, nfs.ToFileAttribute(info, rel))
	w.b = append(w.b, c.s.verf[:]...)
	c.send(w.frame())
}

func syncDir(er *exportRoot, dir string) error {
	d, err := er.root.Open(rootName(dir))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
