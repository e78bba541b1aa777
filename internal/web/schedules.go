package web

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/pumi-lab/pumi/internal/inventory"
	"github.com/pumi-lab/pumi/internal/schedule"
)

type schedulesData struct {
	Schedules []scheduleRow
	Zone      string
	Missed    []schedule.MissedRecord
	// Problems refused a "run now"; Warnings are worth knowing.
	ProblemsTitle      string
	Problems, Warnings []string
}

// missedWindow is how long a missed fire stays on the pages.
const missedWindow = 14 * 24 * time.Hour

type scheduleRow struct {
	S    schedule.Schedule
	Next time.Time
}

func (s *Server) getSchedules(w http.ResponseWriter, r *http.Request) {
	s.schedulesPage(w, r, http.StatusOK, "", schedulesData{})
}

func (s *Server) schedulesPage(w http.ResponseWriter, r *http.Request, code int, msg string, d schedulesData) {
	list, err := s.b.Schedules(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if d.Missed, err = s.b.Missed(r.Context(), s.opts.Now().Add(-missedWindow)); err != nil {
		s.fail(w, r, err)
		return
	}
	loc := s.location(r.Context())
	d.Zone = loc.String()
	for _, sc := range list {
		row := scheduleRow{S: sc}
		if sc.Enabled {
			row.Next = sc.Spec.Next(s.opts.Now(), loc).In(loc)
		}
		d.Schedules = append(d.Schedules, row)
	}
	sort.Slice(d.Schedules, func(i, j int) bool { return d.Schedules[i].S.Name < d.Schedules[j].S.Name })
	p := pageFor(r, "Schedules", "schedules", d)
	if msg != "" {
		p.Msg = msg
	}
	s.render(w, r, code, "schedules", "", p)
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
	Images   []string // restorable images, for the select
	// ImageUnknown: Image is not among the restorable ones (kept, marked).
	ImageUnknown bool
	Preview      cronPreview
	Errs         map[string]string // problems beside their field
	Problems     []string          // problems of the whole schedule
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
		s.render(w, r, http.StatusNotFound, "error", "", page{Title: "Not found", LoggedIn: true, CSRF: whoFrom(r.Context()).csrf(),
			Err: s.T(r, "There is no such schedule (it may have been deleted).")})
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
	f.ImageUnknown = f.Image != "" && !slices.Contains(f.Images, f.Image)
	f.Preview = s.preview(r, f.Spec)
	title := "New schedule"
	if !f.New {
		title = s.T(r, "Edit %s", f.Name)
	}
	p := pageFor(r, title, "schedules", f)
	p.Err = errMsg
	s.render(w, r, code, "schedule", "", p)
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
		p.Err = s.T(r, "type a cron spec, e.g. 0 2 * * SAT (Saturdays at 02:00)")
		return p
	}
	times, err := nextFires(spec, s.opts.Now(), loc, 5)
	if err != nil {
		p.Err = s.specError(r, err)
		return p
	}
	for i := range times {
		times[i] = times[i].In(loc)
	}
	p.Times = times
	if len(times) == 0 {
		p.Err = s.T(r, "this spec never fires")
	}
	return p
}

// getCronPreview answers the spec field as the admin types (htmx).
func (s *Server) getCronPreview(w http.ResponseWriter, r *http.Request) {
	s.renderData(w, r, http.StatusOK, "schedule", "cron-preview", s.preview(r, r.URL.Query().Get("spec")))
}

// specError is a cron spec's problem in the page's language, with the
// parser's own detail (the spec as written, the field) after it.
func (s *Server) specError(r *http.Request, err error) string {
	return s.T(r, "This cron spec is not understood:") + " " + strings.TrimPrefix(err.Error(), "cron spec ")
}

// parseScheduleForm turns the form into a Schedule; Validate does the rest.
func (s *Server) parseScheduleForm(r *http.Request) (scheduleForm, schedule.Schedule, error) {
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
	f.Errs = map[string]string{}
	sc := schedule.Schedule{ID: f.ID, Name: f.Name, Action: schedule.Action{Kind: schedule.ActionKind(f.Kind), Image: f.Image,
		SourceSeat: f.SourceSeat}, OnlyUnverified: f.OnlyUnverified, Enabled: f.Enabled}
	spec, err := schedule.Parse(f.Spec)
	if err != nil {
		f.Errs["spec"] = s.specError(r, err)
		probs = append(probs, f.Errs["spec"])
	} else {
		f.Spec = spec.String() // Spanish names are stored in standard form
	}
	sc.Spec = spec
	win, err := time.ParseDuration(f.Window)
	if err != nil {
		f.Errs["window"] = s.T(r, "write the window like 6h or 90m")
		probs = append(probs, f.Errs["window"])
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
			f.Problems = append(f.Problems, err.Error())
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
	f, sc, err := s.parseScheduleForm(r)
	if err == nil && f.New {
		// A new schedule must not silently replace another with the same
		// name-derived ID.
		if _, ferr := s.findSchedule(r, sc.ID); ferr == nil {
			f.Errs["name"] = s.T(r, "a schedule named like %q exists already; choose another name", f.Name)
			err = fmt.Errorf("%w: %s", ErrInvalid, f.Errs["name"])
		}
	}
	var warnings []string
	if err == nil {
		// What the schedule itself names (its image, its seats) must be
		// right to be saved; what the appliance lacks today (netboot,
		// Clonezilla live, mail) may be set up before it fires: a warning.
		checks, perr := s.preflight(r.Context(), s.translator(r), sc)
		if perr != nil {
			s.fail(w, r, perr)
			return
		}
		for _, c := range checks {
			switch {
			case c.Hard && c.Field != "":
				f.Errs[c.Field] = c.Msg
				err = fmt.Errorf("%w: %s", ErrInvalid, c.Msg)
			default:
				warnings = append(warnings, c.Msg)
			}
		}
	}
	if err == nil {
		err = s.b.PutSchedule(r.Context(), sc)
	}
	if err != nil {
		if userError(err) {
			msg := s.T(r, "The schedule was not saved; see the marked fields.")
			if len(f.Errs) == 0 {
				msg = s.T(r, "The schedule was not saved:") + " " + plain(err)
			}
			s.scheduleFormPage(w, r, http.StatusBadRequest, msg, f)
			return
		}
		s.fail(w, r, err)
		return
	}
	if len(warnings) > 0 && !wantsJSON(r) {
		s.schedulesPage(w, r, http.StatusOK, "Saved.", schedulesData{Warnings: warnings})
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
	sc, err := s.findSchedule(r, r.PathValue("id"))
	if err != nil {
		s.scheduleNotFound(w, r, err)
		return
	}
	checks, err := s.preflight(r.Context(), s.translator(r), sc)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if probs := hardOnes(checks); len(probs) > 0 {
		if wantsJSON(r) {
			writeJSON(w, http.StatusConflict, map[string]any{"error": s.T(r, "The run was not started."), "problems": probs,
				"warnings": softOnes(checks)})
			return
		}
		s.schedulesPage(w, r, http.StatusConflict, "", schedulesData{ProblemsTitle: s.T(r, "The run of %s was not started", sc.Name),
			Problems: probs, Warnings: softOnes(checks)})
		return
	}
	id, err := s.b.RunNow(r.Context(), sc.ID)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			s.scheduleNotFound(w, r, err)
			return
		}
		if userError(err) {
			s.schedulesPage(w, r, http.StatusBadRequest, "", schedulesData{ProblemsTitle: s.T(r, "The run of %s was not started", sc.Name),
				Problems: []string{plain(err)}})
			return
		}
		s.fail(w, r, err)
		return
	}
	if wantsJSON(r) {
		writeJSON(w, http.StatusCreated, map[string]any{"run_id": id, "warnings": softOnes(checks)})
		return
	}
	msg, unreach, nomail := "started", false, false
	for _, c := range checks {
		unreach = unreach || !c.Hard && c.Field == "target"
		nomail = nomail || !c.Hard && c.Field == ""
	}
	switch {
	case unreach && nomail:
		msg = "startedwarn"
	case unreach:
		msg = "startedunreach"
	case nomail:
		msg = "startednomail"
	}
	redirect(w, r, "/runs/"+id, msg)
}

// ---- runs

func (s *Server) getRuns(w http.ResponseWriter, r *http.Request) {
	runs, err := s.b.Runs(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.render(w, r, http.StatusOK, "runs", "", pageFor(r, "Runs", "runs", runs))
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
			s.render(w, r, http.StatusNotFound, "error", "", page{Title: "Not found", LoggedIn: true, CSRF: whoFrom(r.Context()).csrf(),
				Err: s.T(r, "There is no such run.")})
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
	s.render(w, r, http.StatusOK, "run", "", pageFor(r, s.T(r, "Run %s", run.Name), "runs", runData{Run: run, CSRF: whoFrom(r.Context()).csrf(), Now: s.opts.Now()}))
}

// getRunSeats is the seats table alone; the run page polls it every two
// seconds while the run is open (htmx), which survives proxies and sleeping
// laptops better than a held-open stream.
func (s *Server) getRunSeats(w http.ResponseWriter, r *http.Request) {
	run, ok := s.loadRun(w, r)
	if !ok {
		return
	}
	s.renderData(w, r, http.StatusOK, "run", "run-seats", runData{Run: run, CSRF: whoFrom(r.Context()).csrf(), Now: s.opts.Now()})
}

func (s *Server) postCancelRun(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.b.CancelRun(r.Context(), id); err != nil {
		if errors.Is(err, ErrNotFound) {
			s.render(w, r, http.StatusNotFound, "error", "", page{Title: "Not found", LoggedIn: true, Err: s.T(r, "There is no such run.")})
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
			http.Error(w, s.T(r, "no log for this seat in this run"), http.StatusNotFound)
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
