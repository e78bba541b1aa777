package nfsexport

import (
	"context"
	"path"
	"strings"
	"sync"
)

// NFSv3 procedures and status codes (RFC 1813) that pumi answers itself.
const (
	procNull        = 0
	procRead        = 6
	procWrite       = 7
	procMkdir       = 9
	procSymlink     = 10
	procMknod       = 11
	procRename      = 14
	procLink        = 15
	procFSInfo      = 19
	procCommit      = 21
	nfs3OK          = 0
	nfs3ErrAcces    = 13
	nfs3ErrXDev     = 18
	nfs3ErrIsDir    = 21
	nfs3ErrInval    = 22
	nfs3ErrROFS     = 30
	nfs3ErrStale    = 70
	nfs3ErrBadHndl  = 10001
	nfs3ErrIO       = 5
	nfs3ErrNotSupp  = 10004
	mnt3OK          = 0
	mnt3ErrNoEnt    = 2
	mnt3ErrAcces    = 13
	mountProcNull   = 0
	mountProcMnt    = 1
	mountProcDump   = 2
	mountProcUmnt   = 3
	mountProcUmntAl = 4
	mountProcExport = 5
	authUnix        = 1
	maxDirpath      = 1024
	maxNameLen      = 255
)

// failWords is, per NFSv3 procedure, how many FALSE words (post_op_attr or
// wcc_data with nothing in them) follow the status in a failure result, so
// pumi can refuse any call with a well-formed reply.
var failWords = [...]int{
	0: 0, 1: 0, 2: 2, 3: 1, 4: 1, 5: 1, 6: 1, 7: 2, 8: 2, 9: 2, 10: 2,
	11: 2, 12: 2, 13: 2, 14: 4, 15: 3, 16: 1, 17: 1, 18: 1, 19: 1, 20: 1, 21: 2,
}

// modifies reports whether an NFSv3 procedure changes the export.
func modifies(proc uint32) bool {
	switch proc {
	case 2, 7, 8, 9, 10, 11, 12, 13, 14, 15, 21: // SETATTR WRITE CREATE MKDIR SYMLINK MKNOD REMOVE RMDIR RENAME LINK COMMIT
		return true
	}
	return false
}

func (c *clientConn) nfsFail(xid, proc, status uint32) {
	w := replyHeader(xid, acceptSuccess)
	w.u32(status)
	for i := 0; i < failWords[proc]; i++ {
		w.u32(0)
	}
	c.send(w.frame())
}

// dispatch handles one call record. It returns an error only when the
// connection must be dropped (a record that is not a call).
func (c *clientConn) dispatch(ctx context.Context, rec []byte, sem chan struct{}, reads *sync.WaitGroup) error {
	call, err := parseCall(rec)
	if err != nil {
		return err
	}
	if call.rpcvers != 2 {
		c.send(deniedRPCMismatch(call.xid).frame())
		return nil
	}
	switch call.prog {
	case progMount:
		if call.vers != 3 {
			c.progMismatch(call.xid, 3)
			return nil
		}
		c.mount(call)
		return nil
	case progNFS:
		if call.vers != 3 {
			c.progMismatch(call.xid, 3)
			return nil
		}
	default:
		c.reply(call.xid, acceptProgUnavail)
		return nil
	}

	if call.proc == procNull {
		// NULL names no export; answer it only for a client allowed on some
		// export, so strangers learn nothing, not even that NFS is here.
		if !c.allowedAnywhere() {
			c.log.Warn("nfs: refused NULL from a client not in any run")
			c.send(deniedAuth(call.xid).frame())
			return nil
		}
		c.reply(call.xid, acceptSuccess)
		return nil
	}
	if call.proc >= uint32(len(failWords)) {
		c.reply(call.xid, acceptProcUnavail)
		return nil
	}

	if call.proc != procWrite && len(rec) > recordChunk {
		// Only WRITE carries bulk data; anything else this large is not a
		// real call and is not handed to go-nfs.
		c.reply(call.xid, acceptGarbageArgs)
		return nil
	}

	x := xdrReader{b: call.args}
	fh := x.opaque(maxHandle)
	if x.err != nil {
		c.reply(call.xid, acceptGarbageArgs)
		return nil
	}
	exp, d, status := c.s.decode(fh)
	if status != nfs3OK {
		c.nfsFail(call.xid, call.proc, status)
		return nil
	}
	write := modifies(call.proc)
	if !c.s.allow.AllowClient(c.ip, exp.Path, write) {
		c.log.Warn("nfs: refused call", "export", exp.Path, "proc", call.proc, "write", write)
		c.nfsFail(call.xid, call.proc, nfs3ErrAcces)
		return nil
	}
	if write && !exp.Writable {
		c.nfsFail(call.xid, call.proc, nfs3ErrROFS)
		return nil
	}
	er, status := c.s.rootFor(exp, c.ip)
	if status != nfs3OK {
		c.log.Warn("nfs: no export directory for this client", "export", exp.Path, "proc", call.proc)
		c.nfsFail(call.xid, call.proc, status)
		return nil
	}
	rel, status := c.s.relIn(exp, d, er)
	if status != nfs3OK {
		c.nfsFail(call.xid, call.proc, status)
		return nil
	}
	switch call.proc {
	case procSymlink, procMknod, procLink:
		// A capture is plain files in a folder. Symlinks are what path
		// escapes are built from; device nodes and hard links (to a file
		// the client should not reach) have no use here either.
		c.nfsFail(call.xid, call.proc, nfs3ErrNotSupp)
		return nil
	}
	if call.proc == procRename {
		// The second handle must be in the same export: no moving files
		// between the repository and the capture area behind Allow's back.
		x.opaque(maxNameLen) // from name
		fh2 := x.opaque(maxHandle)
		if x.err != nil {
			c.reply(call.xid, acceptGarbageArgs)
			return nil
		}
		exp2, _, st2 := c.s.decode(fh2)
		if st2 != nfs3OK {
			c.nfsFail(call.xid, call.proc, st2)
			return nil
		}
		if exp2 != exp {
			c.nfsFail(call.xid, call.proc, nfs3ErrXDev)
			return nil
		}
	}

	switch {
	case call.proc == procRead && !c.s.goNFSReads:
		off := x.u64()
		count := x.u32()
		if x.err != nil {
			c.reply(call.xid, acceptGarbageArgs)
			return nil
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		reads.Add(1)
		go func() {
			defer func() { <-sem; reads.Done() }()
			c.read(call.xid, er, rel, off, count)
		}()
		return nil
	case call.proc == procWrite:
		off := x.u64()
		x.u32() // count: the data's own length is what is written
		stable := x.u32()
		data := x.opaque(rtmax)
		if x.err != nil {
			c.reply(call.xid, acceptGarbageArgs)
			return nil
		}
		c.write(call.xid, er, rel, off, stable, data)
		return nil
	case call.proc == procCommit:
		c.commit(call.xid, er, rel)
		return nil
	case call.proc == procReaddir || call.proc == procReaddirPlus:
		c.readdir(call.xid, call.proc == procReaddirPlus, er, rel, &x)
		return nil
	case call.proc == procFSInfo:
		c.fsinfo(call.xid, er, rel)
		return nil
	}
	return c.forward(ctx, rec)
}

// decode maps a handle to its export, or to an NFS error status. A hashed
// handle's path is found by relIn, once the client's directory is known.
func (s *Server) decode(fh []byte) (*export, decodedHandle, uint32) {
	d, err := decodeHandle(fh)
	if err != nil {
		return nil, d, nfs3ErrBadHndl
	}
	exp := s.byTag[d.tag]
	if exp == nil {
		return nil, d, nfs3ErrStale
	}
	return exp, d, nfs3OK
}

// relIn returns the path a decoded handle of exp names in er.
func (s *Server) relIn(exp *export, d decodedHandle, er *exportRoot) (string, uint32) {
	rel, err := exp.table.resolve(d, er.root)
	if err != nil {
		return "", nfs3ErrStale
	}
	return rel, nfs3OK
}

func (c *clientConn) allowedAnywhere() bool {
	for _, e := range c.s.exports {
		if c.s.allow.AllowClient(c.ip, e.Path, false) {
			return true
		}
	}
	return false
}

func (c *clientConn) progMismatch(xid, v uint32) {
	w := replyHeader(xid, acceptProgMismatch)
	w.u32(v)
	w.u32(v)
	c.send(w.frame())
}

// deniedAuth is MSG_DENIED / AUTH_ERROR / AUTH_TOOWEAK.
func deniedAuth(xid uint32) *xdrWriter {
	w := &xdrWriter{b: make([]byte, 4, 32)}
	w.u32(xid)
	w.u32(msgReply)
	w.u32(1) // MSG_DENIED
	w.u32(1) // AUTH_ERROR
	w.u32(5) // AUTH_TOOWEAK
	return w
}

// mount answers the MOUNT v3 program. Only the configured export paths can
// be mounted, and only by allowed clients.
func (c *clientConn) mount(call rpcCall) {
	switch call.proc {
	case mountProcNull, mountProcUmnt, mountProcUmntAl:
		c.reply(call.xid, acceptSuccess)
	case mountProcDump:
		w := replyHeader(call.xid, acceptSuccess)
		w.u32(0) // no mount list kept: it would only be stale after a restart
		c.send(w.frame())
	case mountProcExport:
		w := replyHeader(call.xid, acceptSuccess)
		for _, e := range c.s.exports {
			w.u32(1)
			w.opaque([]byte(e.Path))
			w.u32(0) // no groups
		}
		w.u32(0)
		c.send(w.frame())
	case mountProcMnt:
		x := xdrReader{b: call.args}
		dir := x.opaque(maxDirpath)
		if x.err != nil {
			c.reply(call.xid, acceptGarbageArgs)
			return
		}
		w := replyHeader(call.xid, acceptSuccess)
		exp, rel := c.s.exportOf(string(dir))
		switch {
		case exp == nil:
			c.log.Warn("nfs: MOUNT of a path that is not exported", "path", string(dir))
			w.u32(mnt3ErrNoEnt)
		case !c.s.allow.AllowClient(c.ip, exp.Path, false):
			c.log.Warn("nfs: refused MOUNT", "export", exp.Path)
			w.u32(mnt3ErrAcces)
		default:
			er, st := c.s.rootFor(exp, c.ip)
			if st != nfs3OK {
				c.log.Warn("nfs: refused MOUNT: no export directory for this client", "export", exp.Path)
				w.u32(mnt3ErrAcces)
				break
			}
			if !isDir(er, rel) {
				c.log.Warn("nfs: MOUNT of a missing directory", "export", exp.Path, "path", rel)
				w.u32(mnt3ErrNoEnt)
				break
			}
			c.log.Info("nfs: MOUNT", "export", exp.Path, "path", rel)
			w.u32(mnt3OK)
			w.opaque(exp.table.encode(rel))
			w.u32(1)
			w.u32(authUnix)
		}
		c.send(w.frame())
	default:
		c.reply(call.xid, acceptProcUnavail)
	}
}

// exportOf maps a MOUNT path to its export and the directory inside it:
// "/images" and, as knfsd allows (libnfs mounts the whole URL path),
// "/images/LAB-2026-img".
func (s *Server) exportOf(dir string) (*export, string) {
	p := path.Clean("/" + dir)
	for q := p; ; q = path.Dir(q) {
		if e := s.byPath[q]; e != nil {
			return e, strings.TrimPrefix(strings.TrimPrefix(p, q), "/")
		}
		if q == "/" {
			return nil, ""
		}
	}
}

// isDir reports whether rel is a directory inside er (symlinks are
// resolved inside the export only).
func isDir(er *exportRoot, rel string) bool {
	st, err := er.fs.Stat(rel)
	return err == nil && st.IsDir()
}
