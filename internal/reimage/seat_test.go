package reimage

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pumi-lab/pumi/internal/power"
	"github.com/pumi-lab/pumi/internal/testnet"
)

// A seat simulator, adapted from internal/power's seat_test.go: a real
// OpenSSH server (Debian openssh-server) in its own network namespace and a
// private mount namespace whose /etc/passwd, shadow, group, sudoers and
// /sbin/shutdown are test files. The stand-in shutdown "powers the seat
// off" by killing every process in the seat's network namespace. Around it
// a Go "firmware" goroutine does what the PC's firmware and Clonezilla would:
// after a reboot it fetches its boot script over HTTP like iPXE, and if the
// script is a restore it reports "running", swaps the Signature to the
// image's, reports "done" (or a failure), reboots, fetches the script again
// (now a local exit) and starts sshd again. A seat that is off waits for a
// Wake-on-LAN magic packet on UDP 9.

const (
	seatUser     = "seat"
	seatPassword = "correct horse battery"
	seatUID      = 64111
)

const seatScript = `D=$1
mount -t tmpfs -o mode=0755 pumi-seat-run /run
mkdir -m 0755 /run/sshd
for f in passwd group shadow sudoers; do mount --bind "$D/$f" "/etc/$f"; done
mount --bind "$D/shutdown" /sbin/shutdown
mount --bind "$D/home" /home
exec /usr/sbin/sshd -D -e -f "$D/sshd_config"
`

const shutdownScript = `#!/bin/sh
echo "$(id -u) $*" >> '%[1]s/shutdown.log'
me=$(readlink /proc/self/ns/net)
[ -n "$me" ] && [ "$me" != "$(readlink /proc/1/ns/net)" ] || exit 99
for p in /proc/[0-9]*; do
	pid=${p#/proc/}
	[ "$pid" = "$$" ] && continue
	[ "$(readlink "$p/ns/net" 2>/dev/null)" = "$me" ] && kill -9 "$pid" 2>/dev/null
done
kill -9 $$
`

// behaviour is how a simulated seat misbehaves.
type behaviour struct {
	password   string // the seat OS's password ("" = seatPassword)
	neverBack  bool   // after its first power-off it never boots again
	failReport int    // its first N restores report failure
	startOff   bool   // powered off at the start; only WoL brings it up
	// cutRestores: its first N restores lose power after "started" (no
	// report); the PC boots again and asks again.
	cutRestores int
}

type simSeat struct {
	t       *testing.T
	lab     *testnet.NS
	host    *testnet.NS
	mac     string
	ip      string
	port    int
	dir     string
	boot    string // boot script URL
	hostKey ed25519.PrivateKey
	b       behaviour
	// viaAppliance: boot and report through the real appliance's script
	// and endpoints (appliance_test.go) rather than httpLab's.
	viaAppliance bool

	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{}
	stderr   *lockedBuffer
	wakes    int // magic packets received for its MAC
	restores int // restores it performed (including reported failures)
	boots    int // network boots
	errs     []error
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

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// newSimSeat adds seat n to lab's bridge br0 at ip and starts it.
func newSimSeat(ctx context.Context, t *testing.T, lab *testnet.NS, n int, ip, bootBase string, b behaviour) *simSeat {
	t.Helper()
	mac := fmt.Sprintf("02:81:00:00:00:%02x", n)
	host := lab.Host("br0", mac, ip+"/24")
	dir := t.TempDir()
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		must(t, os.Chmod(d, 0o755))
	}
	_, hk, err := ed25519.GenerateKey(rand.Reader)
	must(t, err)
	s := &simSeat{t: t, lab: lab, host: host, mac: mac, ip: ip, port: 2200 + n, dir: dir, hostKey: hk, b: b,
		boot: bootBase + "/boot/" + strings.ReplaceAll(mac, ":", "-") + ".ipxe"}
	s.writeFiles()
	wol := s.listenWoL(ctx)
	if !b.startOff {
		must(t, s.start())
	}
	go s.firmware(ctx, wol)
	t.Cleanup(s.stop)
	return s
}

func (s *simSeat) path(name string) string { return filepath.Join(s.dir, name) }

func (s *simSeat) writeFiles() {
	t := s.t
	pw := s.b.password
	if pw == "" {
		pw = seatPassword
	}
	out, err := exec.Command("openssl", "passwd", "-6", "-salt", "pumitest", pw).Output()
	must(t, err)
	hash := strings.TrimSpace(string(out))
	sshdUID, sshdGID := "103", "65534"
	if u, err := user.Lookup("sshd"); err == nil {
		sshdUID, sshdGID = u.Uid, u.Gid
	}
	files := map[string]string{
		"passwd": fmt.Sprintf("root:x:0:0:root:/root:/bin/sh\nsshd:x:%s:%s::/run/sshd:/usr/sbin/nologin\n"+
			"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n%s:x:%d:%d:pumi seat:/home/%s:/bin/sh\n",
			sshdUID, sshdGID, seatUser, seatUID, seatUID, seatUser),
		"group":  fmt.Sprintf("root:x:0:\nnogroup:x:65534:\n%s:x:%d:\n", seatUser, seatUID),
		"shadow": fmt.Sprintf("root:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\n%s:%s:19000:0:99999:7:::\n", seatUser, hash),
		// The seed's NOPASSWD rule.
		"sudoers":  "Defaults env_reset\nDefaults !lecture\nroot ALL=(ALL:ALL) ALL\n" + seatUser + " ALL=(ALL) NOPASSWD: /sbin/shutdown\n",
		"shutdown": fmt.Sprintf(shutdownScript, s.dir),
		"sshd_config": fmt.Sprintf("ListenAddress %s:%d\nHostKey %s\nPidFile %s\nUsePAM no\nStrictModes no\n"+
			"PasswordAuthentication yes\nKbdInteractiveAuthentication no\nPubkeyAuthentication no\n"+
			"PermitRootLogin no\nAllowUsers %s\nLogLevel INFO\n",
			s.ip, s.port, s.path("host_key"), s.path("sshd.pid"), seatUser),
	}
	modes := map[string]os.FileMode{"shadow": 0o600, "sudoers": 0o440, "shutdown": 0o755}
	for name, content := range files {
		mode := modes[name]
		if mode == 0 {
			mode = 0o644
		}
		must(t, os.WriteFile(s.path(name), []byte(content), mode))
		must(t, os.Chmod(s.path(name), mode))
	}
	desk := filepath.Join(s.dir, "home", seatUser, "Desktop")
	must(t, os.MkdirAll(desk, 0o755))
	must(t, os.Chown(filepath.Dir(desk), seatUID, seatUID))
	must(t, os.Chown(desk, seatUID, seatUID))
	block, err := ssh.MarshalPrivateKey(s.hostKey, "seat")
	must(t, err)
	must(t, os.WriteFile(s.path("host_key"), pem.EncodeToMemory(block), 0o600))
	must(t, s.setSignature("LAB-2025\n"))
}

func (s *simSeat) setSignature(content string) error {
	p := filepath.Join(s.dir, "home", seatUser, "Desktop", "Signature")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Chown(p, seatUID, seatUID)
}

func (s *simSeat) signature() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "home", seatUser, "Desktop", "Signature"))
	return string(b)
}

func (s *simSeat) fail(err error) {
	s.mu.Lock()
	s.errs = append(s.errs, err)
	s.mu.Unlock()
}

// start boots the seat's OS: sshd, until it listens.
func (s *simSeat) start() error {
	cmd := s.host.Command(context.Background(), "unshare", "-m", "--propagation", "private",
		"/bin/sh", "-euc", seatScript, "seat", s.dir)
	stderr := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = stderr, stderr
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done, s.stderr = cmd, done, stderr
	s.mu.Unlock()
	addr := net.JoinHostPort(s.ip, strconv.Itoa(s.port))
	deadline := time.Now().Add(15 * time.Second)
	for {
		var derr error
		if err := s.lab.Do(func() error {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
			}
			derr = err
			return nil
		}); err != nil {
			return err
		}
		if derr == nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("seat %s: sshd exited at start: %s", s.mac, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("seat %s: sshd not listening after 15s: %v", s.mac, derr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *simSeat) stop() {
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
	if out, err := exec.Command("ip", "netns", "pids", s.host.Name).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if s.t.Failed() {
		s.mu.Lock()
		if s.stderr != nil {
			s.t.Logf("seat %s sshd log:\n%s", s.mac, s.stderr.String())
		}
		s.mu.Unlock()
	}
}

// listenWoL receives magic packets on UDP 9 inside the seat's namespace
// (the NIC's job while the PC is off) and signals those for its MAC.
func (s *simSeat) listenWoL(ctx context.Context) <-chan struct{} {
	var pc net.PacketConn
	must(s.t, s.host.Do(func() (err error) {
		pc, err = net.ListenPacket("udp4", "0.0.0.0:9")
		return err
	}))
	context.AfterFunc(ctx, func() { pc.Close() })
	s.t.Cleanup(func() { pc.Close() })
	ch := make(chan struct{}, 16)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			mac, err := power.ParseMagicPacket(buf[:n])
			if err != nil || mac.String() != s.mac {
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

// firmware waits for the seat to go down (its sshd killed by shutdown) or,
// when off, for a WoL packet, then network-boots it.
func (s *simSeat) firmware(ctx context.Context, wol <-chan struct{}) {
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
			if s.b.neverBack {
				return
			}
		} else {
			select {
			case <-ctx.Done():
				return
			case <-wol:
			}
		}
		nb := s.netboot
		if s.viaAppliance {
			nb = s.netbootAppliance
		}
		if err := nb(ctx); err != nil {
			if ctx.Err() == nil {
				s.fail(err)
			}
			return
		}
	}
}

var tokenRE = regexp.MustCompile(`pumi_token=(\S+) pumi_image=(\S+)`)

// netboot is one pass through the firmware, iPXE and (maybe) Clonezilla.
func (s *simSeat) netboot(ctx context.Context) error {
	for round := 0; ; round++ {
		script, err := s.get(ctx, s.boot)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.boots++
		s.mu.Unlock()
		m := tokenRE.FindStringSubmatch(script)
		if m == nil {
			if !strings.Contains(script, "exit 1") {
				return fmt.Errorf("seat %s: unexpected boot script %q", s.mac, script)
			}
			return s.start() // boots its disk
		}
		if round > 3 {
			return fmt.Errorf("seat %s: restore loop", s.mac)
		}
		token, image := m[1], m[2]
		report := func(state, reason string) error {
			_, err := s.get(ctx, fmt.Sprintf("%s/report/%s?token=%s&state=%s&reason=%s",
				strings.SplitN(s.boot, "/boot/", 2)[0], strings.ReplaceAll(s.mac, ":", "-"), token, state, reason))
			return err
		}
		if err := report("running", ""); err != nil {
			return err
		}
		s.mu.Lock()
		s.restores++
		failing := s.restores <= s.b.failReport
		s.mu.Unlock()
		if failing {
			if err := report("failed", "ocs-sr+exit+code+1"); err != nil {
				return err
			}
			continue // Clonezilla reboots; the next script is a local exit
		}
		if err := s.setSignature(power.WantedSignature(image) + "\n"); err != nil {
			return err
		}
		if err := report("done", ""); err != nil {
			return err
		}
	}
}

// get fetches url from inside the seat's namespace, as iPXE would.
func (s *simSeat) get(ctx context.Context, url string) (string, error) {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
			derr := s.host.Do(func() error {
				var d net.Dialer
				conn, err = d.DialContext(ctx, network, addr)
				return nil
			})
			return conn, errors.Join(err, derr)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s %s", url, resp.Status, b)
	}
	return string(b), err
}
