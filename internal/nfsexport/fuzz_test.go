package nfsexport

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"net"
	"testing"
	"time"
)

// callRecord builds a framed RPC call with AUTH_UNIX-like credentials.
func callRecord(xid, prog, vers, proc uint32, args []byte) []byte {
	w := &xdrWriter{b: make([]byte, 4)}
	w.u32(xid)
	w.u32(msgCall)
	w.u32(2)
	w.u32(prog)
	w.u32(vers)
	w.u32(proc)
	w.u32(authUnix)
	w.opaque([]byte("\x00\x00\x00\x01\x00\x00\x00\x04seat\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"))
	w.u32(0)
	w.u32(0)
	w.b = append(w.b, args...)
	return w.frame()
}

func malformedSeeds() [][]byte {
	tab := newHandleTable("/images")
	fh := tab.encode("LAB-2026-img/disk")
	read := &xdrWriter{}
	read.opaque(fh)
	read.u64(0)
	read.u32(1 << 30)
	mnt := &xdrWriter{}
	mnt.opaque([]byte("/images"))
	ren := &xdrWriter{}
	ren.opaque(fh)
	ren.opaque([]byte("a"))
	ren.opaque(newHandleTable("/capture").encode(""))
	ren.opaque([]byte("b"))

	capRoot := newHandleTable("/capture").encode("")
	rdp := &xdrWriter{}
	rdp.opaque(tab.encode("LAB-2026-img"))
	rdp.u64(5)
	rdp.u64(0x1234)
	rdp.u32(8192)
	rdp.u32(8192)
	full := callRecord(1, progNFS, 3, procRead, read.b)
	seeds := [][]byte{
		callRecord(1, progNFS, 3, 0, nil),
		callRecord(2, progMount, 3, mountProcMnt, mnt.b),
		callRecord(3, progMount, 3, mountProcExport, nil),
		full,
		callRecord(4, progNFS, 3, procRename, ren.b),
		callRecord(10, progNFS, 3, procReaddirPlus, rdp.b),
		callRecord(11, progNFS, 3, procReaddir, rdp.b[:len(rdp.b)-4]),
		callRecord(12, progNFS, 3, procWrite, argsWrite(capRoot, 0, stableFileSync, []byte("dir"))),
		callRecord(13, progNFS, 3, procCommit, argsCommit(capRoot)),
		callRecord(14, progNFS, 3, 8, argsCreate(capRoot, "fuzzed")),
		callRecord(5, progNFS, 3, 1, []byte{0, 0, 0, 64}),         // handle length without bytes
		callRecord(6, progNFS, 3, 99, nil),                        // unknown proc
		callRecord(7, progNFS, 2, 1, nil),                         // NFSv2
		callRecord(8, 12345, 1, 0, nil),                           // unknown program
		callRecord(9, progNFS, 3, 1, []byte{0xff, 0xff, 0xff, 0}), // huge opaque length
		full[:len(full)-3],       // truncated
		{0x80, 0, 0, 0},          // empty last fragment
		{0x7f, 0xff, 0xff, 0xff}, // 2 GiB fragment
		{0, 0, 0, 4, 0, 0, 0, 1, 0x80, 0, 0, 4, 0, 0, 0, 1}, // two fragments, reply type
		{0x80, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 1},             // a reply, not a call
	}
	// Fragmented version of a valid READ.
	body := full[4:]
	frag := binary.BigEndian.AppendUint32(nil, uint32(10))
	frag = append(frag, body[:10]...)
	frag = binary.BigEndian.AppendUint32(frag, uint32(len(body)-10)|1<<31)
	frag = append(frag, body[10:]...)
	return append(seeds, frag)
}

func FuzzDecodeHandle(f *testing.F) {
	tab := newHandleTable("/images")
	f.Add(tab.encode(""))
	f.Add(tab.encode("LAB-2026-img/sda1.ext4-ptcl-img.zst.aa"))
	f.Add(tab.encode(string(bytes.Repeat([]byte("x/"), 40)) + "y"))
	f.Add([]byte{handleVersion, kindInline, 0, 0, 0, 0, 0, 0, '.', '.', 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := decodeHandle(b)
		if err != nil {
			return
		}
		if !d.hashed {
			if !validRel(d.rel) {
				t.Fatalf("decoded an unsafe path %q", d.rel)
			}
			// Round trip: a decodable inline handle re-encodes to itself.
			t2 := &handleTable{tag: d.tag, long: map[[hashLen]byte]string{}}
			if got := t2.encode(d.rel); !bytes.Equal(got, b) {
				t.Fatalf("re-encode %q: %x, want %x", d.rel, got, b)
			}
		}
	})
}

func FuzzParseCall(f *testing.F) {
	for _, s := range malformedSeeds() {
		if len(s) > 4 {
			f.Add(s[4:])
		}
	}
	f.Fuzz(func(t *testing.T, rec []byte) {
		c, err := parseCall(rec)
		if err == nil && len(c.args) > len(rec) {
			t.Fatal("args longer than the record")
		}
		// The portmapper answers from the same parser: any call gets a
		// well-formed reply, anything else none.
		if w := pmapAnswer(rec, 2049); (w == nil) != (err != nil) {
			t.Fatalf("pmapAnswer answered %v for a record parseCall judged %v", w != nil, err)
		}
	})
}

// FuzzServer writes arbitrary bytes to a live server over loopback TCP; the
// server must never crash and must still mount afterwards.
func FuzzServer(f *testing.F) {
	for _, s := range malformedSeeds() {
		f.Add(s)
	}
	fx := newFixture(f)
	allow := newAllow()
	allow.set("127.0.0.1", "/images", true, false)
	allow.set("127.0.0.1", "/capture", true, true)
	// Logs go nowhere: a fuzz target may not log through f.
	addr, _ := startServerLog(f, fx, allow, "127.0.0.1:0", slog.New(slog.DiscardHandler))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("server gone: %v", err)
		}
		defer c.Close()
		// One deadline for both directions: an input full of READs makes
		// replies this client never drains, and then neither side reads.
		_ = c.SetDeadline(time.Now().Add(50 * time.Millisecond))
		_, _ = c.Write(b)
		var buf [4096]byte
		_, _ = c.Read(buf[:])
	})
}
