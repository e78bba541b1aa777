package netboot

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/pin/tftp/v3"

	"github.com/pumi-lab/pumi/internal/macaddr"
)

const (
	// tftpMaxBlockSize caps the negotiated blksize at what fits one Ethernet
	// frame (1500 MTU - 20 IP - 8 UDP - 4 TFTP), the value UEFI firmware asks
	// for itself. Clients asking for less get exactly what they asked for;
	// larger requests (tftp-hpa and curl allow up to 65464) would only produce
	// IP fragments, which cheap switches and firmware stacks handle badly.
	//
	// pin/tftp v3.2.0 caveat: its default "smart" negotiation clamps blksize
	// to the MTU of the interface the request arrived on, and falls back to
	// 512 when the request carries no interface index. That happens to every
	// request that reached the socket before pin's Serve enabled IP_PKTINFO
	// on it (reproduced in TestTFTPBlockSizeIgnoresInterfaceMTU; the research
	// sandbox saw only 512). So it is switched off and this cap used instead.
	tftpMaxBlockSize = 1468
	// tftpTimeout is how long the server waits for each ACK before sending the
	// block again; tftpRetries bounds how often. A vanished client thus holds
	// a transfer (one goroutine, one socket) for at most ~10 s.
	tftpTimeout = 2 * time.Second
	tftpRetries = 5
	// tftpMaxNameLen bounds the requested file name. Real boot file names are
	// short; anything longer is an attack or garbage.
	tftpMaxNameLen = 255
)

// TFTP serves a read-only file tree (the iPXE binaries) over TFTP. Write
// requests are refused with a TFTP error. It negotiates blksize (up to
// tftpMaxBlockSize) and tsize, and logs one line per transfer.
type TFTP struct {
	files fs.FS
	log   *slog.Logger

	// active maps a transfer's client "ip:port" (pin/tftp's TID) to its byte
	// counter, so the hook (which pin calls without any handle on our reader)
	// can log how many bytes were sent.
	mu     sync.Mutex
	active map[string]*countingReader
}

// NewTFTP returns a server for the files in files (e.g. assets.IPXE()).
func NewTFTP(files fs.FS, log *slog.Logger) *TFTP {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &TFTP{files: files, log: log, active: make(map[string]*countingReader)}
}

// Serve answers TFTP read requests arriving on conn until ctx is done, then
// waits for running transfers to end (at most tftpTimeout*tftpRetries) and
// returns nil. Serve takes ownership of conn and closes it; do not close it
// yourself earlier (pin/tftp would spin on the closed socket).
//
// Each transfer gets its own socket (standard TFTP TIDs), created by the
// goroutine that called Serve. A caller that locked its OS thread into a
// network namespace therefore keeps every transfer socket in that namespace;
// Serve deliberately does not move the serving loop to another goroutine.
func (t *TFTP) Serve(ctx context.Context, conn *net.UDPConn) error {
	if conn == nil {
		return errors.New("tftp: no socket: pass a UDP socket bound to port 69")
	}
	if t.files == nil {
		conn.Close()
		return errors.New("tftp: no files to serve: pass the iPXE binaries (assets.IPXE())")
	}
	s := tftp.NewServer(t.read, nil) // nil write handler: read-only
	s.SetBlockSizeNegotiation(false)
	s.SetBlockSize(tftpMaxBlockSize)
	s.SetTimeout(tftpTimeout)
	s.SetRetries(tftpRetries)
	// The default backoff sleeps up to 1 s at random before each resend, on
	// top of the timeout; the timeout alone already paces retries.
	s.SetBackoff(func(int) time.Duration { return 0 })
	s.SetHook(tftpHook{t})

	stop := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			s.Shutdown()
		case <-stop:
		}
	}()
	t.log.Info("tftp: serving", "addr", conn.LocalAddr().String(), "max_blksize", tftpMaxBlockSize)
	err := s.Serve(conn)
	close(stop)
	conn.Close() // Shutdown may have run before Serve registered conn
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("tftp: serving on %s stopped: %w", conn.LocalAddr(), err)
	}
	return nil
}

// read is pin/tftp's read handler. An error returned here is sent to the
// client as a TFTP ERROR packet, so messages are short and name no host path.
func (t *TFTP) read(name string, rf io.ReaderFrom) error {
	clean, err := cleanTFTPPath(name)
	if err != nil {
		return fmt.Errorf("refused: %w", err)
	}
	f, err := t.files.Open(clean)
	if err != nil {
		return fmt.Errorf("file not found: %s", clean)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return fmt.Errorf("file not found: %s", clean)
	}
	c := &countingReader{r: bufio.NewReaderSize(f, 64<<10)}
	if ot, ok := rf.(tftp.OutgoingTransfer); ok {
		// tsize only when the client asked; embedded files do not always
		// implement io.Seeker, which pin/tftp would use otherwise.
		ot.SetSize(st.Size())
		addr := ot.RemoteAddr()
		key := addr.String()
		t.mu.Lock()
		t.active[key] = c
		t.mu.Unlock()
		defer func() {
			t.mu.Lock()
			if t.active[key] == c {
				delete(t.active, key)
			}
			t.mu.Unlock()
		}()
	}
	_, err = rf.ReadFrom(c)
	return err
}

// tftpHook turns pin/tftp's per-transfer callbacks into log lines.
type tftpHook struct{ t *TFTP }

func (h tftpHook) OnSuccess(st tftp.TransferStats) { h.t.logTransfer(st, nil) }

func (h tftpHook) OnFailure(st tftp.TransferStats, err error) { h.t.logTransfer(st, err) }

func (t *TFTP) logTransfer(st tftp.TransferStats, err error) {
	if st.RemoteAddr == nil {
		// Raised by the request loop itself: a malformed or unexpected packet
		// on port 69, not a transfer.
		t.log.Warn("tftp: request not served", "err", err)
		return
	}
	client := (&net.UDPAddr{IP: st.RemoteAddr, Port: st.Tid}).String()
	var bytes int64
	t.mu.Lock()
	if c := t.active[client]; c != nil {
		bytes = c.n.Load()
	}
	t.mu.Unlock()
	attrs := []any{
		"file", st.Filename,
		"client", client,
		"bytes", bytes,
		"duration", st.Duration,
	}
	if err != nil {
		t.log.Warn("tftp: transfer failed", append(attrs, "err", err)...)
		return
	}
	blksize := 512 // RFC 1350 default when the client negotiated nothing
	if v, ok := st.Opts["blksize"]; ok {
		if n, perr := strconv.Atoi(v); perr == nil {
			blksize = n
		}
	}
	attrs = append(attrs, "blksize", blksize)
	if v, ok := st.Opts["tsize"]; ok {
		attrs = append(attrs, "tsize", v)
	}
	attrs = append(attrs, "datagrams", st.DatagramsSent, "acked", st.DatagramsAcked)
	t.log.Info("tftp: transfer done", attrs...)
}

type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// cleanTFTPPath turns a requested TFTP file name into a path inside the
// served fs.FS, or refuses it. Accepted: "bootx64.efi", "/bootx64.efi" and a
// per-client prefix "<mac>/bootx64.efi" (any macaddr spelling, e.g. the
// "52-54-00-ab-cd-ef" iPXE's ${mac:hexhyp} gives), which is dropped. Refused:
// empty or over-long names, invalid UTF-8, control characters (NUL
// included), backslashes (Windows-style paths could mean a different tree),
// and any ".", ".." or empty element, so nothing can leave the tree.
func cleanTFTPPath(name string) (string, error) {
	if name == "" {
		return "", errors.New("empty file name")
	}
	if len(name) > tftpMaxNameLen {
		return "", fmt.Errorf("file name longer than %d bytes", tftpMaxNameLen)
	}
	if !utf8.ValidString(name) {
		return "", errors.New("file name is not UTF-8")
	}
	for _, r := range name {
		switch {
		case r < 0x20 || r == 0x7f:
			return "", errors.New("control character in file name")
		case r == '\\':
			return "", errors.New(`backslash in file name: use "/"`)
		}
	}
	p := strings.TrimLeft(name, "/")
	if p == "" || p == "." || !fs.ValidPath(p) {
		return "", fmt.Errorf("file name %q: no \".\", \"..\" or empty path elements allowed", name)
	}
	if first, rest, ok := strings.Cut(p, "/"); ok && strings.TrimSpace(first) == first {
		if _, err := macaddr.Parse(first); err == nil {
			p = rest
		}
	}
	return p, nil
}
