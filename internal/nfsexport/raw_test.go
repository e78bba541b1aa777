package nfsexport

import (
	"bufio"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"
)

// rawClient speaks ONC RPC over one TCP connection with hand-built
// arguments, so tests can send exactly the calls a hostile client would,
// with handles they compute themselves.
type rawClient struct {
	mu  sync.Mutex
	c   net.Conn
	br  *bufio.Reader
	xid uint32
}

func dialRaw(t testing.TB, addr, from string) *rawClient {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", addr)
	must(t, err)
	t.Cleanup(func() { c.Close() })
	return &rawClient{c: c, br: bufio.NewReader(c)}
}

// call sends one call and returns the accepted reply's result (after
// accept_stat, which must be SUCCESS).
func (r *rawClient) call(prog, proc uint32, args []byte) (xdrReader, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.xid++
	_ = r.c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := r.c.Write(callRecord(r.xid, prog, 3, proc, args)); err != nil {
		return xdrReader{}, err
	}
	rec, err := readRecord(r.br, nil)
	if err != nil {
		return xdrReader{}, err
	}
	x := xdrReader{b: rec}
	xid, typ, stat := x.u32(), x.u32(), x.u32()
	x.u32()
	x.opaque(maxAuthBody)
	accept := x.u32()
	if x.err != nil || xid != r.xid || typ != msgReply || stat != 0 || accept != acceptSuccess {
		return x, fmt.Errorf("reply xid %d type %d stat %d accept %d (%v)", xid, typ, stat, accept, x.err)
	}
	return x, nil
}

// nfs calls an NFSv3 procedure and returns its status and the rest.
func (r *rawClient) nfs(proc uint32, args []byte) (uint32, xdrReader, error) {
	x, err := r.call(progNFS, proc, args)
	if err != nil {
		return 0, x, err
	}
	return x.u32(), x, x.err
}

func sattrNone(w *xdrWriter) {
	for range 6 { // mode uid gid size atime mtime: don't set
		w.u32(0)
	}
}

func argsWrite(fh []byte, off uint64, stable uint32, data []byte) []byte {
	w := &xdrWriter{}
	w.opaque(fh)
	w.u64(off)
	w.u32(uint32(len(data)))
	w.u32(stable)
	w.opaque(data)
	return w.b
}

func argsCommit(fh []byte) []byte {
	w := &xdrWriter{}
	w.opaque(fh)
	w.u64(0)
	w.u32(0)
	return w.b
}

func argsChmod(fh []byte, mode uint32) []byte {
	w := &xdrWriter{}
	w.opaque(fh)
	w.u32(1)
	w.u32(mode)
	for range 5 {
		w.u32(0)
	}
	w.u32(0) // no guard
	return w.b
}

// argsDirName is the (dir handle, name) pair of CREATE, MKDIR, REMOVE and
// RMDIR; CREATE and MKDIR need their attributes appended.
func argsDirName(dir []byte, name string) *xdrWriter {
	w := &xdrWriter{}
	w.opaque(dir)
	w.opaque([]byte(name))
	return w
}

func argsCreate(dir []byte, name string) []byte {
	w := argsDirName(dir, name)
	w.u32(0) // UNCHECKED
	sattrNone(w)
	return w.b
}

func argsMkdir(dir []byte, name string) []byte {
	w := argsDirName(dir, name)
	sattrNone(w)
	return w.b
}

func argsRename(fromDir []byte, from string, toDir []byte, to string) []byte {
	w := argsDirName(fromDir, from)
	w.opaque(toDir)
	w.opaque([]byte(to))
	return w.b
}

func argsSymlink(dir []byte, name, target string) []byte {
	w := argsDirName(dir, name)
	sattrNone(w)
	w.opaque([]byte(target))
	return w.b
}

func argsRead(fh []byte, off uint64, count uint32) []byte {
	w := &xdrWriter{}
	w.opaque(fh)
	w.u64(off)
	w.u32(count)
	return w.b
}

func argsMount(p string) []byte {
	w := &xdrWriter{}
	w.opaque([]byte(p))
	return w.b
}
