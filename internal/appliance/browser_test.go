package appliance_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/pumi-lab/pumi/internal/testbrowser"
	"github.com/pumi-lab/pumi/internal/testnet"
)

const testPassword = "correct horse battery"

// TestBrowserFlow is the admin's first session in Debian's Chromium
// (headless, driven over the DevTools protocol by chromedp) against a real
// pumi-appliance process, built from ./cmd/pumi-appliance and started with a
// fresh state directory: set the password, configure (repository, netboot
// off, time zone), see the images and the problems of a broken one, import a
// CSV with one bad row (error next to the row, nothing imported), fix it,
// create a schedule with the live cron preview, run it now and watch the
// real runs engine move the seats on the run page without a reload.
//
// The appliance runs in a network namespace of its own with only loopback:
// the seats' 10.20.0.x addresses are unreachable there, as in a lab whose
// network is not plugged in, and nothing it tries can leave the machine.
// The browser reaches it through a forwarder on the host's 127.0.0.1.
//
// Every page is saved as a screenshot in $PUMI_WEB_SCREENSHOTS (or the
// test's artifact directory); docs/screenshots are refreshed from there.
func TestBrowserFlow(t *testing.T) {
	testnet.Require(t, testbrowser.ChromiumPath)
	bin := buildAppliance(t)
	ns := testnet.New(t)
	app := startAppliance(t, ns, bin)
	base := forward(t, ns, app.httpAddr)

	// The image repository: the clonezilla package's fixture (valid and
	// broken images), copied so nothing can touch the original.
	repo := filepath.Join(t.TempDir(), "images")
	if err := os.CopyFS(repo, os.DirFS("../clonezilla/testdata/repo")); err != nil {
		t.Fatal(err)
	}
	// A half-copied image: the second partition's data is missing.
	half := filepath.Join(repo, "room-c", "LAB-C-img")
	if err := os.CopyFS(half, os.DirFS(filepath.Join(repo, "LAB-A-img"))); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(half, "nvme0n1p2.ext4-ptcl-img.zst")); err != nil {
		t.Fatal(err)
	}

	br := testbrowser.Start(t, testbrowser.Options{
		Timeout: 3 * time.Minute,
		// The rejected CSV is answered 422 on purpose; the browser logs
		// every 4xx page load.
		ExpectedConsole: []string{"status of 422", "status of 409"},
	})
	step, shot, text := br.Step, br.Shot, br.Text
	clickAndLoad := testbrowser.ClickAndLoad

	// 1. First visit: any page leads to setting the password.
	step("first visit",
		chromedp.Navigate(base+"/inventory"),
		chromedp.WaitVisible(chromedp.CSS("#set-password")),
		shot("01-first-visit"),
		chromedp.SendKeys(chromedp.CSS("#password"), testPassword),
		chromedp.SendKeys(chromedp.CSS("#again"), testPassword),
		clickAndLoad("#set-password"),
		chromedp.WaitVisible(chromedp.CSS("#save-settings")),
	)

	// 2. Configure: repository, lab netboot off (this machine has no lab
	// network), time zone.
	step("configure",
		chromedp.SetValue(chromedp.CSS("#repository"), repo),
		chromedp.Click(chromedp.CSS(`input[name=nb_mode][value=off]`)),
		chromedp.SetValue(chromedp.CSS("#time_zone"), "Europe/Zurich"),
		clickAndLoad("#save-settings"),
		chromedp.WaitVisible(chromedp.CSS(".flash.ok")),
		shot("02-setup"),
	)
	if got := text(".flash.ok"); got != "Saved." {
		t.Fatalf("after saving the setup the page says %q", got)
	}
	// What the process stored, through its JSON API.
	var cfg struct {
		Repository string `json:"repository"`
		TimeZone   string `json:"time_zone"`
		Netboot    struct {
			Mode string `json:"mode"`
		} `json:"netboot"`
	}
	app.api(t, base, "/api/v1/config", &cfg)
	if cfg.Repository != repo || cfg.Netboot.Mode != "off" || cfg.TimeZone != "Europe/Zurich" {
		t.Fatalf("the appliance stored %+v", cfg)
	}

	// 3. Images found in the repository, with the problems of broken ones.
	step("images",
		chromedp.Navigate(base+"/images"),
		chromedp.WaitVisible(chromedp.CSS("#images")),
		shot("03-images"),
	)
	if imgs := text("#images"); !strings.Contains(imgs, "LAB-A-img") || !strings.Contains(imgs, "restorable") {
		t.Fatalf("images page:\n%s", imgs)
	}
	if broken := text(`#images tr[data-image="room-c/LAB-C-img"]`); !strings.Contains(broken, "broken") || !strings.Contains(broken, "nvme0n1p2") {
		t.Fatalf("the half-copied image is not shown broken with its problem:\n%s", broken)
	}

	// 4. A CSV with one bad row. The first seat has an SSH user, the others
	// none, so the run below takes both of the engine's paths.
	const badCSV = "mac,ip,hostname,room,ssh_user\n" +
		"52:54:00:12:34:01,10.20.0.11,pc-a101-01,A101,lab\n" +
		"52:54:00:12:34:0g,10.20.0.12,pc-a101-02,A101,\n" +
		"52:54:00:12:34:03,10.20.0.13,pc-a101-03,A101,\n"
	csvFile := filepath.Join(t.TempDir(), "seats.csv")
	if err := os.WriteFile(csvFile, []byte(badCSV), 0o644); err != nil {
		t.Fatal(err)
	}
	step("import bad CSV",
		chromedp.Navigate(base+"/inventory"),
		chromedp.WaitVisible(chromedp.CSS("#import")),
		chromedp.SetUploadFiles(chromedp.CSS("#csv-file"), []string{csvFile}),
		clickAndLoad("#import"),
		chromedp.WaitVisible(chromedp.CSS("#import-errors")),
		shot("04-inventory-bad-csv"),
	)
	if row := text(`#import-errors tr[data-line="3"] td.err`); !strings.Contains(row, "mac") {
		t.Fatalf("line 3's error is not next to it: %q", row)
	}
	errRows := br.Strings(`[...document.querySelectorAll("#import-errors tr.has-error")].map(r => r.dataset.line)`)
	if len(errRows) != 1 || errRows[0] != "3" {
		t.Fatalf("marked lines %v, want only line 3", errRows)
	}
	type seat struct {
		MAC     string `json:"mac"`
		Room    string `json:"room"`
		SSHUser string `json:"ssh_user"`
	}
	var seats []seat
	app.api(t, base, "/api/v1/seats", &seats)
	if len(seats) != 0 {
		t.Fatalf("%d seats imported from a file with a bad row: %+v", len(seats), seats)
	}

	// 5. Fix the row in the text box the page filled with the file.
	if shown := br.Value("#csv-text"); shown != badCSV {
		t.Fatalf("the page did not keep the file to fix: %q", shown)
	}
	step("import fixed CSV",
		chromedp.SetValue(chromedp.CSS("#csv-text"), strings.Replace(badCSV, "34:0g", "34:02", 1)),
		clickAndLoad("#import"),
		chromedp.WaitVisible(chromedp.CSS("#import-result")),
		chromedp.WaitVisible(chromedp.CSS("#seats")),
		shot("05-inventory"),
	)
	if got := text("#import-result"); !strings.Contains(got, "3 added") {
		t.Fatalf("import result: %q", got)
	}
	app.api(t, base, "/api/v1/seats", &seats)
	if len(seats) != 3 || seats[0].MAC != "52:54:00:12:34:01" || seats[0].SSHUser != "lab" || seats[2].Room != "A101" {
		t.Fatalf("seats after the fixed import: %+v", seats)
	}

	// 6. A schedule: the cron preview answers as the spec is typed.
	step("new schedule",
		chromedp.Navigate(base+"/schedules/new"),
		chromedp.WaitVisible(chromedp.CSS("#spec")),
		chromedp.SendKeys(chromedp.CSS("#name"), "Room A101 weekly"),
		// SetValue fires no input event; the last typed key does, with
		// the whole value in the field, as when a person types.
		chromedp.SetValue(chromedp.CSS("#spec"), "61 2 * * SA"),
		chromedp.SendKeys(chromedp.CSS("#spec"), "T"),
		chromedp.WaitVisible(chromedp.CSS("#cron-preview .err")),
	)
	if got := text("#cron-preview"); !strings.Contains(got, "minute") {
		t.Fatalf("a bad spec's preview: %q", got)
	}
	step("fix spec",
		chromedp.SetValue(chromedp.CSS("#spec"), "30 2 * * SA"),
		chromedp.SendKeys(chromedp.CSS("#spec"), "T"),
		chromedp.WaitVisible(chromedp.CSS("#cron-preview ol.times")),
		chromedp.SetValue(chromedp.CSS("#image"), "LAB-A-img"),
		chromedp.Click(chromedp.CSS(`input[name=rooms][value=A101]`)),
		shot("06-schedule-edit"),
	)
	fires := br.Strings(`[...document.querySelectorAll("#cron-preview li")].map(li => li.textContent)`)
	if len(fires) != 5 || !strings.HasPrefix(fires[0], "Sat") || !strings.HasSuffix(fires[0], "02:30 CET") {
		t.Fatalf("next fire times %q", fires)
	}
	if got := text("#cron-preview p"); !strings.Contains(got, "Europe/Zurich") {
		t.Fatalf("preview zone: %q", got)
	}
	step("save schedule",
		clickAndLoad("#save-schedule"),
		chromedp.WaitVisible(chromedp.CSS("#schedules")),
		shot("07-schedules"),
	)

	// 7. Run it now: this appliance has lab netboot off and no Clonezilla
	// live, so a restore cannot work. The page says so, problem by problem
	// (and that the seats without an SSH user can only be woken, which
	// needs the lab interface), and no run starts: seats do not sit on a
	// "powering" badge that looks like progress.
	step("run now refused",
		clickAndLoad(`#schedules tr[data-id="room-a101-weekly"] .run-now`),
		chromedp.WaitVisible(chromedp.CSS("#preflight")),
		shot("08-run-refused"),
	)
	probs := text("#preflight") + "\n" + text("#preflight-warnings")
	for _, want := range []string{"Lab netboot is off", "No Clonezilla live is imported yet", "neither logged in to over SSH nor woken"} {
		if !strings.Contains(probs, want) {
			t.Fatalf("the refusal does not say %q:\n%s", want, probs)
		}
	}
	var jobs []struct{ MAC string }
	app.api(t, base, "/api/v1/jobs", &jobs)
	step("no run", chromedp.Navigate(base+"/runs"), chromedp.WaitVisible(chromedp.CSS("main p.muted")))
	if runs := br.Strings(`[...document.querySelectorAll("#runs tbody tr")].map(r => r.textContent)`); len(runs) != 0 || len(jobs) != 0 {
		t.Fatalf("a refused run started anyway: runs %q, %d job(s)", runs, len(jobs))
	}

	// 8. The overview, and the schedules on a phone-sized screen.
	step("overview", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS(".tiles")), shot("11-overview"))
	step("phone",
		chromedp.EmulateViewport(360, 780),
		chromedp.Navigate(base+"/schedules"),
		chromedp.WaitVisible(chromedp.CSS("#schedules")),
		shot("12-schedules-phone"),
	)
}

// buildAppliance builds ./cmd/pumi-appliance into a temporary directory:
// the test runs the program an admin runs, not the package in-process.
func buildAppliance(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "pumi-appliance")
	start := time.Now()
	// go test puts its own toolchain first in PATH.
	cmd := exec.Command("go", "build", "-o", bin, "github.com/pumi-lab/pumi/cmd/pumi-appliance")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building pumi-appliance: %v\n%s", err, out)
	}
	t.Logf("built pumi-appliance in %v", time.Since(start).Round(time.Millisecond))
	return bin
}

// proc is a running pumi-appliance process.
type proc struct {
	httpAddr string // bound inside the namespace
	state    string
}

var upLine = regexp.MustCompile(`msg="pumi appliance up" http=(\S+)`)

// startAppliance starts bin inside ns with a fresh state directory and
// loopback listeners on ports the kernel picks, and waits for the line that
// says where it listens. At the end of the test it is stopped with SIGTERM
// and must exit cleanly; its log is shown if the test failed.
func startAppliance(t *testing.T, ns *testnet.NS, bin string) *proc {
	t.Helper()
	state := filepath.Join(t.TempDir(), "state")
	cmd := ns.Command(context.Background(), bin, "-state", state,
		"-listen", "127.0.0.1:0", "-nfs-listen", "127.0.0.1:0", "-ocs-listen", "127.0.0.1:0")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	var logMu sync.Mutex
	var logBuf bytes.Buffer
	cmd.Stdout = &lockedWriter{mu: &logMu, w: &logBuf}
	if err := ns.Start(cmd); err != nil {
		t.Fatalf("starting pumi-appliance: %v", err)
	}
	addr := make(chan string, 1)
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			line := sc.Text()
			logMu.Lock()
			logBuf.WriteString(line + "\n")
			logMu.Unlock()
			if m := upLine.FindStringSubmatch(line); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
	}()
	exited := make(chan error, 1)
	go func() {
		<-copied // Wait closes the pipe; read it all first
		exited <- cmd.Wait()
	}()
	showLog := func() {
		logMu.Lock()
		defer logMu.Unlock()
		t.Logf("pumi-appliance log:\n%s", logBuf.String())
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("pumi-appliance did not exit cleanly on SIGTERM: %v", err)
			}
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Errorf("pumi-appliance did not stop within 15 s of SIGTERM")
		}
		if t.Failed() {
			showLog()
		}
	})
	select {
	case a := <-addr:
		t.Logf("pumi-appliance up, http=%s (in namespace %s)", a, ns.Name)
		return &proc{httpAddr: a, state: state}
	case err := <-exited:
		exited <- err // for the cleanup
		showLog()
		t.Fatalf("pumi-appliance exited before it was up: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("pumi-appliance did not say it was up within a minute")
	}
	return nil
}

// api reads a JSON API resource with the admin API token the appliance
// created in its state directory.
func (a *proc) api(t *testing.T, base, path string, v any) {
	t.Helper()
	tok, err := os.ReadFile(filepath.Join(a.state, "api-token"))
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodGet, base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v\n%s", path, resp.Status, err, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: %v\n%s", path, err, body)
	}
}

// forward listens on the host's 127.0.0.1 and connects each client to
// target inside ns, so the browser (in the host's namespace) reaches the
// appliance (in its own). It returns the base URL.
func forward(t *testing.T, ns *testnet.NS, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	closed := false
	// track registers a live connection; after the cleanup it closes it
	// instead, so none can outlive the test.
	track := func(c net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if closed {
			c.Close()
			return false
		}
		conns[c] = true
		return true
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		closed = true
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				var up net.Conn
				// A socket made on a thread inside ns stays there.
				err := ns.Do(func() error {
					var err error
					up, err = net.DialTimeout("tcp", target, 10*time.Second)
					return err
				})
				if err != nil {
					t.Logf("forwarder: %v", err)
					c.Close()
					return
				}
				if !track(c) || !track(up) {
					c.Close()
					up.Close()
					return
				}
				done := make(chan struct{}, 2)
				cp := func(dst, src net.Conn) {
					// Either side's reset or close just ends the copy.
					io.Copy(dst, src)
					// Half-close so the other direction can finish.
					if tc, ok := dst.(*net.TCPConn); ok {
						tc.CloseWrite()
					}
					done <- struct{}{}
				}
				go cp(up, c)
				go cp(c, up)
				<-done
				<-done
				c.Close()
				up.Close()
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

// lockedWriter serializes writes to w with mu.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
