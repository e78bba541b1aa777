package web

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/inventory"
)

// fakeClock is only for the rate limiter and session expiry: tests move
// time instead of sleeping.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type env struct {
	t     *testing.T
	srv   *Server
	b     *storeBackend
	auth  AuthStore
	ts    *httptest.Server
	clock *fakeClock
}

const testPassword = "correct horse battery"

func newEnv(t *testing.T, opts Options) *env {
	t.Helper()
	b, st := newStoreBackend(t, t.TempDir())
	clock := &fakeClock{t: time.Now()}
	opts.Auth = NewStoreAuth(st)
	if opts.Now == nil {
		opts.Now = clock.Now
	}
	srv, err := newServer(b, opts, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	return &env{t: t, srv: srv, b: b, auth: opts.Auth, ts: ts, clock: clock}
}

// client is a browser: cookies, no automatic redirects.
func (e *env) client() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func (e *env) get(c *http.Client, path string) (*http.Response, string) {
	e.t.Helper()
	resp, err := c.Get(e.ts.URL + path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func (e *env) post(c *http.Client, path string, form url.Values) (*http.Response, string) {
	e.t.Helper()
	resp, err := c.PostForm(e.ts.URL+path, form)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func csrfOf(t *testing.T, body string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no csrf field in page:\n%.400s", body)
	}
	return m[1]
}

// login sets the password on first visit (if needed) and returns a logged-in
// browser and its CSRF token.
func (e *env) login() (*http.Client, string) {
	e.t.Helper()
	c := e.client()
	resp, body := e.get(c, "/first-visit")
	if resp.StatusCode == http.StatusOK {
		resp, body = e.post(c, "/first-visit", url.Values{"csrf": {csrfOf(e.t, body)}, "password": {testPassword}, "again": {testPassword}})
		if resp.StatusCode != http.StatusSeeOther {
			e.t.Fatalf("first visit: %d %s", resp.StatusCode, body)
		}
	} else {
		_, body = e.get(c, "/login")
		resp, body = e.post(c, "/login", url.Values{"csrf": {csrfOf(e.t, body)}, "password": {testPassword}, "next": {"/"}})
		if resp.StatusCode != http.StatusSeeOther {
			e.t.Fatalf("login: %d %s", resp.StatusCode, body)
		}
	}
	_, body = e.get(c, "/settings")
	return c, csrfOf(e.t, body)
}

func concrete(pattern string) string {
	p := strings.NewReplacer("{$}", "", "{id}", "nosuch", "{mac}", "52-54-00-00-00-01").Replace(pattern)
	if strings.HasSuffix(p, "/static/") {
		p += "style.css"
	}
	return p
}

// TestRoutesRefuseWithoutAuthOrCSRF walks every registered route: private
// GETs redirect to the login page, private mutating requests without a
// session are 401, with a session but without (or with a wrong) CSRF token
// 403, from another site 403; and nothing changed.
func TestRoutesRefuseWithoutAuthOrCSRF(t *testing.T) {
	e := newEnv(t, Options{})
	c, csrf := e.login()
	ctx := context.Background()
	if _, err := e.b.AddRoom(ctx, inventory.Room{Name: "A101"}); err != nil {
		t.Fatal(err)
	}
	before := e.snapshot()
	if len(e.srv.routes) < 30 {
		t.Fatalf("only %d routes registered", len(e.srv.routes))
	}
	anon := e.client()
	for _, rt := range e.srv.routes {
		path := concrete(rt.Pattern)
		name := rt.Method + " " + rt.Pattern
		send := func(c *http.Client, csrfField, header string, extra map[string]string) *http.Response {
			form := url.Values{"mac": {"52:54:00:00:00:09"}, "name": {"x"}, "password": {testPassword}, "again": {testPassword},
				"current": {testPassword}, "spec": {"0 2 * * *"}, "csv": {"mac\n52:54:00:00:00:09\n"}}
			if csrfField != "" {
				form.Set("csrf", csrfField)
			}
			req, _ := http.NewRequest(rt.Method, e.ts.URL+path, strings.NewReader(form.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			if header != "" {
				req.Header.Set("X-CSRF-Token", header)
			}
			for k, v := range extra {
				req.Header.Set(k, v)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return resp
		}
		if rt.Public {
			if mutating(rt.Method) {
				// First visit and login need their own double-submit token.
				if r := send(anon, "", "", nil); r.StatusCode != http.StatusForbidden {
					t.Errorf("%s without pre-token: %d, want 403", name, r.StatusCode)
				}
			}
			continue
		}
		if !mutating(rt.Method) {
			r := send(anon, "", "", nil)
			if strings.HasPrefix(rt.Pattern, "/web/api/") {
				if r.StatusCode != http.StatusUnauthorized {
					t.Errorf("%s anonymous: %d, want 401", name, r.StatusCode)
				}
			} else if r.StatusCode != http.StatusSeeOther || !strings.HasPrefix(r.Header.Get("Location"), "/login") {
				t.Errorf("%s anonymous: %d to %q, want 303 to /login", name, r.StatusCode, r.Header.Get("Location"))
			}
			continue
		}
		if r := send(anon, csrf, csrf, nil); r.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s anonymous with a stolen CSRF token: %d, want 401", name, r.StatusCode)
		}
		if r := send(c, "", "", nil); r.StatusCode != http.StatusForbidden {
			t.Errorf("%s logged in, no CSRF token: %d, want 403", name, r.StatusCode)
		}
		if r := send(c, "wrong"+csrf, "", nil); r.StatusCode != http.StatusForbidden {
			t.Errorf("%s logged in, wrong CSRF token: %d, want 403", name, r.StatusCode)
		}
		if r := send(c, csrf, csrf, map[string]string{"Origin": "http://evil.example"}); r.StatusCode != http.StatusForbidden {
			t.Errorf("%s from another origin: %d, want 403", name, r.StatusCode)
		}
	}
	if after := e.snapshot(); after != before {
		t.Errorf("refused requests changed state:\nbefore %s\nafter  %s", before, after)
	}

	// The check is not vacuous: with the token the same requests get
	// through (to their own validation) and change state.
	r, _ := e.post(c, "/inventory/seats", url.Values{"csrf": {csrf}, "mac": {"52:54:00:00:00:09"}})
	if r.StatusCode != http.StatusSeeOther {
		t.Fatalf("add seat with CSRF: %d", r.StatusCode)
	}
	if e.snapshot() == before {
		t.Error("an accepted request changed nothing")
	}
}

// snapshot summarizes everything a mutating route could change.
func (e *env) snapshot() string {
	ctx := context.Background()
	seats, _ := e.b.Seats(ctx)
	rooms, _ := e.b.Rooms(ctx)
	scheds, _ := e.b.Schedules(ctx)
	runs, _ := e.b.Runs(ctx)
	st, _ := e.b.Settings(ctx)
	toks, _ := e.auth.Tokens(ctx)
	h, _ := e.auth.AdminHash(ctx)
	return strings.Join([]string{
		"seats=" + itoa(len(seats)), "rooms=" + itoa(len(rooms)), "schedules=" + itoa(len(scheds)), "runs=" + itoa(len(runs)),
		"tokens=" + itoa(len(toks)), "hash=" + string(h), "repo=" + st.Repository, "tz=" + st.TimeZone,
		"mailpw=" + boolStr(st.Mail.PasswordSet), "ssh=" + itoa(len(st.SSH)),
	}, " ")
}

func itoa(n int) string { return strconv.Itoa(n) }

func boolStr(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func TestAPITokenNeedsNoCSRF(t *testing.T) {
	e := newEnv(t, Options{})
	c, csrf := e.login()
	resp, body := e.post(c, "/tokens", url.Values{"csrf": {csrf}, "name": {"script"}})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("create token: %d", resp.StatusCode)
	}
	tok := regexp.MustCompile(`id="new-token">([^<]+)<`).FindStringSubmatch(body)
	if tok == nil {
		t.Fatalf("token not shown:\n%s", body)
	}
	do := func(method, path, token string) int {
		req, _ := http.NewRequest(method, e.ts.URL+path, strings.NewReader(`{"name":"n","spec":"0 2 * * *","target":{"rooms":["A"]},"action":{"kind":"wake"},"window":3600000000000,"enabled":true}`))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := do("PUT", "/web/api/v1/schedules/nightly", tok[1]); got != http.StatusOK {
		t.Fatalf("PUT with token: %d", got)
	}
	if toks, _ := e.auth.Tokens(context.Background()); len(toks) != 1 || toks[0].LastUsed.IsZero() {
		t.Fatalf("token use not recorded: %+v", toks)
	}
	if got := do("GET", "/web/api/v1/schedules", "nope"); got != http.StatusUnauthorized {
		t.Fatalf("GET with a wrong token: %d", got)
	}
	// Revoked tokens stop working.
	toks, _ := e.auth.Tokens(context.Background())
	if r, _ := e.post(c, "/tokens/"+toks[0].ID+"/delete", url.Values{"csrf": {csrf}}); r.StatusCode != http.StatusSeeOther {
		t.Fatalf("revoke: %d", r.StatusCode)
	}
	if got := do("GET", "/web/api/v1/schedules", tok[1]); got != http.StatusUnauthorized {
		t.Fatalf("revoked token still works: %d", got)
	}
}

func TestFirstVisitAndCookies(t *testing.T) {
	e := newEnv(t, Options{SecureCookies: true})
	c := e.client()
	// Before a password exists every page leads to the first visit.
	resp, _ := e.get(c, "/inventory")
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/login") {
		t.Fatalf("GET /inventory: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, _ = e.get(c, "/login")
	if resp.Header.Get("Location") != "/first-visit" {
		t.Fatalf("/login before a password: %q", resp.Header.Get("Location"))
	}
	// The pre-token cookie is Secure here, so the jar would not send it
	// back over http; take the token from the page and send it by hand.
	resp, body := e.get(c, "/first-visit")
	pre := csrfOf(t, body)
	send := func(pw, again string) *http.Response {
		req, _ := http.NewRequest("POST", e.ts.URL+"/first-visit", strings.NewReader(url.Values{"csrf": {pre}, "password": {pw}, "again": {again}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.AddCookie(&http.Cookie{Name: preCookie, Value: pre})
		r, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		return r
	}
	if r := send("short", "short"); r.StatusCode != http.StatusBadRequest {
		t.Fatalf("short password: %d", r.StatusCode)
	}
	if r := send(testPassword, testPassword+"x"); r.StatusCode != http.StatusBadRequest {
		t.Fatalf("different passwords: %d", r.StatusCode)
	}
	if h, _ := e.auth.AdminHash(context.Background()); h != nil {
		t.Fatal("a refused password was stored")
	}
	r := send(testPassword, testPassword)
	if r.StatusCode != http.StatusSeeOther {
		t.Fatalf("first visit: %d", r.StatusCode)
	}
	var sess *http.Cookie
	for _, ck := range r.Cookies() {
		if ck.Name == sessionCookie {
			sess = ck
		}
	}
	if sess == nil || !sess.HttpOnly || !sess.Secure || sess.SameSite != http.SameSiteStrictMode {
		t.Fatalf("session cookie %+v: want HttpOnly, Secure, SameSite=Strict", sess)
	}
	h, _ := e.auth.AdminHash(context.Background())
	if !strings.HasPrefix(string(h), "$2") || strings.Contains(string(h), testPassword) {
		t.Fatalf("stored hash %q is not bcrypt", h)
	}
	// A second first visit is refused and does not change the password.
	if r := send("another password!", "another password!"); r.StatusCode != http.StatusForbidden {
		t.Fatalf("second first visit: %d", r.StatusCode)
	}
	if h2, _ := e.auth.AdminHash(context.Background()); string(h2) != string(h) {
		t.Fatal("second first visit changed the password")
	}
}

func TestLoginRateLimit(t *testing.T) {
	e := newEnv(t, Options{LoginBurst: 3, LoginRefill: 10 * time.Second})
	e.login()
	c := e.client()
	try := func(pw string) int {
		_, body := e.get(c, "/login")
		r, _ := e.post(c, "/login", url.Values{"csrf": {csrfOf(t, body)}, "password": {pw}})
		return r.StatusCode
	}
	// login() used one attempt of the same IP (first visit).
	for i := 0; i < 2; i++ {
		if got := try("wrong password"); got != http.StatusUnauthorized {
			t.Fatalf("attempt %d: %d, want 401", i, got)
		}
	}
	if got := try(testPassword); got != http.StatusTooManyRequests {
		t.Fatalf("over the limit, right password: %d, want 429", got)
	}
	e.clock.Add(10 * time.Second)
	if got := try(testPassword); got != http.StatusSeeOther {
		t.Fatalf("after waiting: %d, want 303", got)
	}
}

func TestSessionExpiresAndLogout(t *testing.T) {
	e := newEnv(t, Options{SessionTTL: time.Hour})
	c, csrf := e.login()
	if r, _ := e.get(c, "/"); r.StatusCode != http.StatusOK {
		t.Fatalf("home: %d", r.StatusCode)
	}
	if r, _ := e.post(c, "/logout", url.Values{"csrf": {csrf}}); r.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout: %d", r.StatusCode)
	}
	if r, _ := e.get(c, "/"); r.StatusCode != http.StatusSeeOther {
		t.Fatalf("home after logout: %d", r.StatusCode)
	}
	c, _ = e.login()
	e.clock.Add(time.Hour + time.Second)
	if r, _ := e.get(c, "/"); r.StatusCode != http.StatusSeeOther {
		t.Fatalf("home after expiry: %d", r.StatusCode)
	}
}

func TestSecretsNeverShown(t *testing.T) {
	e := newEnv(t, Options{})
	c, csrf := e.login()
	const secret = "s3cret-app-password-XYZ"
	if r, _ := e.post(c, "/settings/mail-password", url.Values{"csrf": {csrf}, "mail_password": {secret}}); r.StatusCode != http.StatusSeeOther {
		t.Fatalf("store mail password: %d", r.StatusCode)
	}
	if r, _ := e.post(c, "/settings/ssh", url.Values{"csrf": {csrf}, "scope": {"room"}, "name": {"A101"}, "user": {"root"}, "password": {secret + "2"}}); r.StatusCode != http.StatusSeeOther {
		t.Fatalf("store ssh password: %d", r.StatusCode)
	}
	_, body := e.get(c, "/settings")
	if strings.Contains(body, secret) {
		t.Fatal("the settings page shows a secret")
	}
	if !strings.Contains(body, `id="mail-password-state">set<`) {
		t.Fatal("the settings page does not say the mail password is set")
	}
	req, _ := http.NewRequest("GET", e.ts.URL+"/web/api/v1/settings", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(b), secret) || !strings.Contains(string(b), `"password_set": true`) {
		t.Fatalf("settings JSON: %s", b)
	}
}

func TestImportShowsErrorsNextToRows(t *testing.T) {
	e := newEnv(t, Options{})
	c, csrf := e.login()
	bad := "mac,ip,hostname,room\n52:54:00:00:01:01,10.20.0.11,pc-01,A101\n52:54:00:00:01:zz,10.20.0.12,pc-02,A101\n"
	r, body := e.post(c, "/inventory/import", url.Values{"csrf": {csrf}, "csv": {bad}})
	if r.StatusCode != http.StatusUnprocessableEntity {
		t.Fatalf("bad CSV: %d", r.StatusCode)
	}
	row := regexp.MustCompile(`(?s)<tr class="has-error" data-line="3">.*?</tr>`).FindString(body)
	if row == "" || !strings.Contains(row, "52:54:00:00:01:zz") || !strings.Contains(row, "mac") {
		t.Fatalf("line 3 not marked with its error:\n%s", body)
	}
	if strings.Contains(body, `class="has-error" data-line="2"`) {
		t.Fatal("a good line is marked")
	}
	if seats, _ := e.b.Seats(context.Background()); len(seats) != 0 {
		t.Fatalf("%d seats imported from a bad file", len(seats))
	}
	good := strings.Replace(bad, "zz", "02", 1)
	r, body = e.post(c, "/inventory/import", url.Values{"csrf": {csrf}, "csv": {good}})
	if r.StatusCode != http.StatusOK || !strings.Contains(body, "2 added") {
		t.Fatalf("good CSV: %d\n%s", r.StatusCode, body)
	}
}

func TestCronPreview(t *testing.T) {
	e := newEnv(t, Options{})
	c, _ := e.login()
	if err := e.b.SetSettings(context.Background(), Settings{Network: Network{Mode: "dhcp"}, Netboot: Netboot{Mode: "off"}, TimeZone: "Europe/Zurich"}); err != nil {
		t.Fatal(err)
	}
	_, body := e.get(c, "/schedules/preview?spec="+url.QueryEscape("30 2 * * SAT"))
	times := regexp.MustCompile(`<li>(Sat [^<]+ 02:30) CET</li>`).FindAllStringSubmatch(body, -1)
	if len(times) != 5 || !strings.Contains(body, "Europe/Zurich") {
		t.Fatalf("preview: %s", body)
	}
	_, body = e.get(c, "/schedules/preview?spec="+url.QueryEscape("61 * * * *"))
	if !strings.Contains(body, `class="err"`) || !strings.Contains(body, "minute") {
		t.Fatalf("bad spec preview: %s", body)
	}
	// In Spanish, with Spanish day names: the same times, in Spanish.
	req, _ := http.NewRequest("GET", e.ts.URL+"/schedules/preview?spec="+url.QueryEscape("30 2 * * SÁB"), nil)
	req.Header.Set("Accept-Language", "es-ES,es;q=0.9,en;q=0.5")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	es := regexp.MustCompile(`<li>(sáb [^<]+ 02:30) CET</li>`).FindAllStringSubmatch(string(b), -1)
	if len(es) != 5 || !strings.Contains(string(b), "Próximas 5 veces (Europe/Zurich)") || es[1][1] != "sáb 12 dic 2026 02:30" && times[1][1] == "Sat 12 Dec 2026 02:30" {
		t.Fatalf("Spanish preview: %s", b)
	}
}

func TestScheduleRunCancelAndLog(t *testing.T) {
	e := newEnv(t, Options{})
	c, csrf := e.login()
	ctx := context.Background()
	e.readyForRuns()
	if _, err := e.b.ImportSeats(ctx, strings.NewReader("mac,hostname,room\n52:54:00:00:02:01,pc-1,B2\n52:54:00:00:02:02,pc-2,B2\n"), inventory.Merge); err != nil {
		t.Fatal(err)
	}
	form := url.Values{"csrf": {csrf}, "new": {"1"}, "name": {"B2 nightly"}, "spec": {"0 3 * * *"}, "kind": {"restore"},
		"image": {"LAB-B-img"}, "window": {"2h"}, "rooms": {"B2"}, "enabled": {"on"}}
	bad := url.Values{}
	for k, v := range form {
		bad[k] = v
	}
	bad.Set("spec", "0 3 * *")
	if r, body := e.post(c, "/schedules", bad); r.StatusCode != http.StatusBadRequest || !strings.Contains(body, "not saved") {
		t.Fatalf("bad spec: %d", r.StatusCode)
	}
	if r, _ := e.post(c, "/schedules", form); r.StatusCode != http.StatusSeeOther {
		t.Fatalf("save: %d", r.StatusCode)
	}
	if r, _ := e.post(c, "/schedules", form); r.StatusCode != http.StatusBadRequest {
		t.Fatalf("a second schedule with the same name: %d", r.StatusCode)
	}
	if r, _ := e.post(c, "/schedules/b2-nightly/toggle", url.Values{"csrf": {csrf}}); r.StatusCode != http.StatusSeeOther {
		t.Fatalf("toggle: %d", r.StatusCode)
	}
	if sc, _ := e.srv.findSchedule(httptest.NewRequest("GET", "/", nil), "b2-nightly"); sc.Enabled || sc.Window != 2*time.Hour {
		t.Fatalf("after toggle: %+v", sc)
	}
	r, _ := e.post(c, "/schedules/b2-nightly/run", url.Values{"csrf": {csrf}})
	loc := r.Header.Get("Location")
	if r.StatusCode != http.StatusSeeOther || !strings.HasPrefix(loc, "/runs/") {
		t.Fatalf("run now: %d %q", r.StatusCode, loc)
	}
	runID := strings.TrimSuffix(strings.TrimPrefix(loc, "/runs/"), "?msg=started")
	_, frag := e.get(c, "/runs/"+runID+"/seats")
	if !strings.Contains(frag, `hx-trigger="every 2s"`) || strings.Count(frag, "seat-state") != 2 {
		t.Fatalf("open run fragment:\n%s", frag)
	}
	if err := e.b.advance(ctx, runID, "52:54:00:00:02:01", "failed", "no answer over SSH", 0, 0); err != nil {
		t.Fatal(err)
	}
	_, logText := e.get(c, "/runs/"+runID+"/log/52:54:00:00:02:01")
	if !strings.Contains(logText, "failed: no answer over SSH") {
		t.Fatalf("log: %q", logText)
	}
	if r, _ := e.get(c, "/runs/"+runID+"/log/52:54:00:00:02:02"); r.StatusCode != http.StatusNotFound {
		t.Fatalf("missing log: %d", r.StatusCode)
	}
	if r, _ := e.post(c, "/runs/"+runID+"/cancel", url.Values{"csrf": {csrf}}); r.StatusCode != http.StatusSeeOther {
		t.Fatalf("cancel: %d", r.StatusCode)
	}
	_, frag = e.get(c, "/runs/"+runID+"/seats")
	if strings.Contains(frag, "hx-trigger") || !strings.Contains(frag, ">cancelled<") || !strings.Contains(frag, ">failed<") {
		t.Fatalf("cancelled run fragment (polling must stop, failed seat stays failed):\n%s", frag)
	}
	if r, _ := e.get(c, "/runs/nosuch"); r.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown run: %d", r.StatusCode)
	}
}

// readyForRuns sets up what a run needs: the fixture repository (LAB-A-img
// restorable, LAB-B-img too, a broken LAB-C-img), proxy netboot on a lab
// interface (so seats can be woken), a Clonezilla live, mail.
func (e *env) readyForRuns() {
	e.t.Helper()
	repo := filepath.Join(e.t.TempDir(), "images")
	if err := os.CopyFS(repo, os.DirFS("../clonezilla/testdata/repo")); err != nil {
		e.t.Fatal(err)
	}
	half := filepath.Join(repo, "room-c", "LAB-C-img")
	if err := os.CopyFS(half, os.DirFS(filepath.Join(repo, "LAB-A-img"))); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(half, "nvme0n1p2.ext4-ptcl-img.zst")); err != nil {
		e.t.Fatal(err)
	}
	st, err := e.b.Settings(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	st.Repository, st.Live = repo, "3.3.0-33"
	st.Netboot = Netboot{Mode: "proxy", Interface: "eth1"}
	st.Mail = Mail{Host: "smtp.example.org", Port: 587, From: "pumi@example.org", To: []string{"admin@example.org"}}
	if err := e.b.SetSettings(context.Background(), st); err != nil {
		e.t.Fatal(err)
	}
}
