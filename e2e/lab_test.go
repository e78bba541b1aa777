package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/power"
	"github.com/pumi-lab/pumi/internal/testnet"
	"github.com/pumi-lab/pumi/internal/testsmtp"
	"github.com/pumi-lab/pumi/internal/testvm"
)

// The lab: pumi at .1 on br0, the PCs' reservations from .11.
const (
	labNet  = "10.88.0"
	pumiIP  = labNet + ".1"
	room    = "lab"
	image   = "LAB-A-img"
	labUser = "user"
)

// faults of the issue, each its own scenario or folded into one.
type faults struct {
	cut     bool // (a) PC1 loses power in the middle of its restore and is started again
	kill    bool // (b) pumi-appliance is killed with -9 in the middle of PC2's restore and restarted
	unknown bool // (c) a PC that is not in the inventory netboots during the run
	// multicast: PC1 and PC2 restore from one multicast stream (roomcast);
	// with cut, PC1's power cut drops it from the stream and it restores
	// by unicast. Not with kill: a stream does not survive pumi's restart.
	multicast bool
}

var scenarios = []struct {
	name string
	f    faults
}{
	{"plain", faults{}},
	{"power-cut", faults{cut: true}},
	{"pumi-kill", faults{kill: true}},
	{"unknown-pc", faults{unknown: true}},
	{"folded", faults{cut: true, kill: true, unknown: true}},
	{"multicast", faults{multicast: true, cut: true}},
}

// TestLab runs the lab-in-a-box scenario (see doc.go). By default "folded":
// the three faults in one run, because each scenario costs about 20 minutes
// of a 2-core machine.
func TestLab(t *testing.T) {
	if testing.Short() {
		t.Skip("the lab scenario boots QEMU PCs for about 20 minutes")
	}
	testnet.Require(t, append(append(testvm.Programs(), fixturePrograms...), testsmtp.Python, "cp")...)
	testsmtp.Require(t)
	want := os.Getenv("PUMI_LAB")
	if want == "" {
		want = "folded"
	}
	var run []string
	for _, sc := range scenarios {
		if want == "all" || slices.Contains(strings.Split(want, ","), sc.name) {
			run = append(run, sc.name)
		}
	}
	if len(run) == 0 {
		t.Fatalf("PUMI_LAB=%q names no scenario (plain, power-cut, pumi-kill, unknown-pc, folded, multicast, all)", want)
	}
	fx := buildFixtures(t)
	bin := buildAppliance(t)
	for _, sc := range scenarios {
		if slices.Contains(run, sc.name) {
			t.Run(sc.name, func(t *testing.T) { runLab(t, fx, bin, sc.f) })
		}
	}
}

func runLab(t *testing.T, fx labFiles, bin string, f faults) {
	ctx, cancel := context.WithTimeout(t.Context(), 55*time.Minute)
	defer cancel()
	tl := newTimeline()

	// The whole lab is one group of VMs: it takes the machine's VM slot
	// once, so no other test's VM shares the two cores with it.
	release, err := testvm.Slot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer release()

	ns := testnet.New(t)
	ns.Bridge("br0", pumiIP+"/24")
	testvm.AdvertiseRouter(t, ns, "br0") // else iPXE waits ~15 s for IPv6 on every boot

	// The image repository: the real image and the live zip, as an admin
	// would put them on the appliance's repository disk.
	work := t.TempDir()
	repo := filepath.Join(work, "repo")
	run(t, "mkdir", "-p", repo)
	run(t, "cp", "-a", filepath.Join(fx.Images, image), repo+"/")
	zipName := filepath.Base(fx.LiveZip)
	if err := os.Link(fx.LiveZip, filepath.Join(repo, zipName)); err != nil {
		run(t, "cp", fx.LiveZip, filepath.Join(repo, zipName))
	}
	password, err := os.ReadFile(filepath.Join(fx.Disks, "keys", "user-password"))
	if err != nil {
		t.Fatal(err)
	}

	// The PCs: 1 and 2 run LAB-B, 3 runs LAB-B with another password than
	// the one pumi is given. 2 is off.
	pcs := []*pc{
		{name: "pc1", mac: "52:54:00:88:00:11", ip: labNet + ".11", disk: "disk-B.img"},
		{name: "pc2", mac: "52:54:00:88:00:12", ip: labNet + ".12", disk: "disk-B.img"},
		{name: "pc3", mac: "52:54:00:88:00:13", ip: labNet + ".13", disk: "disk-C.img"},
	}
	unknown := &pc{name: "stranger", mac: "52:54:00:88:00:99", disk: "disk-B.img"}
	for _, p := range append(slices.Clone(pcs), unknown) {
		p.t, p.ns, p.tl, p.tap = t, ns, tl, ns.Tap("br0")
		src := p.disk
		p.disk = filepath.Join(work, p.name+".img")
		run(t, "cp", "--sparse=always", filepath.Join(fx.Disks, src), p.disk)
	}
	byMAC := map[string]*pc{}
	for _, p := range pcs {
		byMAC[p.mac] = p
	}

	// Mail: a real SMTP server (STARTTLS + AUTH) on the lab namespace's
	// loopback, where the appliance runs.
	certFile, keyFile, caPEM := testsmtp.Cert(t)
	inbox := filepath.Join(work, "inbox")
	run(t, "mkdir", "-p", inbox)
	testsmtp.Start(t, 587, certFile, keyFile, inbox, testsmtp.Opts{NS: ns})

	app := &appliance{t: t, ns: ns, bin: bin, state: filepath.Join(work, "state")}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pumi-appliance log:\n%s", app.log.String())
		}
	})
	if err := app.start(ctx); err != nil {
		t.Fatal(err)
	}
	defer app.stop()
	api := app.api()

	// Configuration through the API, as an admin's script would do it.
	cfg := map[string]any{
		"netboot": map[string]any{"mode": "full", "interface": "br0", "server_ip": pumiIP,
			"http_base": "http://" + pumiIP + ":8080", "subnet": labNet + ".0/24",
			"range_start": labNet + ".100", "range_end": labNet + ".150"},
		"repository": repo,
		"console":    "ttyS0,115200", // Clonezilla's job on the serial console the test reads
		"ssh":        []map[string]string{{"scope": "room", "name": room, "user": labUser}},
		"mail": map[string]any{"host": "127.0.0.1", "port": 587, "username": testsmtp.User,
			"from": "pumi <" + testsmtp.User + ">", "to": []string{"admin@lab.example"}, "tls": "starttls", "ca_cert_pem": caPEM},
		"wol_gap": "1s",
	}
	api.must(ctx, "PUT", "/api/v1/config", cfg, nil)
	api.must(ctx, "POST", "/api/v1/live/import", map[string]string{"zip": zipName}, nil)
	api.must(ctx, "PUT", "/api/v1/secrets/ssh/room/"+room, map[string]string{"password": strings.TrimSpace(string(password))}, nil)
	api.must(ctx, "PUT", "/api/v1/secrets/mail", map[string]string{"password": testsmtp.Password}, nil)
	csv := "mac,ip,user,hostname,room\n"
	for _, p := range pcs {
		csv += fmt.Sprintf("%s,%s,%s,%s,%s\n", p.mac, p.ip, labUser, p.name, room)
	}
	api.must(ctx, "POST", "/api/v1/seats/import", csvBody(csv), nil)
	var images struct{ Images []imageJSON }
	api.must(ctx, "GET", "/api/v1/images", nil, &images)
	if !slices.ContainsFunc(images.Images, func(i imageJSON) bool { return i.Path == image && i.Valid }) {
		t.Fatalf("the repository's %s is not a valid image for pumi: %+v", image, images.Images)
	}

	// PC1 and PC3 are running; PC2 is off and wakes only by Wake-on-LAN,
	// which the harness's "NIC" turns into starting that VM.
	pcs[0].powerOn(ctx)
	pcs[2].powerOn(ctx)
	listenWoL(t, ctx, ns, tl, byMAC)
	for _, p := range []*pc{pcs[0], pcs[2]} {
		if _, err := p.waitFor(ctx, "LAB-SSH-READY", 6*time.Minute); err != nil {
			t.Fatalf("%s did not boot its disk: %v", p.name, err)
		}
	}

	// A schedule for the room that fires at the next full minute (the
	// appliance's time zone is UTC), as it would at night.
	fire := time.Now().UTC().Add(30 * time.Second).Truncate(time.Minute).Add(time.Minute)
	transport := "unicast"
	if f.multicast {
		transport = "multicast"
	}
	sched := map[string]any{"id": "lab-nightly", "name": "Lab nightly", "spec": fmt.Sprintf("%d %d * * *", fire.Minute(), fire.Hour()),
		// Unicast unless the scenario is about the stream: the folded faults
		// (pumi killed mid-restore) are about the NFS path.
		"target": map[string]any{"rooms": []string{room}}, "action": map[string]any{"kind": "restore", "image": image, "transport": transport},
		// A PC needs about 17 minutes here even with a second Clonezilla
		// boot; a window of 40 lets a stuck seat end "window closed" well
		// inside the test's time instead of holding CI for an hour.
		"window": int64(40 * time.Minute), "enabled": true}
	api.must(ctx, "PUT", "/web/api/v1/schedules/lab-nightly", sched, nil)
	tl.add("pumi", fmt.Sprintf("schedule set to fire at %s", fire.Format("15:04:05")))

	var runID string
	for runID == "" {
		var runs []runJSON
		api.must(ctx, "GET", "/web/api/v1/runs", nil, &runs)
		if len(runs) > 0 {
			runID = runs[0].ID
			break
		}
		if time.Now().After(fire.Add(time.Minute)) {
			t.Fatalf("the schedule did not start a run by %s", fire.Add(time.Minute).Format(time.TimeOnly))
		}
		sleep(ctx, time.Second)
	}
	tl.add("pumi", "run "+runID+" started by the schedule")

	// The faults, each triggered by what the PC's console shows.
	var faultWG sync.WaitGroup
	fault := func(fn func()) {
		faultWG.Add(1)
		go func() { defer faultWG.Done(); fn() }()
	}
	// partclone restores the root partition (p2, ~37 MB of zstd) in a few
	// seconds: the faults strike as it starts, when the disk holds a new
	// partition table, a restored ESP and a half-written root.
	const restoring = "Starting to restore image (-) to device (/dev/nvme0n1p2)"
	if f.cut {
		fault(func() {
			if _, err := pcs[0].waitFor(ctx, restoring, 40*time.Minute); err != nil {
				t.Errorf("fault (a): PC1 never started restoring: %v", err)
				return
			}
			sleep(ctx, time.Second)
			pcs[0].powerCut()
			sleep(ctx, 3*time.Second)
			pcs[0].powerOn(ctx)
		})
	}
	if f.kill {
		fault(func() {
			if _, err := pcs[1].waitFor(ctx, restoring, 40*time.Minute); err != nil {
				t.Errorf("fault (b): PC2 never started restoring: %v", err)
				return
			}
			app.kill9()
			tl.add("pumi", "killed with SIGKILL")
			sleep(ctx, 2*time.Second)
			if err := app.start(ctx); err != nil {
				t.Errorf("fault (b): restarting pumi: %v", err)
				return
			}
			tl.add("pumi", "restarted")
		})
	}
	if f.unknown {
		// Once the run is under way, a PC nobody registered netboots.
		fault(func() {
			sleep(ctx, 20*time.Second)
			unknown.powerOn(ctx)
		})
	}

	// Follow the run until it ends, recording each seat's states.
	final := followRun(t, ctx, api, runID, tl, byMAC)
	faultWG.Wait()

	// Each restored PC boots the restored OS by itself.
	for _, p := range pcs[:2] {
		line, err := p.waitFor(ctx, "LAB-SSH-READY variant=A", 5*time.Minute)
		if err != nil {
			t.Errorf("%s does not run the restored LAB-A: %v", p.name, err)
		} else if !strings.Contains(line, "sig=LAB-A") || !strings.Contains(line, "esp=ESP-A") {
			t.Errorf("%s's restored OS: %s", p.name, line)
		}
	}
	if strings.Contains(pcs[2].serial(), "Starting to restore") || strings.Contains(pcs[2].serial(), "variant=A") {
		t.Errorf("pc3 (wrong password) was restored anyway")
	}

	seats := map[string]seatJSON{}
	for _, s := range final.Seats {
		seats[s.MAC] = s
	}
	if len(final.Seats) != 3 {
		t.Errorf("the run has %d seats, want the room's 3: %+v", len(final.Seats), final.Seats)
	}
	for _, p := range pcs[:2] {
		if s := seats[p.mac]; s.State != "verified" {
			t.Errorf("%s ended %s (%s), want verified", p.name, s.State, s.Reason)
		}
	}
	if s := seats[pcs[2].mac]; s.State != "failed" || !strings.Contains(s.Reason, "ssh auth") {
		t.Errorf("pc3 ended %s (%q), want failed with reason \"ssh auth\"", s.State, s.Reason)
	}
	if f.cut {
		if n := strings.Count(pcs[0].allSerial(), restoring); n < 2 {
			t.Errorf("PC1 started restoring its root partition %d times, want 2 (before and after the power cut)", n)
		}
		if b := pcs[0].maxBoots(); b < 2 {
			t.Errorf("pumi counted %d Clonezilla boots for PC1, want 2 after the power cut", b)
		}
	}
	if f.multicast {
		// PC2 got its partitions from the stream; PC1, cut off in it,
		// restored by unicast after its power came back.
		var jobs []struct {
			MAC, Group, Demoted string
			McastBoot           bool `json:"mcast_boot"`
		}
		api.must(ctx, "GET", "/api/v1/jobs", nil, &jobs)
		for _, j := range jobs {
			switch {
			case j.MAC == pcs[1].mac && (j.Group == "" || j.Demoted != ""):
				t.Errorf("PC2 was not restored by multicast: %+v", j)
			case j.MAC == pcs[0].mac && f.cut && j.Demoted == "":
				t.Errorf("PC1 was cut off in the stream but not moved to unicast: %+v", j)
			}
		}
		var sessions []struct {
			State                 string
			Joined                []string
			BytesSent             int64 `json:"bytes_sent"`
			WireBytes             int64 `json:"wire_bytes"`
			Partition, Partitions int
		}
		api.must(ctx, "GET", "/api/v1/multicast", nil, &sessions)
		if len(sessions) != 1 || sessions[0].State != "done" || sessions[0].Partition != sessions[0].Partitions {
			t.Errorf("multicast session: %+v", sessions)
		} else {
			t.Logf("FIGURE multicast session: %d partitions, %d bytes acknowledged, %d bytes on the wire, joined %v",
				sessions[0].Partitions, sessions[0].BytesSent, sessions[0].WireBytes, sessions[0].Joined)
		}
	}
	if f.unknown {
		if _, err := unknown.waitFor(ctx, "LAB-SSH-READY variant=B", 8*time.Minute); err != nil {
			t.Errorf("the unknown PC did not fall through to its own disk: %v", err)
		}
		if s := unknown.allSerial(); strings.Contains(s, "iPXE") || strings.Contains(s, "Starting to restore") {
			t.Errorf("the unknown PC was given a boot program by pumi")
		}
		var seen []seenJSON
		api.must(ctx, "GET", "/api/v1/seen", nil, &seen)
		if !slices.ContainsFunc(seen, func(s seenJSON) bool { return s.MAC == unknown.mac && !s.Known }) {
			t.Errorf("pumi did not record the unknown PC's netboot as seen and unknown: %+v", seen)
		}
		unknown.powerCut()
	}

	// The report: one mail, 2 verified and 1 failed with its reason.
	var msgs []testsmtp.Received
	for deadline := time.Now().Add(3 * time.Minute); ; {
		if msgs = testsmtp.Inbox(t, inbox); len(msgs) > 0 || time.Now().After(deadline) {
			break
		}
		sleep(ctx, time.Second)
	}
	app.stop() // with its outbox: nothing may be sent twice
	if msgs = testsmtp.Inbox(t, inbox); len(msgs) != 1 {
		t.Fatalf("%d report mails, want 1", len(msgs))
	}
	subject := msgs[0].Msg.Header.Get("Subject")
	var text string
	attachments := 0
	for _, part := range testsmtp.Parts(t, msgs[0].Msg) {
		if part.Filename != "" {
			attachments++
		} else if part.ContentType == "text/plain" {
			text += string(part.Body)
		}
	}
	if !strings.Contains(subject, "2/3 verified") || !strings.Contains(text, "pc3") || !strings.Contains(text, "ssh auth") || attachments == 0 {
		t.Errorf("report %q (%d attachments) does not say 2 verified, pc3 failed with \"ssh auth\":\n%s", subject, attachments, text)
	}
	t.Logf("report mail %q:\n%s", subject, text)
	t.Logf("timeline (s since the schedule was set up):\n%s", tl.String())
	t.Logf("phases per PC:\n%s", phases(tl, pcs[:2]))
}

// pc is one lab PC: a disk image and, while it is on, a QEMU process.
type pc struct {
	name, mac, ip, disk, tap string
	t                        *testing.T
	ns                       *testnet.NS
	tl                       *timeline

	mu       sync.Mutex
	vm       *testvm.VM   // current power-on; nil or exited when off
	past     []*testvm.VM // earlier power-ons, for their consoles
	boots    int          // highest Clonezilla boot count pumi reported
	txBase   int64        // tap tx bytes when Clonezilla's job started
	nfsBytes []int64      // bytes sent to the PC while ocs-sr ran, per restore
}

func (p *pc) powerOn(ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.vm != nil && !p.vm.Exited() {
		return
	}
	if p.vm != nil {
		p.past = append(p.past, p.vm)
	}
	p.vm = testvm.Start(p.t, ctx, testvm.Config{Name: fmt.Sprintf("%s-%d", p.name, len(p.past)+1), NS: p.ns, Tap: p.tap,
		MAC: p.mac, OwnDisk: p.disk, Reboot: true, MemoryMiB: 1536, SlotHeld: true, Timeout: 80 * time.Minute})
	p.tl.add(p.name, "power on")
	go p.watch(ctx, p.vm)
}

// powerCut kills QEMU: the PC loses power at once.
func (p *pc) powerCut() {
	p.mu.Lock()
	vm := p.vm
	p.mu.Unlock()
	if vm != nil && !vm.Exited() {
		vm.Stop()
		p.tl.add(p.name, "power cut")
	}
}

func (p *pc) current() *testvm.VM {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.vm
}

// waitFor waits for marker on the console of the PC's current (or next)
// power-on.
func (p *pc) waitFor(ctx context.Context, marker string, d time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		vm := p.current()
		if vm != nil {
			line, err := vm.WaitFor(ctx, marker)
			if err == nil {
				return line, nil
			}
			if ctx.Err() != nil {
				return "", fmt.Errorf("%w; last console lines:\n%s", err, vm.Tail(15))
			}
			// QEMU ended (a power cut, a poweroff): wait for the next one.
			for p.current() == vm && ctx.Err() == nil {
				sleep(ctx, time.Second)
			}
			continue
		}
		if !sleep(ctx, time.Second) {
			return "", fmt.Errorf("%s: %w", p.name, ctx.Err())
		}
	}
}

func (p *pc) serial() string {
	if vm := p.current(); vm != nil {
		return vm.Serial()
	}
	return ""
}

func (p *pc) allSerial() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	for _, vm := range append(slices.Clone(p.past), p.vm) {
		if vm != nil {
			b.WriteString(vm.Serial())
		}
	}
	return b.String()
}

func (p *pc) maxBoots() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.boots
}

// consoleMarks are the console lines that start the phases of a PC's
// re-imaging, in the order they appear.
var consoleMarks = []struct{ marker, event string }{
	{">>Start PXE", "firmware PXE"},
	{"iPXE initialising", "iPXE running"},
	{"Kernel command line: vmlinuz initrd=initrd.img boot=live", "Clonezilla kernel started"},
	{`Start "ocs-sr`, "Clonezilla job starts"},
	{"Starting to restore image", "partclone restoring"},
	{"Partclone successfully restored", "partclone done"},
	{"Will reboot", "ocs-sr done, rebooting"},
	{"LAB-SSH-READY", "OS up with SSH"},
}

// watch records when each console mark first appears in this power-on,
// and the bytes pumi sent the PC while Clonezilla's job ran (its tap's tx
// counter: the NFS reads, the job's only traffic then).
func (p *pc) watch(ctx context.Context, vm *testvm.VM) {
	seen := map[int]int{}
	for !vm.Exited() && ctx.Err() == nil {
		s := vm.Serial()
		for i, m := range consoleMarks {
			if n := strings.Count(s, m.marker); n > seen[i] {
				seen[i] = n
				p.tl.add(p.name, m.event)
				switch m.event {
				case "Clonezilla job starts":
					n := p.txBytes(ctx)
					p.mu.Lock()
					p.txBase = n
					p.mu.Unlock()
				case "ocs-sr done, rebooting":
					n := p.txBytes(ctx)
					p.mu.Lock()
					p.nfsBytes = append(p.nfsBytes, n-p.txBase)
					p.mu.Unlock()
				}
			}
		}
		sleep(ctx, 500*time.Millisecond)
	}
}

func (p *pc) txBytes(ctx context.Context) int64 {
	out, err := p.ns.Output(ctx, "cat", "/sys/class/net/"+p.tap+"/statistics/tx_bytes")
	if err != nil {
		return 0
	}
	var n int64
	fmt.Sscan(out, &n)
	return n
}

// listenWoL is the PCs' NICs while they are off: a host on the lab's
// bridge receiving magic packets (UDP 9, where pumi sends them) and
// powering on the PC they name.
func listenWoL(t *testing.T, ctx context.Context, ns *testnet.NS, tl *timeline, byMAC map[string]*pc) {
	h := ns.Host("br0", "", labNet+".250/24")
	var conn net.PacketConn
	if err := h.Do(func() (err error) {
		conn, err = net.ListenPacket("udp4", "0.0.0.0:9")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	context.AfterFunc(ctx, func() { conn.Close() })
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			mac, err := power.ParseMagicPacket(buf[:n])
			if err != nil {
				continue
			}
			if p := byMAC[mac.String()]; p != nil {
				tl.add(p.name, "magic packet received")
				p.powerOn(ctx)
			}
		}
	}()
}

type imageJSON struct {
	Path     string
	Valid    bool
	Problems []string
}

type seenJSON struct {
	MAC   string `json:"mac"`
	Known bool   `json:"known"`
}

type runJSON struct {
	ID    string     `json:"id"`
	State string     `json:"state"`
	Seats []seatJSON `json:"seats"`
}

type seatJSON struct {
	MAC       string `json:"mac"`
	Hostname  string `json:"hostname"`
	State     string `json:"state"`
	Reason    string `json:"reason"`
	LastEvent string `json:"last_event"`
}

// followRun polls the run (through pumi restarts) until it is no longer
// open, recording seat state changes and Clonezilla boot counts.
func followRun(t *testing.T, ctx context.Context, api *apiClient, runID string, tl *timeline, byMAC map[string]*pc) runJSON {
	last := map[string]string{}
	for {
		var r runJSON
		if err := api.do(ctx, "GET", "/web/api/v1/runs/"+runID, nil, &r); err != nil {
			// pumi is being restarted (fault b): try again.
			if !sleep(ctx, time.Second) {
				t.Fatalf("run %s did not end: %v; last states %v", runID, ctx.Err(), last)
			}
			continue
		}
		for _, s := range r.Seats {
			if st := s.State + " " + s.Reason; st != last[s.MAC] {
				last[s.MAC] = st
				if p := byMAC[s.MAC]; p != nil {
					tl.add(p.name, "pumi: "+strings.TrimSpace(st))
				}
			}
		}
		var asg []struct {
			MAC   string `json:"mac"`
			Boots int    `json:"boots"`
		}
		if api.do(ctx, "GET", "/api/v1/jobs", nil, &asg) == nil {
			for _, a := range asg {
				if p := byMAC[a.MAC]; p != nil {
					p.mu.Lock()
					p.boots = max(p.boots, a.Boots)
					p.mu.Unlock()
				}
			}
		}
		switch r.State {
		case "", "open", "running", "pending":
		default:
			tl.add("pumi", "run "+r.State)
			return r
		}
		if !sleep(ctx, 2*time.Second) {
			t.Fatalf("run %s did not end: %v; last states %v", runID, ctx.Err(), last)
		}
	}
}

// appliance is the pumi-appliance program running in the lab namespace.
type appliance struct {
	t     *testing.T
	ns    *testnet.NS
	bin   string
	state string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan error
	log    testnet.LockedBuffer // every incarnation's log
	token  string
}

// start starts pumi (again) on the same state directory and waits until
// its API answers.
func (a *appliance) start(ctx context.Context) error {
	cmd := a.ns.Command(context.Background(), a.bin, "-state", a.state, "-listen", pumiIP+":8080",
		"-nfs-listen", pumiIP+":2049", "-ocs-listen", pumiIP+":6461")
	cmd.Stdout, cmd.Stderr = &a.log, &a.log
	if err := a.ns.Start(cmd); err != nil {
		return fmt.Errorf("starting pumi-appliance: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	a.mu.Lock()
	a.cmd, a.exited = cmd, exited
	a.mu.Unlock()
	fmt.Fprintf(&a.log, "---- test: pumi-appliance started (pid %d)\n", cmd.Process.Pid)
	deadline := time.Now().Add(time.Minute)
	for {
		if tok, err := os.ReadFile(filepath.Join(a.state, "api-token")); err == nil {
			a.token = strings.TrimSpace(string(tok))
			if a.api().do(ctx, "GET", "/api/v1/status", nil, nil) == nil {
				return nil
			}
		}
		select {
		case err := <-exited:
			exited <- err // for stop and kill9
			return fmt.Errorf("pumi-appliance exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pumi-appliance did not answer within a minute")
		}
		sleep(ctx, 200*time.Millisecond)
	}
}

// kill9 is the fault: SIGKILL, no chance to clean up.
func (a *appliance) kill9() {
	a.mu.Lock()
	cmd, exited := a.cmd, a.exited
	a.mu.Unlock()
	cmd.Process.Kill()
	<-exited
	fmt.Fprintf(&a.log, "---- test: pumi-appliance killed with SIGKILL\n")
}

// stop ends pumi the clean way (SIGTERM), as gokrazy does on update.
func (a *appliance) stop() {
	a.mu.Lock()
	cmd, exited := a.cmd, a.exited
	a.cmd = nil
	a.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			a.t.Errorf("pumi-appliance did not exit cleanly on SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-exited
		a.t.Errorf("pumi-appliance did not stop within 20 s of SIGTERM")
	}
}

func (a *appliance) api() *apiClient {
	ns := a.ns
	tr := &http.Transport{
		// The appliance listens inside the lab namespace; a socket made
		// on a thread there stays there.
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := ns.Do(func() (err error) {
				var d net.Dialer
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
		DisableKeepAlives: true, // pumi gets killed; never reuse a dead connection
	}
	return &apiClient{t: a.t, base: "http://" + pumiIP + ":8080", token: a.token, c: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

type apiClient struct {
	t           *testing.T
	base, token string
	c           *http.Client
}

// csvBody marks a request body as CSV for apiClient.do.
type csvBody string

func (c *apiClient) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	ctype := ""
	switch v := in.(type) {
	case nil:
	case csvBody:
		body, ctype = strings.NewReader(string(v)), "text/csv"
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		body, ctype = bytes.NewReader(b), "application/json"
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// must is do for the test's own goroutine: a refusal ends the test.
func (c *apiClient) must(ctx context.Context, method, path string, in, out any) {
	c.t.Helper()
	if err := c.do(ctx, method, path, in, out); err != nil {
		c.t.Fatal(err)
	}
}

// timeline is the scenario's record of what happened when.
type timeline struct {
	start time.Time
	mu    sync.Mutex
	evs   []event
}

type event struct {
	at        time.Duration
	who, what string
}

func newTimeline() *timeline { return &timeline{start: time.Now()} }

func (tl *timeline) add(who, what string) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.evs = append(tl.evs, event{time.Since(tl.start), who, what})
}

func (tl *timeline) String() string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	var b strings.Builder
	for _, e := range tl.evs {
		fmt.Fprintf(&b, "%7.1f  %-8s %s\n", e.at.Seconds(), e.who, e.what)
	}
	return b.String()
}

// phases summarises each PC's last (successful) re-imaging: power → PXE →
// Clonezilla boot → restore → reboot → verify, read from the timeline
// around the last Clonezilla kernel start (a power cut restarts the
// sequence; the attempt that got through counts).
func phases(tl *timeline, pcs []*pc) string {
	tl.mu.Lock()
	evs := slices.Clone(tl.evs)
	tl.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "%-5s %7s %7s %9s %9s %10s %8s %8s %8s %11s %8s\n",
		"PC", "power", "PXE", "CZ boot", "restore", "partclone", "reboot", "verify", "total", "NFS bytes", "MB/s")
	var runStart time.Duration
	for _, e := range evs {
		if e.who == "pumi" && strings.HasSuffix(e.what, "started by the schedule") {
			runStart = e.at
		}
	}
	for _, p := range pcs {
		// find returns the time of the first (after) or last (before)
		// event of this PC named what, relative to the anchor at.
		find := func(what string, at time.Duration, after bool) time.Duration {
			var t time.Duration
			for _, e := range evs {
				if e.who != p.name || e.what != what {
					continue
				}
				if after && e.at >= at {
					return e.at
				}
				if !after && e.at <= at {
					t = e.at
				}
			}
			return t
		}
		kernel := find("Clonezilla kernel started", time.Duration(1<<62), false)
		pxe := find("firmware PXE", kernel, false)
		start := max(runStart, find("power on", pxe, false)) // a power cut's new start
		job := find("Clonezilla job starts", kernel, true)
		part := find("partclone restoring", job, true)
		done := find("ocs-sr done, rebooting", job, true)
		partDone := find("partclone done", done, false)
		up := find("OS up with SSH", done, true)
		verified := find("pumi: verified", done, true)
		p.mu.Lock()
		nfs := slices.Clone(p.nfsBytes)
		p.mu.Unlock()
		var lastNFS int64
		if len(nfs) > 0 {
			lastNFS = nfs[len(nfs)-1]
		}
		rate := 0.0
		if partDone > part && part > job {
			rate = float64(lastNFS) / (partDone - part).Seconds() / 1e6
		}
		sec := func(a, b time.Duration) string {
			if a == 0 || b == 0 || b < a {
				return "-"
			}
			return fmt.Sprintf("%.0fs", (b - a).Seconds())
		}
		fmt.Fprintf(&b, "%-5s %7s %7s %9s %9s %10s %8s %8s %8s %11d %8.2f\n", p.name,
			sec(start, pxe), sec(pxe, kernel), sec(kernel, job), sec(job, done), sec(part, partDone), sec(done, up), sec(up, verified),
			sec(runStart, verified), lastNFS, rate)
		if len(nfs) > 1 {
			fmt.Fprintf(&b, "      bytes sent to it during each Clonezilla job: %v\n", nfs)
		}
	}
	b.WriteString("power: run start (or power on after a cut) → firmware PXE; PXE: → Clonezilla kernel; CZ boot: → ocs-sr starts;\n" +
		"restore: ocs-sr start → done (partclone: first partition's start → last one's end, within that); reboot: → restored\n" +
		"OS has SSH up; verify: → pumi says verified; total: run start → verified. NFS bytes: sent to the PC while ocs-sr\n" +
		"ran (its tap's counter; all of it NFS then); MB/s: those bytes over the partclone time (console marks, ±0.5 s).\n")
	return b.String()
}

func buildAppliance(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "pumi-appliance")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/pumi-lab/pumi/cmd/pumi-appliance").CombinedOutput(); err != nil {
		t.Fatalf("building pumi-appliance: %v\n%s", err, out)
	}
	return bin
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// sleep waits d or until ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-time.After(d):
		return true
	case <-ctx.Done():
		return false
	}
}
