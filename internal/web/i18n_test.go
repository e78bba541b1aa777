package web

import (
	"context"
	"html"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/inventory"
	"github.com/pumi-lab/pumi/internal/schedule"
)

// keyPatterns find the texts the code hands to a translator: in templates
// {{t "…"}}, in Go T(r, "…"), tr.T("…"), form and preflight problems.
var keyPatterns = []*regexp.Regexp{
	regexp.MustCompile(`\bt "((?:[^"\\]|\\.)*)"`),
	regexp.MustCompile(`\.T\((?:r, )?"((?:[^"\\]|\\.)*)"`),
	regexp.MustCompile(`fe\.add\("[a-z_]+", "((?:[^"\\]|\\.)*)"`),
	regexp.MustCompile(`(?:hard|soft)\("[a-z]*", "((?:[^"\\]|\\.)*)"`),
	regexp.MustCompile(`pageFor\(r, "((?:[^"\\]|\\.)*)"`),
	regexp.MustCompile(`Title: "((?:[^"\\]|\\.)*)"`),
}

// TestCatalogHasEveryText reads the templates and the package's Go files
// for every text given to a translator, adds the texts of the fixed maps
// (flash messages, states, missed-fire reasons, what a seat waits for),
// and fails on any the Spanish catalog lacks or leaves empty.
func TestCatalogHasEveryText(t *testing.T) {
	cats, err := loadCatalogs()
	if err != nil {
		t.Fatal(err)
	}
	es := cats[Spanish]
	keys := map[string]string{} // key → where
	files, _ := filepath.Glob("../../assets/web/templates/*.html")
	gofiles, _ := filepath.Glob("*.go")
	for _, f := range append(files, gofiles...) {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, re := range keyPatterns {
			for _, m := range re.FindAllStringSubmatch(string(b), -1) {
				k := m[1]
				if strings.Contains(k, `\"`) {
					k = strings.ReplaceAll(k, `\"`, `"`)
				}
				keys[k] = f
			}
		}
	}
	for _, v := range messages {
		keys[v] = "messages"
	}
	for _, v := range stateWords {
		keys[v] = "stateWords"
	}
	for _, v := range missWhy {
		keys[v] = "missWhy"
	}
	for _, st := range []string{"pending", "powering", "netbooting", "rebooting", "verifying", "other"} {
		keys[SeatProgress{State: st}.WaitsFor()] = "WaitsFor"
	}
	for _, k := range []schedule.ActionKind{schedule.Restore, schedule.Capture, schedule.Verify, schedule.Wake, schedule.Shutdown} {
		keys[string(k)] = "action kinds ({{t .Action}})"
	}
	keys["room"], keys["image"], keys["(whole file)"] = "SSH scope", "SSH scope", "annotate"
	for _, p := range reasonParts {
		keys[p] = "reasonParts"
	}
	for _, e := range []error{checkNewPassword("short", "short"), checkNewPassword(strings.Repeat("x", 80), ""), checkNewPassword("long enough pw", "other")} {
		keys[e.Error()] = "checkNewPassword"
	}
	if len(keys) < 300 {
		t.Fatalf("found only %d texts: the patterns no longer match the code", len(keys))
	}
	var missing []string
	for k, where := range keys {
		if strings.TrimSpace(es[k]) == "" {
			missing = append(missing, where+": "+k)
		}
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Fatalf("%d text(s) have no Spanish in i18n/es.json:\n%s", len(missing), strings.Join(missing, "\n"))
	}
	// Format verbs must match, or a page would print %!d(MISSING).
	verbs := regexp.MustCompile(`%[-+# 0-9.]*[a-zA-Z%]`)
	for k, v := range es {
		if a, b := verbs.FindAllString(k, -1), verbs.FindAllString(v, -1); !slices.Equal(a, b) {
			t.Errorf("catalog %q → %q: verbs %v and %v differ", k, v, a, b)
		}
	}
}

// TestEveryPageInBothLanguages renders every page (with data: seats, a
// run with a waiting seat, schedules, a missed fire, refused forms) in
// Spanish and in English. It fails on a text the catalog lacks at run time
// and on a Spanish page that shows an English sentence of the catalog.
func TestEveryPageInBothLanguages(t *testing.T) {
	e := newEnv(t, Options{})
	c, csrf := e.login()
	ctx := context.Background()
	e.readyForRuns()
	if _, err := e.b.ImportSeats(ctx, strings.NewReader("mac,ip,hostname,room,ssh_user\n52:54:00:00:02:01,10.20.0.11,pc-1,B2,alumno\n52:54:00:00:02:02,10.20.0.12,pc-2,B2,alumno\n"), inventory.Merge); err != nil {
		t.Fatal(err)
	}
	form := url.Values{"csrf": {csrf}, "new": {"1"}, "name": {"B2 nightly"}, "spec": {"0 3 * * SAB"}, "kind": {"restore"},
		"image": {"LAB-B-img"}, "window": {"2h"}, "rooms": {"B2"}, "enabled": {"on"}}
	if r, body := e.post(c, "/schedules", form); r.StatusCode != http.StatusSeeOther {
		t.Fatalf("save: %d %s", r.StatusCode, body)
	}
	r, _ := e.post(c, "/schedules/b2-nightly/run", url.Values{"csrf": {csrf}})
	runPath, _, _ := strings.Cut(r.Header.Get("Location"), "?")
	runID := strings.TrimPrefix(runPath, "/runs/")
	if err := e.b.changeRun(ctx, runID, func(run *Run) error {
		run.Seats[0].State, run.Seats[0].Reason = "powering", "reboot: ssh: unable to authenticate; check the room's or image's SSH credentials, and that pumi's public key is in the image's authorized_keys"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	book := schedule.Book{St: e.b.st}
	if err := book.RecordMissed(ctx, schedule.Missed{ScheduleID: "b2-nightly", Name: "B2 nightly", Count: 2, Kind: schedule.MissDown,
		Fires: []time.Time{e.clock.Now().Add(-48 * time.Hour), e.clock.Now().Add(-24 * time.Hour)}, Reason: "down"}, e.clock.Now()); err != nil {
		t.Fatal(err)
	}

	type req struct {
		name, method, path string
		form               url.Values
	}
	pages := []req{
		{"overview", "GET", "/", nil},
		{"setup", "GET", "/settings", nil},
		{"setup refused", "POST", "/settings", url.Values{"net_mode": {"static"}, "net_address": {"x"}, "nb_mode": {"full"},
			"nb_interface": {"eth1"}, "nb_subnet": {"10.20.0.0/24"}, "nb_start": {"10.20.0.9"}, "nb_end": {"10.20.0.1"},
			"mail_host": {"smtp.example.org"}, "mail_port": {"99999"}, "mail_to": {"nobody"}, "time_zone": {"Mars/Base"}, "repository": {"rel"}}},
		{"inventory", "GET", "/inventory", nil},
		{"inventory filtered", "GET", "/inventory?q=zzz", nil},
		{"inventory bad CSV", "POST", "/inventory/import", url.Values{"csv": {"mac,ip\nnot-a-mac,10.20.0.300\n"}}},
		{"images", "GET", "/images", nil},
		{"schedules", "GET", "/schedules", nil},
		{"schedule form", "GET", "/schedules/b2-nightly", nil},
		{"new schedule refused", "POST", "/schedules", url.Values{"new": {"1"}, "name": {"Other"}, "spec": {"0 3 * * XYZ"},
			"kind": {"restore"}, "image": {"NOPE-img"}, "window": {"2"}, "rooms": {"B2"}}},
		{"preview", "GET", "/schedules/preview?spec=0+2+*+*+LUN", nil},
		{"runs", "GET", "/runs", nil},
		{"run", "GET", "/runs/" + runID, nil},
		{"tokens", "GET", "/tokens", nil},
		{"not found", "GET", "/runs/nosuch", nil},
	}
	cats, _ := loadCatalogs()
	// English texts of the catalog (two words or more) that a
	// Spanish page must not show.
	var english []string
	for k, v := range cats[Spanish] {
		if k != v && len(strings.Fields(k)) >= 2 && !strings.Contains(k, "%") {
			english = append(english, k)
		}
	}
	tag := regexp.MustCompile(`(?s)<script.*?</script>|<style.*?</style>|<[^>]+>`)
	for _, lang := range []string{"es", "en"} {
		for _, p := range pages {
			t.Run(lang+"/"+p.name, func(t *testing.T) {
				var body io.Reader
				if p.form != nil {
					p.form.Set("csrf", csrf)
					body = strings.NewReader(p.form.Encode())
				}
				rq, _ := http.NewRequest(p.method, e.ts.URL+p.path, body)
				if p.form != nil {
					rq.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				}
				rq.Header.Set("Accept-Language", lang+";q=0.9, fr;q=0.5")
				resp, err := c.Do(rq)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode >= 500 {
					t.Fatalf("%d: %s", resp.StatusCode, b)
				}
				page := string(b)
				if got := resp.Header.Get("Content-Language"); got != lang {
					t.Fatalf("Content-Language %q", got)
				}
				if !strings.HasPrefix(p.path, "/schedules/preview") && !strings.Contains(page, `<html lang="`+lang+`">`) {
					t.Fatalf("no <html lang=%q>", lang)
				}
				if m := e.srv.missing.list(); len(m) > 0 {
					t.Fatalf("texts missing from the catalog:\n%s", strings.Join(m, "\n"))
				}
				if lang != "es" {
					return
				}
				text := html.UnescapeString(tag.ReplaceAllString(page, " "))
				for _, en := range english {
					if strings.Contains(text, en) {
						t.Errorf("untranslated on the Spanish page: %q", en)
					}
				}
			})
		}
	}
	// The pages before a login: the first visit (and its refusal), the login.
	fresh := newEnv(t, Options{})
	for _, lang := range []string{"es", "en"} {
		for _, path := range []string{"/first-visit", "/inventory"} {
			resp, page := fresh.getLang(fresh.client(), path, lang)
			for i := 0; i < 3 && resp.StatusCode == http.StatusSeeOther; i++ {
				resp, page = fresh.getLang(fresh.client(), resp.Header.Get("Location"), lang)
			}
			if resp.StatusCode != http.StatusOK || !strings.Contains(page, `<html lang="`+lang+`">`) ||
				!strings.Contains(page, map[string]string{"es": "Contraseña de administración", "en": "Admin password"}[lang]) {
				t.Errorf("%s %s: %d\n%s", lang, path, resp.StatusCode, page)
			}
		}
	}
	fc := fresh.client()
	_, fv := fresh.getLang(fc, "/first-visit", "es")
	rq, _ := http.NewRequest("POST", fresh.ts.URL+"/first-visit", strings.NewReader(url.Values{"csrf": {csrfOf(t, fv)}, "password": {"short"}, "again": {"short"}}.Encode()))
	rq.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	rq.Header.Set("Accept-Language", "es")
	resp, err := fc.Do(rq)
	if err != nil {
		t.Fatal(err)
	}
	if page := readAll(resp); !strings.Contains(page, "la contraseña necesita al menos 10 caracteres") {
		t.Errorf("first-visit refusal not in Spanish:\n%s", page)
	}
	if _, page := e.getLang(e.client(), "/login", "es"); !strings.Contains(page, "Iniciar sesión") {
		t.Errorf("login page not in Spanish:\n%s", page)
	}
	if m := fresh.srv.missing.list(); len(m) > 0 {
		t.Fatalf("texts missing from the catalog:\n%s", strings.Join(m, "\n"))
	}

	// Spot checks that the pages carry what the issue asks for.
	_, over := e.getLang(c, "/", "es")
	for _, want := range []string{"Horas programadas no ejecutadas", "B2 nightly", "2 vez/veces sin ejecutar", "pumi no estaba en marcha a esa hora", "horas en UTC"} {
		if !strings.Contains(over, want) {
			t.Errorf("overview (es) lacks %q", want)
		}
	}
	if _, sch := e.getLang(c, "/schedules", "en"); !strings.Contains(sch, `id="missed"`) || !strings.Contains(sch, "2 time(s) missed") {
		t.Errorf("schedules page (en) does not show the missed fires:\n%s", sch)
	}
	_, run := e.getLang(c, "/runs/"+runID, "es")
	if !strings.Contains(run, `class="pill wait seat-state" data-state="powering">en espera`) ||
		!strings.Contains(run, "reinicio: ssh: unable to authenticate; revise las credenciales SSH del aula") ||
		!strings.Contains(run, "espera: su arranque por red") {
		t.Errorf("the waiting seat is not shown as waiting:\n%s", run)
	}
}

// getLang is a GET with Accept-Language lang.
func (e *env) getLang(c *http.Client, path, lang string) (*http.Response, string) {
	e.t.Helper()
	rq, _ := http.NewRequest("GET", e.ts.URL+path, nil)
	rq.Header.Set("Accept-Language", lang)
	resp, err := c.Do(rq)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestLanguageChoice(t *testing.T) {
	for _, tc := range []struct {
		cookie, accept string
		want           Lang
	}{
		{"", "", English},
		{"", "es-ES,es;q=0.9,en;q=0.8", Spanish},
		{"", "en-US,en;q=0.9,es;q=0.8", English},
		{"", "fr-FR, es;q=0.3", Spanish},
		{"", "es;q=0.2, en;q=0.9", English},
		{"en", "es", English},
		{"es", "en", Spanish},
		{"xx", "es", Spanish},
	} {
		t.Run(tc.cookie+"|"+tc.accept, func(t *testing.T) {
			r, _ := http.NewRequest("GET", "/", nil)
			if tc.accept != "" {
				r.Header.Set("Accept-Language", tc.accept)
			}
			if tc.cookie != "" {
				r.AddCookie(&http.Cookie{Name: langCookie, Value: tc.cookie})
			}
			if got := pickLang(r); got != tc.want {
				t.Fatalf("pickLang = %s, want %s", got, tc.want)
			}
		})
	}
	// The switch remembers the choice and goes back only to this site.
	e := newEnv(t, Options{})
	c, _ := e.login()
	resp, _ := e.get(c, "/lang/es?next="+url.QueryEscape("/inventory?q=pc"))
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/inventory?q=pc" {
		t.Fatalf("switch: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if _, body := e.get(c, "/inventory"); !strings.Contains(body, `<html lang="es">`) || !strings.Contains(body, "Importar un CSV") {
		t.Fatal("the cookie's language is not used")
	}
	for _, next := range []string{"//evil.example/", "https://evil.example/", "/\\evil.example"} {
		if resp, _ := e.get(c, "/lang/en?next="+url.QueryEscape(next)); resp.Header.Get("Location") != "/" {
			t.Errorf("next=%q went to %q", next, resp.Header.Get("Location"))
		}
	}
	if resp, _ := e.get(c, "/lang/xx"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown language: %d", resp.StatusCode)
	}
}
