package power

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
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pumi-lab/pumi/internal/testnet"
)

// A seat simulator: a real OpenSSH server (Debian openssh-server) in its own
// network namespace, in a private mount namespace whose /etc/passwd, shadow,
// group and sudoers are test files and whose /sbin/shutdown is a stand-in
// that "powers the seat off" by killing every process in the seat's network
// namespace. Nothing on the machine itself changes: no user is added, no
// sshd config or host key is touched, no daemon listens outside the
// namespace.

const (
	seatUser     = "seat"   // has the seed's NOPASSWD rule
	seatNoSudo   = "nosudo" // has no sudo rule at all
	seatPassword = "correct horse battery"
	seatUID      = 64101
	seatNoSudoID = 64102
)

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
// takes the link down and goes quiet). It refuses to run in the
// machine's own namespace.
const shutdownScript = `#!/bin/sh
echo "$(id -u) $*" >> '%[1]s/shutdown.log'
if [ -e '%[1]s/shutdown.silent' ]; then
	# A machine that loses power before its TCP stack says goodbye: the
	# link goes down and nothing more is heard, no FIN, no RST.
	/usr/sbin/ip link set eth0 down
	exec /usr/bin/sleep 600
fi
me=$(readlink /proc/self/ns/net)
[ -n "$me" ] && [ "$me" != "$(readlink /proc/1/ns/net)" ] || exit 99
for p in /proc/[0-9]*; do
	pid=${p#/proc/}
	[ "$pid" = "$$" ] && continue
	[ "$(readlink "$p/ns/net" 2>/dev/null)" = "$me" ] && kill -9 "$pid" 2>/dev/null
done
kill -9 $$
`

type seatSim struct {
	t    *testing.T
	lab  *testnet.NS // where pumi runs
	host *testnet.NS // the seat's network namespace
	ip   string
	dir  string

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	stderr *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newSeat builds lab (10.78.N.1/24 on br0) and one seat host (10.78.N.2),
// writes the seat's files and starts its sshd with a fresh host key.
func newSeat(t *testing.T, subnet int, authorizedKey string) *seatSim {
	t.Helper()
	testnet.Require(t, "/usr/sbin/sshd", "sudo", "unshare", "mount", "openssl")
	lab := testnet.New(t)
	lab.Bridge("br0", fmt.Sprintf("10.78.%d.1/24", subnet))
	ip := fmt.Sprintf("10.78.%d.2", subnet)
	host := lab.Host("br0", "", ip+"/24")

	dir := t.TempDir()
	// sshd reads authorized_keys as the user, so the path must be
	// traversable; t.TempDir makes 0700 directories.
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		must(t, os.Chmod(d, 0o755))
	}
	s := &seatSim{t: t, lab: lab, host: host, ip: ip, dir: dir}
	s.writeFiles(authorizedKey)
	s.start(newHostKey(t))
	t.Cleanup(s.stop)
	return s
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func newHostKey(t testing.TB) ed25519.PrivateKey {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	must(t, err)
	return k
}

func (s *seatSim) path(name string) string { return filepath.Join(s.dir, name) }

func (s *seatSim) writeFiles(authorizedKey string) {
	t := s.t
	out, err := exec.Command("openssl", "passwd", "-6", "-salt", "pumitest", seatPassword).Output()
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
			sshdUID, sshdGID, seatUser, seatUID, seatUID, seatUser, seatNoSudo, seatNoSudoID, seatNoSudoID, seatNoSudo),
		"group": fmt.Sprintf("root:x:0:\nnogroup:x:65534:\n%s:x:%d:\n%s:x:%d:\n", seatUser, seatUID, seatNoSudo, seatNoSudoID),
		"shadow": fmt.Sprintf("root:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n"+
			"%s:%s:19000:0:99999:7:::\n%s:%s:19000:0:99999:7:::\n", seatUser, hash, seatNoSudo, hash),
		// The seed's rule, verbatim apart from the user name.
		"sudoers":         "Defaults env_reset\nDefaults !lecture\nDefaults !fqdn\nroot ALL=(ALL:ALL) ALL\n" + seatUser + " ALL=(ALL) NOPASSWD: /sbin/shutdown\n",
		"shutdown":        fmt.Sprintf(shutdownScript, s.dir),
		"authorized_keys": authorizedKey + "\n",
		"sshd_config": fmt.Sprintf("ListenAddress %s:22\nHostKey %s\nPidFile %s\nAuthorizedKeysFile %s\n"+
			"UsePAM no\nStrictModes no\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\n"+
			"PubkeyAuthentication yes\nPermitRootLogin no\nAllowUsers %s %s\nLogLevel VERBOSE\n",
			s.ip, s.path("host_key"), s.path("sshd.pid"), s.path("authorized_keys"), seatUser, seatNoSudo),
	}
	modes := map[string]os.FileMode{"shadow": 0o600, "sudoers": 0o440, "shutdown": 0o755}
	for name, content := range files {
		mode, ok := modes[name]
		if !ok {
			mode = 0o644
		}
		must(t, os.WriteFile(s.path(name), []byte(content), mode))
		must(t, os.Chmod(s.path(name), mode))
	}
	for _, u := range []struct {
		name string
		id   int
	}{{seatUser, seatUID}, {seatNoSudo, seatNoSudoID}} {
		desk := filepath.Join(s.dir, "home", u.name, "Desktop")
		must(t, os.MkdirAll(desk, 0o755))
		must(t, os.Chown(filepath.Dir(desk), u.id, u.id))
		must(t, os.Chown(desk, u.id, u.id))
	}
	s.setSignature("LAB-2026\n")
}

// setSignature writes the seat user's Desktop/Signature; nil-like "" removes it.
func (s *seatSim) setSignature(content string) {
	p := filepath.Join(s.dir, "home", seatUser, "Desktop", "Signature")
	if content == "" {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.t.Fatal(err)
		}
		return
	}
	must(s.t, os.WriteFile(p, []byte(content), 0o644))
	must(s.t, os.Chown(p, seatUID, seatUID))
}

// start runs sshd with hostKey and waits until it accepts connections.
func (s *seatSim) start(hostKey ed25519.PrivateKey) ssh.PublicKey {
	t := s.t
	t.Helper()
	block, err := ssh.MarshalPrivateKey(hostKey, "seat")
	must(t, err)
	must(t, os.WriteFile(s.path("host_key"), pem.EncodeToMemory(block), 0o600))
	pub, err := ssh.NewPublicKey(hostKey.Public())
	must(t, err)

	cmd := s.host.Command(context.Background(), "unshare", "-m", "--propagation", "private",
		"/bin/sh", "-euc", seatScript, "seat", s.dir)
	stderr := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = stderr, stderr
	// sshd's session processes inherit its stderr; without a bound, Wait
	// would wait for the last of them (a seat that went silent keeps one
	// sleeping) before returning.
	cmd.WaitDelay = time.Second
	must(t, cmd.Start())
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done, s.stderr = cmd, done, stderr
	s.mu.Unlock()

	deadline := time.Now().Add(15 * time.Second)
	for {
		var derr error
		must(t, s.lab.Do(func() error {
			c, err := net.DialTimeout("tcp", s.ip+":22", time.Second)
			if err == nil {
				c.Close()
			}
			derr = err
			return nil
		}))
		if derr == nil {
			return pub
		}
		select {
		case <-done:
			t.Fatalf("seat sshd exited at start: %s", stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("seat sshd not listening after 15s: %v\n%s", derr, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop powers the seat off: it kills its sshd (if still running) and every
// other process in the seat's network namespace (sessions of a seat that
// went silent), and waits for sshd.
func (s *seatSim) stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
	default:
		cmd.Process.Kill()
		<-done
	}
	if out, err := exec.Command("ip", "netns", "pids", s.host.Name).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if s.t.Failed() {
		s.t.Logf("seat sshd log:\n%s", s.stderr.String())
	}
}

// exited reports whether sshd is gone, waiting up to a few seconds for it.
func (s *seatSim) exited() bool {
	s.mu.Lock()
	done := s.done
	s.mu.Unlock()
	select {
	case <-done:
		return true
	case <-time.After(10 * time.Second):
		return false
	}
}

// in runs fn inside the lab namespace, where pumi lives.
func (s *seatSim) in(fn func() error) error {
	var r error
	must(s.t, s.lab.Do(func() error { r = fn(); return nil }))
	return r
}
