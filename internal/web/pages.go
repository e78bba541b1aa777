package web

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/netip"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pumi-lab/pumi/assets"
	"github.com/pumi-lab/pumi/internal/clonezilla"
	"github.com/pumi-lab/pumi/internal/inventory"
	"github.com/pumi-lab/pumi/internal/macaddr"
	"github.com/pumi-lab/pumi/internal/schedule"
)

// ErrInvalid marks a Backend refusal caused by the admin's input; the page
// shows its text next to the form instead of an error page.
var ErrInvalid = errors.New("invalid")

// ErrNotFound is returned by a Backend for a missing run, log or schedule.
var ErrNotFound = errors.New("not found")

// userError reports errors the admin can fix by changing the input.
func userError(err error) bool {
	return errors.Is(err, ErrInvalid) || errors.Is(err, inventory.ErrInvalid) || errors.Is(err, inventory.ErrDuplicate) ||
		errors.Is(err, clonezilla.ErrBadLiveZip) || errors.Is(err, clonezilla.ErrUnsafe)
}

func (s *Server) register() {
	static, _ := fs.Sub(assets.Web(), "static")
	files := http.FileServerFS(static)
	s.handle("GET /static/", true, func(w http.ResponseWriter, r *http.Request) {
		// Files are versioned by name (htmx-2.0.11.min.js), style.css is
		// small: an hour of caching is a fair trade.
		w.Header().Set("Cache-Control", "public, max-age=3600")
		http.StripPrefix("/static/", files).ServeHTTP(w, r)
	})
	s.handle("GET /first-visit", true, s.getFirstVisit)
	s.handle("POST /first-visit", true, s.postFirstVisit)
	s.handle("GET /lang/{lang}", true, s.getLang)
	s.handle("GET /login", true, s.getLogin)
	s.handle("POST /login", true, s.postLogin)
	s.handle("POST /logout", false, s.postLogout)

	s.handle("GET /{$}", false, s.getHome)
	s.handle("GET /settings", false, s.getSettings)
	s.handle("POST /settings", false, s.postSettings)
	s.handle("POST /settings/password", false, s.postPassword)
	s.handle("POST /settings/mail-password", false, s.postMailPassword)
	s.handle("POST /settings/mail-test", false, s.postMailTest)
	s.handle("POST /settings/ssh", false, s.postSSH)
	s.handle("POST /settings/live", false, s.postLive)

	s.handle("GET /inventory", false, s.getInventory)
	s.handle("POST /inventory/import", false, s.postImport)
	s.handle("POST /inventory/seats", false, s.postSeat)
	s.handle("POST /inventory/seats/delete", false, s.postDeleteSeat)
	s.handle("POST /inventory/rooms", false, s.postRoom)
	s.handle("POST /inventory/discover", false, s.postDiscover)

	s.handle("GET /images", false, s.getImages)

	s.handle("GET /schedules", false, s.getSchedules)
	s.handle("GET /schedules/new", false, s.getScheduleForm)
	s.handle("GET /schedules/preview", false, s.getCronPreview)
	s.handle("GET /schedules/{id}", false, s.getScheduleForm)
	s.handle("POST /schedules", false, s.postSchedule)
	s.handle("POST /schedules/{id}/toggle", false, s.postToggleSchedule)
	s.handle("POST /schedules/{id}/delete", false, s.postDeleteSchedule)
	s.handle("POST /schedules/{id}/run", false, s.postRunNow)

	s.handle("GET /runs", false, s.getRuns)
	s.handle("GET /runs/{id}", false, s.getRun)
	s.handle("GET /runs/{id}/seats", false, s.getRunSeats)
	s.handle("POST /runs/{id}/cancel", false, s.postCancelRun)
	s.handle("GET /runs/{id}/log/{mac}", false, s.getSeatLog)

	s.handle("GET /tokens", false, s.getTokens)
	s.handle("POST /tokens", false, s.postToken)
	s.handle("POST /tokens/{id}/delete", false, s.postDeleteToken)

	s.apiRoutes()
}

// ---- home

type homeData struct {
	Settings Settings
	Seats    int
	Rooms    int
	Runs     []Run
	Next     []nextFire
	Missed   []schedule.MissedRecord
}

type nextFire struct {
	Schedule schedule.Schedule
	At       time.Time
}

func (s *Server) getHome(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	st, err := s.b.Settings(ctx)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	seats, err := s.b.Seats(ctx)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	rooms, err := s.b.Rooms(ctx)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	runs, err := s.b.Runs(ctx)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if len(runs) > 5 {
		runs = runs[:5]
	}
	scheds, err := s.b.Schedules(ctx)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	missed, err := s.b.Missed(ctx, s.opts.Now().Add(-missedWindow))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	loc := s.location(ctx)
	var next []nextFire
	for _, sc := range scheds {
		if sc.Enabled {
			next = append(next, nextFire{sc, sc.Spec.Next(s.opts.Now(), loc).In(loc)})
		}
	}
	sort.Slice(next, func(i, j int) bool { return next[i].At.Before(next[j].At) })
	s.render(w, r, http.StatusOK, "home", "", pageFor(r, "Overview", "home",
		homeData{Settings: st, Seats: len(seats), Rooms: len(rooms), Runs: runs, Next: next, Missed: missed}))
}

// ---- settings

type settingsData struct {
	S         Settings
	PublicKey string
	KeyErr    string
	Zones     []string
	// Raw are the text fields as typed (or as stored), so a refused form
	// keeps what the admin wrote, wrong values included.
	Raw map[string]string
	// Errs are the problems by field name, shown beside the field.
	Errs map[string]string
}

var commonZones = []string{"UTC", "Europe/Madrid", "Atlantic/Canary", "America/Mexico_City", "America/Bogota", "America/Lima",
	"America/Santiago", "America/Argentina/Buenos_Aires", "America/Montevideo", "America/Caracas", "America/Guatemala",
	"Europe/London", "Europe/Berlin", "Europe/Zurich", "Europe/Paris", "Europe/Rome", "Europe/Vienna", "Europe/Amsterdam",
	"America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles", "America/Sao_Paulo",
	"Asia/Tokyo", "Asia/Kolkata", "Australia/Sydney", "Africa/Johannesburg"}

func (s *Server) getSettings(w http.ResponseWriter, r *http.Request) {
	s.settingsPage(w, r, http.StatusOK, "")
}

func (s *Server) settingsPage(w http.ResponseWriter, r *http.Request, code int, errMsg string) {
	s.settingsPageWith(w, r, code, errMsg, nil, nil, nil)
}

// rawSettings is the text form of the stored settings' typed fields.
func rawSettings(st Settings) map[string]string {
	str := func(v interface {
		IsValid() bool
		String() string
	}) string {
		if v.IsValid() {
			return v.String()
		}
		return ""
	}
	raw := map[string]string{"net_address": str(st.Network.Address), "net_gateway": str(st.Network.Gateway),
		"nb_subnet": str(st.Netboot.Subnet), "nb_start": str(st.Netboot.RangeStart), "nb_end": str(st.Netboot.RangeEnd),
		"nb_router": str(st.Netboot.Router), "mail_to": strings.Join(st.Mail.To, ", ")}
	var dns []string
	for _, d := range st.Network.DNS {
		dns = append(dns, d.String())
	}
	raw["net_dns"] = strings.Join(dns, ", ")
	if st.Mail.Port != 0 {
		raw["mail_port"] = strconv.Itoa(st.Mail.Port)
	}
	return raw
}

func (s *Server) settingsPageWith(w http.ResponseWriter, r *http.Request, code int, errMsg string, edited *Settings,
	raw, errs map[string]string) {
	st, err := s.b.Settings(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if edited != nil {
		// Show what the admin typed, not the stored values, so a typo can
		// be fixed without typing everything again.
		edited.Mail.PasswordSet = st.Mail.PasswordSet
		edited.SSH = st.SSH
		st = *edited
	}
	if raw == nil {
		raw = rawSettings(st)
	}
	d := settingsData{S: st, Zones: commonZones, Raw: raw, Errs: errs}
	if k, err := s.b.PublicKey(r.Context()); err != nil {
		d.KeyErr = err.Error()
	} else {
		d.PublicKey = k
	}
	p := pageFor(r, "Setup", "settings", d)
	p.Err = errMsg
	s.render(w, r, code, "settings", "", p)
}

// formErrors are a form's problems by field, in the page's language.
type formErrors struct {
	tr   translator
	errs map[string]string
	list []string
}

// add notes a problem with a field (English catalog key and arguments).
func (f *formErrors) add(field, key string, args ...any) {
	msg := f.tr.T(key, args...)
	if f.errs == nil {
		f.errs = map[string]string{}
	}
	if old, ok := f.errs[field]; ok {
		msg = old + "; " + msg
	}
	f.errs[field] = msg
	f.list = append(f.list, msg)
}

func (f *formErrors) err() error {
	if len(f.list) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrInvalid, strings.Join(f.list, "; "))
}

// parseSettings reads the setup form; every problem is listed at once,
// each beside its field, and raw keeps every text field as typed.
func parseSettings(r *http.Request, old Settings, tr translator) (Settings, map[string]string, *formErrors) {
	fe := &formErrors{tr: tr}
	raw := map[string]string{}
	f := func(k string) string {
		v := strings.TrimSpace(r.PostFormValue(k))
		raw[k] = v
		return v
	}
	st := old
	st.Network = Network{Mode: f("net_mode")}
	addrField := func(key, what string) netip.Addr {
		a, err := netip.ParseAddr(f(key))
		if err != nil || !a.Is4() {
			fe.add(key, "%s is not an IPv4 address", tr.T(what))
		}
		return a
	}
	switch st.Network.Mode {
	case "dhcp":
		f("net_address")
		f("net_gateway")
		f("net_dns")
	case "static":
		if p, err := netip.ParsePrefix(f("net_address")); err != nil || !p.Addr().Is4() {
			fe.add("net_address", "write the address with its prefix length, e.g. 192.168.1.20/24")
		} else {
			st.Network.Address = p
		}
		if f("net_gateway") != "" {
			st.Network.Gateway = addrField("net_gateway", "Gateway")
		}
		for _, d := range strings.FieldsFunc(f("net_dns"), func(r rune) bool { return r == ',' || r == ' ' }) {
			a, err := netip.ParseAddr(d)
			if err != nil {
				fe.add("net_dns", "%q is not an IP address", d)
				continue
			}
			st.Network.DNS = append(st.Network.DNS, a)
		}
	default:
		fe.add("net_mode", "choose DHCP or a static address")
	}
	st.Netboot = Netboot{Mode: f("nb_mode"), Interface: f("nb_interface")}
	for _, k := range []string{"nb_subnet", "nb_start", "nb_end", "nb_router"} {
		f(k)
	}
	switch st.Netboot.Mode {
	case "off":
	case "proxy", "full":
		if st.Netboot.Interface == "" {
			fe.add("nb_interface", "name the lab network interface, e.g. eth1")
		}
		if st.Netboot.Mode == "full" {
			if p, err := netip.ParsePrefix(f("nb_subnet")); err != nil || !p.Addr().Is4() {
				fe.add("nb_subnet", "the subnet must look like 10.20.0.0/24")
			} else {
				st.Netboot.Subnet = p.Masked()
			}
			st.Netboot.RangeStart = addrField("nb_start", "Range start")
			st.Netboot.RangeEnd = addrField("nb_end", "Range end")
			if f("nb_router") != "" {
				st.Netboot.Router = addrField("nb_router", "Router")
			}
			n := st.Netboot
			if n.Subnet.IsValid() && n.RangeStart.IsValid() && n.RangeEnd.IsValid() {
				if !n.Subnet.Contains(n.RangeStart) || !n.Subnet.Contains(n.RangeEnd) {
					fe.add("nb_start", "the address range must lie inside the subnet")
				} else if n.RangeEnd.Less(n.RangeStart) {
					fe.add("nb_end", "the range ends before it starts")
				}
			}
		}
	default:
		fe.add("nb_mode", "choose off, proxy or full")
	}
	st.Repository = f("repository")
	if st.Repository != "" && !strings.HasPrefix(st.Repository, "/") {
		fe.add("repository", "give the full path, starting with /")
	}
	st.Mail.Host = f("mail_host")
	st.Mail.Username = f("mail_user")
	st.Mail.From = f("mail_from")
	st.Mail.TLS = f("mail_tls")
	switch st.Mail.Language = f("mail_language"); st.Mail.Language {
	case "", "en", "es":
	default:
		fe.add("mail_language", "choose English or Spanish")
	}
	st.Mail.Port = 0
	if v := f("mail_port"); v != "" {
		p, err := strconv.Atoi(v)
		if err != nil || p < 1 || p > 65535 {
			fe.add("mail_port", "a number from 1 to 65535")
		} else {
			st.Mail.Port = p
		}
	}
	st.Mail.To = nil
	for _, t := range strings.FieldsFunc(f("mail_to"), func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == ';' }) {
		if !strings.Contains(t, "@") {
			fe.add("mail_to", "%q is not a mail address", t)
		}
		st.Mail.To = append(st.Mail.To, t)
	}
	if st.Mail.Host != "" && st.Mail.From == "" {
		fe.add("mail_from", "give the sender address")
	}
	if st.Mail.Host != "" && len(st.Mail.To) == 0 {
		fe.add("mail_to", "give at least one recipient")
	}
	st.TimeZone = f("time_zone")
	if st.TimeZone != "" {
		if _, err := time.LoadLocation(st.TimeZone); err != nil {
			fe.add("time_zone", "%q is unknown; use a name like Europe/Madrid", st.TimeZone)
		}
	}
	return st, raw, fe
}

func (s *Server) postSettings(w http.ResponseWriter, r *http.Request) {
	old, err := s.b.Settings(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	tr := s.translator(r)
	st, raw, fe := parseSettings(r, old, tr)
	err = fe.err()
	if err == nil {
		err = s.b.SetSettings(r.Context(), st)
	}
	if err != nil {
		if userError(err) {
			msg := tr.T("The setup was not saved; see the marked fields.")
			if len(fe.list) == 0 {
				msg = tr.T("The setup was not saved:") + " " + plain(err)
			}
			s.settingsPageWith(w, r, http.StatusBadRequest, msg, &st, raw, fe.errs)
			return
		}
		s.fail(w, r, err)
		return
	}
	redirect(w, r, "/settings", "saved")
}

// plain drops the "invalid: " prefix our sentinel adds.
func plain(err error) string {
	return strings.TrimPrefix(err.Error(), ErrInvalid.Error()+": ")
}

func (s *Server) postMailPassword(w http.ResponseWriter, r *http.Request) {
	v := r.PostFormValue("mail_password")
	if r.PostFormValue("clear") != "" {
		v = ""
	} else if v == "" {
		s.settingsPage(w, r, http.StatusBadRequest, s.T(r, "type the mail password (or use \"forget\" to remove it)"))
		return
	}
	if err := s.b.SetSecret(r.Context(), SecretMail, v); err != nil {
		s.fail(w, r, err)
		return
	}
	redirect(w, r, "/settings", "secret")
}

func (s *Server) postMailTest(w http.ResponseWriter, r *http.Request) {
	if err := s.b.SendTestMail(r.Context()); err != nil {
		// The mailer's errors say what to fix (wrong password, no TLS,
		// unknown host) and never contain the password.
		s.settingsPage(w, r, http.StatusBadGateway, s.T(r, "the test mail was not sent:")+" "+err.Error())
		return
	}
	redirect(w, r, "/settings", "mailsent")
}

func (s *Server) postSSH(w http.ResponseWriter, r *http.Request) {
	f := func(k string) string { return strings.TrimSpace(r.PostFormValue(k)) }
	scope, name, user := f("scope"), f("name"), f("user")
	st, err := s.b.Settings(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if scope != "room" && scope != "image" {
		s.settingsPage(w, r, http.StatusBadRequest, s.T(r, "SSH login: choose room or image"))
		return
	}
	if name == "" {
		s.settingsPage(w, r, http.StatusBadRequest, s.T(r, "SSH login: name the room or image"))
		return
	}
	idx := -1
	for i, l := range st.SSH {
		if l.Scope == scope && l.Name == name {
			idx = i
		}
	}
	if r.PostFormValue("delete") != "" {
		if idx >= 0 {
			st.SSH = append(st.SSH[:idx], st.SSH[idx+1:]...)
			if err := s.b.SetSecret(r.Context(), SSHSecretName(scope, name), ""); err != nil {
				s.fail(w, r, err)
				return
			}
		}
	} else {
		if user == "" {
			s.settingsPage(w, r, http.StatusBadRequest, s.T(r, "SSH login: give the user name"))
			return
		}
		if idx >= 0 {
			st.SSH[idx].User = user
		} else {
			st.SSH = append(st.SSH, SSHLogin{Scope: scope, Name: name, User: user})
		}
	}
	if err := s.b.SetSettings(r.Context(), st); err != nil {
		if userError(err) {
			s.settingsPage(w, r, http.StatusBadRequest, plain(err))
			return
		}
		s.fail(w, r, err)
		return
	}
	if pw := r.PostFormValue("password"); pw != "" && r.PostFormValue("delete") == "" {
		if err := s.b.SetSecret(r.Context(), SSHSecretName(scope, name), pw); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	redirect(w, r, "/settings", "saved")
}

func (s *Server) postLive(w http.ResponseWriter, r *http.Request) {
	zip := strings.TrimSpace(r.PostFormValue("zip"))
	if zip == "" {
		s.settingsPage(w, r, http.StatusBadRequest, s.T(r, "Clonezilla live: give the zip's path inside the repository"))
		return
	}
	if _, err := s.b.ImportLive(r.Context(), zip); err != nil {
		if userError(err) {
			s.settingsPage(w, r, http.StatusBadRequest, s.T(r, "Clonezilla live:")+" "+err.Error())
			return
		}
		s.fail(w, r, err)
		return
	}
	redirect(w, r, "/settings", "live")
}

// ---- inventory

type inventoryData struct {
	// Seats is the page shown: the inventory filtered by Q and Room, at
	// most seatsPerPage (10,000 rows would be megabytes of HTML).
	Seats []inventory.Seat
	Total int // all seats
	Q     string
	Room  string
	inventory.Page
	PrevURL, NextURL string
	Rooms            []inventory.Room
	Seen             []SeenMAC
	SeenErr          string
	// Import is the last rejected CSV, line by line, with the problems
	// next to each line.
	Import   []csvLine
	CSVText  string
	Found    []inventory.Found
	Iface    string
	Prefix   string
	Result   *inventory.ImportResult
	Replace  bool
	Settings Settings
}

type csvLine struct {
	N      int
	Text   string
	Errors []string
}

func (s *Server) inventoryData(r *http.Request) (inventoryData, error) {
	ctx := r.Context()
	var d inventoryData
	var err error
	all, err := s.b.Seats(ctx)
	if err != nil {
		return d, err
	}
	q := r.URL.Query()
	d.Q, d.Room = strings.TrimSpace(q.Get("q")), q.Get("room")
	n, _ := strconv.Atoi(q.Get("page"))
	d.Total = len(all)
	d.Seats, d.Page = inventory.Filter(all, d.Q, d.Room, n, seatsPerPage)
	pageURL := func(n int) string {
		v := url.Values{}
		if d.Q != "" {
			v.Set("q", d.Q)
		}
		if d.Room != "" {
			v.Set("room", d.Room)
		}
		v.Set("page", strconv.Itoa(n))
		return "/inventory?" + v.Encode()
	}
	if d.Number > 1 {
		d.PrevURL = pageURL(d.Number - 1)
	}
	if d.Number < d.Pages {
		d.NextURL = pageURL(d.Number + 1)
	}
	if d.Rooms, err = s.b.Rooms(ctx); err != nil {
		return d, err
	}
	if d.Seen, err = s.b.Seen(ctx); err != nil {
		d.SeenErr = err.Error()
	}
	known := map[string]bool{}
	for _, st := range all {
		known[st.MAC] = true
	}
	for i := range d.Seen {
		d.Seen[i].Known = d.Seen[i].Known || known[d.Seen[i].MAC]
	}
	if d.Settings, err = s.b.Settings(ctx); err != nil {
		return d, err
	}
	d.Iface = d.Settings.Netboot.Interface
	if d.Settings.Netboot.Subnet.IsValid() {
		d.Prefix = d.Settings.Netboot.Subnet.String()
	}
	return d, nil
}

func (s *Server) getInventory(w http.ResponseWriter, r *http.Request) {
	d, err := s.inventoryData(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.render(w, r, http.StatusOK, "inventory", "", pageFor(r, "Inventory", "inventory", d))
}

func (s *Server) inventoryPage(w http.ResponseWriter, r *http.Request, code int, errMsg string, edit func(*inventoryData)) {
	d, err := s.inventoryData(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if edit != nil {
		edit(&d)
	}
	p := pageFor(r, "Inventory", "inventory", d)
	p.Err = errMsg
	s.render(w, r, code, "inventory", "", p)
}

// csvInput is the uploaded file, or else the pasted text.
func csvInput(r *http.Request) (string, error) {
	if err := r.ParseMultipartForm(maxUpload); err != nil && !errors.Is(err, http.ErrNotMultipart) {
		return "", fmt.Errorf("%w: the upload could not be read (at most %d MB): %v", ErrInvalid, maxUpload>>20, err)
	}
	if f, _, err := r.FormFile("file"); err == nil {
		defer f.Close()
		b, err := io.ReadAll(io.LimitReader(f, maxUpload+1))
		if err != nil {
			return "", err
		}
		if len(b) > maxUpload {
			return "", fmt.Errorf("%w: the file is larger than %d MB", ErrInvalid, maxUpload>>20)
		}
		if len(strings.TrimSpace(string(b))) > 0 {
			return string(b), nil
		}
	}
	return r.FormValue("csv"), nil
}

const maxUpload = 8 << 20

// seatsPerPage keeps the inventory page small at any inventory size.
const seatsPerPage = 100

func (s *Server) postImport(w http.ResponseWriter, r *http.Request) {
	text, err := csvInput(r)
	if err != nil {
		if userError(err) {
			s.inventoryPage(w, r, http.StatusBadRequest, plain(err), nil)
			return
		}
		s.fail(w, r, err)
		return
	}
	if strings.TrimSpace(text) == "" {
		s.inventoryPage(w, r, http.StatusBadRequest, s.T(r, "choose a CSV file or paste the rows"), nil)
		return
	}
	mode := inventory.Merge
	if r.FormValue("mode") == "replace" {
		mode = inventory.Replace
	}
	res, err := s.b.ImportSeats(r.Context(), strings.NewReader(text), mode)
	var ie *inventory.ImportError
	if errors.As(err, &ie) {
		s.inventoryPage(w, r, http.StatusUnprocessableEntity,
			s.T(r, "Nothing was imported: %d problem(s). Fix the marked lines below and import again.", len(ie.Rows)),
			func(d *inventoryData) {
				d.Import = annotate(text, ie.Rows)
				d.CSVText = text
				d.Replace = mode == inventory.Replace
			})
		return
	}
	if err != nil {
		if userError(err) {
			s.inventoryPage(w, r, http.StatusBadRequest, s.T(r, "Nothing was imported:")+" "+err.Error(), func(d *inventoryData) { d.CSVText = text })
			return
		}
		s.fail(w, r, err)
		return
	}
	s.inventoryPage(w, r, http.StatusOK, "", func(d *inventoryData) { d.Result = &res })
}

// annotate puts each row error next to its line; errors without a line
// (the whole file) go first.
func annotate(text string, rows []inventory.RowError) []csvLine {
	lines := strings.Split(strings.ReplaceAll(text, "\r\n", "\n"), "\n")
	for len(lines) > 0 && strings.TrimSpace(lines[len(lines)-1]) == "" {
		lines = lines[:len(lines)-1]
	}
	out := make([]csvLine, 0, len(lines)+1)
	var general []string
	byLine := map[int][]string{}
	for _, re := range rows {
		msg := re.Reason
		if re.Field != "" {
			msg = re.Field + ": " + re.Reason
		}
		if re.Line < 1 || re.Line > len(lines) {
			general = append(general, msg)
			continue
		}
		byLine[re.Line] = append(byLine[re.Line], msg)
	}
	if len(general) > 0 {
		out = append(out, csvLine{N: 0, Text: "(whole file)", Errors: general})
	}
	for i, l := range lines {
		out = append(out, csvLine{N: i + 1, Text: l, Errors: byLine[i+1]})
	}
	return out
}

func (s *Server) postSeat(w http.ResponseWriter, r *http.Request) {
	f := func(k string) string { return strings.TrimSpace(r.PostFormValue(k)) }
	seat := inventory.Seat{MAC: f("mac"), Hostname: f("hostname"), Room: f("room"), SSHUser: f("ssh_user")}
	if v := f("ip"); v != "" {
		ip, err := netip.ParseAddr(v)
		if err != nil {
			s.inventoryPage(w, r, http.StatusBadRequest, s.T(r, "IP address %q is not valid", v), nil)
			return
		}
		seat.IP = ip
	}
	if _, err := s.b.AddSeat(r.Context(), seat); err != nil {
		if userError(err) {
			s.inventoryPage(w, r, http.StatusBadRequest, s.T(r, "The seat was not added:")+" "+err.Error(), nil)
			return
		}
		s.fail(w, r, err)
		return
	}
	redirect(w, r, "/inventory", "added")
}

func (s *Server) postDeleteSeat(w http.ResponseWriter, r *http.Request) {
	m, err := macaddr.Parse(r.PostFormValue("mac"))
	if err != nil {
		s.inventoryPage(w, r, http.StatusBadRequest, err.Error(), nil)
		return
	}
	if err := s.b.DeleteSeat(r.Context(), m.String()); err != nil && !errors.Is(err, inventory.ErrNotFound) {
		s.fail(w, r, err)
		return
	}
	redirect(w, r, "/inventory", "deleted")
}

func (s *Server) postRoom(w http.ResponseWriter, r *http.Request) {
	room := inventory.Room{Name: strings.TrimSpace(r.PostFormValue("name")), Description: strings.TrimSpace(r.PostFormValue("description"))}
	if _, err := s.b.AddRoom(r.Context(), room); err != nil {
		if userError(err) {
			s.inventoryPage(w, r, http.StatusBadRequest, s.T(r, "The room was not added:")+" "+err.Error(), nil)
			return
		}
		s.fail(w, r, err)
		return
	}
	redirect(w, r, "/inventory", "room")
}

func (s *Server) postDiscover(w http.ResponseWriter, r *http.Request) {
	iface := strings.TrimSpace(r.PostFormValue("iface"))
	pfx, err := netip.ParsePrefix(strings.TrimSpace(r.PostFormValue("prefix")))
	if iface == "" || err != nil || !pfx.Addr().Is4() {
		s.inventoryPage(w, r, http.StatusBadRequest, s.T(r, "Discovery: give the lab interface and a network like 10.20.0.0/24"), nil)
		return
	}
	found, err := s.b.Discover(r.Context(), iface, pfx.Masked())
	if err != nil {
		// A sweep fails on a wrong interface or a missing permission:
		// both are for the admin to fix, so show the error on the page.
		s.inventoryPage(w, r, http.StatusBadRequest, s.T(r, "Discovery failed:")+" "+err.Error(), nil)
		return
	}
	s.inventoryPage(w, r, http.StatusOK, "", func(d *inventoryData) {
		d.Found, d.Iface, d.Prefix = found, iface, pfx.Masked().String()
	})
}

// ---- images

type imagesData struct {
	Repository string
	Result     clonezilla.ScanResult
	Valid      int
}

func (s *Server) getImages(w http.ResponseWriter, r *http.Request) {
	st, err := s.b.Settings(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	d := imagesData{Repository: st.Repository}
	p := pageFor(r, "Images", "images", &d)
	if st.Repository == "" {
		p.Err = "No image repository is set yet. Set it on the setup page."
		s.render(w, r, http.StatusOK, "images", "", p)
		return
	}
	res, err := s.b.Images(r.Context())
	if err != nil {
		p.Err = "The repository could not be read: " + err.Error()
		s.render(w, r, http.StatusOK, "images", "", p)
		return
	}
	d.Result = res
	for _, im := range res.Images {
		if im.Valid {
			d.Valid++
		}
	}
	s.render(w, r, http.StatusOK, "images", "", p)
}

// ---- tokens

type tokensData struct {
	Tokens []APIToken
	New    string // shown once, right after creation
}

func (s *Server) getTokens(w http.ResponseWriter, r *http.Request) {
	s.tokensPage(w, r, http.StatusOK, "", "")
}

func (s *Server) tokensPage(w http.ResponseWriter, r *http.Request, code int, errMsg, fresh string) {
	toks, err := s.auth.Tokens(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	p := pageFor(r, "API tokens", "tokens", tokensData{Tokens: toks, New: fresh})
	p.Err = errMsg
	s.render(w, r, code, "tokens", "", p)
}

func (s *Server) postToken(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimSpace(r.PostFormValue("name"))
	if name == "" || len(name) > 100 {
		s.tokensPage(w, r, http.StatusBadRequest, s.T(r, "give the token a name of 1 to 100 characters (what script uses it)"), "")
		return
	}
	tok, err := randomToken()
	if err != nil {
		s.fail(w, r, err)
		return
	}
	id, err := randomToken()
	if err != nil {
		s.fail(w, r, err)
		return
	}
	t := APIToken{ID: id[:12], Name: name, Hash: hashToken(tok), Created: s.opts.Now()}
	if err := s.auth.PutToken(r.Context(), t); err != nil {
		s.fail(w, r, err)
		return
	}
	if wantsJSON(r) {
		writeJSON(w, http.StatusCreated, map[string]string{"id": t.ID, "name": t.Name, "token": tok})
		return
	}
	s.tokensPage(w, r, http.StatusOK, "", tok)
}

func (s *Server) postDeleteToken(w http.ResponseWriter, r *http.Request) {
	if err := s.auth.DeleteToken(r.Context(), r.PathValue("id")); err != nil {
		s.fail(w, r, err)
		return
	}
	redirect(w, r, "/tokens", "tokengone")
}
