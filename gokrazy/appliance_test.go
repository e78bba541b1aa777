package gokrazy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/testnet"
	"github.com/pumi-lab/pumi/internal/testvm"
)

// The appliance's address in every network of this test: slirp hands it out
// by DHCP (checks 1-3), the updated image starts with it as its build-time
// static address (check 3), the setup page sets it again on the lab bridge
// (check 4), where the test's own side is 10.91.0.1. setupIP is the address
// the setup page gives it in between (checks 3-4).
const (
	applianceIP = "10.91.0.2"
	setupIP     = "10.91.0.3"
	bridgeCIDR  = "10.91.0.1/24"
	testTokenAt = "/etc/pumi/test-api-token"
)

// TestApplianceImage is the proof for the appliance image (issue 7), on the
// real image built from this working tree and booted in QEMU (TCG):
//
//  1. pumi's page answers on :80 (pumi runs gokrazy's dhcp as a DHCP
//     client, gokrazy does not start it), gokrazy's UI on its own port
//     with auth;
//  2. seats written through the API survive a hard power-off;
//  3. `gok update` into the running VM: the new build runs with its
//     build-time static address (pumi-image -static) and /perm is kept;
//     then the setup page (PUT /api/v1/config) gives it another address,
//     and it leaves the old one;
//  4. the updated appliance on a lab bridge boots with the setup page's
//     address (not the image's), is moved back to 10.91.0.2 through the
//     API at run time, and serves full DHCP + TFTP + its per-MAC iPXE
//     script to an OVMF lab PC, which ends on its local disk (`exit 1`);
//
// plus the appliance's behaviour with a damaged /perm, boot time to
// serving and pumi's memory use (logged as FIGURE lines).
func TestApplianceImage(t *testing.T) {
	testnet.Require(t, append(testvm.Programs(), "mkfs.ext4", "go", "cp")...)
	ctx := t.Context()
	repo, err := FindRepo(".")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	token := randHex(t, 24)
	pw := randHex(t, 10)
	pumiPort, uiPort := freePort(t), freePort(t)
	for uiPort == pumiPort {
		uiPort = freePort(t)
	}
	// Test-only settings, never in the committed config: an API token the
	// test knows (baked read-only into the image), gokrazy's UI on a free
	// port (forwarded to the same port on 127.0.0.1, which gok update
	// targets).
	edit := func(c *Config) error {
		c.AddFile(AppliancePackage, testTokenAt, token+"\n")
		c.AddFlags(AppliancePackage, "-api-token-file="+testTokenAt)
		c.Update.HTTPPort = strconv.Itoa(uiPort)
		c.Update.Hostname = "127.0.0.1"
		return nil
	}
	log := slog.New(slog.NewTextHandler(tWriter{t}, nil))
	opts := Options{RepoDir: repo, Password: pw, Edit: edit, Output: filepath.Join(dir, "pumi.img"), Log: log}

	t0 := time.Now()
	res, err := Build(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("FIGURE image build (gok + pumi from this tree + mkfs): %.1fs, build %s", time.Since(t0).Seconds(), res.BuildTimestamp)
	checkExt4(t, res.Image, res.PermOffset)
	// A copy whose /perm file system is destroyed, for the damaged-/perm
	// check (made now, before any boot writes to the image).
	damaged := filepath.Join(dir, "perm-damaged.img")
	if out, err := exec.Command("cp", "--sparse=always", res.Image, damaged).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	wipe(t, damaged, res.PermOffset, 4<<20)

	local := &http.Client{Timeout: 10 * time.Second}
	pumiURL := fmt.Sprintf("http://127.0.0.1:%d", pumiPort)
	uiURL := fmt.Sprintf("http://127.0.0.1:%d", uiPort)
	api := apiClient{c: local, base: pumiURL, token: token}
	ui := uiClient{c: local, base: uiURL, pw: pw}
	seats := "52:54:00:aa:00:01,10.91.0.51,alice,pc-01,lab1\n52:54:00:aa:00:02,10.91.0.52,bob,pc-02,lab1\n"
	var vm *applianceVM
	owner := t // VMs outlive the subtest that booted them

	if !t.Run("1-boot-serves", func(t *testing.T) {
		vm = bootAppliance(t, owner, ctx, "appliance-1-uefi", res.Image, true, nil, userNet(pumiPort, uiPort))
		page, err := waitHTTP(ctx, local, pumiURL+"/", 200, 4*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("FIGURE boot to pumi's page answering (QEMU start → HTTP 200 on :80, TCG, UEFI/OVMF, DHCP): %.1fs", time.Since(vm.start).Seconds())
		// The page, or on a fresh appliance its first-visit page.
		if !regexp.MustCompile(`<h1>(Welcome to )?pumi</h1>`).MatchString(page) {
			t.Errorf("pumi's page: %s", page)
		}
		var st struct {
			StateDir string `json:"state_dir"`
		}
		api.do(t, "GET", "/api/v1/status", "", 200, &st)
		if st.StateDir != "/perm/pumi" {
			t.Errorf("state dir %q, want /perm/pumi", st.StateDir)
		}
		if code := ui.status(t, "/", false); code != http.StatusUnauthorized {
			t.Errorf("gokrazy UI without password: %d, want 401", code)
		}
		if code := ui.status(t, "/", true); code != http.StatusOK {
			t.Errorf("gokrazy UI with password: %d, want 200", code)
		}
		o := ui.overview(t)
		if o.BuildTimestamp != res.BuildTimestamp || o.PermTotal == 0 {
			t.Errorf("gokrazy reports build %q (want %q), /perm size %d (want the formatted partition)", o.BuildTimestamp, res.BuildTimestamp, o.PermTotal)
		}
		// The address came from pumi's own run of gokrazy's dhcp: gokrazy
		// keeps its dhcp service stopped.
		checkDHCPStopped(t, o)
		logMemory(t, ui)
	}) {
		return
	}

	if !t.Run("2-state-survives-power-cut", func(t *testing.T) {
		var imp json.RawMessage
		api.do(t, "POST", "/api/v1/seats/import?mode=replace", seats, 200, &imp)
		before := api.seats(t)
		if len(before) != 2 {
			t.Fatalf("after import: %d seats (%s)", len(before), imp)
		}
		vm.Kill() // no shutdown, no sync: a power cut
		vm = bootAppliance(t, owner, ctx, "appliance-2", res.Image, false, nil, userNet(pumiPort, uiPort))
		if _, err := waitHTTP(ctx, local, pumiURL+"/", 200, 4*time.Minute); err != nil {
			t.Fatal(err)
		}
		t.Logf("FIGURE boot after power cut to pumi's page (BIOS): %.1fs", time.Since(vm.start).Seconds())
		after := api.seats(t)
		if strings.Join(after, " ") != strings.Join(before, " ") {
			t.Errorf("seats after power cut %v, before %v", after, before)
		}
	}) {
		return
	}

	var newBuild string
	if !t.Run("3-gok-update", func(t *testing.T) {
		uo := opts
		uo.Static = &StaticNetwork{Address: netip.MustParsePrefix(applianceIP + "/24"), Router: netip.MustParseAddr("10.91.0.1")}
		t0 := time.Now()
		var err error
		newBuild, err = Update(ctx, uo)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("FIGURE gok update (build + transfer + reboot until the new build answers): %.1fs", time.Since(t0).Seconds())
		if _, err := waitHTTP(ctx, local, pumiURL+"/", 200, 3*time.Minute); err != nil {
			t.Fatal(err)
		}
		o := ui.overview(t)
		if o.BuildTimestamp != newBuild || newBuild == res.BuildTimestamp {
			t.Errorf("running build %q, want the update's %q (first image %q)", o.BuildTimestamp, newBuild, res.BuildTimestamp)
		}
		static := false
		for _, s := range o.Services {
			if s.Path == "/user/pumi-appliance" && strings.Contains(strings.Join(s.Args, " "),
				`-manage-network={"mode":"static","address":"`+applianceIP+`/24","gateway":"10.91.0.1"}`) {
				static = true
			}
		}
		if !static {
			t.Errorf("the updated build does not give pumi the build-time static address: %+v", o.Services)
		}
		checkDHCPStopped(t, o)
		if l := ui.log(t, "/user/pumi-appliance", "stderr"); !strings.Contains(l, "static address applied") {
			t.Errorf("pumi's log does not show gokrazy's dhcp applying the static address (exit 125):\n%s", lastLines(l, 20))
		}
		if got := api.seats(t); len(got) != 2 {
			t.Errorf("seats after update: %v (/perm not kept?)", got)
		}
		// The setup page: a new address. pumi answers, then leaves the
		// old address (slirp's forward to it stops answering).
		api.do(t, "PUT", "/api/v1/config", `{"network":{"mode":"static","address":"`+setupIP+`/24","gateway":"10.91.0.1"}}`, 200, nil)
		gone := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		for end := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
			resp, err := gone.Get(pumiURL + "/")
			if err != nil {
				break
			}
			resp.Body.Close()
			if time.Now().After(end) {
				t.Fatalf("a minute after the setup page moved it to %s, pumi still answers at %s", setupIP, applianceIP)
			}
		}
		vm.Kill()
	}) {
		return
	}

	t.Run("4-serves-a-lab-pc", func(t *testing.T) {
		ns := testnet.New(t)
		ns.Bridge("br0", bridgeCIDR)
		tapA, tapB := ns.Tap("br0"), ns.Tap("br0")
		disk := testvm.LocalDisk(t)
		nc := nsClient(ns)
		lapi := apiClient{c: nc, base: "http://" + applianceIP, token: token}
		sapi := apiClient{c: nc, base: "http://" + setupIP, token: token}
		vm = bootAppliance(t, t, ctx, "appliance-lab", res.Image, false, ns, tapNet(tapA, "52:54:00:91:00:02"))
		// The address from the setup page wins over the image's.
		if _, err := waitHTTP(ctx, nc, sapi.base+"/", 200, 4*time.Minute); err != nil {
			t.Fatal(err)
		}
		t.Logf("FIGURE boot to pumi's page, setup page's static address on the lab bridge: %.1fs", time.Since(vm.start).Seconds())
		if got := sapi.seats(t); len(got) != 2 {
			t.Errorf("seats on the lab boot: %v", got)
		}
		// Moved at run time through the API; the old address goes.
		network := `"network":{"mode":"static","address":"` + applianceIP + `/24","gateway":"10.91.0.1"}`
		t0 := time.Now()
		sapi.do(t, "PUT", "/api/v1/config", "{"+network+"}", 200, nil)
		if _, err := waitHTTP(ctx, nc, lapi.base+"/", 200, time.Minute); err != nil {
			t.Fatal(err)
		}
		t.Logf("FIGURE address change from the setup page to pumi answering at the new address: %.1fs", time.Since(t0).Seconds())
		short := nsClient(ns)
		short.Timeout = 3 * time.Second
		if resp, err := short.Get(sapi.base + "/"); err == nil {
			resp.Body.Close()
			t.Errorf("pumi still answers at its previous address %s after moving to %s", setupIP, applianceIP)
		}
		labMAC := testvm.RandomMAC()
		var imp json.RawMessage
		lapi.do(t, "POST", "/api/v1/seats/import?mode=merge", labMAC+",10.91.0.50,lab,lab-pc,lab1\n", 200, &imp)
		cfg := `{` + network + `,"netboot":{"mode":"full","interface":"eth0","server_ip":"` + applianceIP + `","subnet":"10.91.0.0/24",` +
			`"range_start":"10.91.0.100","range_end":"10.91.0.199","router":"10.91.0.1","lease_time":"1h"}}`
		lapi.do(t, "PUT", "/api/v1/config", cfg, 200, nil)
		deadline := time.Now().Add(time.Minute)
		for {
			var st struct {
				Netboot struct {
					Running bool   `json:"running"`
					Error   string `json:"error"`
				} `json:"netboot"`
			}
			lapi.do(t, "GET", "/api/v1/status", "", 200, &st)
			if st.Netboot.Running {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("netboot not running a minute after enabling it (error %q)", st.Netboot.Error)
			}
			time.Sleep(time.Second)
		}
		testvm.AdvertiseRouter(t, ns, "br0")
		// Two VMs at once: the appliance hands its slot to the lab PC.
		vm.releaseSlot()
		lab := testvm.Start(t, ctx, testvm.Config{Name: "lab-pc", NS: ns, Tap: tapB, MAC: labMAC, Disk: disk, Timeout: 4 * time.Minute})
		if _, err := lab.WaitFor(ctx, testvm.MarkerDisk); err != nil {
			t.Fatal(err)
		}
		t.Logf("FIGURE lab PC: OVMF PXE from the appliance VM to its local disk: %.1fs", lab.Elapsed().Seconds())
		serial := lab.Serial()
		// iPXE logs "<url>... ok" once it has the script; the URL names the
		// appliance's address (with its port) and the lab PC's MAC.
		script := regexp.MustCompile(`http://` + regexp.QuoteMeta(applianceIP) + `(:80)?/boot/` +
			strings.ReplaceAll(labMAC, ":", "-") + `\.ipxe\.\.\. ok`)
		if !script.MatchString(serial) {
			t.Errorf("the lab PC's console does not show iPXE fetching its script from the appliance")
		}
		var seen []struct {
			MAC   string `json:"mac"`
			Known bool   `json:"known"`
			Count int    `json:"count"`
		}
		lapi.do(t, "GET", "/api/v1/seen", "", 200, &seen)
		found := false
		for _, s := range seen {
			if s.MAC == labMAC && s.Known && s.Count > 0 {
				found = true
			}
		}
		if !found {
			t.Errorf("the appliance's seen list lacks the lab PC %s: %+v", labMAC, seen)
		}
		body := lapi.get(t, "/boot/"+strings.ReplaceAll(labMAC, ":", "-")+".ipxe")
		if !strings.Contains(body, "exit 1") {
			t.Errorf("boot script for the lab PC: %q, want exit 1 (nothing to do)", body)
		}
		var st json.RawMessage
		lapi.do(t, "GET", "/api/v1/status", "", 200, &st)
		if !bytes.Contains(st, []byte("10.91.0.50")) {
			t.Errorf("no lease for the lab PC's reserved address 10.91.0.50 in the status: %s", st)
		}
		logMemory(t, uiClient{c: nc, base: fmt.Sprintf("http://%s:%d", applianceIP, uiPort), pw: pw})
	})

	t.Run("damaged-perm", func(t *testing.T) {
		vm := bootAppliance(t, t, ctx, "appliance-noperm", damaged, false, nil, userNet(pumiPort, uiPort))
		if _, err := waitHTTP(ctx, ui.authed(), uiURL+"/", 200, 4*time.Minute); err != nil {
			t.Fatal(err)
		}
		// Give pumi the time a working boot needs to serve (well above the
		// measured boot times), then look.
		time.Sleep(20 * time.Second)
		s1 := ui.service(t, "/user/pumi-appliance")
		time.Sleep(5 * time.Second)
		s2 := ui.service(t, "/user/pumi-appliance")
		stderr := ui.log(t, "/user/pumi-appliance", "stderr")
		resp, perr := local.Get(pumiURL + "/")
		var page string
		if perr == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			page = string(b)
		}
		restarting := !s1.StartTime.Equal(s2.StartTime) || s2.Stopped
		t.Logf("damaged /perm: pumi page err=%v page=%q; service started %s then %s (stopped %v); stderr tail:\n%s",
			perr, page, s1.StartTime.Format(time.TimeOnly), s2.StartTime.Format(time.TimeOnly), s2.Stopped, lastLines(stderr, 6))
		// pumi must say what is wrong on its page (degraded mode) instead of
		// exiting into gokrazy's restart loop.
		if perr != nil || !strings.Contains(page, "/perm") || restarting {
			t.Errorf("with a damaged /perm pumi must answer on :80 with a page that names /perm and must not restart (got page err %v, restarting %v)", perr, restarting)
		}
		_ = vm
	})
}

// checkDHCPStopped checks that gokrazy itself does not run its dhcp (pumi
// does, with the setup page's settings; two clients would fight over eth0).
func checkDHCPStopped(t testing.TB, o gokOverview) {
	t.Helper()
	for _, s := range o.Services {
		if s.Path == "/gokrazy/dhcp" {
			if !s.Stopped {
				t.Errorf("gokrazy runs its own dhcp beside pumi's: %+v", s)
			}
			return
		}
	}
	t.Errorf("no /gokrazy/dhcp in the image (pumi runs it): %+v", o.Services)
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func randHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// checkExt4 verifies the image's /perm partition holds an ext4 super block
// (magic 0xEF53 at byte 56 of the super block, which starts at 1024).
func checkExt4(t testing.TB, img string, off int64) {
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var m [2]byte
	if _, err := f.ReadAt(m[:], off+1024+56); err != nil {
		t.Fatal(err)
	}
	if binary.LittleEndian.Uint16(m[:]) != 0xEF53 {
		t.Fatalf("no ext4 file system at /perm (offset %d): magic %x", off, m)
	}
}

// wipe zeroes n bytes at off (destroys /perm's super blocks).
func wipe(t testing.TB, img string, off, n int64) {
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(make([]byte, n), off); err != nil {
		t.Fatal(err)
	}
}

// apiClient talks to pumi's JSON API with the admin token.
type apiClient struct {
	c     *http.Client
	base  string
	token string
}

func (a apiClient) do(t testing.TB, method, path, body string, want int, out any) {
	t.Helper()
	req, err := http.NewRequest(method, a.base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	resp, err := a.c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %s %s", method, path, resp.Status, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, path, err, b)
		}
	}
}

func (a apiClient) get(t testing.TB, path string) string {
	t.Helper()
	resp, err := a.c.Get(a.base + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// seats returns "mac ip" per seat, sorted as the API lists them.
func (a apiClient) seats(t testing.TB) []string {
	t.Helper()
	var s []struct {
		MAC string `json:"mac"`
		IP  string `json:"ip"`
	}
	a.do(t, "GET", "/api/v1/seats", "", 200, &s)
	var out []string
	for _, x := range s {
		out = append(out, x.MAC+" "+x.IP)
	}
	return out
}

// uiClient talks to gokrazy's web UI (basic auth, user gokrazy).
type uiClient struct {
	c    *http.Client
	base string
	pw   string
}

func (u uiClient) authed() *http.Client {
	return &http.Client{Timeout: u.c.Timeout, Transport: basicAuth{u.pw, u.c.Transport}}
}

type basicAuth struct {
	pw   string
	next http.RoundTripper
}

func (b basicAuth) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.SetBasicAuth("gokrazy", b.pw)
	if b.next == nil {
		return http.DefaultTransport.RoundTrip(r)
	}
	return b.next.RoundTrip(r)
}

func (u uiClient) get(t testing.TB, path string, auth, js bool) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", u.base+path, nil)
	if auth {
		req.SetBasicAuth("gokrazy", u.pw)
	}
	if js {
		req.Header.Set("Accept", "application/json")
	}
	resp, err := u.c.Do(req)
	if err != nil {
		t.Fatalf("gokrazy UI %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (u uiClient) status(t testing.TB, path string, auth bool) int {
	code, _ := u.get(t, path, auth, false)
	return code
}

type gokService struct {
	Stopped   bool
	StartTime time.Time
	Pid       int
	Path      string
	Args      []string
}

type gokOverview struct {
	Services       []gokService
	BuildTimestamp string
	PermTotal      int64
	Meminfo        map[string]int64
}

func (u uiClient) overview(t testing.TB) gokOverview {
	t.Helper()
	code, b := u.get(t, "/", true, true)
	var o gokOverview
	if code != 200 || json.Unmarshal(b, &o) != nil {
		t.Fatalf("gokrazy overview: %d %s", code, b)
	}
	return o
}

func (u uiClient) service(t testing.TB, path string) gokService {
	t.Helper()
	code, b := u.get(t, "/status?path="+path, true, true)
	var s gokService
	if code != 200 || json.Unmarshal(b, &s) != nil {
		t.Fatalf("gokrazy service %s: %d %s", path, code, b)
	}
	return s
}

// log returns what gokrazy buffered of a service's stream (its ring buffer
// of the last lines; the endpoint streams on, so read with a deadline).
func (u uiClient) log(t testing.TB, path, stream string) string {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", u.base+"/log?path="+path+"&stream="+stream, nil)
	req.SetBasicAuth("gokrazy", u.pw)
	resp, err := u.c.Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = io.Copy(&buf, resp.Body) // ends with the deadline
	return buf.String()
}

var rssTitle = regexp.MustCompile(`title="\S*pumi-appliance uses ([0-9.]+ MiB) RSS"`)

// logMemory logs pumi's resident memory and the machine's, from gokrazy's
// overview page (it reads /proc/<pid>/statm).
func logMemory(t testing.TB, u uiClient) {
	t.Helper()
	_, page := u.get(t, "/", true, false)
	m := rssTitle.FindSubmatch(page)
	o := u.overview(t)
	if m == nil {
		t.Errorf("gokrazy's overview shows no RSS for pumi-appliance")
		return
	}
	used := o.Meminfo["MemTotal"] - o.Meminfo["MemAvailable"]
	t.Logf("FIGURE memory: pumi-appliance RSS %s; VM MemTotal %d MiB, in use %d MiB (512 MiB VM)", m[1], o.Meminfo["MemTotal"]>>20, used>>20)
}
