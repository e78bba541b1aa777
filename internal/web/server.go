// Package web serves pumi's admin web page: first-visit password, login,
// setup, inventory, images, schedules and runs, plus a small JSON API for
// what the pages do that the appliance's /api/v1 does not cover. It talks to
// the appliance only through Backend and keeps its own state (password hash,
// sessions, API tokens) through AuthStore.
package web

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
	_ "time/tzdata" // time zones must resolve on gokrazy, which has no /usr/share/zoneinfo

	"github.com/pumi-lab/pumi/assets"
	"github.com/pumi-lab/pumi/internal/schedule"
)

// Options tune the web page; the zero value (plus Auth) is usable.
type Options struct {
	// Auth keeps the password hash, sessions and tokens (required).
	Auth AuthStore
	// SecureCookies marks cookies Secure even when the request did not
	// arrive over TLS (behind a TLS-terminating proxy).
	SecureCookies bool
	// SessionTTL is how long a login lasts; default 12 h (a working day).
	SessionTTL time.Duration
	// LoginBurst attempts per client IP, then one more per LoginRefill
	// (defaults 5 and 12 s, i.e. 5 per minute); everyone together gets ten
	// times as many.
	LoginBurst  int
	LoginRefill time.Duration
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
	// BootstrapToken, when set, accepts one more bearer token besides those
	// created on the page: the appliance's own token file, which scripts
	// on the appliance's side use from the first start on (docs/api.md).
	// It must compare in constant time.
	BootstrapToken func(token string) bool
}

// Server is the web page's handler.
type Server struct {
	b     Backend
	auth  AuthStore
	opts  Options
	log   *slog.Logger
	pages map[string]*template.Template
	cats  map[Lang]catalog
	// missing collects texts a catalog lacks (the catalog test reads it).
	missing missingSet
	limit   *limiter
	mux     *http.ServeMux
	// routes lists every registered route for tests and docs.
	routes []route
}

type route struct {
	Method, Pattern string
	Public          bool
}

// New builds the web handler. Mount it at "/" next to the appliance's own
// routes (/api/v1/, /boot/, ...), which take precedence by being longer.
func New(b Backend, opts Options, log *slog.Logger) (http.Handler, error) {
	return newServer(b, opts, log)
}

func newServer(b Backend, opts Options, log *slog.Logger) (*Server, error) {
	if b == nil || opts.Auth == nil {
		return nil, errors.New("web.New: Backend and Options.Auth are required (a bug in the caller)")
	}
	if log == nil {
		log = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.SessionTTL <= 0 {
		opts.SessionTTL = 12 * time.Hour
	}
	if opts.LoginBurst <= 0 {
		opts.LoginBurst = 5
	}
	if opts.LoginRefill <= 0 {
		opts.LoginRefill = 12 * time.Second
	}
	pages, err := parsePages(assets.Web())
	if err != nil {
		return nil, err
	}
	cats, err := loadCatalogs()
	if err != nil {
		return nil, err
	}
	s := &Server{b: b, auth: opts.Auth, opts: opts, log: log, pages: pages, cats: cats,
		limit: newLimiter(opts.Now, opts.LoginBurst, opts.LoginRefill), mux: http.NewServeMux()}
	s.register()
	return s, nil
}

// ServeHTTP adds the headers every response needs and dispatches.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	// The page loads nothing from elsewhere; inline scripts are not used
	// (htmx attributes only), so a strict policy costs nothing.
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'; form-action 'self'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("X-Frame-Options", "DENY")
	s.mux.ServeHTTP(w, r)
}

// funcs are the template functions; those that depend on the request's
// language and the appliance's zone (t, when, ago, state) are bound per
// request by render on a clone of the parsed page.
var funcs = template.FuncMap{
	"bytes":   humanBytes,
	"elapsed": elapsed,
	"join":    strings.Join,
	"pct": func(a, b int64) int64 {
		if b <= 0 {
			return 0
		}
		return a * 100 / b
	},
	"stateClass": stateClass,
	"rate":       func(bps float64) string { return humanBytes(int64(bps)) + "/s" },
	"t":          func(key string, args ...any) string { return fmt.Sprintf(key, args...) },
	"when":       func(t time.Time) string { return t.String() },
	"ago":        func(t time.Time) string { return t.String() },
	"state":      func(s string) string { return s },
	"why":        func(k schedule.MissKind) string { return string(k) },
	"reason":     func(s string) string { return s },
}

func (s *Server) requestFuncs(r *http.Request) (template.FuncMap, translator, *time.Location) {
	tr := s.translator(r)
	loc := s.location(r.Context())
	now := s.opts.Now()
	return template.FuncMap{
		"t":      tr.T,
		"when":   func(t time.Time) string { return tr.When(t, loc) },
		"ago":    func(t time.Time) string { return tr.ago(now, t) },
		"state":  func(st string) string { return tr.T(cmpOr(stateWords[st], st)) },
		"why":    func(k schedule.MissKind) string { return tr.T(cmpOr(missWhy[k], string(k))) },
		"reason": tr.reason,
	}, tr, loc
}

// stateWords are the run and seat states as the page shows them; the
// catalog translates them like any other text.
var stateWords = map[string]string{
	"": "pending", "pending": "pending", "powering": "powering on", "netbooting": "network booting", "restoring": "restoring",
	"rebooting": "rebooting", "verifying": "verifying", "verified": "verified", "failed": "failed", "skipped": "skipped",
	"done": "done", "cancelled": "cancelled", "open": "running", "running": "running", "finished": "finished",
	"waiting": "waiting", "disabled": "disabled", "capturing": "capturing",
}

// missWhy is why schedule fires were missed, as the pages say it.
var missWhy = map[schedule.MissKind]string{
	schedule.MissDown:        "pumi was not running when it was due",
	schedule.MissSuperseded:  "replaced by the one catch-up run",
	schedule.MissClock:       "the clock went back; the schedule restarted from now",
	schedule.MissStartFailed: "the run could not be started",
}

func (s *Server) translator(r *http.Request) translator {
	l := pickLang(r)
	return translator{lang: l, cat: s.cats[l], missing: &s.missing}
}

// parsePages parses the layout with each page, so every page can define its
// own "title" and "content" blocks.
func parsePages(fsys fs.FS) (map[string]*template.Template, error) {
	names, err := fs.Glob(fsys, "templates/*.html")
	if err != nil {
		return nil, fmt.Errorf("web templates: %w", err)
	}
	pages := map[string]*template.Template{}
	for _, n := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if base == "layout" {
			continue
		}
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(fsys, "templates/layout.html", n)
		if err != nil {
			return nil, fmt.Errorf("web template %s: %w", n, err)
		}
		pages[base] = t
	}
	return pages, nil
}

// page is what every template gets.
type page struct {
	Lang     Lang
	Langs    []Lang
	Path     string
	Zone     string
	Title    string
	Nav      string
	CSRF     string
	LoggedIn bool
	Msg      string
	Err      string
	Data     any
}

// render writes a whole page, or only the template named by fragment.
func (s *Server) render(w http.ResponseWriter, r *http.Request, code int, name, fragment string, p page) {
	s.renderData(w, r, code, name, fragment, p)
}

// renderData executes a page's template (or one fragment of it) with data,
// in the request's language.
func (s *Server) renderData(w http.ResponseWriter, r *http.Request, code int, name, fragment string, data any) {
	base, ok := s.pages[name]
	if !ok {
		s.log.Error("web: no such template", "name", name)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	fm, tr, loc := s.requestFuncs(r)
	if p, ok := data.(page); ok {
		p.Lang, p.Langs, p.Path, p.Zone = tr.lang, Langs, r.URL.RequestURI(), loc.String()
		p.Title = tr.known(p.Title) // a fixed title is a catalog key; a built one is translated already
		// Fixed messages (wrong password, refused forms) are catalog keys;
		// a message with an error's text in it is shown as it is.
		p.Err = tr.known(p.Err)
		data = p
	}
	t, err := base.Clone()
	if err != nil {
		s.log.Error("web: template clone", "name", name, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	t.Funcs(fm)
	exec := fragment
	if exec == "" {
		exec = "layout.html"
	}
	// Render to a buffer first so a template error becomes a clean 500
	// rather than half a page.
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, exec, data); err != nil {
		s.log.Error("web: template", "name", name, "err", err)
		http.Error(w, "internal error while drawing the page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Language", string(tr.lang))
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	w.Write(buf.Bytes())
}

// who is the caller of a private route.
type who struct {
	session *Session // nil for an API token
	token   *APIToken
}

type ctxKey struct{}

func whoFrom(ctx context.Context) who {
	w, _ := ctx.Value(ctxKey{}).(who)
	return w
}

func (w who) csrf() string {
	if w.session != nil {
		return w.session.CSRF
	}
	return ""
}

const sessionCookie = "pumi_session"

// identify finds the session or API token of r, if any.
func (s *Server) identify(r *http.Request) (who, error) {
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		if s.opts.BootstrapToken != nil && s.opts.BootstrapToken(strings.TrimSpace(tok)) {
			return who{token: &APIToken{ID: "bootstrap", Name: "the appliance's api-token file"}}, nil
		}
		t, found, err := s.auth.TokenByHash(r.Context(), hashToken(strings.TrimSpace(tok)))
		if err != nil || !found {
			return who{}, err
		}
		// "Last used" helps the admin find tokens to revoke; a minute's
		// precision keeps a busy script from writing on every request.
		if now := s.opts.Now(); now.Sub(t.LastUsed) > time.Minute {
			t.LastUsed = now
			if err := s.auth.PutToken(r.Context(), t); err != nil {
				s.log.Warn("web: recording token use", "token", t.Name, "err", err)
			}
		}
		return who{token: &t}, nil
	}
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" {
		return who{}, nil
	}
	sess, found, err := s.auth.Session(r.Context(), hashToken(c.Value))
	if err != nil || !found {
		return who{}, err
	}
	if s.opts.Now().After(sess.Expires) {
		s.auth.DeleteSession(r.Context(), sess.IDHash)
		return who{}, nil
	}
	return who{session: &sess}, nil
}

func mutating(method string) bool {
	return method != http.MethodGet && method != http.MethodHead && method != http.MethodOptions
}

// crossSite reports a browser request made by another site: a second line
// of defense next to the CSRF token and SameSite=Strict.
func crossSite(r *http.Request) bool {
	if v := r.Header.Get("Sec-Fetch-Site"); v == "cross-site" || v == "same-site" {
		return true
	}
	if o := r.Header.Get("Origin"); o != "" && o != "null" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return true
		}
	}
	return false
}

// handle registers a route. Private routes need a session or an API token;
// private mutating routes also need the session's CSRF token (API tokens
// are not sent by browsers on their own, so they need none).
func (s *Server) handle(pattern string, public bool, fn http.HandlerFunc) {
	method, path, _ := strings.Cut(pattern, " ")
	s.routes = append(s.routes, route{Method: method, Pattern: path, Public: public})
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		if mutating(r.Method) && crossSite(r) {
			s.forbid(w, r, "this request came from another web site and was refused")
			return
		}
		if public {
			fn(w, r)
			return
		}
		id, err := s.identify(r)
		if err != nil {
			s.fail(w, r, fmt.Errorf("reading the login state: %w", err))
			return
		}
		if id.session == nil && id.token == nil {
			s.unauthorized(w, r)
			return
		}
		if mutating(r.Method) && id.session != nil {
			got := r.Header.Get("X-CSRF-Token")
			if got == "" {
				got = r.PostFormValue("csrf") // also parses multipart forms
			}
			if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(id.session.CSRF)) != 1 {
				s.forbid(w, r, "the form was too old or did not come from this page; reload the page and try again")
				return
			}
		}
		fn(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, id)))
	})
}

func wantsJSON(r *http.Request) bool {
	return strings.HasPrefix(r.URL.Path, "/web/api/") || strings.Contains(r.Header.Get("Accept"), "application/json")
}

func (s *Server) unauthorized(w http.ResponseWriter, r *http.Request) {
	if mutating(r.Method) || wantsJSON(r) || r.Header.Get("HX-Request") != "" {
		if r.Header.Get("HX-Request") != "" {
			w.Header().Set("HX-Redirect", "/login")
		}
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "log in first (or send Authorization: Bearer <API token>)"})
		return
	}
	http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
}

func (s *Server) forbid(w http.ResponseWriter, r *http.Request, msg string) {
	if wantsJSON(r) || r.Header.Get("HX-Request") != "" {
		writeJSON(w, http.StatusForbidden, map[string]string{"error": msg})
		return
	}
	s.render(w, r, http.StatusForbidden, "error", "", page{Title: "Refused", Err: msg})
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	s.log.Error("web", "method", r.Method, "path", r.URL.Path, "err", err)
	if wantsJSON(r) {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		return
	}
	s.render(w, r, http.StatusInternalServerError, "error", "", page{Title: "Something went wrong", Err: err.Error(), LoggedIn: true})
}

// clientIP is the TCP peer: X-Forwarded-For is not trusted, because a
// guesser would simply send a new one with every attempt.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func (s *Server) secure(r *http.Request) bool { return r.TLS != nil || s.opts.SecureCookies }

// pageFor fills the common fields of a private page.
func pageFor(r *http.Request, title, nav string, data any) page {
	return page{Title: title, Nav: nav, CSRF: whoFrom(r.Context()).csrf(), LoggedIn: true, Data: data,
		Msg: messages[r.URL.Query().Get("msg")]}
}

// messages are the confirmations a redirect can show (?msg=...); only
// these fixed texts are shown, so a link cannot put words on the page.
var messages = map[string]string{
	"saved":          "Saved.",
	"imported":       "The inventory was imported.",
	"added":          "Seat added.",
	"deleted":        "Deleted.",
	"mailsent":       "Test mail sent. Check the recipients' inboxes.",
	"started":        "Run started.",
	"startednomail":  "Run started. Mail is off: the report will not be sent; read it on the run page.",
	"startedunreach": "Run started. Some seats can be neither logged in to nor woken; they are shown as waiting.",
	"startedwarn":    "Run started. Some seats can be neither logged in to nor woken, and mail is off: read the report on the run page.",
	"cancelled":      "Run cancelled.",
	"password":       "Password changed. Other browsers were logged out.",
	"live":           "Clonezilla live imported and selected.",
	"toggled":        "Schedule updated.",
	"room":           "Room added.",
	"tokengone":      "Token revoked.",
	"secret":         "Password stored.",
	"welcome":        "Password set. Now configure pumi below.",
}

func redirect(w http.ResponseWriter, r *http.Request, to, msg string) {
	if msg != "" {
		to += "?msg=" + msg
	}
	http.Redirect(w, r, to, http.StatusSeeOther)
}

// location is the appliance's time zone (UTC when unset or unknown).
func (s *Server) location(ctx context.Context) *time.Location {
	st, err := s.b.Settings(ctx)
	if err != nil || st.TimeZone == "" {
		return time.UTC
	}
	loc, err := time.LoadLocation(st.TimeZone)
	if err != nil {
		return time.UTC
	}
	return loc
}

// nextFires is the cron preview: the next n fire times or a plain error.
func nextFires(spec string, now time.Time, loc *time.Location, n int) ([]time.Time, error) {
	sp, err := schedule.Parse(spec)
	if err != nil {
		return nil, err
	}
	return schedule.NextN(sp, now, n, loc), nil
}

// OpenURL is the address an admin opens in a browser for a listener: a
// wildcard listener ([::]:8080, 0.0.0.0:8080) is reachable on this machine as
// localhost (and from elsewhere at the machine's own address).
func OpenURL(addr net.Addr) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return "http://" + addr.String() + "/"
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "localhost"
	}
	return "http://" + net.JoinHostPort(host, port) + "/"
}
