package reimage

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/appliance"
	"github.com/pumi-lab/pumi/internal/notify"
	"github.com/pumi-lab/pumi/internal/power"
	"github.com/pumi-lab/pumi/internal/schedule"
	"github.com/pumi-lab/pumi/internal/store"
	"github.com/pumi-lab/pumi/internal/testnet"
)

// applianceLab is Lab on a real, in-process appliance (internal/appliance):
// jobs are its Assignments (App.Assign, keyed by run ID = the job key), and
// their state is read through its admin API. It is also the reference for
// the lead's in-process wiring (see the report): the same four operations
// on the assignment bucket.
type applianceLab struct {
	app    *appliance.App
	client *http.Client
	base   string
	token  string
}

type asgView struct {
	MAC, RunID, Image, State, Reason string
	Boots                            int
	Updated                          time.Time
}

func (l *applianceLab) api(ctx context.Context, method, path, ctype string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, l.base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+l.token)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := l.client.Do(req)
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

func (l *applianceLab) Seats(ctx context.Context, t schedule.Target) ([]Seat, error) {
	var inv []struct {
		MAC, IP, Hostname, Room string
	}
	if err := l.api(ctx, "GET", "/api/v1/seats", "", nil, &inv); err != nil {
		return nil, err
	}
	var out []Seat
	for _, s := range inv {
		if slices.Contains(t.Rooms, s.Room) || slices.Contains(t.Seats, s.Hostname) {
			out = append(out, Seat{ID: s.Hostname, Room: s.Room, MAC: s.MAC, Addr: net.JoinHostPort(s.IP, seatPortFor(s.MAC))})
		}
	}
	return out, nil
}

// seatPortFor: every simulated seat's sshd has its own port (2200+n).
func seatPortFor(mac string) string {
	var n int
	fmt.Sscanf(mac[len(mac)-2:], "%x", &n)
	return fmt.Sprint(2200 + n)
}

func (l *applianceLab) assignment(ctx context.Context, mac string) (asgView, bool, error) {
	var all []asgView
	if err := l.api(ctx, "GET", "/api/v1/assignments", "", nil, &all); err != nil {
		return asgView{}, false, err
	}
	for _, a := range all {
		if a.MAC == mac {
			return a, true, nil
		}
	}
	return asgView{}, false, nil
}

func (l *applianceLab) StartJob(ctx context.Context, j Job) error {
	// Idempotent on the key: after a crash the engine repeats StartJob,
	// and a second Assign would issue a new token and reset the job.
	if a, ok, err := l.assignment(ctx, j.Seat.MAC); err != nil || ok && a.RunID == j.Key {
		return err
	}
	_, err := l.app.Assign(ctx, appliance.AssignRequest{RunID: j.Key, Action: appliance.Action(j.Action), Image: j.Image,
		MACs: []string{j.Seat.MAC}})
	return err
}

func (l *applianceLab) JobState(ctx context.Context, mac, key string) (JobState, error) {
	a, ok, err := l.assignment(ctx, mac)
	if err != nil {
		return JobState{}, err
	}
	if !ok || a.RunID != key {
		return JobState{}, ErrNoJob
	}
	return JobState{State: a.State, Reason: a.Reason, Boots: a.Boots, Updated: a.Updated}, nil
}

func (l *applianceLab) CancelJob(ctx context.Context, mac, key string) error {
	a, ok, err := l.assignment(ctx, mac)
	if err != nil || !ok || a.RunID != key {
		return err
	}
	return l.api(ctx, "DELETE", "/api/v1/assignments/"+strings.ReplaceAll(mac, ":", "-"), "", nil, nil)
}

// nsClient is an HTTP client whose connections are opened inside ns.
func nsClient(ns *testnet.NS) *http.Client {
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
			derr := ns.Do(func() error {
				var d net.Dialer
				conn, err = d.DialContext(ctx, network, addr)
				return nil
			})
			return conn, errors.Join(err, derr)
		},
	}}
}

var (
	reportRE      = regexp.MustCompile(`'(http://[^']*/api/v1/clonezilla/report\?token=[A-Za-z0-9_-]+&status=)started'`)
	restoreDiskRE = regexp.MustCompile(`restoredisk (\S+)`)
	ocsServerRE   = regexp.MustCompile(`ocs_server=(\S+)`)
)

// netbootAppliance is netboot against the real appliance: its iPXE script
// carries the Clonezilla command line with the report URL and token; the
// "Clonezilla" reports started, sends the ocs_server status line (success
// only) to TCP 6461, and posts its log as finished.
func (s *simSeat) netbootAppliance(ctx context.Context) error {
	for round := 0; ; round++ {
		script, err := s.get(ctx, s.boot)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.boots++
		s.mu.Unlock()
		m := reportRE.FindStringSubmatch(script)
		if m == nil {
			if !strings.Contains(script, "exit 1") {
				return fmt.Errorf("seat %s: unexpected boot script %q", s.mac, script)
			}
			return s.start()
		}
		if round > 4 {
			return fmt.Errorf("seat %s: restore loop", s.mac)
		}
		report, image, server := m[1], restoreDiskRE.FindStringSubmatch(script), ocsServerRE.FindStringSubmatch(script)
		if image == nil || server == nil {
			return fmt.Errorf("seat %s: no restoredisk or ocs_server in %q", s.mac, script)
		}
		if _, err := s.get(ctx, report+"started"); err != nil {
			return err
		}
		s.mu.Lock()
		s.restores++
		n := s.restores
		failing := n <= s.b.failReport
		s.mu.Unlock()
		if n <= s.b.cutRestores {
			continue // power cut mid-restore: no report, the PC boots again
		}
		logText := "ocs-sr -batch restoredisk " + image[1] + " sda\nPartclone successfully restored sda1\n"
		if failing {
			logText += "Failed to restore partition image file /home/partimag/" + image[1] + "/sda1.ext4-ptcl-img.gz to /dev/sda1!\n"
		} else {
			if err := s.setSignature(power.WantedSignature(image[1]) + "\n"); err != nil {
				return err
			}
			if err := s.ocsStatus(server[1], image[1]); err != nil {
				return err
			}
		}
		if err := s.post(ctx, report+"finished", logText); err != nil {
			return err
		}
	}
}

// ocsStatus sends Clonezilla's job-done line from the seat's address and
// waits until the appliance has read it (it closes the connection after).
func (s *simSeat) ocsStatus(server, image string) error {
	var c net.Conn
	if err := s.host.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", net.JoinHostPort(server, "6461"), 5*time.Second)
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "%s %s Unicast restored %s, sda1, success, 0.1 GB, 0.02 mins, 5.1 GB/min;\n", s.ip, s.mac, image)
	c.(*net.TCPConn).CloseWrite()
	_, err := io.Copy(io.Discard, c)
	return err
}

func (s *simSeat) post(ctx context.Context, url, body string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := nsClient(s.host).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("POST %s: %s %s", url, resp.Status, b)
	}
	return nil
}

// liveZipRepo copies internal/clonezilla's real image folders (LAB-A-img,
// made by ocs-sr) and adds a Clonezilla-live-shaped zip, like the
// appliance's own tests.
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

// TestRunWithAppliance runs a restore through the real appliance: its
// inventory, Assign, boot decider and iPXE scripts, Clonezilla report
// endpoint and ocs_server listener, all serving inside the lab namespace;
// seats are real sshd simulators; power is internal/power.
func TestRunWithAppliance(t *testing.T) {
	testnet.Require(t, "/usr/sbin/sshd", "sudo", "unshare", "mount", "openssl")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lab := testnet.New(t)
	lab.Bridge("br0", "10.82.0.1/24")

	var logBuf lockedBuffer
	log := slog.New(slog.NewTextHandler(&logBuf, nil))
	defer func() {
		if t.Failed() {
			t.Logf("log:\n%s", logBuf.String())
		}
	}()
	stateDir := filepath.Join(t.TempDir(), "state")
	app, err := appliance.Open(ctx, appliance.Options{StateDir: stateDir, Listen: "10.82.0.1:8080",
		NFSListen: "10.82.0.1:2049", OCSListen: "10.82.0.1:6461", Log: log})
	must(t, err)
	served := make(chan error, 1)
	// Serve binds its listeners on the calling thread, which Do has moved
	// into the lab namespace.
	go func() { served <- lab.Do(func() error { return app.Serve(ctx) }) }()
	select {
	case <-app.Ready():
	case err := <-served:
		t.Fatalf("appliance Serve: %v", err)
	}
	defer func() { cancel(); <-served; app.Close() }()
	tok, err := os.ReadFile(app.APITokenPath())
	must(t, err)
	al := &applianceLab{app: app, client: nsClient(lab), base: "http://10.82.0.1:8080", token: strings.TrimSpace(string(tok))}

	const image = "LAB-A-img"
	specs := []struct {
		b     behaviour
		want  SeatState
		why   string
		tries int
		boots int
	}{
		{want: Verified, tries: 1, boots: 1},
		{want: Verified, tries: 1, boots: 1},
		{want: Verified, tries: 1, boots: 1},
		{b: behaviour{cutRestores: 1}, want: Verified, tries: 1, boots: 2}, // power cut mid-restore: restored on its next boot
		{b: behaviour{failReport: 1}, want: Verified, tries: 2, boots: 1},  // Clonezilla failure, retried
		{b: behaviour{failReport: 9}, want: Failed, why: "Clonezilla: Failed to restore", tries: 2},
	}
	repo := liveZipRepo(t)
	must(t, al.api(ctx, "PUT", "/api/v1/config", "application/json", []byte(fmt.Sprintf(
		`{"netboot":{"mode":"off","server_ip":"10.82.0.1","http_base":"http://10.82.0.1:8080"},"repository":%q}`, repo)), nil))
	must(t, al.api(ctx, "POST", "/api/v1/live/import", "application/json", []byte(`{"zip":"clonezilla-live-3.3.0-33-amd64.zip"}`), nil))
	csv := "mac,ip,user,hostname,room\n"
	var sims []*simSeat
	for i, sp := range specs {
		ip := fmt.Sprintf("10.82.0.%d", 10+i)
		s := newSimSeat(ctx, t, lab, i, ip, "http://10.82.0.1:8080", sp.b)
		s.viaAppliance = true
		sims = append(sims, s)
		csv += fmt.Sprintf("%s,%s,%s,pc%02d,B\n", s.mac, ip, seatUser, i)
	}
	must(t, al.api(ctx, "POST", "/api/v1/seats/import", "text/csv", []byte(csv), nil))

	pw := &sshPower{lab: lab,
		c: &power.Client{HostKeys: power.NewFileHostKeyStore(filepath.Join(t.TempDir(), "host_keys")),
			ConnectTimeout: time.Second, HandshakeTimeout: 5 * time.Second, CommandTimeout: 5 * time.Second, Log: log},
		wol:  power.WoL{Interface: "br0", Ports: []int{9}, Log: log},
		cred: power.Credential{User: seatUser, Password: seatPassword}}
	var sent []notify.Message
	ob, err := notify.OpenOutbox(t.TempDir(), notify.SenderFunc(func(_ context.Context, m notify.Message) error {
		sent = append(sent, m)
		return nil
	}), log)
	must(t, err)
	st, err := store.Open(ctx, t.TempDir(), log)
	must(t, err)
	defer st.Close()
	cfg := Config{Tick: 200 * time.Millisecond, WakeGap: 100 * time.Millisecond, RebootDelay: 200 * time.Millisecond,
		VerifyInterval: 300 * time.Millisecond, VerifyTimeout: 15 * time.Second, PowerTimeout: 10 * time.Second,
		NetbootTimeout: 10 * time.Second, RestoreTimeout: 10 * time.Second, RetryDelay: 300 * time.Millisecond,
		MaxAttempts: 2, MaxRestoring: 4, ActionTimeout: 20 * time.Second}
	e := New(st, al, pw, outboxReporter{ob}, cfg, nil, log)
	engDone := make(chan struct{})
	go func() { e.Run(ctx); close(engDone) }()
	defer func() { cancel(); <-engDone }()

	run, err := e.Start(ctx, Request{ID: "manual-b", Action: schedule.Action{Kind: schedule.Restore, Image: image},
		Target: schedule.Target{Rooms: []string{"B"}}, Window: 3 * time.Minute})
	must(t, err)
	if len(run.Seats) != len(specs) {
		t.Fatalf("run has %d seats from the appliance's inventory, want %d", len(run.Seats), len(specs))
	}
	began := time.Now()
	for {
		r, _, err := e.Get(ctx, run.ID)
		must(t, err)
		if r.Reported {
			run = r
			break
		}
		if time.Since(began) > 120*time.Second {
			t.Fatalf("run not finished after 120s: %+v", r.Seats)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for i, sp := range specs {
		s := run.Seats[i]
		if s.State != sp.want || !strings.Contains(s.Reason, sp.why) || s.Attempts != sp.tries || sp.boots > 0 && s.Boots != sp.boots {
			t.Errorf("seat %d (%+v): got %s %q, %d attempts, %d boots; want %s %q, %d attempts, %d boots",
				i, sp.b, s.State, s.Reason, s.Attempts, s.Boots, sp.want, sp.why, sp.tries, sp.boots)
		}
		sims[i].mu.Lock()
		if len(sims[i].errs) > 0 {
			t.Errorf("seat %d simulator: %v", i, sims[i].errs)
		}
		sims[i].mu.Unlock()
	}
	if _, err := ob.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if len(sent) != 1 {
		t.Fatalf("%d reports", len(sent))
	}
	runLog, _ := e.RunLog(ctx, run.ID)
	if !bytes.Contains(runLog, []byte("(boot 2)")) {
		t.Errorf("run log does not show the restore restarted after the power cut:\n%s", runLog)
	}
	t.Logf("run over %d seats through the appliance finished in %s:\n%s", len(specs), time.Since(began).Round(time.Millisecond), sent[0].Text)
}
