package seatjob

import (
	"bufio"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/pumi-lab/pumi/internal/atomicfile"
	"github.com/pumi-lab/pumi/internal/boot"
	"github.com/pumi-lab/pumi/internal/clonezilla"
	"github.com/pumi-lab/pumi/internal/history"
	"github.com/pumi-lab/pumi/internal/store"
)

// MaxReportLog bounds an uploaded Clonezilla log; real ones are tens of KB.
const MaxReportLog = 8 << 20

// Bounds of the ocs_server listener: what a visitor can make pumi hold.
const (
	ocsLinesPerConn = 16 // Clonezilla sends one line per job
	ocsConnsPerAddr = 4
	ocsConnsTotal   = 64
	ocsConnTimeout  = 30 * time.Second
)

// ReportHandler is what Clonezilla's ocs_prerun2 ("started") and
// ocs_postrun1 ("finished", with /var/log/clonezilla.log as the body) call:
// GET or POST /api/v1/clonezilla/report?token=…&status=started|finished.
// A report needs this boot's token and must come from the seat's address on
// record; anything else is 403 and changes nothing.
func (j *Jobs) ReportHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodPost {
			http.Error(w, "use GET or POST", http.StatusMethodNotAllowed)
			return
		}
		token := r.URL.Query().Get("token")
		status := r.URL.Query().Get("status")
		if status != "started" && status != "finished" {
			http.Error(w, "status must be started or finished", http.StatusBadRequest)
			return
		}
		var logData []byte
		if r.Method == http.MethodPost {
			b, err := io.ReadAll(io.LimitReader(r.Body, MaxReportLog+1))
			if err != nil {
				http.Error(w, "reading log: "+err.Error(), http.StatusBadRequest)
				return
			}
			if len(b) > MaxReportLog {
				http.Error(w, "log too large", http.StatusRequestEntityTooLarge)
				return
			}
			logData = b
		}
		client := boot.RemoteAddr(r.RemoteAddr)
		if err := j.Report(r.Context(), token, status, client, logData); err != nil {
			code := http.StatusInternalServerError
			if errors.Is(err, ErrBadToken) || errors.Is(err, ErrNotSeat) {
				code = http.StatusForbidden
			}
			j.refused("clonezilla report refused", "client", client, "status", status, "err", err)
			http.Error(w, err.Error(), code)
			return
		}
		fmt.Fprintln(w, "ok")
	})
}

// Report applies a Clonezilla report from client to the job whose current
// token is token.
func (j *Jobs) Report(ctx context.Context, token, status string, client netip.Addr, logData []byte) error {
	if clonezilla.CheckToken(token) != nil {
		return ErrBadToken
	}
	err := j.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		var job Job
		found := false
		err := bucket.ForEach(tx, func(_ string, v Job) error {
			if v.Token != "" && subtle.ConstantTimeCompare([]byte(v.Token), []byte(token)) == 1 {
				job, found = v, true
			}
			return nil
		})
		if err != nil {
			return err
		}
		if !found || !(job.State == Booted || job.State == Running) {
			return ErrBadToken
		}
		addr, err := j.cfg.Addr(tx, job.MAC)
		if err != nil || addr != client.Unmap() {
			return fmt.Errorf("report for %s from %s: %w", job.MAC, client, ErrNotSeat)
		}
		now := j.cfg.Now().UTC()
		job.Updated = now
		switch status {
		case "started":
			if job.State == Running {
				return nil // a retried report
			}
			job.State, job.StartedAt = Running, now
			if err := bucket.Put(tx, job.MAC, job); err != nil {
				return err
			}
			return history.Add(tx, history.Event{MAC: job.MAC, RunID: job.Key, Kind: "clonezilla-started",
				Message: fmt.Sprintf("Clonezilla mounted the repository and started %s of %s", job.Action, job.Image)})
		default: // finished
			if len(logData) > 0 {
				name, err := j.saveLog(job, logData)
				if err != nil {
					return err
				}
				job.LogFile = name
			}
			ok, reason := Judge(job, logData)
			if !ok && job.McastBoot && job.Demoted != "" {
				// It left the multicast session (refused, dropped, late):
				// not a failure of the seat, the restore starts over by
				// unicast at its next boot (Clonezilla reboots it now).
				job.State, job.Reason, job.Token, job.McastBoot = Pending, "", "", false
				if err := bucket.Put(tx, job.MAC, job); err != nil {
					return err
				}
				return history.Add(tx, history.Event{MAC: job.MAC, RunID: job.Key, Kind: "multicast",
					Message: "Clonezilla left the multicast session (" + job.Demoted + "); the restore starts over by unicast"})
			}
			if ok && job.Action == Capture {
				if err := j.publish(ctx, job); err != nil {
					ok, reason = false, "captured, not published: "+err.Error()
				}
			}
			if ok {
				job.State, job.Reason = Done, ""
			} else {
				job.State, job.Reason = Failed, reason
			}
			job.Token = "" // this boot's token has done its work
			if err := bucket.Put(tx, job.MAC, job); err != nil {
				return err
			}
			msg := fmt.Sprintf("Clonezilla finished %s of %s: %s", job.Action, job.Image, job.State)
			if !ok {
				msg += " (" + reason + ")"
			}
			if job.Ending != "" {
				msg += " (after its job ended: " + job.Ending + ")"
			}
			return history.Add(tx, history.Event{MAC: job.MAC, RunID: job.Key, Kind: "clonezilla-finished", Message: msg})
		}
	})
	if err == nil {
		j.changed(ctx)
	}
	return err
}

var failLine = regexp.MustCompile(`(?i)(\*\*\*fail\*\*\*|failed to restore|failed to save|image dir does not exist|no such file or directory.*partimag|unable to find target|mount\.nfs:)[^\n]*`)

// Judge decides whether a finished job succeeded. ocs-live-run-menu does not
// hand ocs-sr's exit status to postruns, so the verdict comes from the log and
// Clonezilla's success report: its ocs_server line on TCP 6461 (sent only
// after success, before the postrun) or, when that line did not arrive, the
// "Sending info" line ocs-sr writes into the same log. Success needs one of
// the two naming the job's image and no failure line in the log.
func Judge(job Job, logData []byte) (bool, string) {
	if m := failLine.Find(logData); m != nil {
		return false, "Clonezilla: " + strings.TrimSpace(string(m))
	}
	if job.OCSLine != "" {
		return true, ""
	}
	if line, ok := clonezilla.ReportFromLog(logData); ok {
		if line.Image == path.Base(job.Image) && line.Success() {
			return true, ""
		}
		return false, "Clonezilla reported: " + line.Report
	}
	return false, "Clonezilla finished without reporting success (no ocs_server status line, none in its log); see its log"
}

func (j *Jobs) saveLog(job Job, data []byte) (string, error) {
	dir := filepath.Join(j.cfg.LogDir, job.Key)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("log folder: %w", err)
	}
	name := fmt.Sprintf("%s-clonezilla-%d.log", strings.ReplaceAll(job.MAC, ":", "-"), job.Boots)
	if err := atomicfile.Write(filepath.Join(dir, name), data, 0o600); err != nil {
		return "", err
	}
	return filepath.Join(job.Key, name), nil
}

// ocsLimits bounds the ocs_server listener's connections.
type ocsLimits struct {
	mu      sync.Mutex
	perAddr map[netip.Addr]int
	total   int
}

// warnLimit rate-limits the log lines a visitor can cause (refused boot
// scripts, reports, 6461 lines): at most 10 a minute, then one line with the
// count of those suppressed.
type warnLimit struct {
	mu          sync.Mutex
	windowStart time.Time
	logged      int
	suppressed  int
}

func (o *ocsLimits) init() { o.perAddr = map[netip.Addr]int{} }

func (o *ocsLimits) acquire(a netip.Addr) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.total >= ocsConnsTotal || o.perAddr[a] >= ocsConnsPerAddr {
		return false
	}
	o.total++
	o.perAddr[a]++
	return true
}

func (o *ocsLimits) release(a netip.Addr) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.total--
	if o.perAddr[a]--; o.perAddr[a] <= 0 {
		delete(o.perAddr, a)
	}
}

// refused logs a refusal of something a client sent, rate-limited.
func (j *Jobs) refused(msg string, args ...any) {
	w := &j.warn
	now := time.Now()
	w.mu.Lock()
	if now.Sub(w.windowStart) > time.Minute {
		if w.suppressed > 0 {
			args = append(args, "suppressed_since_last", w.suppressed)
		}
		w.windowStart, w.logged, w.suppressed = now, 0, 0
	}
	if w.logged >= 10 {
		w.suppressed++
		w.mu.Unlock()
		return
	}
	w.logged++
	w.mu.Unlock()
	j.log.Warn(msg, args...)
}

// ServeOCS accepts Clonezilla's ocs_server status lines on TCP 6461 until ctx
// ends. The line has no room for a token, so it is accepted only from the
// address on record of a seat with an active job, must name that seat's MAC,
// that address and the job's image, and it never completes a job by itself:
// it is the success signal that the tokened "finished" report needs.
// Connections from addresses with no job are closed at once.
func (j *Jobs) ServeOCS(ctx context.Context, l net.Listener) error {
	go func() { <-ctx.Done(); l.Close() }()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("ocs_server listener: %w", err)
		}
		from := boot.RemoteAddr(c.RemoteAddr().String())
		if _, ok := j.byAddr(from); !ok {
			j.refused("ocs_server: connection from an address with no job; closed", "from", from)
			c.Close()
			continue
		}
		if !j.ocs.acquire(from) {
			j.refused("ocs_server: too many connections; closed", "from", from)
			c.Close()
			continue
		}
		go func() {
			defer j.ocs.release(from)
			j.handleOCS(ctx, c, from)
		}()
	}
}

func (j *Jobs) handleOCS(ctx context.Context, c net.Conn, from netip.Addr) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(ocsConnTimeout))
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 0, 4096), clonezilla.MaxStatusLine)
	for n := 0; n < ocsLinesPerConn && sc.Scan(); n++ {
		line, err := clonezilla.ParseStatusLine(sc.Text())
		if err != nil {
			j.refused("ocs_server: malformed status line", "from", from, "err", err)
			return
		}
		if err := j.ocsLine(ctx, line, from); err != nil {
			j.refused("ocs_server: status line ignored", "from", from, "err", err)
		}
	}
}

// ocsLine records a success line for the job it names, if everything on it
// matches pumi's records. Only a change is written, so repeats cost nothing.
func (j *Jobs) ocsLine(ctx context.Context, line clonezilla.StatusLine, from netip.Addr) error {
	if line.ClientIP != from {
		return fmt.Errorf("line names %s, sent from %s", line.ClientIP, from)
	}
	mac := line.MAC.String()
	job, ok := j.byAddr(from)
	if !ok || job.MAC != mac {
		return fmt.Errorf("no active job for %s at %s", mac, from)
	}
	if line.Image != path.Base(job.Image) {
		return fmt.Errorf("line names image %q, the job is %s", line.Image, job.Image)
	}
	if !line.Success() {
		return fmt.Errorf("status line without success: %s", line.Report)
	}
	changed := false
	err := j.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		changed = false
		v, ok, err := bucket.Get(tx, mac)
		if err != nil {
			return err
		}
		if !ok || v.Key != job.Key || !(v.State == Booted || v.State == Running) {
			return fmt.Errorf("no active job for %s", mac)
		}
		if addr, err := j.cfg.Addr(tx, mac); err != nil || addr != from {
			return fmt.Errorf("%s: %w", mac, ErrNotSeat)
		}
		if v.OCSLine == line.String() {
			return nil
		}
		v.OCSLine, v.Bytes, v.Updated = line.String(), ReportedBytes(line), j.cfg.Now().UTC()
		changed = true
		if err := bucket.Put(tx, mac, v); err != nil {
			return err
		}
		return history.Add(tx, history.Event{MAC: mac, RunID: v.Key, Kind: "ocs-status", Message: "Clonezilla reported: " + line.Report})
	})
	if err == nil && changed {
		j.changed(ctx)
	}
	return err
}

// ReportedBytes adds up the "used" sizes of a status line's partitions
// ("0.1 GB", "512 MB"); Clonezilla rounds them, so this is approximate.
func ReportedBytes(l clonezilla.StatusLine) int64 {
	var total float64
	for _, p := range l.Parts {
		var v float64
		var unit string
		if _, err := fmt.Sscanf(strings.TrimSpace(p.Used), "%g %s", &v, &unit); err != nil || v < 0 {
			continue
		}
		mult := map[string]float64{"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[strings.ToUpper(unit)]
		total += v * mult
	}
	if total > 1<<62 {
		return 0
	}
	return int64(total)
}

// WriteLogs appends the Clonezilla logs that mac's seat uploaded for the jobs
// whose key starts with keyPrefix (a run's ID: its attempts are "<run>#<n>"),
// each under a header, to w.
func (j *Jobs) WriteLogs(w io.Writer, keyPrefix, mac string) error {
	matches, err := filepath.Glob(filepath.Join(j.cfg.LogDir, keyPrefix+"*", strings.ReplaceAll(mac, ":", "-")+"-clonezilla-*.log"))
	if err != nil {
		return err
	}
	for _, m := range matches {
		data, err := os.ReadFile(m)
		if err != nil {
			continue
		}
		fmt.Fprintf(w, "\n--- Clonezilla log %s ---\n", filepath.Base(filepath.Dir(m))+"/"+filepath.Base(m))
		w.Write(data)
	}
	return nil
}
