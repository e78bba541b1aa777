package appliance_test

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pumi-lab/pumi/internal/appliance"
	"github.com/pumi-lab/pumi/internal/power"
	"github.com/pumi-lab/pumi/internal/reimage"
	"github.com/pumi-lab/pumi/internal/schedule"
	"github.com/pumi-lab/pumi/internal/settings"
	"github.com/pumi-lab/pumi/internal/testnet"
	"github.com/pumi-lab/pumi/internal/testseat"
	"github.com/pumi-lab/pumi/internal/testsmtp"
)

// The test's lab: pumi at .1, seats from .10, on br0.
const (
	labNet    = "10.83.0"
	pumiIP    = labNet + ".1"
	labEnv    = "PUMI_RUN_TEST_LAB" // set in the re-executed child: the lab namespace it runs in
	image     = "LAB-A-img"
	labRoom   = "lab"
	childWait = 170 * time.Second
)

// TestRunThroughAppliance is a full scheduled restore through the real
// appliance (appliance.Open + Serve: inventory, config, secrets, schedules,
// runs engine, boot decider and iPXE scripts, Clonezilla report endpoint,
// ocs_server listener, SSH power and verification, Wake-on-LAN, outbox and
// mail) over 17 OpenSSH seat simulators (internal/testseat), with the report
// mailed to a real SMTP server (aiosmtpd, STARTTLS + AUTH).
//
// The appliance dials seats over SSH and sends Wake-on-LAN from goroutines
// of its own, which run on OS threads in whatever network namespace the
// process is in; testnet.NS.Do only moves one thread. So that not a single
// packet of the appliance can leave the lab, the test re-executes itself
// inside the lab namespace (nsenter --net) and runs there as a whole, like
// the real appliance runs on the lab network.
func TestRunThroughAppliance(t *testing.T) {
	if os.Getenv(labEnv) == "" {
		testnet.Require(t, append([]string{"nsenter", testsmtp.Python}, testseat.Programs...)...)
		testsmtp.Require(t)
		lab := testnet.New(t)
		lab.Bridge("br0", pumiIP+"/24")
		ctx, cancel := context.WithTimeout(context.Background(), childWait+10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "nsenter", "--net=/run/netns/"+lab.Name, "--",
			os.Args[0], "-test.run=^TestRunThroughAppliance$", "-test.v", "-test.count=1",
			fmt.Sprintf("-test.timeout=%s", childWait))
		cmd.Env = append(os.Environ(), labEnv+"="+lab.Name)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := lab.Start(cmd); err != nil {
			t.Fatal(err)
		}
		err := cmd.Wait()
		t.Logf("test run inside lab namespace %s:\n%s", lab.Name, out.String())
		if err != nil {
			t.Fatalf("the run through the appliance failed inside the lab namespace: %v", err)
		}
		return
	}
	runInLab(t)
}

type seatSpec struct {
	b     testseat.Behaviour
	want  reimage.SeatState
	why   string // substring of the final reason
	tries int
	boots int // network boots into Clonezilla (0: not checked)
}

func runInLab(t *testing.T) {
	if ns, ok := testseat.OwnNamespace(); !ok || ns != os.Getenv(labEnv) {
		t.Fatalf("%s=%s is set but this process is in namespace %q; refusing to run outside the lab", labEnv, os.Getenv(labEnv), ns)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var logBuf testnet.LockedBuffer
	log := slog.New(slog.NewTextHandler(&logBuf, nil))
	defer func() {
		if t.Failed() {
			t.Logf("appliance log:\n%s", logBuf.String())
		}
	}()

	// Seats 0-9 are good PCs; the others show every way a seat can end.
	var specs []seatSpec
	for range 10 {
		specs = append(specs, seatSpec{want: reimage.Verified, tries: 1, boots: 1})
	}
	const (
		seatWoken = 10 + iota
		seatRetried
		seatCut
		seatWrongPW
		seatHostKey
		seatGone
		seatCZFails
	)
	specs = append(specs,
		seatSpec{b: testseat.Behaviour{StartOff: true}, want: reimage.Verified, tries: 1, boots: 1},         // woken by WoL
		seatSpec{b: testseat.Behaviour{FailReport: 1}, want: reimage.Verified, tries: 2, boots: 1},          // Clonezilla failed once: retried
		seatSpec{b: testseat.Behaviour{CutRestores: 1}, want: reimage.Verified, tries: 1, boots: 2},         // power cut mid-restore: restored on its next boot
		seatSpec{b: testseat.Behaviour{Password: "wrong"}, want: reimage.Failed, why: "ssh auth", tries: 2}, // seat OS has another password
		seatSpec{want: reimage.Failed, why: "host key mismatch", tries: 2},                                  // presents another host key than pinned
		seatSpec{b: testseat.Behaviour{NeverBack: true}, want: reimage.Failed, why: "did not network-boot", tries: 2},
		seatSpec{b: testseat.Behaviour{FailReport: 99}, want: reimage.Failed, why: "Clonezilla: Failed to restore", tries: 2},
	)

	// The SMTP server, on the lab namespace's own loopback.
	certFile, keyFile, caPEM := testsmtp.Cert(t)
	mailPort, outdir := testsmtp.FreePort(t), t.TempDir()
	testsmtp.Start(t, mailPort, certFile, keyFile, outdir, testsmtp.Opts{})

	// A seat that was verified on the image before, with another host key:
	// its pin is in the appliance's host key store (<state>/host_keys, the
	// file internal/power keeps pins in) before the appliance starts.
	stateDir := filepath.Join(t.TempDir(), "state")
	must(t, os.MkdirAll(stateDir, 0o700))
	macOf := func(i int) string { return fmt.Sprintf("02:83:00:00:00:%02x", i) }
	{
		other := testseat.NewHostKey(t)
		pub, err := ssh.NewPublicKey(other.Public())
		must(t, err)
		must(t, power.NewFileHostKeyStore(filepath.Join(stateDir, "host_keys")).PinHostKey(ctx, image, macOf(seatHostKey), pub))
	}

	runs := reimage.Config{Tick: 200 * time.Millisecond, WakeGap: 100 * time.Millisecond, RebootDelay: 200 * time.Millisecond,
		VerifyInterval: 300 * time.Millisecond, VerifyTimeout: 12 * time.Second, PowerTimeout: 8 * time.Second,
		NetbootTimeout: 8 * time.Second, RestoreTimeout: 10 * time.Second, RetryDelay: 300 * time.Millisecond,
		MaxAttempts: 2, MaxRestoring: 8, ActionTimeout: 20 * time.Second}
	app, err := appliance.Open(ctx, appliance.Options{StateDir: stateDir, Listen: pumiIP + ":8080",
		NFSListen: pumiIP + ":2049", OCSListen: pumiIP + ":6461", Log: log, Runs: runs})
	must(t, err)
	served := make(chan error, 1)
	go func() { served <- app.Serve(ctx) }()
	select {
	case <-app.Ready():
	case err := <-served:
		t.Fatalf("appliance Serve: %v", err)
	}
	var stopOnce sync.Once
	stop := func() { stopOnce.Do(func() { cancel(); <-served; app.Close() }) }
	defer stop()
	tok, err := os.ReadFile(app.APITokenPath())
	must(t, err)
	api := apiClient{base: "http://" + pumiIP + ":8080", token: strings.TrimSpace(string(tok))}

	// Configuration through the API, as an admin would set it.
	repo := liveZipRepo(t)
	cfg := map[string]any{
		"netboot":    map[string]any{"mode": "off", "interface": "br0", "server_ip": pumiIP, "http_base": api.base},
		"repository": repo,
		"wol_gap":    "50ms",
		"ssh":        []map[string]string{{"scope": "room", "name": labRoom, "user": testseat.User}},
		"mail": map[string]any{"host": "127.0.0.1", "port": mailPort, "username": testsmtp.User, "from": "pumi <" + testsmtp.User + ">",
			"to": []string{"admin@lab.example"}, "tls": "starttls", "ca_cert_pem": caPEM},
	}
	body, _ := json.Marshal(cfg)
	must(t, api.do(ctx, "PUT", "/api/v1/config", "application/json", body, nil))
	must(t, api.do(ctx, "POST", "/api/v1/live/import", "application/json", []byte(`{"zip":"clonezilla-live-3.3.0-33-amd64.zip"}`), nil))
	must(t, app.SetSecret(ctx, settings.SSHSecretName("room", labRoom), testseat.Password))
	must(t, app.SetSecret(ctx, settings.SecretMail, testsmtp.Password))

	// The seats, and the inventory by CSV import.
	csv := "mac,ip,user,hostname,room\n"
	sims := map[string]*testseat.Seat{}
	var macs []string
	for i, sp := range specs {
		mac, ip := macOf(i), fmt.Sprintf("%s.%d", labNet, 10+i)
		s := testseat.New(ctx, t, testseat.Config{MAC: mac, IP: ip, Signature: "LAB-2025\n", Behaviour: sp.b,
			BootURL: api.base + "/boot/" + strings.ReplaceAll(mac, ":", "-") + ".ipxe", Netboot: testseat.ApplianceBoot})
		sims[mac] = s
		macs = append(macs, mac)
		csv += fmt.Sprintf("%s,%s,%s,pc%02d,%s\n", mac, ip, testseat.User, i, labRoom)
	}
	must(t, api.do(ctx, "POST", "/api/v1/seats/import", "text/csv", []byte(csv), nil))

	// A schedule for the room, started now (the "Run now" button).
	sch := schedule.Schedule{ID: "lab-weekly", Name: "lab weekly", Spec: schedule.MustParse("0 2 * * SAT"),
		Target: schedule.Target{Rooms: []string{labRoom}}, Action: schedule.Action{Kind: schedule.Restore, Image: image},
		Window: 3 * time.Minute, Enabled: true}
	must(t, app.PutSchedule(ctx, sch))
	began := time.Now()
	runID, err := app.RunNow(ctx, sch.ID)
	must(t, err)

	var run reimage.Run
	for {
		r, ok, err := app.Engine().Get(ctx, runID)
		must(t, err)
		if ok && r.Reported {
			run = r
			break
		}
		if time.Since(began) > 120*time.Second {
			t.Fatalf("run not finished after 120s: %+v", r.Seats)
		}
		time.Sleep(200 * time.Millisecond)
	}
	took := time.Since(began)
	if len(run.Seats) != len(specs) {
		t.Fatalf("run has %d seats from the appliance's inventory, want %d", len(run.Seats), len(specs))
	}
	got := map[string]reimage.SeatRun{}
	for _, s := range run.Seats {
		got[s.Seat.MAC] = s
	}
	for i, sp := range specs {
		mac := macs[i]
		s, sim := got[mac], sims[mac]
		if s.State != sp.want || !strings.Contains(s.Reason, sp.why) || s.Attempts != sp.tries || sp.boots > 0 && s.Boots != sp.boots {
			t.Errorf("seat %d (%+v): got %s %q, %d attempts, %d boots; want %s %q, %d attempts, %d boots",
				i, sp.b, s.State, s.Reason, s.Attempts, s.Boots, sp.want, sp.why, sp.tries, sp.boots)
		}
		if sp.want == reimage.Verified {
			if sig := sim.Signature(); sig != testseat.SignatureFor(image)+"\n" {
				t.Errorf("seat %d verified but its Signature is %q", i, sig)
			}
			if v, _ := app.Engine().LastVerified(ctx, mac); v.Image != image {
				t.Errorf("seat %d: no verified record: %+v", i, v)
			}
		}
		if errs := sim.Stats().Errs; len(errs) > 0 {
			t.Errorf("seat %d simulator: %v", i, errs)
		}
	}
	if sims[macOf(seatWoken)].Stats().Wakes == 0 {
		t.Error("the powered-off seat received no magic packet from the appliance")
	}
	if sims[macOf(seatGone)].Stats().Wakes == 0 {
		t.Error("the seat that never came back was not tried with Wake-on-LAN on its retry")
	}
	if st := sims[macOf(seatCZFails)].Stats(); st.Restores != 2 {
		t.Errorf("the seat whose Clonezilla fails restored %d times, want 2 (MaxAttempts)", st.Restores)
	}
	runLog, err := app.Engine().RunLog(ctx, runID)
	must(t, err)
	if !bytes.Contains(runLog, []byte("(boot 2)")) {
		t.Errorf("run log does not show the restore restarted after the power cut:\n%s", runLog)
	}

	// The report arrives once, with the run log attached.
	var msgs []testsmtp.Received
	for {
		msgs = testsmtp.Inbox(t, outdir)
		if len(msgs) > 0 {
			break
		}
		if time.Since(began) > 150*time.Second {
			t.Fatal("no report mail arrived")
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Stop the appliance (its outbox included) before counting: nothing
	// may be sent twice.
	stop()
	if msgs = testsmtp.Inbox(t, outdir); len(msgs) != 1 {
		t.Fatalf("%d report mails, want 1", len(msgs))
	}
	var text string
	var attach [][]byte
	for _, p := range testsmtp.Parts(t, msgs[0].Msg) {
		if p.Filename != "" {
			attach = append(attach, p.Body)
		} else if p.ContentType == "text/plain" {
			text += string(p.Body)
		}
	}
	if !strings.Contains(text, "pc15") || !strings.Contains(text, "did not network-boot") {
		t.Errorf("report text lacks the seat that never came back:\n%s", text)
	}
	if len(attach) != 1 || !bytes.Contains(attach[0], []byte("host key mismatch")) {
		t.Errorf("report attachments: %d, want 1 run log naming the host key mismatch", len(attach))
	}
	t.Logf("run over %d OpenSSH seats through the appliance finished in %s; report %q:\n%s",
		len(specs), took.Round(time.Millisecond), msgs[0].Msg.Header.Get("Subject"), text)
}

type apiClient struct{ base, token string }

func (c apiClient) do(ctx context.Context, method, path, ctype string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, b)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// liveZipRepo copies internal/clonezilla's real image folders (LAB-A-img,
// made by ocs-sr) and adds a Clonezilla-live-shaped zip.
func liveZipRepo(t *testing.T) string {
	repo := filepath.Join(t.TempDir(), "repo")
	must(t, os.CopyFS(repo, os.DirFS("../clonezilla/testdata/repo")))
	f, err := os.Create(filepath.Join(repo, "clonezilla-live-3.3.0-33-amd64.zip"))
	must(t, err)
	zw := zip.NewWriter(f)
	kernel := make([]byte, 0x400)
	copy(kernel[0x202:], "HdrS")
	for name, data := range map[string][]byte{
		"live/vmlinuz":             kernel,
		"live/initrd.img":          bytes.Repeat([]byte("initrd"), 100),
		"live/filesystem.squashfs": append([]byte("hsqs"), bytes.Repeat([]byte{7}, 70000)...),
		"Clonezilla-Live-Version":  []byte("clonezilla-live-3.3.0-33-amd64\n"),
	} {
		w, err := zw.Create(name)
		must(t, err)
		w.Write(data)
	}
	must(t, zw.Close())
	must(t, f.Close())
	return repo
}
