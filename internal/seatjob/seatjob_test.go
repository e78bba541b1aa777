package seatjob

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/boot"
	"github.com/pumi-lab/pumi/internal/clonezilla"
	"github.com/pumi-lab/pumi/internal/store"
)

// addrsFunc is a fake of pumi's address records (Config.Addr): MAC → address.
type addrsFunc func(mac string) (netip.Addr, error)

const (
	macA = "52:54:00:00:00:0a"
	macB = "52:54:00:00:00:0b"
	macC = "52:54:00:00:00:0c" // in the inventory without an address
)

var (
	addrA   = netip.MustParseAddr("127.0.0.11")
	addrB   = netip.MustParseAddr("127.0.0.12")
	visitor = netip.MustParseAddr("127.0.0.66")
)

func records(mac string) (netip.Addr, error) {
	switch mac {
	case macA:
		return addrA, nil
	case macB:
		return addrB, nil
	case macC:
		return netip.Addr{}, ErrNoAddress
	}
	return netip.Addr{}, ErrUnknownSeat
}

type rig struct {
	jobs    *Jobs
	st      *store.Store
	changes atomic.Int64
}

func newRig(t *testing.T, addrs addrsFunc) *rig {
	t.Helper()
	st, err := store.Open(t.Context(), filepath.Join(t.TempDir(), "state"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	r := &rig{st: st}
	repo, err := filepath.Abs("../clonezilla/testdata/repo")
	if err != nil {
		t.Fatal(err)
	}
	r.jobs, err = New(t.Context(), Config{Store: st, LogDir: t.TempDir(),
		Addr: func(_ *store.Tx, mac string) (netip.Addr, error) { return addrs(mac) },
		Env: func(context.Context) (Env, error) {
			return Env{Base: "http://127.0.0.1:8080", Server: netip.MustParseAddr("127.0.0.1"), NFSPort: 2049,
				Live: "3.3.0-33-amd64", Repository: repo}, nil
		},
		Changed: func() { r.changes.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *rig) start(t *testing.T, mac, key string) {
	t.Helper()
	if _, err := r.jobs.Start(t.Context(), Request{Key: key, MAC: mac, Action: Restore, Image: "LAB-A-img", Disk: "1st-disk"}); err != nil {
		t.Fatal(err)
	}
}

func (r *rig) job(t *testing.T, mac string) Job {
	t.Helper()
	j, err := r.jobs.Get(t.Context(), mac, "")
	if err != nil {
		t.Fatal(err)
	}
	return j
}

var tokenRE = regexp.MustCompile(`pumi_token=([A-Za-z0-9_-]+)`)

func (r *rig) boot(t *testing.T, mac string, from netip.Addr) (boot.Decision, string) {
	t.Helper()
	m, _ := net.ParseMAC(mac)
	d, err := r.jobs.Decide(t.Context(), boot.Machine{MAC: m, Addr: from})
	if err != nil {
		t.Fatal(err)
	}
	tok := ""
	if sm := tokenRE.FindStringSubmatch(d.Cmdline); sm != nil {
		tok = sm[1]
	}
	return d, tok
}

func TestDecideTrustsOnlyTheSeatsAddress(t *testing.T) {
	r := newRig(t, records)
	r.start(t, macA, "run1#1")
	for _, c := range []struct {
		name   string
		mac    string
		from   netip.Addr
		linux  bool
		reason string
	}{
		{"visitor asks for seat A", macA, visitor, false, "nothing to do"},
		{"seat B asks for seat A", macA, addrB, false, "nothing to do"},
		{"no source address", macA, netip.Addr{}, false, "nothing to do"},
		{"seat B has no job", macB, addrB, false, "nothing to do"},
		{"unknown MAC", "52:54:00:99:99:99", visitor, false, "unknown MAC"},
		{"seat A from its own address", macA, addrA, true, "restore LAB-A-img"},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := r.job(t, macA)
			d, tok := r.boot(t, c.mac, c.from)
			if (d.Action == boot.Linux) != c.linux || !strings.Contains(d.Reason, c.reason) {
				t.Fatalf("decision %+v, want linux=%v reason ~ %q", d, c.linux, c.reason)
			}
			after := r.job(t, macA)
			if !c.linux && (tok != "" || after != before) {
				t.Fatalf("a refused boot handed out a token or changed the job: %+v -> %+v", before, after)
			}
			if c.linux && (tok == "" || after.Boots != before.Boots+1 || after.State != Booted || after.Token != tok) {
				t.Fatalf("the seat's boot: token %q, job %+v", tok, after)
			}
		})
	}
}

func TestNoAddressOnRecordIsNotRestorable(t *testing.T) {
	r := newRig(t, records)
	_, err := r.jobs.Start(t.Context(), Request{Key: "k", MAC: macC, Action: Restore, Image: "LAB-A-img"})
	if err == nil || !strings.Contains(err.Error(), "no address on record") {
		t.Fatalf("Start for a seat without an address: %v", err)
	}
	if _, err := r.jobs.Get(t.Context(), macC, ""); err != ErrNoJob {
		t.Fatalf("a refused Start left a job: %v", err)
	}
}

func TestTokensArePerBoot(t *testing.T) {
	r := newRig(t, records)
	r.start(t, macA, "run1#1")
	_, tok1 := r.boot(t, macA, addrA)
	_, tok2 := r.boot(t, macA, addrA)
	if tok1 == "" || tok1 == tok2 {
		t.Fatalf("tokens %q, %q: want two different", tok1, tok2)
	}
	ctx := t.Context()
	if err := r.jobs.Report(ctx, tok1, "started", addrA, nil); err != ErrBadToken {
		t.Fatalf("the first boot's token after a second boot: %v, want ErrBadToken", err)
	}
	if err := r.jobs.Report(ctx, tok2, "started", visitor, nil); err == nil {
		t.Fatal("the current token from another address was accepted")
	}
	if j := r.job(t, macA); j.State != Booted {
		t.Fatalf("refused reports changed the job: %+v", j)
	}
	if err := r.jobs.Report(ctx, tok2, "started", addrA, nil); err != nil {
		t.Fatal(err)
	}
	if j := r.job(t, macA); j.State != Running || j.Boots != 2 {
		t.Fatalf("after started: %+v", j)
	}
}

// TestReportWakesTheEngine: Changed (the runs engine's Poke) is called before
// the report's answer leaves, so the engine hears of it at once, not at its
// next tick.
func TestReportWakesTheEngine(t *testing.T) {
	r := newRig(t, records)
	r.start(t, macA, "run1#1")
	_, tok := r.boot(t, macA, addrA)
	srv := httptest.NewServer(r.jobs.ReportHandler())
	defer srv.Close()
	before := r.changes.Load()
	// httptest listens on 127.0.0.1; the seat's records say 127.0.0.1 here.
	r.jobs.cfg.Addr = func(_ *store.Tx, mac string) (netip.Addr, error) { return netip.MustParseAddr("127.0.0.1"), nil }
	t0 := time.Now()
	resp, err := http.Post(srv.URL+"/?token="+tok+"&status=started", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || r.changes.Load() == before {
		t.Fatalf("report: %d, changes %d -> %d", resp.StatusCode, before, r.changes.Load())
	}
	if d := time.Since(t0); d > time.Second {
		t.Errorf("report took %v", d)
	}
}

// TestCancelWhileWritingKeepsNFS: a run's window closing during ocs-sr must
// not cut the repository away from a disk being written.
func TestCancelWhileWritingKeepsNFS(t *testing.T) {
	r := newRig(t, records)
	ctx := t.Context()
	r.start(t, macA, "run1#1")
	r.start(t, macB, "run1#1")
	_, tokA := r.boot(t, macA, addrA)
	r.boot(t, macB, addrB)
	if err := r.jobs.Report(ctx, tokA, "started", addrA, nil); err != nil {
		t.Fatal(err)
	}
	jA, err := r.jobs.Cancel(ctx, macA, "run1#1", "window closed")
	if err != nil || jA.Ending == "" {
		t.Fatalf("cancel of a writing job: %+v %v", jA, err)
	}
	if _, err := r.jobs.Cancel(ctx, macB, "run1#1", "window closed"); err != nil {
		t.Fatal(err)
	}
	if !r.jobs.AllowClient(addrA, ExportImages, false) {
		t.Fatal("a writing seat lost NFS when its job was ended")
	}
	if r.jobs.AllowClient(addrB, ExportImages, false) {
		t.Fatal("a seat whose Clonezilla had not started keeps NFS after its job ended")
	}
	if d, _ := r.boot(t, macA, addrA); d.Action != boot.Exit {
		t.Fatalf("an ended job still boots Clonezilla: %+v", d)
	}
	// Clonezilla finishes: the outcome is recorded, NFS closes.
	if err := r.jobs.Report(ctx, tokA, "finished", addrA, []byte("Sending info: 1 Unicast restored LAB-A-img, /dev/sda1, success, 1 MB; to 127.0.0.1:6461\n")); err != nil {
		t.Fatal(err)
	}
	if j := r.job(t, macA); j.State != Done {
		t.Fatalf("the outcome after the end: %+v", j)
	}
	if r.jobs.AllowClient(addrA, ExportImages, false) {
		t.Fatal("NFS stays open after Clonezilla finished")
	}
}

// TestOCSLinesAndFloodAreBounded: only a line from the seat's address, naming
// it, its MAC and its job's image counts; 1,500 bad lines hardly grow the
// state file.
func TestOCSLinesAndFloodAreBounded(t *testing.T) {
	r := newRig(t, records)
	r.start(t, macA, "run1#1")
	r.start(t, macB, "run1#1")
	r.boot(t, macA, addrA)
	r.boot(t, macB, addrB)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go r.jobs.ServeOCS(ctx, l)
	send := func(from netip.Addr, lines string) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: from.AsSlice()}}
		c, err := d.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprint(c, lines)
		c.Close()
	}
	line := func(addr netip.Addr, mac, img string) string {
		return fmt.Sprintf("%s,%s,,,,Unicast restored %s, sda1, success, 0.1 GB, 0.02 mins, 5.1 GB/min;\n", addr, mac, img)
	}
	size := func() int64 {
		st, err := os.Stat(r.st.Path())
		if err != nil {
			t.Fatal(err)
		}
		return st.Size()
	}
	before := size()
	bad := []string{line(addrA, macB, "LAB-A-img"), line(addrA, macA, "LAB-B-img"), line(addrB, macA, "LAB-A-img"), "garbage\n"}
	n := 0
	for n < 1500 {
		var b strings.Builder
		for i := 0; i < ocsLinesPerConn && n < 1500; i++ {
			b.WriteString(bad[n%len(bad)])
			n++
		}
		send(addrA, b.String())
		send(visitor, line(visitor, macA, "LAB-A-img"))
	}
	time.Sleep(200 * time.Millisecond)
	if j := r.job(t, macA); j.OCSLine != "" {
		t.Fatalf("a bad line was accepted: %+v", j)
	}
	if j := r.job(t, macB); j.OCSLine != "" {
		t.Fatalf("seat A's address set seat B's line: %+v", j)
	}
	grew := size() - before
	t.Logf("FIGURE 1,500 bad 6461 lines (+%d from a visitor): state file grew %d bytes", n/ocsLinesPerConn, grew)
	if grew >= 1<<20 {
		t.Errorf("state file grew %d bytes for 1,500 bad lines, want < 1 MB", grew)
	}
	send(addrA, line(addrA, macA, "LAB-A-img"))
	deadline := time.Now().Add(3 * time.Second)
	for r.job(t, macA).OCSLine == "" {
		if time.Now().After(deadline) {
			t.Fatal("the seat's own good line was not recorded")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLostFinishedReportIsRetried: the "finished" report of a restore that
// ended while pumi was down (restarting, updating) must reach pumi when it
// is back, or the seat would be restored again. The postrun command of the
// real command line runs with GNU wget against a port that answers only
// after three seconds.
func TestLostFinishedReportIsRetried(t *testing.T) {
	if _, err := exec.LookPath("wget"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("wget is needed (CI must provide it: see .ci/run)")
		}
		t.Skip("wget not installed")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close() // pumi is down
	loop := netip.MustParseAddr("127.0.0.1")
	r := newRig(t, func(mac string) (netip.Addr, error) { return loop, nil })
	r.jobs.cfg.Env = func(context.Context) (Env, error) {
		repo, _ := filepath.Abs("../clonezilla/testdata/repo")
		return Env{Base: fmt.Sprintf("http://127.0.0.1:%d", port), Server: loop, NFSPort: 2049, Live: "3.3.0-33-amd64", Repository: repo}, nil
	}
	r.start(t, macA, "run1#1")
	d, tok := r.boot(t, macA, loop)
	if err := r.jobs.Report(t.Context(), tok, "started", loop, nil); err != nil {
		t.Fatal(err)
	}
	post := regexp.MustCompile(`ocs_postrun1="([^"]*)"`).FindStringSubmatch(d.Cmdline)
	if post == nil {
		t.Fatalf("no ocs_postrun1 in %s", d.Cmdline)
	}
	logFile := filepath.Join(t.TempDir(), "clonezilla.log")
	os.WriteFile(logFile, []byte("Sending info: 1 Unicast restored LAB-A-img, /dev/sda1, success, 1 MB; to 127.0.0.1:6461\n"), 0o644)
	cmdText := strings.ReplaceAll(post[1], "/var/log/clonezilla.log", logFile)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", cmdText)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	back, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.StripPrefix("/api/v1/clonezilla/report", r.jobs.ReportHandler())}
	go srv.Serve(back)
	defer srv.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("postrun: %v %s", err, out.String())
	}
	if j := r.job(t, macA); j.State != Done {
		t.Fatalf("after pumi came back: %+v (wget: %s)", j, out.String())
	}
}

func TestJudge(t *testing.T) {
	logged := []byte("Sending info:   1 Unicast restored LAB-A-img, /dev/nvme0n1p1, success, 12.8 MB = 25067 Blocks, .044 mins; to 10.88.0.1:6461... done!\nFinished!\n")
	for _, c := range []struct {
		name string
		job  Job
		log  []byte
		ok   bool
	}{
		{"status line", Job{Image: "LAB-A-img", OCSLine: "10.0.0.5 52:54:00:00:00:01 Unicast restored LAB-A-img, /dev/sda1, success"}, nil, true},
		{"logged report", Job{Image: "room/LAB-A-img"}, logged, true},
		{"logged report of another image", Job{Image: "LAB-B-img"}, logged, false},
		{"logged failure", Job{Image: "LAB-A-img"}, bytes.ReplaceAll(logged, []byte("success"), []byte("***FAIL***")), false},
		{"nothing", Job{Image: "LAB-A-img"}, []byte("Finished!\n"), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if ok, reason := Judge(c.job, c.log); ok != c.ok || !ok && reason == "" {
				t.Errorf("Judge = %v %q, want %v", ok, reason, c.ok)
			}
		})
	}
}

func TestReportedBytes(t *testing.T) {
	l, err := clonezilla.ParseStatusLine("10.99.0.23,52:54:00:ab:cd:ef,,,,Unicast restored LAB-A-img, nvme0n1p1, success, 0.1 GB, 0.02 mins, 5.1 GB/min; nvme0n1p2, success, 512 MB, 0.3 mins, 4.0 GB/min;")
	if err != nil {
		t.Fatal(err)
	}
	if got := ReportedBytes(l); got != 612_000_000 {
		t.Errorf("ReportedBytes = %d, want 612000000", got)
	}
}

// TestCaptureFolderAndPublish: a capture writes into its own folder of the
// capture area only; a good capture is published under its name, never over
// an existing image, and a bad one stays where it was written.
func TestCaptureFolderAndPublish(t *testing.T) {
	repo := t.TempDir()
	if err := os.CopyFS(repo, os.DirFS("../clonezilla/testdata/repo")); err != nil {
		t.Fatal(err)
	}
	r := newRig(t, records)
	r.jobs.cfg.Env = func(context.Context) (Env, error) {
		return Env{Base: "http://127.0.0.1:8080", Server: netip.MustParseAddr("127.0.0.1"), NFSPort: 2049, Live: "3.3.0-33-amd64", Repository: repo}, nil
	}
	ctx := t.Context()
	for _, c := range []struct {
		mac, image string
		copyFrom   string // the image Clonezilla "saved" ("" = nothing)
		wantState  State
		reason     string
	}{
		{macA, "NEW-img", "LAB-A-img", Done, ""},
		{macB, "LAB-A-img", "LAB-A-img", Failed, "already exists"},
	} {
		addr, _ := records(c.mac)
		if _, err := r.jobs.Start(ctx, Request{Key: "cap#1", MAC: c.mac, Action: Capture, Image: c.image, Disk: "sda"}); err != nil {
			t.Fatal(err)
		}
		_, tok := r.boot(t, c.mac, addr)
		dir, ok := r.jobs.CaptureDir(addr)
		if !ok || !strings.HasPrefix(dir, filepath.Join(repo, CaptureArea)) {
			t.Fatalf("capture folder %q %v", dir, ok)
		}
		if _, ok := r.jobs.CaptureDir(visitor); ok {
			t.Fatal("a visitor got a capture folder")
		}
		if err := os.CopyFS(filepath.Join(dir, c.image), os.DirFS(filepath.Join(repo, c.copyFrom))); err != nil {
			t.Fatal(err)
		}
		if err := r.jobs.Report(ctx, tok, "finished", addr, []byte("Sending info: 1 Saved "+c.image+", /dev/sda1, success, 1 MB; to 127.0.0.1:6461\n")); err != nil {
			t.Fatal(err)
		}
		j := r.job(t, c.mac)
		if j.State != c.wantState || !strings.Contains(j.Reason, c.reason) {
			t.Fatalf("%s: %s %q", c.image, j.State, j.Reason)
		}
	}
	if _, err := os.Stat(filepath.Join(repo, "NEW-img", "parts")); err != nil {
		t.Fatalf("the good capture was not published: %v", err)
	}
}
