package reimage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/notify"
	"github.com/pumi-lab/pumi/internal/power"
	"github.com/pumi-lab/pumi/internal/schedule"
	"github.com/pumi-lab/pumi/internal/seatjob"
	"github.com/pumi-lab/pumi/internal/testnet"
	"github.com/pumi-lab/pumi/internal/testseat"
)

// httpLab is the appliance side of a run as the integration tests need it:
// the inventory, one job per seat with a per-job token, the iPXE boot script
// endpoint (/boot/<mac>.ipxe: a restore script while the job is active,
// "exit 1" otherwise) and Clonezilla's report endpoint. It follows the
// appliance's Assignment rules (pending → booted → running → done|failed;
// pending, booted and running jobs get Clonezilla again on every boot), and
// implements Lab for the engine.
type httpLab struct {
	mu    sync.Mutex
	seats []Seat
	jobs  map[string]*labJob
	now   func() time.Time
}

type labJob struct {
	Key     string        `json:"key"`
	Image   string        `json:"image"`
	Token   string        `json:"token"`
	State   seatjob.State `json:"state"`
	Reason  string        `json:"reason,omitempty"`
	Boots   int           `json:"boots"`
	Updated time.Time     `json:"updated"`
}

func newHTTPLab(seats []Seat) *httpLab {
	return &httpLab{seats: seats, jobs: map[string]*labJob{}, now: time.Now}
}

func (l *httpLab) Seats(_ context.Context, t schedule.Target, _ string) ([]Seat, error) {
	var out []Seat
	for _, s := range l.seats {
		if slices.Contains(t.Rooms, s.Room) || slices.Contains(t.Seats, s.ID) {
			out = append(out, s)
		}
	}
	return out, nil
}

func (l *httpLab) StartJob(_ context.Context, j Job) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if old := l.jobs[j.Seat.MAC]; old != nil && old.Key == j.Key {
		return nil
	}
	b := make([]byte, 8)
	rand.Read(b)
	l.jobs[j.Seat.MAC] = &labJob{Key: j.Key, Image: j.Image, Token: hex.EncodeToString(b), State: seatjob.Pending, Updated: l.now()}
	return nil
}

func (l *httpLab) JobState(_ context.Context, mac, key string) (JobState, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	j := l.jobs[mac]
	if j == nil || j.Key != key {
		return JobState{}, seatjob.ErrNoJob
	}
	return JobState{State: j.State, Reason: j.Reason, Boots: j.Boots, Updated: j.Updated}, nil
}

func (l *httpLab) CancelJob(_ context.Context, mac, key string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if j := l.jobs[mac]; j != nil && j.Key == key {
		delete(l.jobs, mac)
	}
	return nil
}

func (l *httpLab) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case strings.HasPrefix(r.URL.Path, "/boot/") && strings.HasSuffix(r.URL.Path, ".ipxe"):
		mac := strings.ReplaceAll(strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/boot/"), ".ipxe"), "-", ":")
		j := l.jobs[mac]
		if j == nil || !j.State.Active() {
			fmt.Fprint(w, "#!ipxe\nexit 1\n")
			return
		}
		j.State, j.Boots, j.Updated = seatjob.Booted, j.Boots+1, l.now()
		fmt.Fprintf(w, "#!ipxe\nkernel http://pumi/live/vmlinuz boot=live ocs_live_run=\"ocs-sr -batch restoredisk %s sda\" pumi_token=%s pumi_image=%s\nboot\n",
			j.Image, j.Token, j.Image)
	case strings.HasPrefix(r.URL.Path, "/report/"):
		mac := strings.ReplaceAll(strings.TrimPrefix(r.URL.Path, "/report/"), "-", ":")
		j := l.jobs[mac]
		q := r.URL.Query()
		if j == nil || q.Get("token") != j.Token {
			http.Error(w, "unknown job or token", http.StatusForbidden)
			return
		}
		switch st := seatjob.State(q.Get("state")); st {
		case seatjob.Running, seatjob.Done, seatjob.Failed:
			if !j.State.Active() {
				http.Error(w, "job already finished", http.StatusConflict)
				return
			}
			j.State, j.Reason, j.Updated = st, q.Get("reason"), l.now()
		default:
			http.Error(w, "bad state", http.StatusBadRequest)
			return
		}
		fmt.Fprintln(w, "ok")
	default:
		http.NotFound(w, r)
	}
}

// outboxReporter is the appliance's Reporter: the run's report goes into the
// durable notify.Outbox under its idempotent message ID.
type outboxReporter struct{ ob *notify.Outbox }

func (o outboxReporter) RunFinished(ctx context.Context, r notify.Report, runLog []byte) error {
	_, err := o.ob.Enqueue(ctx, r.Message(runLog))
	return err
}

// sshPower is the appliance's Power: internal/power's SSH client and WoL,
// run from inside the lab namespace where pumi lives.
type sshPower struct {
	lab  *testnet.NS
	c    *power.Client
	wol  power.WoL
	cred power.Credential
}

func (p *sshPower) target(s Seat, image string) power.Target {
	if image == "" {
		// Before a seat was ever verified its host key is pinned under a
		// placeholder; what it runs is unknown.
		image = "unverified"
	}
	return power.Target{Addr: s.Addr, Seat: s.MAC, Image: image, Cred: p.cred}
}

func (p *sshPower) in(fn func() error) error {
	var r error
	if err := p.lab.Do(func() error { r = fn(); return nil }); err != nil {
		return err
	}
	return r
}

func (p *sshPower) Reboot(ctx context.Context, s Seat, running string) error {
	return p.in(func() error { return p.c.Reboot(ctx, p.target(s, running)) })
}

func (p *sshPower) Shutdown(ctx context.Context, s Seat, running string) error {
	return p.in(func() error { return p.c.Shutdown(ctx, p.target(s, running)) })
}

func (p *sshPower) Verify(ctx context.Context, s Seat, image string) error {
	return p.in(func() error { return p.c.Verify(ctx, p.target(s, image), image) })
}

func (p *sshPower) Wake(ctx context.Context, seats []Seat) error {
	var macs []net.HardwareAddr
	for _, s := range seats {
		m, err := net.ParseMAC(s.MAC)
		if err != nil {
			return err
		}
		macs = append(macs, m)
	}
	return p.in(func() error { return p.wol.Wake(ctx, macs) })
}

// newSimSeat adds seat n (MAC 02:81:00:00:00:<n>, sshd on port 2200+n) to
// lab's bridge br0 at ip; it network-boots from httpLab at bootBase.
func newSimSeat(ctx context.Context, t *testing.T, lab *testnet.NS, n int, ip, bootBase string, b testseat.Behaviour) *testseat.Seat {
	t.Helper()
	mac := fmt.Sprintf("02:81:00:00:00:%02x", n)
	return testseat.New(ctx, t, testseat.Config{Lab: lab, MAC: mac, IP: ip, Port: 2200 + n, Signature: "LAB-2025\n",
		Behaviour: b, BootURL: bootBase + "/boot/" + strings.ReplaceAll(mac, ":", "-") + ".ipxe", Netboot: httpLabBoot})
}

var tokenRE = regexp.MustCompile(`pumi_token=(\S+) pumi_image=(\S+)`)

// httpLabBoot is testseat's Config.Netboot against httpLab: one pass
// through the firmware, iPXE and (maybe) Clonezilla, reporting with httpLab's
// /report/<mac>?token=&state=&reason= protocol.
func httpLabBoot(ctx context.Context, s *testseat.Seat) error {
	for round := 0; ; round++ {
		script, err := s.Get(ctx, s.Boot)
		if err != nil {
			return err
		}
		s.CountBoot()
		m := tokenRE.FindStringSubmatch(script)
		if m == nil {
			if !strings.Contains(script, "exit 1") {
				return fmt.Errorf("seat %s: unexpected boot script %q", s.MAC, script)
			}
			_, err := s.Start(nil) // boots its disk
			return err
		}
		if round > 3 {
			return fmt.Errorf("seat %s: restore loop", s.MAC)
		}
		token, image := m[1], m[2]
		report := func(state, reason string) error {
			_, err := s.Get(ctx, fmt.Sprintf("%s/report/%s?token=%s&state=%s&reason=%s",
				strings.SplitN(s.Boot, "/boot/", 2)[0], strings.ReplaceAll(s.MAC, ":", "-"), token, state, reason))
			return err
		}
		if err := report("running", ""); err != nil {
			return err
		}
		if s.BeginRestore() <= s.B.FailReport {
			if err := report("failed", "ocs-sr+exit+code+1"); err != nil {
				return err
			}
			continue // Clonezilla reboots; the next script is a local exit
		}
		if err := s.SetSignature(testseat.SignatureFor(image) + "\n"); err != nil {
			return err
		}
		if err := report("done", ""); err != nil {
			return err
		}
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
