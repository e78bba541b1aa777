package appliance

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
	"time"

	"github.com/pumi-lab/pumi/internal/atomicfile"
	"github.com/pumi-lab/pumi/internal/clonezilla"
	"github.com/pumi-lab/pumi/internal/store"
)

// maxReportLog bounds an uploaded Clonezilla log; real ones are tens of KB.
const maxReportLog = 8 << 20

var errBadToken = errors.New("unknown or expired report token")

// handleReport is what Clonezilla's ocs_prerun2 ("started") and ocs_postrun1
// ("finished", with /var/log/clonezilla.log as the body) call. Only the
// per-run, per-seat token from the seat's own kernel command line is
// accepted, so no other host can change a seat's state.
func (a *App) handleReport(w http.ResponseWriter, r *http.Request) {
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
		b, err := io.ReadAll(io.LimitReader(r.Body, maxReportLog+1))
		if err != nil {
			http.Error(w, "reading log: "+err.Error(), http.StatusBadRequest)
			return
		}
		if len(b) > maxReportLog {
			http.Error(w, "log too large", http.StatusRequestEntityTooLarge)
			return
		}
		logData = b
	}
	client := remoteIP(r.RemoteAddr)
	if err := a.report(r.Context(), token, status, client, logData); err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, errBadToken) {
			code = http.StatusForbidden
		}
		a.log.Warn("clonezilla report refused", "client", client, "status", status, "err", err)
		http.Error(w, err.Error(), code)
		return
	}
	fmt.Fprintln(w, "ok")
}

// report applies a Clonezilla report to the seat the token belongs to.
func (a *App) report(ctx context.Context, token, status string, client netip.Addr, logData []byte) error {
	if clonezilla.CheckToken(token) != nil {
		return errBadToken
	}
	return a.st.Update(ctx, func(tx *store.Tx) error {
		var asg Assignment
		found := false
		err := assignmentBucket.ForEach(tx, func(_ string, v Assignment) error {
			if subtle.ConstantTimeCompare([]byte(v.Token), []byte(token)) == 1 {
				asg, found = v, true
			}
			return nil
		})
		if err != nil {
			return err
		}
		if !found || !asg.Active() {
			return errBadToken
		}
		now := time.Now().UTC()
		asg.Updated = now
		if client.IsValid() {
			asg.ClientIP = client.String()
		}
		switch status {
		case "started":
			asg.State = StateRunning
			asg.StartedAt = now
			if err := assignmentBucket.Put(tx, asg.MAC, asg); err != nil {
				return err
			}
			return addEvent(tx, Event{MAC: asg.MAC, RunID: asg.RunID, Kind: "clonezilla-started",
				Message: fmt.Sprintf("Clonezilla mounted the repository and started %s of %s", asg.Action, asg.Image)})
		default: // finished
			if len(logData) > 0 {
				name, err := a.saveLog(asg, logData)
				if err != nil {
					return err
				}
				asg.LogFile = name
			}
			ok, reason := judge(asg, logData)
			if ok {
				asg.State, asg.Reason = StateDone, ""
			} else {
				asg.State, asg.Reason = StateFailed, reason
			}
			if err := assignmentBucket.Put(tx, asg.MAC, asg); err != nil {
				return err
			}
			msg := fmt.Sprintf("Clonezilla finished %s of %s: %s", asg.Action, asg.Image, asg.State)
			if !ok {
				msg += " (" + reason + ")"
			}
			return addEvent(tx, Event{MAC: asg.MAC, RunID: asg.RunID, Kind: "clonezilla-finished", Message: msg})
		}
	})
}

var failLine = regexp.MustCompile(`(?i)(\*\*\*fail\*\*\*|failed to restore|failed to save|image dir does not exist|no such file or directory.*partimag|unable to find target|mount\.nfs:)[^\n]*`)

// judge decides whether a finished job succeeded. ocs-live-run-menu does not
// hand ocs-sr's exit status to postruns, so the verdict comes from the
// ocs_server status line (sent only after success, before the postrun) and
// from the log: success needs the status line and no failure line in the log.
func judge(asg Assignment, logData []byte) (bool, string) {
	if m := failLine.Find(logData); m != nil {
		return false, "Clonezilla: " + strings.TrimSpace(string(m))
	}
	if asg.OCSLine != "" {
		return true, ""
	}
	// No status line on 6461: the log holds what ocs-sr meant to send.
	if line, ok := clonezilla.ReportFromLog(logData); ok {
		if line.Image == path.Base(asg.Image) && line.Success() {
			return true, ""
		}
		return false, "Clonezilla reported: " + line.Report
	}
	return false, "Clonezilla finished without reporting success (no ocs_server status line, none in its log); see its log"
}

func (a *App) saveLog(asg Assignment, data []byte) (string, error) {
	dir := filepath.Join(a.st.Dir(), "logs", asg.RunID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("log folder: %w", err)
	}
	name := fmt.Sprintf("%s-clonezilla-%d.log", strings.ReplaceAll(asg.MAC, ":", "-"), asg.Boots)
	if err := atomicfile.Write(filepath.Join(dir, name), data, 0o600); err != nil {
		return "", err
	}
	return filepath.Join(asg.RunID, name), nil
}

// serveOCS accepts Clonezilla's ocs_server status lines on TCP 6461. The line
// has no room for a token, so it is only accepted from the address it names,
// for a MAC with an active assignment, and it never completes a seat by
// itself: it is the success signal that the tokened "finished" report needs.
func (a *App) serveOCS(ctx context.Context, l net.Listener) error {
	go func() { <-ctx.Done(); l.Close() }()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("ocs_server listener: %w", err)
		}
		go a.handleOCS(ctx, c)
	}
}

func (a *App) handleOCS(ctx context.Context, c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 0, 4096), clonezilla.MaxStatusLine)
	from := remoteIP(c.RemoteAddr().String())
	for sc.Scan() {
		line, err := clonezilla.ParseStatusLine(sc.Text())
		if err != nil {
			a.log.Warn("ocs_server: malformed status line", "from", from, "err", err)
			return
		}
		if line.ClientIP != from {
			a.log.Warn("ocs_server: status line names another address; ignored", "from", from, "claims", line.ClientIP)
			continue
		}
		err = a.st.Update(ctx, func(tx *store.Tx) error {
			asg, ok, err := assignmentBucket.Get(tx, line.MAC.String())
			if err != nil {
				return err
			}
			if !ok || !asg.Active() {
				return fmt.Errorf("no active job for %s", line.MAC)
			}
			if !line.Success() {
				return addEvent(tx, Event{MAC: asg.MAC, RunID: asg.RunID, Kind: "ocs-status", Message: "Clonezilla status line without success: " + line.Report})
			}
			asg.OCSLine = line.String()
			asg.Bytes = reportedBytes(line)
			asg.Updated = time.Now().UTC()
			if err := assignmentBucket.Put(tx, asg.MAC, asg); err != nil {
				return err
			}
			return addEvent(tx, Event{MAC: asg.MAC, RunID: asg.RunID, Kind: "ocs-status", Message: "Clonezilla reported: " + line.Report})
		})
		if err != nil {
			a.log.Warn("ocs_server: status line ignored", "from", from, "err", err)
		}
	}
}

func remoteIP(hostport string) netip.Addr {
	ap, err := netip.ParseAddrPort(hostport)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// reportedBytes adds up the "used" sizes of a status line's partitions
// ("0.1 GB", "512 MB"); Clonezilla rounds them, so this is approximate.
func reportedBytes(l clonezilla.StatusLine) int64 {
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
