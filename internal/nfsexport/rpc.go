package nfsexport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// ONC RPC (RFC 5531) framing and call-header parsing. pumi parses every
// record itself before anything reaches go-nfs, because access control, the
// read fast path and fragment reassembly (which go-nfs lacks) all need the
// call header and the first argument.

const (
	progPortmap = 100000
	progNFS     = 100003
	progMount   = 100005

	// maxRecord bounds one reassembled RPC record: a 1 MiB WRITE plus
	// headers fits; anything larger is a broken or hostile client and its
	// connection is closed rather than buffered.
	maxRecord = 1<<20 + 64<<10

	maxAuthBody = 400 // RFC 5531: opaque_auth body is at most 400 bytes

	msgCall  = 0
	msgReply = 1

	acceptSuccess      = 0
	acceptProgUnavail  = 1
	acceptProgMismatch = 2
	acceptProcUnavail  = 3
	acceptGarbageArgs  = 4
	acceptSystemErr    = 5
)

var errBadRecord = errors.New("malformed RPC record")

// recordChunk is the record size every connection may buffer without
// asking the server's memory budget: every call but WRITE fits.
const recordChunk = 64 << 10

var errRecordTooBig = fmt.Errorf("%w: larger than this connection may send", errBadRecord)

// refuseGrowth is a readRecord grow func for connections that only ever
// send small records.
func refuseGrowth(int) error { return errRecordTooBig }

// readRecord reads one RPC record (all its fragments) from r. The buffer
// is never sized from a fragment header, which costs a client nothing to
// send: it starts small and doubles only once the bytes already received
// fill it. grow, if not nil, is asked before the buffer's capacity passes
// recordChunk (with the new capacity) and may block or refuse; records
// above maxRecord fail.
func readRecord(r io.Reader, grow func(newCap int) error) ([]byte, error) {
	var buf []byte
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return nil, err
		}
		h := binary.BigEndian.Uint32(hdr[:])
		last := h&(1<<31) != 0
		n := int(h &^ (1 << 31))
		if len(buf)+n > maxRecord {
			return nil, fmt.Errorf("%w: record of more than %d bytes", errBadRecord, maxRecord)
		}
		for n > 0 {
			if len(buf) == cap(buf) {
				newCap := min(max(2*cap(buf), 4096), len(buf)+n)
				if grow != nil && newCap > recordChunk {
					if err := grow(newCap); err != nil {
						return nil, err
					}
				}
				nb := make([]byte, len(buf), newCap)
				copy(nb, buf)
				buf = nb
			}
			k := min(n, cap(buf)-len(buf))
			if _, err := io.ReadFull(r, buf[len(buf):len(buf)+k]); err != nil {
				return nil, err
			}
			buf = buf[:len(buf)+k]
			n -= k
		}
		if last {
			if buf == nil {
				buf = []byte{}
			}
			return buf, nil
		}
	}
}

// xdrReader decodes XDR from a byte slice without allocating; every read
// checks bounds, so hostile input yields an error, never a panic.
type xdrReader struct {
	b   []byte
	off int
	err error
}

func (x *xdrReader) u32() uint32 {
	if x.err != nil {
		return 0
	}
	if len(x.b)-x.off < 4 {
		x.err = errBadRecord
		return 0
	}
	v := binary.BigEndian.Uint32(x.b[x.off:])
	x.off += 4
	return v
}

func (x *xdrReader) u64() uint64 {
	hi := uint64(x.u32())
	lo := uint64(x.u32())
	return hi<<32 | lo
}

// opaque reads a variable-length opaque of at most max bytes; the returned
// slice aliases the record.
func (x *xdrReader) opaque(max int) []byte {
	n := x.u32()
	if x.err != nil {
		return nil
	}
	if n > uint32(max) {
		x.err = errBadRecord
		return nil
	}
	padded := (int(n) + 3) &^ 3
	if len(x.b)-x.off < padded {
		x.err = errBadRecord
		return nil
	}
	v := x.b[x.off : x.off+int(n)]
	x.off += padded
	return v
}

// rpcCall is the parsed header of one call; args aliases the record.
type rpcCall struct {
	xid, rpcvers, prog, vers, proc uint32
	args                           []byte
}

// parseCall parses an RPC call header. A record that is not a call at all
// returns errBadRecord; the caller drops the connection then, since no reply
// can be addressed.
func parseCall(rec []byte) (rpcCall, error) {
	x := xdrReader{b: rec}
	var c rpcCall
	c.xid = x.u32()
	if mt := x.u32(); x.err == nil && mt != msgCall {
		return c, fmt.Errorf("%w: message type %d is not a call", errBadRecord, mt)
	}
	c.rpcvers = x.u32()
	c.prog = x.u32()
	c.vers = x.u32()
	c.proc = x.u32()
	x.u32() // cred flavor
	x.opaque(maxAuthBody)
	x.u32() // verf flavor
	x.opaque(maxAuthBody)
	if x.err != nil {
		return c, x.err
	}
	c.args = rec[x.off:]
	return c, nil
}

// xdrWriter appends XDR to a byte slice.
type xdrWriter struct{ b []byte }

func (w *xdrWriter) u32(v uint32) { w.b = binary.BigEndian.AppendUint32(w.b, v) }
func (w *xdrWriter) u64(v uint64) { w.b = binary.BigEndian.AppendUint64(w.b, v) }
func (w *xdrWriter) opaque(v []byte) {
	w.u32(uint32(len(v)))
	w.b = append(w.b, v...)
	for len(w.b)%4 != 0 {
		w.b = append(w.b, 0)
	}
}

// replyHeader starts an accepted reply (with record marker placeholder) and
// returns a writer positioned after accept_stat.
func replyHeader(xid, stat uint32) *xdrWriter {
	w := &xdrWriter{b: make([]byte, 4, 256)}
	w.u32(xid)
	w.u32(msgReply)
	w.u32(0) // MSG_ACCEPTED
	w.u32(0) // verf AUTH_NONE
	w.u32(0)
	w.u32(stat)
	return w
}

// deniedRPCMismatch is the reply to an RPC version other than 2.
func deniedRPCMismatch(xid uint32) *xdrWriter {
	w := &xdrWriter{b: make([]byte, 4, 64)}
	w.u32(xid)
	w.u32(msgReply)
	w.u32(1) // MSG_DENIED
	w.u32(0) // RPC_MISMATCH
	w.u32(2)
	w.u32(2)
	return w
}

// frame fills in the record marker of a reply built by replyHeader.
func (w *xdrWriter) frame() []byte {
	binary.BigEndian.PutUint32(w.b[:4], uint32(len(w.b)-4)|1<<31)
	return w.b
}
