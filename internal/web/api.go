package web

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/pumi-lab/pumi/internal/schedule"
)

// apiRoutes is the JSON API for what the pages do beyond the appliance's
// /api/v1 (schedules, runs, cron preview). It lives under /web/api/v1 so it
// cannot collide with the appliance's routes; see docs/api.md.
func (s *Server) apiRoutes() {
	s.handle("GET /web/api/v1/cron", false, func(w http.ResponseWriter, r *http.Request) {
		p := s.preview(r, r.URL.Query().Get("spec"))
		if p.Err != "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": p.Err})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"zone": p.Zone, "next": p.Times})
	})
	s.handle("GET /web/api/v1/schedules", false, func(w http.ResponseWriter, r *http.Request) {
		list, err := s.b.Schedules(r.Context())
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if list == nil {
			list = []schedule.Schedule{}
		}
		writeJSON(w, http.StatusOK, list)
	})
	s.handle("PUT /web/api/v1/schedules/{id}", false, func(w http.ResponseWriter, r *http.Request) {
		var sc schedule.Schedule
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&sc); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "request body: " + err.Error()})
			return
		}
		if sc.ID == "" {
			sc.ID = r.PathValue("id")
		}
		if sc.ID != r.PathValue("id") {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "the id in the body differs from the one in the path"})
			return
		}
		if err := sc.Validate(); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		if err := s.b.PutSchedule(r.Context(), sc); err != nil {
			if userError(err) {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
				return
			}
			s.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, sc)
	})
	s.handle("DELETE /web/api/v1/schedules/{id}", false, func(w http.ResponseWriter, r *http.Request) {
		if err := s.b.DeleteSchedule(r.Context(), r.PathValue("id")); err != nil {
			s.apiErr(w, r, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	s.handle("POST /web/api/v1/schedules/{id}/run", false, s.postRunNow)
	s.handle("GET /web/api/v1/runs", false, func(w http.ResponseWriter, r *http.Request) {
		runs, err := s.b.Runs(r.Context())
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if runs == nil {
			runs = []Run{}
		}
		writeJSON(w, http.StatusOK, runs)
	})
	s.handle("GET /web/api/v1/runs/{id}", false, func(w http.ResponseWriter, r *http.Request) {
		run, err := s.b.Run(r.Context(), r.PathValue("id"))
		if err != nil {
			s.apiErr(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, run)
	})
	s.handle("POST /web/api/v1/runs/{id}/cancel", false, s.postCancelRun)
	s.handle("GET /web/api/v1/settings", false, func(w http.ResponseWriter, r *http.Request) {
		st, err := s.b.Settings(r.Context())
		if err != nil {
			s.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, st)
	})
	s.handle("POST /web/api/v1/tokens", false, s.postToken)
}

func (s *Server) apiErr(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, ErrNotFound):
		writeJSON(w, http.StatusNotFound, map[string]string{"error": err.Error()})
	case userError(err):
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
	default:
		s.fail(w, r, err)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func copyOut(w io.Writer, r io.Reader) {
	// The status line is out already; a failed copy can only be cut short.
	io.Copy(w, r)
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return elapsed(t, now) + " ago"
}

// elapsed is a short duration between two times ("3 min", "2 h 5 min").
func elapsed(from, to time.Time) string {
	if from.IsZero() {
		return "—"
	}
	if to.IsZero() {
		to = time.Now()
	}
	d := to.Sub(from).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%d s", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%d min %d s", int(d.Minutes()), int(d.Seconds())%60)
	default:
		return fmt.Sprintf("%d h %d min", int(d.Hours()), int(d.Minutes())%60)
	}
}

// stateClass maps a seat or run state to a colour class.
func stateClass(state string) string {
	switch strings.ToLower(state) {
	case "verified", "done", "finished":
		return "ok"
	case "failed", "cancelled":
		return "bad"
	case "pending", "skipped", "":
		return "idle"
	}
	return "busy"
}
