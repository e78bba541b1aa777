package power

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Commands run on the seat. sudo -n never prompts: without the seed's
// NOPASSWD rule it fails at once instead of hanging on a password prompt.
const (
	rebootCommand   = "sudo -n /sbin/shutdown -r now"
	shutdownCommand = "sudo -n /sbin/shutdown -h now"
)

// maxOutput bounds what pumi keeps of a seat's answer; a Signature or a
// sudo complaint is a few bytes, anything more is noise.
const maxOutput = 4096

// Client runs SSH operations on seats.
type Client struct {
	// Key is pumi's own key, needed for credentials with UseKey.
	Key *Key
	// HostKeys pins host keys per (image, seat); required.
	HostKeys HostKeyStore
	// ConnectTimeout bounds the TCP connect (0: 5s).
	ConnectTimeout time.Duration
	// HandshakeTimeout bounds the SSH handshake including authentication
	// (0: 15s): a seat that accepts TCP but never speaks SSH must not hang
	// a run.
	HandshakeTimeout time.Duration
	// CommandTimeout bounds the command after login (0: 30s).
	CommandTimeout time.Duration
	// Log receives one line per operation; nil discards. Credentials are
	// never logged (Credential and Secret redact themselves).
	Log *slog.Logger
}

// Target is one seat to reach.
type Target struct {
	// Addr is "host" or "host:port" (port 22 by default).
	Addr string
	// Seat identifies the seat for host key pinning, e.g. its MAC.
	Seat string
	// Image is the image the seat is believed to run; its host key is
	// pinned under (Image, Seat). Verify uses its image argument instead.
	Image string
	// Cred is the login for that room or image.
	Cred Credential
}

func (c *Client) log() *slog.Logger {
	if c.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Log
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Reboot runs "sudo -n /sbin/shutdown -r now" on the seat. The connection
// dropping after the command was sent is success: that is what a rebooting
// machine does. Whether it really rebooted is confirmed by the next netboot.
func (c *Client) Reboot(ctx context.Context, t Target) error {
	return c.power(ctx, "reboot", t, rebootCommand)
}

// Shutdown runs "sudo -n /sbin/shutdown -h now" on the seat, like Reboot.
func (c *Client) Shutdown(ctx context.Context, t Target) error {
	return c.power(ctx, "shutdown", t, shutdownCommand)
}

func (c *Client) power(ctx context.Context, op string, t Target, cmd string) error {
	s, err := c.dial(ctx, op, t, t.Image)
	if err != nil {
		return err
	}
	defer s.close()
	sess, err := s.cl.NewSession()
	if err != nil {
		return s.fail(ErrCommandFailed, "open session", err)
	}
	defer sess.Close()
	var out limitedBuffer
	sess.Stdout, sess.Stderr = &out, &out
	// Start and Wait apart: only a connection lost after the seat accepted
	// the command means it is going down; a refused exec request does not.
	if err := sess.Start(cmd); err != nil {
		return s.fail(ErrCommandFailed, "seat refused to run "+cmd, err)
	}
	err = sess.Wait()
	var exit *ssh.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit) && killedByShutdown(exit):
		// The command was killed by a signal (sshd reports it as a signal, or
		// the shell as 128+SIGTERM/SIGKILL): the shutdown it started is
		// taking the machine's processes down with it, itself included.
		s.log.Info(op+": the command was killed while the seat went down; taking that as success", "status", exit.ExitStatus(), "signal", exit.Signal())
	case errors.As(err, &exit):
		detail := fmt.Sprintf("%q exited %d", cmd, exit.ExitStatus())
		if o := printable(strings.TrimSpace(out.String())); o != "" {
			detail += ": " + o
		}
		return s.fail(ErrCommandFailed, detail, err)
	case ctx.Err() != nil:
		return fmt.Errorf("%s %s: %w", op, s.addr, ctx.Err())
	default:
		// ExitMissingError, io.EOF, a reset or a read timeout: the machine
		// went away under the command, as a rebooting machine does.
		s.log.Info(op+": connection dropped after the command; taking that as the seat going down", "cause", err.Error())
	}
	s.pin(ctx)
	s.log.Info(op+" sent", "output", printable(strings.TrimSpace(out.String())))
	return nil
}

// Verify reads /home/<user>/Desktop/Signature on the seat and checks that it
// names image (minus "-img"). The host key is pinned under image, and only
// once the Signature matched.
func (c *Client) Verify(ctx context.Context, t Target, image string) error {
	if WantedSignature(image) == "" {
		return fmt.Errorf("verify: image name %q leaves nothing to compare the Signature with; name the image", image)
	}
	s, err := c.dial(ctx, "verify", t, image)
	if err != nil {
		return err
	}
	defer s.close()
	sess, err := s.cl.NewSession()
	if err != nil {
		return s.fail(ErrCommandFailed, "open session", err)
	}
	defer sess.Close()
	var stdout, stderr limitedBuffer
	sess.Stdout, sess.Stderr = &stdout, &stderr
	path := SignaturePath(t.Cred.User) // the user name was validated: no quoting hazards
	if err := sess.Start("cat -- '" + path + "'"); err != nil {
		return s.fail(ErrCommandFailed, "seat refused to run cat", err)
	}
	err = sess.Wait()
	var exit *ssh.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		detail := path
		if e := printable(strings.TrimSpace(stderr.String())); e != "" {
			detail = e
		}
		return s.fail(ErrNoSignature, detail, err)
	case ctx.Err() != nil:
		return fmt.Errorf("verify %s: %w", s.addr, ctx.Err())
	default:
		return s.fail(ErrCommandFailed, "reading "+path, err)
	}
	switch err := CheckSignature(stdout.Bytes(), image); {
	case err == nil:
	case errors.Is(err, ErrNoSignature):
		return s.fail(ErrNoSignature, path+" is empty", nil)
	default:
		var wi *WrongImageError
		if errors.As(err, &wi) {
			s.log.Warn("verify: wrong image; host key not pinned", "found", wi.Found, "wanted", wi.Wanted)
			return s.fail(ErrWrongImage, wi.Error(), wi)
		}
		return s.fail(ErrCommandFailed, "", err)
	}
	s.pin(ctx)
	s.log.Info("verified", "image", image)
	return nil
}

// session is one logged-in connection plus what is needed to finish it.
type session struct {
	op, addr  string
	image     string
	t         Target
	cl        *ssh.Client
	store     HostKeyStore
	firstUse  ssh.PublicKey // set when no key was pinned yet
	log       *slog.Logger
	stopAfter func() bool
}

func (s *session) close() {
	s.stopAfter()
	s.cl.Close()
}

func (s *session) fail(kind error, detail string, err error) error {
	e := &Error{Op: s.op, Addr: s.addr, Kind: kind, Detail: detail, Err: err}
	s.log.Warn(s.op+" failed", "reason", e.Reason())
	return e
}

// pin records a first-use host key once the operation succeeded.
func (s *session) pin(ctx context.Context) {
	if s.firstUse == nil {
		return
	}
	if err := s.store.PinHostKey(ctx, s.image, s.t.Seat, s.firstUse); err != nil {
		// The operation itself succeeded; the next contact will simply
		// be first use again.
		s.log.Error("could not record the seat's host key", "err", err)
		return
	}
	s.log.Info("pinned host key on first use", "fingerprint", ssh.FingerprintSHA256(s.firstUse))
}

func (c *Client) dial(ctx context.Context, op string, t Target, image string) (*session, error) {
	addr := t.Addr
	if addr == "" {
		return nil, fmt.Errorf("%s: seat %s has no address", op, t.Seat)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(addr, "22")
	}
	log := c.log().With("op", op, "addr", addr, "seat", t.Seat, "cred", t.Cred)
	if err := t.Cred.Validate(); err != nil {
		return nil, fmt.Errorf("%s %s: %w", op, addr, err)
	}
	if t.Seat == "" {
		return nil, fmt.Errorf("%s %s: target has no seat id for host key pinning", op, addr)
	}
	if c.HostKeys == nil {
		return nil, fmt.Errorf("%s %s: no host key store configured", op, addr)
	}
	var auth []ssh.AuthMethod
	if t.Cred.UseKey {
		if c.Key == nil {
			return nil, fmt.Errorf("%s %s: credential %s wants pumi's key but none is loaded", op, addr, t.Cred)
		}
		auth = append(auth, ssh.PublicKeys(c.Key.Signer()))
	}
	if t.Cred.Password != "" {
		pw := string(t.Cred.Password)
		auth = append(auth, ssh.Password(pw), ssh.KeyboardInteractive(
			func(_, _ string, questions []string, echos []bool) ([]string, error) {
				// Answer password-style prompts only; anything else
				// (OTP, "press enter") cannot be automated.
				answers := make([]string, len(questions))
				for i := range questions {
					if echos[i] {
						return nil, errors.New("unexpected visible prompt")
					}
					answers[i] = pw
				}
				return answers, nil
			}))
	}

	pinned, err := c.HostKeys.PinnedHostKey(ctx, image, t.Seat)
	if err != nil {
		return nil, fmt.Errorf("%s %s: pinned host key: %w", op, addr, err)
	}
	s := &session{op: op, addr: addr, image: image, t: t, store: c.HostKeys, log: log}
	cfg := &ssh.ClientConfig{
		User: t.Cred.User,
		Auth: auth,
		HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			if pinned == nil {
				s.firstUse = key
				return nil
			}
			if !bytes.Equal(pinned.Marshal(), key.Marshal()) {
				return &HostKeyMismatchError{Image: image, Seat: t.Seat,
					Pinned: ssh.FingerprintSHA256(pinned), Presented: ssh.FingerprintSHA256(key)}
			}
			return nil
		},
	}
	if pinned != nil {
		// Ask for the pinned key's type: a server with several host keys
		// would otherwise be free to show another one and look re-keyed.
		cfg.HostKeyAlgorithms = hostKeyAlgorithms(pinned.Type())
	} else {
		cfg.HostKeyAlgorithms = firstUseHostKeyAlgorithms
	}

	d := net.Dialer{Timeout: orDefault(c.ConnectTimeout, 5*time.Second)}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s %s: %w", op, addr, ctx.Err())
		}
		e := &Error{Op: op, Addr: addr, Kind: ErrUnreachable, Detail: shortNetErr(err), Err: err}
		log.Warn(op+" failed", "reason", e.Reason())
		return nil, e
	}
	// Closing the connection is the only way to interrupt x/crypto/ssh, so
	// the caller's context is tied to it for the whole operation.
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	s.stopAfter = stop
	nc.SetDeadline(earliest(ctx, orDefault(c.HandshakeTimeout, 15*time.Second)))
	cc, chans, reqs, err := ssh.NewClientConn(nc, addr, cfg)
	if err != nil {
		stop()
		nc.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s %s: %w", op, addr, ctx.Err())
		}
		e := classifyHandshake(op, addr, err)
		log.Warn(op+" failed", "reason", e.Reason())
		return nil, e
	}
	// The command gets its own bound; a seat that freezes mid-command ends
	// as a read timeout rather than a hung run.
	nc.SetDeadline(earliest(ctx, orDefault(c.CommandTimeout, 30*time.Second)))
	s.cl = ssh.NewClient(cc, chans, reqs)
	return s, nil
}

func earliest(ctx context.Context, d time.Duration) time.Time {
	t := time.Now().Add(d)
	if dl, ok := ctx.Deadline(); ok && dl.Before(t) {
		return dl
	}
	return t
}

func classifyHandshake(op, addr string, err error) *Error {
	var hk *HostKeyMismatchError
	if errors.As(err, &hk) {
		return &Error{Op: op, Addr: addr, Kind: ErrHostKeyMismatch,
			Detail: fmt.Sprintf("pinned %s, presented %s", hk.Pinned, hk.Presented), Err: hk}
	}
	msg := err.Error()
	// x/crypto/ssh has no typed authentication error; these are its text
	// and OpenSSH's disconnect for too many attempts (reason 14:
	// SSH_DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE).
	if strings.Contains(msg, "unable to authenticate") || strings.Contains(msg, "reason 14") ||
		strings.Contains(msg, "Too many authentication failures") {
		return &Error{Op: op, Addr: addr, Kind: ErrAuthFailed, Detail: "credentials rejected", Err: err}
	}
	detail := "ssh handshake failed"
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		detail = "ssh handshake timed out"
	} else if errors.Is(err, io.EOF) {
		detail = "connection closed during ssh handshake"
	}
	return &Error{Op: op, Addr: addr, Kind: ErrUnreachable, Detail: detail, Err: err}
}

func shortNetErr(err error) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return "connect timed out"
	case strings.Contains(err.Error(), "connection refused"):
		return "connection refused"
	case strings.Contains(err.Error(), "no route to host"):
		return "no route to host"
	}
	return "connect failed"
}

// firstUseHostKeyAlgorithms is OpenSSH's client order: Ed25519 first, RSA
// last. x/crypto's default puts RSA first, and Debian 12's dropbear
// (2022.83) with only an Ed25519 host key then aborts the connection
// ("Failed assertion (rsa.c:164): key != NULL"), found by the lab test.
var firstUseHostKeyAlgorithms = []string{
	ssh.KeyAlgoED25519,
	ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521,
	ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA,
}

func hostKeyAlgorithms(keyType string) []string {
	if keyType == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{keyType}
}

// limitedBuffer keeps the first maxOutput bytes and drops the rest without
// failing the write, so a chatty seat cannot stall the session. It is safe
// for the concurrent stdout and stderr copiers of one session.
type limitedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := maxOutput - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *limitedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

func (b *limitedBuffer) String() string { return string(b.Bytes()) }

// killedByShutdown reports whether a power command ended by SIGTERM or
// SIGKILL, which is what a going-down machine does to every process, the
// shutdown command's own session included. sudo's refusal and a missing
// command exit 1 or 127 and stay failures.
func killedByShutdown(e *ssh.ExitError) bool {
	return killedByShutdownStatus(e.ExitStatus(), e.Signal())
}

func killedByShutdownStatus(status int, signal string) bool {
	switch signal {
	case "TERM", "KILL":
		return true
	}
	return status == 128+15 || status == 128+9
}
