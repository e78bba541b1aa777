// Package testseat simulates lab PCs for integration tests. It is used only
// by tests (like internal/testnet), never by pumi itself.
//
// A seat is a real OpenSSH server (Debian openssh-server) in its own network
// namespace, joined to the lab's bridge by a veth pair, and in a private
// mount namespace whose /etc/passwd, shadow, group, sudoers and
// /sbin/shutdown are test files: nothing on the machine itself changes (no
// user is added, no sshd config or host key is touched, no daemon listens
// outside the namespace). The stand-in shutdown "powers the seat off" by
// killing every process in the seat's network namespace.
//
// Around it, an optional Go "firmware" goroutine does what the PC's firmware,
// iPXE and Clonezilla would: after a power-off it network-boots the seat
// (see Netboot and ApplianceBoot), and a seat that is off waits for a
// Wake-on-LAN magic packet on UDP 9.
//
// The package deliberately does not import internal/power: power's own tests
// use it, and the simulator's magic packet parsing and Signature naming are
// an independent implementation of what a seat expects.
package testseat

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/pumi-lab/pumi/internal/testnet"
)

// Logins on every seat.
const (
	User       = "seat"   // has the seed's NOPASSWD rule for /sbin/shutdown
	NoSudoUser = "nosudo" // has no sudo rule at all
	// Password is both users' password unless Behaviour.Password says
	// otherwise.
	Password = "correct horse battery"

	userID   = 64101
	noSudoID = 64102
)

// Programs a seat needs; pass them to testnet.Require.
var Programs = []string{"/usr/sbin/sshd", "sudo", "unshare", "mount", "openssl"}

// seatScript runs inside `ip netns exec NS unshare -m --propagation private`,
// so every mount below is private to the seat.
const seatScript = `D=$1
mount -t tmpfs -o mode=0755 pumi-seat-run /run
mkdir -m 0755 /run/sshd
for f in passwd group shadow sudoers; do mount --bind "$D/$f" "/etc/$f"; done
mount --bind "$D/shutdown" /sbin/shutdown
mount --bind "$D/home" /home
exec /usr/sbin/sshd -D -e -f "$D/sshd_config"
`

// shutdownScript is the seat's /sbin/shutdown. It records how it was called
// and by whom, then kills everything in its own network namespace, which is
// what a power-off looks like from the network (or, with shutdown.silent,
// takes the link down and goes quiet). It refuses to run in the machine's
// own namespace.
const shutdownScript = `#!/bin/sh
echo "$(id -u) $*" >> '%[1]s/shutdown.log'
me=$(readlink /proc/self/ns/net)
[ -n "$me" ] && [ "$me" != "$(readlink /proc/1/ns/net)" ] || exit 99
if [ -e '%[1]s/shutdown.silent' ]; then
	# A machine that loses power before its TCP stack says goodbye: the
	# link goes down and nothing more is heard, no FIN, no RST.
	/usr/sbin/ip link set eth0 down
	exec /usr/bin/sleep 600
fi
for p in /proc/[0-9]*; do
	pid=${p#/proc/}
	[ "$pid" = "$$" ] && continue
	[ "$(readlink "$p/ns/net" 2>/dev/null)" = "$me" ] && kill -9 "$pid" 2>/dev/null
done
kill -9 $$
`

// Behaviour is how a simulated seat misbehaves; the zero value is a good PC.
type Behaviour struct {
	Password   string // the seat OS's password ("" = Password)
	NeverBack  bool   // after its first power-off it never boots again
	FailReport int    // its first N restores report failure
	StartOff   bool   // powered off at the start; only WoL brings it up
	// CutRestores: its first N restores lose power after "started" (no
	// report); the PC boots again and asks again.
	CutRestores int
}

// Config describes one seat.
type Config struct {
	// Lab is the namespace pumi runs in and that holds Bridge. Nil means
	// the calling process's own network namespace, for a test that was
	// re-executed inside its lab (New refuses the machine's own namespace).
	Lab    *testnet.NS
	Bridge string // "" = br0
	MAC    string // "" = random
	IP     string // the seat's address, a /24 on Bridge
	Port   int    // sshd's port (0 = 22)
	// AuthorizedKey is a public key (authorized_keys line) allowed for both
	// users, e.g. pumi's own key.
	AuthorizedKey string
	// HostKey is sshd's host key (nil: a fresh one).
	HostKey ed25519.PrivateKey
	// Signature is the initial content of User's Desktop/Signature.
	Signature string
	Behaviour Behaviour
	// BootURL is the seat's iPXE script URL (pumi's /boot/<mac>.ipxe). With
	// Netboot set, New starts the firmware: a WoL listener and the loop that
	// network-boots the seat whenever it powers off.
	BootURL string
	// Netboot is one pass through the firmware, iPXE and (maybe) Clonezilla;
	// it ends by starting the seat's OS (Start) or with an error. See
	// ApplianceBoot. Nil: no firmware; the test drives the seat itself.
	Netboot func(ctx context.Context, s *Seat) error
}

// Seat is one simulated PC.
type Seat struct {
	Lab  *testnet.NS // nil: the process's own namespace
	Host *testnet.NS // the seat's network namespace
	MAC  string
	IP   string
	Port int
	Dir  string // its files: config, host key, home, shutdown.log
	B    Behaviour
	Boot string // BootURL

	t       testing.TB
	netboot func(ctx context.Context, s *Seat) error

	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{}
	stderr   *testnet.LockedBuffer
	wakes    int
	restores int
	boots    int
	errs     []error
}

// Stats is what a seat saw, for assertions.
type Stats struct {
	Wakes    int     // magic packets received for its MAC
	Restores int     // restores it began (including failed and cut ones)
	Boots    int     // network boots (boot scripts fetched)
	Errs     []error // simulator errors (a test should fail on any)
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// New creates the seat's namespace on the bridge, writes its files and,
// unless Behaviour.StartOff, starts its sshd; with cfg.Netboot it also
// starts the firmware, which runs until ctx ends. Everything is undone by
// t.Cleanup. Call it from the test goroutine.
func New(ctx context.Context, t testing.TB, cfg Config) *Seat {
	t.Helper()
	testnet.Require(t, Programs...)
	if cfg.Bridge == "" {
		cfg.Bridge = "br0"
	}
	if cfg.Port == 0 {
		cfg.Port = 22
	}
	var host *testnet.NS
	if cfg.Lab != nil {
		host = cfg.Lab.Host(cfg.Bridge, cfg.MAC, cfg.IP+"/24")
	} else {
		host = hostHere(t, cfg.Bridge, cfg.MAC, cfg.IP+"/24")
	}
	mac := cfg.MAC
	if mac == "" {
		out := host.MustIP("-o", "link", "show", "eth0")
		if f := strings.Fields(out[strings.Index(out, "link/ether"):]); len(f) > 1 {
			mac = f[1]
		}
	}
	dir := t.TempDir()
	// sshd reads authorized_keys and homes as the user, so the path must be
	// traversable; t.TempDir makes 0700 directories.
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		must(t, os.Chmod(d, 0o755))
	}
	s := &Seat{Lab: cfg.Lab, Host: host, MAC: mac, IP: cfg.IP, Port: cfg.Port, Dir: dir, B: cfg.Behaviour,
		Boot: cfg.BootURL, t: t, netboot: cfg.Netboot}
	s.writeFiles(cfg)
	must(t, s.SetSignature(cfg.Signature))
	hk := cfg.HostKey
	if hk == nil {
		hk = NewHostKey(t)
	}
	must(t, s.writeHostKey(hk))
	t.Cleanup(s.Stop)
	var wol <-chan struct{}
	if s.netboot != nil {
		wol = s.listenWoL(ctx)
	}
	if !cfg.Behaviour.StartOff {
		_, err := s.Start(nil)
		must(t, err)
	}
	if s.netboot != nil {
		go s.firmware(ctx, wol)
	}
	return s
}

var vethSeq atomic.Int64

// hostHere is testnet.NS.Host for the process's own namespace: a new
// namespace joined to bridge by a veth pair whose outer end stays here.
func hostHere(t testing.TB, bridge, mac, cidr string) *testnet.NS {
	t.Helper()
	if _, ok := OwnNamespace(); !ok {
		t.Fatal("testseat: Config.Lab is nil but this process is not in a test namespace (testnet's pumi-*); " +
			"give the lab namespace, or re-execute the test inside it")
	}
	h := testnet.New(t)
	id := vethSeq.Add(1)
	outer, tmp := fmt.Sprintf("vs%d-%d", os.Getpid()%10000, id), fmt.Sprintf("vt%d-%d", os.Getpid()%10000, id)
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ip("link", "add", outer, "type", "veth", "peer", "name", tmp)
	ip("link", "set", tmp, "netns", h.Name)
	ip("link", "set", outer, "master", bridge)
	ip("link", "set", outer, "up")
	h.MustIP("link", "set", tmp, "name", "eth0")
	if mac != "" {
		h.MustIP("link", "set", "eth0", "address", mac)
	}
	h.MustIP("addr", "add", cidr, "dev", "eth0")
	h.MustIP("link", "set", "eth0", "up")
	return h
}

// OwnNamespace names the testnet namespace (/run/netns/pumi-*) the calling
// thread is in; ok is false in any other namespace, e.g. the machine's own.
func OwnNamespace() (name string, ok bool) {
	var self unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &self); err != nil {
		return "", false
	}
	names, _ := filepath.Glob("/run/netns/pumi-*")
	for _, n := range names {
		var st unix.Stat_t
		if unix.Stat(n, &st) == nil && st.Dev == self.Dev && st.Ino == self.Ino {
			return filepath.Base(n), true
		}
	}
	return "", false
}

// NewHostKey returns a fresh ed25519 host key.
func NewHostKey(t testing.TB) ed25519.PrivateKey {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	must(t, err)
	return k
}

// SignatureFor is the Signature content a seat restored with image carries:
// the image folder's name minus the conventional "-img".
func SignatureFor(image string) string { return strings.TrimSuffix(image, "-img") }

// Addr is the seat's SSH address, host:port.
func (s *Seat) Addr() string { return net.JoinHostPort(s.IP, strconv.Itoa(s.Port)) }

// Path is a file in the seat's directory (e.g. "shutdown.log"; creating
// "shutdown.silent" makes the next shutdown go quiet instead of dropping).
func (s *Seat) Path(name string) string { return filepath.Join(s.Dir, name) }

func (s *Seat) writeFiles(cfg Config) {
	t := s.t
	pw := cfg.Behaviour.Password
	if pw == "" {
		pw = Password
	}
	out, err := exec.Command("openssl", "passwd", "-6", "-salt", "pumitest", pw).Output()
	must(t, err)
	hash := strings.TrimSpace(string(out))
	sshdUID, sshdGID := "103", "65534"
	if u, err := user.Lookup("sshd"); err == nil {
		sshdUID, sshdGID = u.Uid, u.Gid
	}
	files := map[string]string{
		"passwd": fmt.Sprintf("root:x:0:0:root:/root:/bin/sh\n"+
			"sshd:x:%s:%s::/run/sshd:/usr/sbin/nologin\n"+
			"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"+
			"%s:x:%d:%d:pumi test seat:/home/%s:/bin/sh\n"+
			"%s:x:%d:%d:pumi test seat:/home/%s:/bin/sh\n",
			sshdUID, sshdGID, User, userID, userID, User, NoSudoUser, noSudoID, noSudoID, NoSudoUser),
		"group": fmt.Sprintf("root:x:0:\nnogroup:x:65534:\n%s:x:%d:\n%s:x:%d:\n", User, userID, NoSudoUser, noSudoID),
		"shadow": fmt.Sprintf("root:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n"+
			"%s:%s:19000:0:99999:7:::\n%s:%s:19000:0:99999:7:::\n", User, hash, NoSudoUser, hash),
		// The seed's rule, verbatim apart from the user name.
		"sudoers":         "Defaults env_reset\nDefaults !lecture\nDefaults !fqdn\nroot ALL=(ALL:ALL) ALL\n" + User + " ALL=(ALL) NOPASSWD: /sbin/shutdown\n",
		"shutdown":        fmt.Sprintf(shutdownScript, s.Dir),
		"authorized_keys": cfg.AuthorizedKey + "\n",
		"sshd_config": fmt.Sprintf("ListenAddress %s\nHostKey %s\nPidFile %s\nAuthorizedKeysFile %s\n"+
			"UsePAM no\nStrictModes no\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\n"+
			"PubkeyAuthentication yes\nPermitRootLogin no\nAllowUsers %s %s\nLogLevel VERBOSE\n",
			s.Addr(), s.Path("host_key"), s.Path("sshd.pid"), s.Path("authorized_keys"), User, NoSudoUser),
	}
	modes := map[string]os.FileMode{"shadow": 0o600, "sudoers": 0o440, "shutdown": 0o755}
	for name, content := range files {
		mode, ok := modes[name]
		if !ok {
			mode = 0o644
		}
		must(t, os.WriteFile(s.Path(name), []byte(content), mode))
		must(t, os.Chmod(s.Path(name), mode))
	}
	for _, u := range []struct {
		name string
		id   int
	}{{User, userID}, {NoSudoUser, noSudoID}} {
		desk := filepath.Join(s.Dir, "home", u.name, "Desktop")
		must(t, os.MkdirAll(desk, 0o755))
		must(t, os.Chown(filepath.Dir(desk), u.id, u.id))
		must(t, os.Chown(desk, u.id, u.id))
	}
}

func (s *Seat) signaturePath() string {
	return filepath.Join(s.Dir, "home", User, "Desktop", "Signature")
}

// SetSignature writes User's Desktop/Signature; "" removes it.
func (s *Seat) SetSignature(content string) error {
	p := s.signaturePath()
	if content == "" {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Chown(p, userID, userID)
}

// Signature reads User's Desktop/Signature ("" if missing).
func (s *Seat) Signature() string {
	b, _ := os.ReadFile(s.signaturePath())
	return string(b)
}

func (s *Seat) writeHostKey(k ed25519.PrivateKey) error {
	block, err := ssh.MarshalPrivateKey(k, "seat")
	if err != nil {
		return err
	}
	return os.WriteFile(s.Path("host_key"), pem.EncodeToMemory(block), 0o600)
}

// Start boots the seat's OS: it runs sshd (with hostKey, or the current key
// if nil) and waits until sshd accepts connections from the lab. It returns
// the host key sshd presents. Safe from any goroutine.
func (s *Seat) Start(hostKey ed25519.PrivateKey) (ssh.PublicKey, error) {
	if hostKey != nil {
		if err := s.writeHostKey(hostKey); err != nil {
			return nil, err
		}
	}
	b, err := os.ReadFile(s.Path("host_key"))
	if err != nil {
		return nil, err
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, err
	}
	cmd := s.Host.Command(context.Background(), "unshare", "-m", "--propagation", "private",
		"/bin/sh", "-euc", seatScript, "seat", s.Dir)
	stderr := &testnet.LockedBuffer{}
	cmd.Stdout, cmd.Stderr = stderr, stderr
	// sshd's session processes inherit its stderr; without a bound, Wait
	// would wait for the last of them (a seat that went silent keeps one
	// sleeping) before returning.
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done, s.stderr = cmd, done, stderr
	s.mu.Unlock()

	deadline := time.Now().Add(15 * time.Second)
	for {
		derr := s.In(func() error {
			c, err := net.DialTimeout("tcp", s.Addr(), time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		if derr == nil {
			return signer.PublicKey(), nil
		}
		select {
		case <-done:
			return nil, fmt.Errorf("seat %s: sshd exited at start: %s", s.MAC, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("seat %s: sshd not listening after 15s: %v\n%s", s.MAC, derr, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop powers the seat off: it kills its sshd (if still running) and every
// other process in the seat's network namespace (sessions of a seat that
// went silent), and waits for sshd.
func (s *Seat) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd != nil {
		select {
		case <-done:
		default:
			cmd.Process.Kill()
			<-done
		}
	}
	if out, err := exec.Command("ip", "netns", "pids", s.Host.Name).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if s.t.Failed() {
		s.mu.Lock()
		if s.stderr != nil {
			s.t.Logf("seat %s sshd log:\n%s", s.MAC, s.stderr.String())
		}
		s.mu.Unlock()
	}
}

// Exited reports whether sshd is gone, waiting up to a few seconds for it.
func (s *Seat) Exited() bool {
	s.mu.Lock()
	done := s.done
	s.mu.Unlock()
	if done == nil {
		return true
	}
	select {
	case <-done:
		return true
	case <-time.After(10 * time.Second):
		return false
	}
}

// In runs fn inside the lab namespace, where pumi lives (directly when the
// process itself is in the lab).
func (s *Seat) In(fn func() error) error {
	if s.Lab == nil {
		return fn()
	}
	var r error
	if err := s.Lab.Do(func() error { r = fn(); return nil }); err != nil {
		return err
	}
	return r
}

// Stats returns a snapshot of what the seat saw.
func (s *Seat) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Wakes: s.wakes, Restores: s.restores, Boots: s.boots, Errs: append([]error(nil), s.errs...)}
}

// CountBoot records a network boot; Netboot functions call it once per
// boot script fetched.
func (s *Seat) CountBoot() {
	s.mu.Lock()
	s.boots++
	s.mu.Unlock()
}

// BeginRestore records a restore and returns its number (1 for the first),
// which Behaviour's FailReport and CutRestores are compared with.
func (s *Seat) BeginRestore() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.restores++
	return s.restores
}

func (s *Seat) fail(err error) {
	s.mu.Lock()
	s.errs = append(s.errs, err)
	s.mu.Unlock()
}

// listenWoL receives magic packets on UDP 9 inside the seat's namespace (the
// NIC's job while the PC is off) and signals those for its MAC.
func (s *Seat) listenWoL(ctx context.Context) <-chan struct{} {
	var pc net.PacketConn
	must(s.t, s.Host.Do(func() (err error) {
		pc, err = net.ListenPacket("udp4", "0.0.0.0:9")
		return err
	}))
	context.AfterFunc(ctx, func() { pc.Close() })
	s.t.Cleanup(func() { pc.Close() })
	want, err := net.ParseMAC(s.MAC)
	must(s.t, err)
	ch := make(chan struct{}, 16)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if !isMagicPacket(buf[:n], want) {
				continue
			}
			s.mu.Lock()
			s.wakes++
			s.mu.Unlock()
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}()
	return ch
}

// isMagicPacket: six 0xff bytes, then the MAC sixteen times, nothing more
// (no SecureOn password), as a NIC checks it.
func isMagicPacket(b []byte, mac net.HardwareAddr) bool {
	if len(b) != 6+16*6 || len(mac) != 6 {
		return false
	}
	if !bytes.Equal(b[:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) {
		return false
	}
	for i := range 16 {
		if !bytes.Equal(b[6+6*i:12+6*i], mac) {
			return false
		}
	}
	return true
}

// firmware waits for the seat to go down (its sshd killed by shutdown) or,
// when off, for a WoL packet, then network-boots it.
func (s *Seat) firmware(ctx context.Context, wol <-chan struct{}) {
	for {
		s.mu.Lock()
		done := s.done
		s.mu.Unlock()
		if done != nil {
			select {
			case <-ctx.Done():
				return
			case <-done:
			}
			if s.B.NeverBack {
				return
			}
		} else {
			select {
			case <-ctx.Done():
				return
			case <-wol:
			}
		}
		if err := s.netboot(ctx, s); err != nil {
			if ctx.Err() == nil {
				s.fail(err)
			}
			return
		}
	}
}
