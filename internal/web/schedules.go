package web

import (
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/pumi-lab/pumi/internal/inventory"
	"github.com/pumi-lab/pumi/internal/schedule"
)

type schedulesData struct {
	Schedules []scheduleRow
	Zone      string
}

type scheduleRow struct {
	S    schedule.Schedule
	Next time.Time
}

func (s *Server) getSchedules(w http.ResponseWriter, r *http.Request) {
	list, err := s.b.Schedules(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	loc := s.location(r.Context())
	d := schedulesData{Zone: loc.String()}
	for _, sc := range list {
		row := scheduleRow{S: sc}
		if sc.Enabled {
			row.Next = sc.Spec.Next(s.opts.Now(), loc).In(loc)
		}
		d.Schedules = append(d.Schedules, row)
	}
	sort.Slice(d.Schedules, func(i, j int) bool { return d.Schedules[i].S.Name < d.Schedules[j].S.Name })
	s.render(w, http.StatusOK, "schedules", "", pageFor(r, "Schedules", "schedules", d))
}

// scheduleForm is the edit form's state, as typed.
type scheduleForm struct {
	New            bool
	ID, Name, Spec string
	Kind, Image    string
	SourceSeat     string
	Rooms          map[string]bool
	Seats          string
	Window         string
	OnlyUnverified bool
	Enabled        bool

	AllRooms []inventory.Room
	Images   []string
	Preview  cronPreview
}

func formOf(sc schedule.Schedule) scheduleForm {
	f := scheduleForm{ID: sc.ID, Name: sc.Name, Spec: sc.Spec.String(), Kind: string(sc.Action.Kind), Image: sc.Action.Image,
		SourceSeat: sc.Action.SourceSeat, Rooms: map[string]bool{}, Seats: strings.Join(sc.Target.Seats, ", "),
		Window: shortDuration(sc.Window), OnlyUnverified: sc.OnlyUnverified, Enabled: sc.Enabled}
	for _, r := range sc.Target.Rooms {
		f.Rooms[r] = true
	}
	return f
}

func (s *Server) getScheduleForm(w http.ResponseWriter, r *http.Request) {
	f := scheduleForm{New: true, Kind: string(schedule.Restore), Spec: "0 2 * * SAT", Window: "6h", Enabled: true,
		Rooms: map[string]bool{}}
	if id := r.PathValue("id"); id != "" {
		sc, err := s.findSchedule(r, id)
		if err != nil {
			s.scheduleNotFound(w, r, err)
			return
		}
		f = formOf(sc)
	}
	s.scheduleFormPage(w, r, http.StatusOK, "", f)
}

func (s *Server) scheduleNotFound(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, ErrNotFound) {
		s.render(w, http.StatusNotFound, "error", "", page{Title: "Not found", LoggedIn: true, CSRF: whoFrom(r.Context()).csrf(),
			Err: "There is no such schedule (it may have been deleted)."})
		return
	}
	s.fail(w, r, err)
}

func (s *Server) findSchedule(r *http.Request, id string) (schedule.Schedule, error) {
	list, err := s.b.Schedules(r.Context())
	if err != nil {
		return schedule.Schedule{}, err
	}
	for _, sc := range list {
		if sc.ID == id {
			return sc, nil
		}
	}
	return schedule.Schedule{}, fmt.Errorf("schedule %q: %w", id, ErrNotFound)
}

func (s *Server) scheduleFormPage(w http.ResponseWriter, r *http.Request, code int, errMsg string, f scheduleForm) {
	ctx := r.Context()
	rooms, err := s.b.Rooms(ctx)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	f.AllRooms = rooms
	// The image list is a help, not a must: a schedule may name an image
	// that is not captured yet, so a repository error only empties it.
	if res, err := s.b.Images(ctx); err == nil {
		for _, im := range res.Images {
			if im.Valid {
				f.Images = append(f.Images, im.Name)
			}
		}
	}
	f.Preview = s.preview(r, f.Spec)
	title := "New schedule"
	if !f.New {
		title = "Edit " + f.Name
	}
	p := pageFor(r, title, "schedules", f)
	p.Err = errMsg
	s.render(w, code, "schedule", "", p)
}

type cronPreview struct {
	Times []time.Time
	Err   string
	Zone  string
}

func (s *Server) preview(r *http.Request, spec string) cronPreview {
	loc := s.location(r.Context())
	p := cronPreview{Zone: loc.String()}
	if strings.TrimSpace(spec) == "" {
		p.Err = "type a cron spec, e.g. 0 2 * * SAT (Saturdays at 02:00)"
		return p
	}
	times, err := nextFires(spec, s.opts.Now(), loc, 5)
	if err != nil {
		p.Err = err.Error()
		return p
	}
	for i := range times {
		times[i] = times[i].In(loc)
	}
	p.Times = times
	if len(times) == 0 {
		p.Err = "this spec never fires"
	}
	return p
}

// getCronPreview answers the spec field as the admin types (htmx).
func (s *Server) getCronPreview(w http.ResponseWriter, r *http.Request) {
	s.renderData(w, http.StatusOK, "schedule", "cron-preview", s.preview(r, r.URL.Query().Get("spec")))
}

// parseScheduleForm turns the form into a Schedule; Validate does the rest.
func parseScheduleForm(r *http.Request) (scheduleForm, schedule.Schedule, error) {
	v := func(k string) string { return strings.TrimSpace(r.PostFormValue(k)) }
	f := scheduleForm{New: v("new") != "", ID: v("id"), Name: v("name"), Spec: v("spec"), Kind: v("kind"), Image: v("image"),
		SourceSeat: v("source_seat"), Seats: v("seats"), Window: v("window"), Rooms: map[string]bool{},
		OnlyUnverified: r.PostFormValue("only_unverified") != "", Enabled: r.PostFormValue("enabled") != ""}
	r.ParseForm()
	for _, room := range r.PostForm["rooms"] {
		f.Rooms[room] = true
	}
	if f.ID == "" {
		f.ID = slug(f.Name)
	}
	var probs []string
	sc := schedule.Schedule{ID: f.ID, Name: f.Name, Action: schedule.Action{Kind: schedule.ActionKind(f.Kind), Image: f.Image,
		SourceSeat: f.SourceSeat}, OnlyUnverified: f.OnlyUnverified, Enabled: f.Enabled}
	spec, err := schedule.Parse(f.Spec)
	if err != nil {
		probs = append(probs, err.Error())
	}
	sc.Spec = spec
	win, err := time.ParseDuration(f.Window)
	if err != nil {
		probs = append(probs, fmt.Sprintf("window %q: write it like 6h or 90m", f.Window))
	}
	sc.Window = win
	for room := range f.Rooms {
		sc.Target.Rooms = append(sc.Target.Rooms, room)
	}
	sort.Strings(sc.Target.Rooms)
	for _, seat := range strings.FieldsFunc(f.Seats, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' }) {
		sc.Target.Seats = append(sc.Target.Seats, seat)
	}
	if len(probs) == 0 {
		if err := sc.Validate(); err != nil {
			probs = append(probs, err.Error())
		}
	}
	if len(probs) > 0 {
		return f, sc, fmt.Errorf("%w: %s", ErrInvalid, strings.Join(probs, "; "))
	}
	return f, sc, nil
}

// slug makes a stable ID from a schedule's name.
func slug(name string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(name) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		case b.Len() > 0 && !strings.HasSuffix(b.String(), "-"):
			b.WriteByte('-')
		}
		if b.Len() >= 48 {
			break
		}
	}
	out := strings.Trim(b.String(), "-")
	if out == "" {
		out = "schedule"
	}
	return out
}

func (s *Server) postSchedule(w http.ResponseWriter, r *http.Request) {
	f, sc, err := parseScheduleForm(r)
	if err == nil && f.New {
		// A new schedule must not silently replace another with the same
		// name-derived ID.
		if _, ferr := s.findSchedule(r, sc.ID); ferr == nil {
			err = fmt.Errorf("%w: a schedule named like %q exists already; choose another name", ErrInvalid, f.Name)
		}
	}
	if err == nil {
		err = s.b.PutSchedule(r.Context(), sc)
	}
	if err != nil {
		if userError(err) {
			s.scheduleFormPage(w, r, http.StatusBadRequest, "The schedule was not saved: "+plain(err), f)
			return
		}
		s.fail(w, r, err)
		return
	}
	redirect(w, r, "/schedules", "saved")
}

func (s *Server) postToggleSchedule(w http.ResponseWriter, r *http.Request) {
	sc, err := s.findSchedule(r, r.PathValue("id"))
	if err != nil {
		s.scheduleNotFound(w, r, err)
		return
	}
	sc.Enabled = !sc.Enabled
	if err := s.b.PutSchedule(r.Context(), sc); err != nil {
		s.fail(w, r, err)
		return
	}
	redirect(w, r, "/schedules", "toggled")
}

func (s *Server) postDeleteSchedule(w http.ResponseWriter, r *http.Request) {
	if err := s.b.DeleteSchedule(r.Context(), r.PathValue("id")); err != nil {
		s.scheduleNotFound(w, r, err)
		return
	}
	redirect(w, r, "/schedules", "deleted")
}

func (s *Server) postRunNow(w http.ResponseWriter, r *http.Request) {
	id, err := s.b.RunNow(r.Context(), r.PathValue("id"))
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			s.scheduleNotFound(w, r, err)
			return
		}
		if userError(err) {
			s.render(w, http.StatusBadRequest, "error", "", page{Title: "Not started", LoggedIn: true,
				CSRF: whoFrom(r.Context()).csrf(), Err: "The run was not started: " + plain(err)})
			return
		}
		s.fail(w, r, err)
		return
	}
	if wantsJSON(r) {
		writeJSON(w, http.StatusCreated, map[string]string{"run_id": id})
		return
	}
	redirect(w, r, "/runs/"+id, "started")
}

// ---- runs

func (s *Server) getRuns(w http.ResponseWriter, r *http.Request) {
	runs, err := s.b.Runs(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.render(w, http.StatusOK, "runs", "", pageFor(r, "Runs", "runs", runs))
}

type runData struct {
	Run  Run
	CSRF string
	Now  time.Time
}

func (s *Server) loadRun(w http.ResponseWriter, r *http.Request) (Run, bool) {
	run, err := s.b.Run(r.Context(), r.PathValue("id"))
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			s.render(w, http.StatusNotFound, "error", "", page{Title: "Not found", LoggedIn: true, CSRF: whoFrom(r.Context()).csrf(),
				Err: "There is no such run."})
			return run, false
		}
		s.fail(w, r, err)
		return run, false
	}
	return run, true
}

func (s *Server) getRun(w http.ResponseWriter, r *http.Request) {
	run, ok := s.loadRun(w, r)
	if !ok {
		return
	}
	s.render(w, http.StatusOK, "run", "", pageFor(r, "Run "+run.Name, "runs", runData{Run: run, CSRF: whoFrom(r.Context()).csrf(), Now: s.opts.Now()}))
}

// getRunSeats is the seats table alone; the run page polls it every two
// seconds while the run is open (htmx), which survives proxies and sleeping
// laptops better than a held-open stream.
func (s *Server) getRunSeats(w http.ResponseWriter, r *http.Request) {
	run, ok := s.loadRun(w, r)
	if !ok {
		return
	}
	s.renderData(w, http.StatusOK, "run", "run-seats", runData{Run: run, CSRF: whoFrom(r.Context()).csrf(), Now: s.opts.Now()})
}

func (s *Server) postCancelRun(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.b.CancelRun(r.Context(), id); err != nil {
		if errors.Is(err, ErrNotFound) {
			s.render(w, http.StatusNotFound, "error", "", page{Title: "Not found", LoggedIn: true, Err: "There is no such run."})
			return
		}
		s.fail(w, r, err)
		return
	}
	if wantsJSON(r) {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	redirect(w, r, "/runs/"+id, "cancelled")
}

func (s *Server) getSeatLog(w http.ResponseWriter, r *http.Request) {
	id, mac := r.PathValue("id"), r.PathValue("mac")
	rc, err := s.b.SeatLog(r.Context(), id, mac)
	if err != nil {
		if errors.Is(err, ErrNotFound) || errors.Is(err, inventory.ErrNotFound) {
			http.Error(w, "no log for this seat in this run", http.StatusNotFound)
			return
		}
		s.fail(w, r, err)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="pumi-%s-%s.log"`, slug(id), slug(mac)))
	copyOut(w, rc)
}

// shortDuration writes 6h rather than 6h0m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
