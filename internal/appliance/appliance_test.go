package appliance

import (
	"archive/zip"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/netboot"
	"github.com/pumi-lab/pumi/internal/seatjob"
	"github.com/pumi-lab/pumi/internal/settings"
	"github.com/pumi-lab/pumi/internal/testnet"
	"github.com/pumi-lab/pumi/internal/testseat"
	"github.com/pumi-lab/pumi/internal/web"
)

// testApp is an appliance running on loopback with a fresh state directory.
type testApp struct {
	t      *testing.T
	app    *App
	dir    string
	base   string
	ocs    string
	token  string
	cancel context.CancelFunc
	done   chan error
}

func startApp(t *testing.T, dir string) *testApp {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	lh := listenHost()
	app, err := Open(ctx, Options{StateDir: dir, Listen: lh + ":0", NFSListen: lh + ":0", OCSListen: lh + ":0",
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	ta := &testApp{t: t, app: app, dir: dir, cancel: cancel, done: make(chan error, 1)}
	go func() { ta.done <- app.Serve(ctx) }()
	select {
	case <-app.Ready():
	case err := <-ta.done:
		t.Fatalf("Serve: %v", err)
	}
	h, o, _ := app.Addrs()
	ta.base, ta.ocs = "http://"+h.String(), o.String()
	tok, err := os.ReadFile(filepath.Join(dir, "api-token"))
	if err != nil {
		t.Fatal(err)
	}
	ta.token = strings.TrimSpace(string(tok))
	t.Cleanup(ta.stop)
	return ta
}

func (ta *testApp) stop() {
	if ta.cancel == nil {
		return
	}
	ta.cancel()
	<-ta.done
	ta.app.Close()
	ta.cancel = nil
}

// do sends an API request and returns status and body.
func (ta *testApp) do(method, path, ctype string, body []byte, auth bool) (int, string) {
	ta.t.Helper()
	return ta.doFrom("", method, path, ctype, body, auth)
}

// doFrom is do from a given loopback source address ("" = any): a seat at
// its inventory IP, or a visitor at another.
func (ta *testApp) doFrom(from, method, path, ctype string, body []byte, auth bool) (int, string) {
	ta.t.Helper()
	req, err := http.NewRequest(method, ta.base+path, bytes.NewReader(body))
	if err != nil {
		ta.t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if auth {
		req.Header.Set("Authorization", "Bearer "+ta.token)
	}
	resp, err := clientFrom(from).Do(req)
	if err != nil {
		ta.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// clientFrom is an HTTP client whose connections leave from the loopback
// address from (the whole of 127.0.0.0/8 is local on Linux).
func clientFrom(from string) *http.Client {
	if from == "" {
		return http.DefaultClient
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}

func (ta *testApp) mustDo(method, path, ctype string, body []byte) string {
	ta.t.Helper()
	code, out := ta.do(method, path, ctype, body, true)
	if code != http.StatusOK && code != http.StatusNoContent {
		ta.t.Fatalf("%s %s: %d %s", method, path, code, out)
	}
	return out
}

func jsonBody(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// repoWithLiveZip copies the real Clonezilla image folders made by ocs-sr
// (internal/clonezilla/testdata/repo) and adds a Clonezilla-live-shaped zip.
func repoWithLiveZip(t *testing.T) string {
	repo := filepath.Join(t.TempDir(), "repo")
	if err := os.CopyFS(repo, os.DirFS("../clonezilla/testdata/repo")); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(repo, "clonezilla-live-3.3.0-33-amd64.zip"))
	if err != nil {
		t.Fatal(err)
	}
	zw := zip.NewWriter(f)
	kernel := make([]byte, 0x400)
	copy(kernel[0x202:], "HdrS")
	files := map[string][]byte{
		"live/vmlinuz":             kernel,
		"live/initrd.img":          bytes.Repeat([]byte("initrd"), 100),
		"live/filesystem.squashfs": append([]byte("hsqs"), bytes.Repeat([]byte{7}, 70000)...),
		"Clonezilla-Live-Version":  []byte("clonezilla-live-3.3.0-33-amd64\n"),
	}
	for name, data := range files {
		w, err := zw.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return repo
}

// The trust tests' network: pumi, three seats and a visitor are all local
// addresses of one dummy interface in a namespace the test creates (see
// inTrustNS), so a test can speak from a seat's address and from another.
const (
	trustEnv  = "PUMI_TRUST_TEST_NS" // set in the re-executed child: its namespace
	trustPumi = "10.84.0.1"
	seat1     = "10.84.0.11"
	seat2     = "10.84.0.12"
	seat3     = "10.84.0.13"
	visitor   = "10.84.0.66"
)

// inTrustNS re-executes the calling test inside a fresh network namespace
// that has the trust network's addresses, and reports true in the parent,
// which then returns: the test runs as a whole in the child, so not one of
// its packets, nor the appliance's, leaves that namespace.
func inTrustNS(t *testing.T) (parent bool) {
	if ns := os.Getenv(trustEnv); ns != "" {
		if own, ok := testseat.OwnNamespace(); !ok || own != ns {
			t.Fatalf("%s=%s is set but this process is in namespace %q", trustEnv, ns, own)
		}
		return false
	}
	testnet.Require(t, "nsenter")
	ns := testnet.New(t)
	// A bridge with no ports: this kernel has no dummy interfaces.
	ns.Bridge("lab0", trustPumi+"/24")
	for _, a := range []string{seat1, seat2, seat3, visitor} {
		ns.MustIP("addr", "add", a+"/32", "dev", "lab0")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", "--net=/run/netns/"+ns.Name, "--",
		os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1", "-test.timeout=170s")
	cmd.Env = append(os.Environ(), trustEnv+"="+ns.Name)
	out, err := cmd.CombinedOutput()
	t.Logf("inside namespace %s:\n%s", ns.Name, out)
	if err != nil {
		t.Fatalf("the test failed inside its namespace: %v", err)
	}
	return true
}

// listenHost is where a test's appliance listens: pumi's trust-network
// address inside inTrustNS, else loopback.
func listenHost() string {
	if os.Getenv(trustEnv) != "" {
		return trustPumi
	}
	return "127.0.0.1"
}

const (
	mac1 = "52:54:00:00:00:01"
	mac2 = "52:54:00:00:00:02"
	mac3 = "52:54:00:00:00:03"
)

// setupLab configures an appliance as an admin would through the API:
// repository, live files, inventory, and a restore of LAB-A-img on room lab.
func setupLab(t *testing.T, ta *testApp) (liveVersion string) {
	repo := repoWithLiveZip(t)
	ta.mustDo("PUT", "/api/v1/config", "application/json", jsonBody(t, map[string]any{
		"netboot":    map[string]any{"mode": "off", "server_ip": trustPumi},
		"repository": repo,
	}))
	out := ta.mustDo("POST", "/api/v1/live/import", "application/json", []byte(`{"zip":"clonezilla-live-3.3.0-33-amd64.zip"}`))
	var lf struct{ Version string }
	json.Unmarshal([]byte(out), &lf)
	if lf.Version == "" {
		t.Fatalf("live import: %s", out)
	}
	// The seed's CSV format (MAC, IP, user) with the optional hostname and
	// room columns, MACs spelled three ways.
	csv := "mac,ip,user,hostname,room\n" +
		"52-54-00-00-00-01," + seat1 + ",alumno,pc01,lab\n" +
		"5254.0000.0002," + seat2 + ",alumno,pc02,lab\n" +
		"525400000003," + seat3 + ",alumno,pc03,office\n"
	ta.mustDo("POST", "/api/v1/seats/import", "text/csv", []byte(csv))
	ta.mustDo("POST", "/api/v1/jobs", "application/json", []byte(`{"action":"restore","image":"LAB-A-img","room":"lab","key":"run1"}`))
	return lf.Version
}

// script fetches mac's boot script from the seat's own address.
func script(t *testing.T, ta *testApp, mac string) (int, string) {
	from := map[string]string{mac1: seat1, "52-54-00-00-00-01": seat1, mac2: seat2, mac3: seat3}[mac]
	return ta.doFrom(cmp.Or(from, visitor), "GET", "/boot/"+mac+".ipxe", "", nil, false)
}

func TestBootScriptsPerMAC(t *testing.T) {
	if inTrustNS(t) {
		return
	}
	ta := startApp(t, filepath.Join(t.TempDir(), "state"))
	ver := setupLab(t, ta)

	code, s := script(t, ta, "52-54-00-00-00-01")
	if code != 200 {
		t.Fatalf("seat 1: %d %s", code, s)
	}
	for _, want := range []string{
		"kernel " + ta.base + "/live/" + ver + "/vmlinuz initrd=initrd.img ",
		"initrd " + ta.base + "/live/" + ver + "/initrd.img",
		"fetch=" + ta.base + "/live/" + ver + "/filesystem.squashfs",
		"restoredisk LAB-A-img 1st-disk",
		"BOOTIF=01-52-54-00-00-00-01",
		"ocs_live_batch=yes",
		"locales=en_US.UTF-8",
		"keyboard-layouts=us",
		trustPumi + ":/images /home/partimag",
		"-p reboot",
		"\nboot",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("seat 1 script lacks %q:\n%s", want, s)
		}
	}
	// Seat 3 is known but has nothing to do; an unknown MAC is never imaged.
	for mac, reason := range map[string]string{"52:54:00:00:00:03": "nothing to do", "52:54:00:99:99:99": "unknown MAC"} {
		code, s := script(t, ta, mac)
		if code != 200 || !strings.Contains(s, "exit 1") || !strings.Contains(s, reason) || strings.Contains(s, "kernel") {
			t.Errorf("%s: want exit (%s), got %d:\n%s", mac, reason, code, s)
		}
	}
	if code, _ := script(t, ta, "52-54-00-zz"); code != http.StatusBadRequest {
		t.Errorf("malformed MAC: status %d, want 400", code)
	}

	// The live files are served with Range for live-boot and iPXE.
	req, _ := http.NewRequest("GET", ta.base+"/live/"+ver+"/filesystem.squashfs", nil)
	req.Header.Set("Range", "bytes=0-3")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || string(b) != "hsqs" {
		t.Errorf("range request: %d %q", resp.StatusCode, b)
	}
}

var tokenRE = regexp.MustCompile(`pumi_token=([A-Za-z0-9_-]+)`)

// jobs is the API's job list by MAC.
func jobs(t *testing.T, ta *testApp) map[string]seatjob.Job {
	var list []seatjob.Job
	if err := json.Unmarshal([]byte(ta.mustDo("GET", "/api/v1/jobs", "", nil)), &list); err != nil {
		t.Fatal(err)
	}
	out := map[string]seatjob.Job{}
	for _, j := range list {
		out[j.MAC] = j
	}
	return out
}

// sendOCS sends Clonezilla ocs_server lines to 6461 from a loopback address.
func sendOCS(t *testing.T, ta *testApp, from, lines string) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", ta.ocs)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, lines)
}

func TestRestoreLifecycleAndRestart(t *testing.T) {
	if inTrustNS(t) {
		return
	}
	dir := filepath.Join(t.TempDir(), "state")
	ta := startApp(t, dir)
	setupLab(t, ta)

	_, s := script(t, ta, mac1)
	m := tokenRE.FindStringSubmatch(s)
	if m == nil {
		t.Fatalf("no token in script:\n%s", s)
	}
	tok := m[1]
	_, s2 := script(t, ta, mac2)
	tok2 := tokenRE.FindStringSubmatch(s2)[1]
	if tok == tok2 {
		t.Fatal("two seats share a token")
	}

	// Another host cannot report for the seat.
	if code, _ := ta.do("GET", "/api/v1/clonezilla/report?token=forgedforgedforgedforged&status=finished", "", nil, false); code != http.StatusForbidden {
		t.Errorf("forged token: %d, want 403", code)
	}
	if code, out := ta.doFrom(seat1, "GET", "/api/v1/clonezilla/report?token="+tok+"&status=started", "", nil, false); code != 200 {
		t.Fatalf("started: %d %s", code, out)
	}

	// The appliance restarts in the middle of the restore (power cut): the
	// job survives, and a seat that boots again is restored again.
	ta.stop()
	ta = startApp(t, dir)
	_, s = script(t, ta, mac1)
	if !strings.Contains(s, "restoredisk LAB-A-img") {
		t.Fatalf("after restart, seat 1 must still get the restore:\n%s", s)
	}
	tok = tokenRE.FindStringSubmatch(s)[1]

	// Clonezilla's own ocs_server line (from the seat's address), then the
	// tokened "finished" report with the log.
	sendOCS(t, ta, seat1, fmt.Sprintf("%s,%s,,,,Unicast restored LAB-A-img, nvme0n1p1, success, 0.1 GB, 0.02 mins, 5.1 GB/min;\n", seat1, mac1))
	deadline := time.Now().Add(5 * time.Second)
	for {
		out := ta.mustDo("GET", "/api/v1/events", "", nil)
		if strings.Contains(out, "Clonezilla reported") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ocs_server line not recorded: %s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, out := ta.doFrom(seat1, "POST", "/api/v1/clonezilla/report?token="+tok+"&status=finished", "application/x-www-form-urlencoded",
		[]byte("Starting /usr/sbin/ocs-sr at ...\nEnding /usr/sbin/ocs-sr at ...\n"), false); code != 200 {
		t.Fatalf("finished: %d %s", code, out)
	}
	// Seat 2 finished without Clonezilla's success line and with a failure
	// in its log: failed, with the reason from the log.
	ta.doFrom(seat2, "POST", "/api/v1/clonezilla/report?token="+tok2+"&status=finished", "", []byte("Failed to restore partition image file /home/partimag/LAB-A-img/nvme0n1p2\n"), false)

	ta.stop()
	ta = startApp(t, dir)
	if _, s := script(t, ta, mac1); !strings.Contains(s, "exit 1") {
		t.Errorf("restored seat must boot its disk now:\n%s", s)
	}
	got := jobs(t, ta)
	if a := got[mac1]; a.State != seatjob.Done || a.Boots != 2 || a.LogFile == "" {
		t.Errorf("seat 1: %+v, want done after 2 boots with a log", a)
	}
	if a := got[mac2]; a.State != seatjob.Failed || !strings.Contains(a.Reason, "Failed to restore") {
		t.Errorf("seat 2: %+v, want failed with the log's reason", a)
	}
	if strings.Contains(ta.mustDo("GET", "/api/v1/jobs", "", nil), tok) {
		t.Error("the API must never show report tokens")
	}
}

// TestVisitorCannotActForASeat: a curious student at another address of the
// lab network, with a restore job active for seat 1, tries what the issue
// "Seat jobs: one owner" found open; none of it changes any state, and the
// seat itself still gets its restore.
func TestVisitorCannotActForASeat(t *testing.T) {
	if inTrustNS(t) {
		return
	}
	ta := startApp(t, filepath.Join(t.TempDir(), "state"))
	setupLab(t, ta)
	before := jobs(t, ta)[mac1]

	// The boot script from another address: no token, exit 1, nothing counted.
	code, s := ta.doFrom(visitor, "GET", "/boot/"+mac1+".ipxe", "", nil, false)
	if code != 200 || !strings.Contains(s, "exit 1") || tokenRE.MatchString(s) || strings.Contains(s, "kernel") {
		t.Fatalf("visitor's script for seat 1: %d\n%s", code, s)
	}
	if now := jobs(t, ta)[mac1]; now.State != before.State || now.Boots != before.Boots || now.Updated != before.Updated {
		t.Fatalf("a visitor's fetch changed the job: %+v -> %+v", before, now)
	}

	// The seat boots and gets its token; a visitor who learnt it cannot use it.
	_, s = script(t, ta, mac1)
	tok := tokenRE.FindStringSubmatch(s)
	if tok == nil {
		t.Fatalf("seat 1 from its own address gets no restore:\n%s", s)
	}
	booted := jobs(t, ta)[mac1]
	for _, st := range []string{"started", "finished"} {
		if code, _ := ta.doFrom(visitor, "POST", "/api/v1/clonezilla/report?token="+tok[1]+"&status="+st, "", []byte("Failed to restore\n"), false); code != http.StatusForbidden {
			t.Errorf("stolen token, status=%s, from a visitor: %d, want 403", st, code)
		}
	}

	// A forged PXE DISCOVER with seat 1's MAC and the visitor's ciaddr is
	// recorded as seen, and opens nothing.
	m1, _ := net.ParseMAC(mac1)
	admission{ta.app}.Seen(m1, netboot.ClientInfo{Firmware: "uefi", Arch: 7, IP: netip.MustParseAddr(visitor)})
	if err := ta.app.seen.Flush(t.Context(), time.Now()); err != nil {
		t.Fatal(err)
	}
	vis, seat := netip.MustParseAddr(visitor), netip.MustParseAddr(seat1)
	if ta.app.jobs.AllowClient(vis, seatjob.ExportImages, false) || ta.app.jobs.AllowConnect(vis) {
		t.Error("a forged DISCOVER's ciaddr got NFS access")
	}
	if !ta.app.jobs.AllowClient(seat, seatjob.ExportImages, false) || ta.app.jobs.AllowClient(seat, seatjob.ExportImages, true) {
		t.Error("the seat's own address must read /images, and only read")
	}

	// 6461 lines: another MAC, another image, another claimed address, and
	// from the visitor: all ignored.
	sendOCS(t, ta, seat1, fmt.Sprintf("%s,%s,,,,Unicast restored LAB-A-img, sda1, success, 0.1 GB, 0.02 mins, 5.1 GB/min;\n", seat1, mac2)+
		fmt.Sprintf("%s,%s,,,,Unicast restored LAB-B-img, sda1, success, 0.1 GB, 0.02 mins, 5.1 GB/min;\n", seat1, mac1)+
		fmt.Sprintf("%s,%s,,,,Unicast restored LAB-A-img, sda1, success, 0.1 GB, 0.02 mins, 5.1 GB/min;\n", seat2, mac1))
	sendOCS(t, ta, visitor, fmt.Sprintf("%s,%s,,,,Unicast restored LAB-A-img, sda1, success, 0.1 GB, 0.02 mins, 5.1 GB/min;\n", visitor, mac1))
	time.Sleep(300 * time.Millisecond) // the listener handles lines asynchronously
	if now := jobs(t, ta)[mac1]; now.OCSLine != "" || now.State != booted.State || now.Boots != booted.Boots {
		t.Errorf("foreign 6461 lines changed seat 1's job: %+v", now)
	}
	if now := jobs(t, ta)[mac2]; now.OCSLine != "" {
		t.Errorf("a line from seat 1's address changed seat 2's job: %+v", now)
	}
	// The seat itself still finishes its restore.
	if code, out := ta.doFrom(seat1, "GET", "/api/v1/clonezilla/report?token="+tok[1]+"&status=started", "", nil, false); code != 200 {
		t.Fatalf("the seat's own report: %d %s", code, out)
	}
}

// TestConfigSaveKeepsNFS: saving settings that NFS does not serve (a
// schedule, the console, mail) must not drop seats' NFS connections.
func TestConfigSaveKeepsNFS(t *testing.T) {
	if inTrustNS(t) {
		return
	}
	ta := startApp(t, filepath.Join(t.TempDir(), "state"))
	setupLab(t, ta)
	_, _, nfsPort := ta.app.Addrs()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(seat1)}}
	c, err := d.Dial("tcp", net.JoinHostPort(trustPumi, fmt.Sprint(nfsPort)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var cfg map[string]any
	json.Unmarshal([]byte(ta.mustDo("GET", "/api/v1/config", "", nil)), &cfg)
	cfg["console"] = "ttyS0,115200"
	ta.mustDo("PUT", "/api/v1/config", "application/json", jsonBody(t, cfg))
	time.Sleep(500 * time.Millisecond) // a restart would close it by now
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the seat's NFS connection after a config save: %v, want still open", err)
	}
	// A new repository does restart the export.
	cfg["repository"] = repoWithLiveZip(t)
	ta.mustDo("PUT", "/api/v1/config", "application/json", jsonBody(t, cfg))
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a new repository left the old export's connection open: %v", err)
	}
}

func TestAPIRefusesWithoutToken(t *testing.T) {
	ta := startApp(t, filepath.Join(t.TempDir(), "state"))
	for _, r := range []struct{ method, path string }{
		{"GET", "/api/v1/status"}, {"GET", "/api/v1/config"}, {"PUT", "/api/v1/config"}, {"GET", "/api/v1/seats"},
		{"POST", "/api/v1/seats/import"}, {"GET", "/api/v1/images"}, {"POST", "/api/v1/live/import"},
		{"GET", "/api/v1/jobs"}, {"POST", "/api/v1/jobs"}, {"DELETE", "/api/v1/jobs/52:54:00:00:00:01"},
		{"GET", "/api/v1/seen"}, {"GET", "/api/v1/events"}, {"GET", "/api/v1/seats.csv"},
		{"PUT", "/api/v1/secrets/mail"}, {"PUT", "/api/v1/secrets/ssh/room/lab"},
	} {
		if code, _ := ta.do(r.method, r.path, "application/json", []byte("{}"), false); code != http.StatusUnauthorized {
			t.Errorf("%s %s without token: %d, want 401", r.method, r.path, code)
		}
	}
}

// TestSecretsAPI: passwords go in through the API and never come out: not
// in the config, not in any answer; refusals change nothing.
func TestSecretsAPI(t *testing.T) {
	ta := startApp(t, filepath.Join(t.TempDir(), "state"))
	ctx := t.Context()
	const pw = "s3cret-Ünïcode pass"
	if code, out := ta.do("PUT", "/api/v1/secrets/ssh/room/lab", "application/json", jsonBody(t, map[string]string{"password": pw}), true); code != http.StatusBadRequest || !strings.Contains(out, "no SSH login") {
		t.Errorf("password for a room without an SSH login: %d %s, want 400 naming the missing login", code, out)
	}
	if ok, _ := settings.HasSecret(ctx, ta.app.st, settings.SSHSecretName("room", "lab")); ok {
		t.Fatal("a refused secret was stored")
	}
	ta.mustDo("PUT", "/api/v1/config", "application/json", jsonBody(t, map[string]any{"netboot": map[string]string{"mode": "off"},
		"ssh": []map[string]string{{"scope": "room", "name": "lab", "user": "user"}}}))
	for _, r := range []struct{ path, body string }{
		{"/api/v1/secrets/ssh/room/lab", `{"password": "` + pw + `"}`},
		{"/api/v1/secrets/mail", `{"password": "` + pw + `"}`},
	} {
		if code, out := ta.do("PUT", r.path, "application/json", []byte(r.body), true); code != http.StatusNoContent || strings.Contains(out, pw) {
			t.Errorf("PUT %s: %d %q, want 204 and no echo", r.path, code, out)
		}
	}
	for _, bad := range []string{`{"password": "a\nb"}`, `{"pass": "x"}`, `{"password": "` + strings.Repeat("x", 2000) + `"}`, `not json`} {
		if code, _ := ta.do("PUT", "/api/v1/secrets/mail", "application/json", []byte(bad), true); code != http.StatusBadRequest {
			t.Errorf("PUT secret %.30q: %d, want 400", bad, code)
		}
	}
	for _, name := range []string{settings.SSHSecretName("room", "lab"), settings.SecretMail} {
		if v, err := settings.Secret(ctx, ta.app.st, name); err != nil || v != pw {
			t.Errorf("secret %s = %q, %v; want the password set (a refused update must not change it)", name, v, err)
		}
	}
	for _, path := range []string{"/api/v1/config", "/api/v1/status", "/api/v1/seats", "/api/v1/events"} {
		if out := ta.mustDo("GET", path, "", nil); strings.Contains(out, pw) {
			t.Errorf("GET %s shows the password", path)
		}
	}
	// An empty password clears the secret.
	ta.mustDo("PUT", "/api/v1/secrets/mail", "application/json", []byte(`{"password": ""}`))
	if ok, _ := settings.HasSecret(ctx, ta.app.st, settings.SecretMail); ok {
		t.Error("an empty password did not clear the mail secret")
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	ta := startApp(t, filepath.Join(t.TempDir(), "state"))
	before := ta.mustDo("GET", "/api/v1/config", "", nil)
	for _, body := range []string{
		`{"netboot":{"mode":"full","interface":"eth0"}}`, // no subnet/range
		`{"netboot":{"mode":"sideways"}}`,                // bad mode
		`{"repository":"relative/path"}`,                 // not absolute
		`{"repository":"/nonexistent/pumi-repo"}`,        // missing
		`{"netboot":{"mode":"off"},"bogus":1}`,           // unknown field
		`{"netboot":{"mode":"full","interface":"x","subnet":"10.1.0.0/24","range_start":"10.2.0.1","range_end":"10.2.0.9"}}`,
	} {
		if code, out := ta.do("PUT", "/api/v1/config", "application/json", []byte(body), true); code != http.StatusBadRequest {
			t.Errorf("config %s: %d %s, want 400", body, code, out)
		}
	}
	if after := ta.mustDo("GET", "/api/v1/config", "", nil); after != before {
		t.Errorf("a refused config changed the state:\n%s\n%s", before, after)
	}
	// A CSV with one bad row imports nothing and names the row.
	code, out := ta.do("POST", "/api/v1/seats/import", "text/csv", []byte("52:54:00:00:00:01,10.0.0.1,alumno\nnot-a-mac,10.0.0.2,alumno\n"), true)
	if code != http.StatusUnprocessableEntity || !strings.Contains(out, `"Line": 2`) {
		t.Errorf("bad CSV: %d %s", code, out)
	}
	if seats := ta.mustDo("GET", "/api/v1/seats", "", nil); strings.Contains(seats, "52:54:00:00:00:01") {
		t.Errorf("a refused import added seats: %s", seats)
	}
	if code, _ := ta.do("POST", "/api/v1/jobs", "application/json", []byte(`{"action":"restore","image":"../etc","macs":["52:54:00:00:00:01"]}`), true); code != http.StatusBadRequest {
		t.Errorf("image path escape accepted: %d", code)
	}
}

// A state directory that cannot be used gives a page that says so, "boot your
// disk" to every seat and 503 from the API, instead of a restart loop.
func TestDegradedModeExplainsAndImagesNothing(t *testing.T) {
	ro := filepath.Join(t.TempDir(), "missing-parent", "state")
	_, cause := Open(context.Background(), Options{StateDir: ro, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if cause == nil {
		t.Fatal("Open of a state dir without parent must fail")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeDegraded(ctx, addr, ro, cause, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	get := func(path string) (int, string) {
		for i := 0; ; i++ {
			resp, err := http.Get("http://" + addr + path)
			if err != nil {
				if i > 100 {
					t.Fatal(err)
				}
				time.Sleep(20 * time.Millisecond)
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp.StatusCode, string(b)
		}
	}
	if code, body := get("/"); code != http.StatusServiceUnavailable || !strings.Contains(body, "missing-parent") || !strings.Contains(body, "mkfs.ext4") {
		t.Errorf("page: %d %s", code, body)
	}
	if code, body := get("/boot/52-54-00-00-00-01.ipxe"); code != 200 || !strings.Contains(body, "exit 1") || strings.Contains(body, "kernel") {
		t.Errorf("boot script: %d %s", code, body)
	}
	if code, _ := get("/api/v1/status"); code != http.StatusServiceUnavailable {
		t.Errorf("api: %d", code)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A token created on the web page works for /api/v1 too; a revoked one no longer.
func TestWebAPITokenWorksForAPI(t *testing.T) {
	ta := startApp(t, filepath.Join(t.TempDir(), "state"))
	tok := "web-token-0123456789abcdefghijklmnop"
	sum := sha256.Sum256([]byte(tok))
	ctx := context.Background()
	if err := ta.app.webAuth.PutToken(ctx, web.APIToken{ID: "t1", Name: "script", Hash: hex.EncodeToString(sum[:]), Created: time.Now()}); err != nil {
		t.Fatal(err)
	}
	call := func(bearer string) int {
		req, _ := http.NewRequest("GET", ta.base+"/api/v1/status", nil)
		req.Header.Set("Authorization", "Bearer "+bearer)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := call(tok); c != 200 {
		t.Errorf("web token: %d, want 200", c)
	}
	if c := call(tok + "x"); c != http.StatusUnauthorized {
		t.Errorf("wrong token: %d, want 401", c)
	}
	if err := ta.app.webAuth.DeleteToken(ctx, "t1"); err != nil {
		t.Fatal(err)
	}
	if c := call(tok); c != http.StatusUnauthorized {
		t.Errorf("revoked token: %d, want 401", c)
	}
}

// TestFileTokenWorksForWebAPI: the api-token file also opens the web API
// (schedules, runs), so a script set up before any admin password exists
// can do all of the setup; a wrong token still gets 401 there.
func TestFileTokenWorksForWebAPI(t *testing.T) {
	ta := startApp(t, filepath.Join(t.TempDir(), "state"))
	sched := jsonBody(t, map[string]any{"id": "lab", "name": "Lab", "spec": "0 2 * * SAT", "target": map[string]any{"rooms": []string{"A"}},
		"action": map[string]any{"kind": "verify"}, "window": int64(time.Hour), "enabled": true})
	if code, out := ta.do("PUT", "/web/api/v1/schedules/lab", "application/json", sched, true); code != http.StatusOK {
		t.Fatalf("PUT schedule with the file token: %d %s", code, out)
	}
	if code, out := ta.do("GET", "/web/api/v1/schedules", "", nil, true); code != http.StatusOK || !strings.Contains(out, `"lab"`) {
		t.Errorf("GET schedules with the file token: %d %s", code, out)
	}
	ta.token += "x"
	if code, _ := ta.do("GET", "/web/api/v1/schedules", "", nil, true); code != http.StatusUnauthorized {
		t.Errorf("wrong token on the web API: %d, want 401", code)
	}
}

// Seats imported after full DHCP was enabled become reservations without a
// restart: the supervisor's wanted config changes with the inventory.
func TestReservationsFollowInventory(t *testing.T) {
	ta := startApp(t, filepath.Join(t.TempDir(), "state"))
	ta.mustDo("PUT", "/api/v1/config", "application/json", []byte(`{"netboot":{"mode":"full","interface":"pumi-none0",
		"server_ip":"10.77.0.1","subnet":"10.77.0.0/24","range_start":"10.77.0.100","range_end":"10.77.0.199"}}`))
	ctx := context.Background()
	before, off, err := ta.app.netbootWanted(ctx)
	if err != nil || off || len(before.Reservations) != 0 {
		t.Fatalf("before import: %+v off=%v err=%v", before.Reservations, off, err)
	}
	ta.mustDo("POST", "/api/v1/seats/import", "text/csv", []byte("52:54:00:00:00:01,10.77.0.11,alumno\n52:54:00:00:00:02,10.88.0.12,alumno\n"))
	after, _, err := ta.app.netbootWanted(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Reservations) != 1 || after.Reservations[0].IP.String() != "10.77.0.11" {
		t.Fatalf("reservations after import: %+v (only the seat inside the lab subnet belongs there)", after.Reservations)
	}
	// The supervisor reports the missing interface instead of serving.
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := ta.app.Status()
		if strings.Contains(st.Netboot.Error, "pumi-none0") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("netboot status: %+v", st.Netboot)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
