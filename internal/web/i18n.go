package web

import (
	"embed"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Lang is a page language. English is the source language: its texts are
// the catalog keys, so templates stay readable and a key is its own English
// translation; every other language has a catalog in i18n/<lang>.json.
type Lang string

const (
	English Lang = "en"
	Spanish Lang = "es"
)

// Langs are the languages pumi speaks, in the order the switch shows them.
var Langs = []Lang{Spanish, English}

// Name is the language's own name, for the switch.
func (l Lang) Name() string {
	if l == Spanish {
		return "Español"
	}
	return "English"
}

//go:embed i18n/*.json
var catalogFS embed.FS

// catalog maps an English text to its translation.
type catalog map[string]string

func loadCatalogs() (map[Lang]catalog, error) {
	out := map[Lang]catalog{English: {}}
	for _, l := range Langs {
		if l == English {
			continue
		}
		b, err := catalogFS.ReadFile("i18n/" + string(l) + ".json")
		if err != nil {
			return nil, fmt.Errorf("catalog %s: %w", l, err)
		}
		c := catalog{}
		if err := json.Unmarshal(b, &c); err != nil {
			return nil, fmt.Errorf("catalog %s: %w", l, err)
		}
		out[l] = c
	}
	return out, nil
}

// translator speaks one language; it notes texts its catalog lacks so the
// catalog test can list them (the page shows the English text meanwhile).
type translator struct {
	lang    Lang
	cat     catalog
	missing *missingSet
}

type missingSet struct {
	mu sync.Mutex
	m  map[string]bool
}

func (m *missingSet) add(lang Lang, key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.m == nil {
		m.m = map[string]bool{}
	}
	m.m[string(lang)+": "+key] = true
}

func (m *missingSet) list() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for k := range m.m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// T translates key and, with args, formats it like fmt.Sprintf.
func (t translator) T(key string, args ...any) string {
	s := key
	if t.lang != English {
		if v, ok := t.cat[key]; ok && v != "" {
			s = v
		} else if t.missing != nil {
			t.missing.add(t.lang, key)
		}
	}
	if len(args) > 0 {
		return fmt.Sprintf(s, args...)
	}
	return s
}

var (
	esDays   = [...]string{"dom", "lun", "mar", "mié", "jue", "vie", "sáb"}
	esMonths = [...]string{"ene", "feb", "mar", "abr", "may", "jun", "jul", "ago", "sep", "oct", "nov", "dic"}
)

// When writes a time in the appliance's zone, labelled with the zone's
// abbreviation, in the page's language: "Sat 5 Dec 2026 02:00 CET" or
// "sáb 5 dic 2026 02:00 CET".
func (t translator) When(tm time.Time, loc *time.Location) string {
	if tm.IsZero() {
		return "—"
	}
	tm = tm.In(loc)
	if t.lang == Spanish {
		return fmt.Sprintf("%s %d %s %d %s", esDays[tm.Weekday()], tm.Day(), esMonths[tm.Month()-1], tm.Year(), tm.Format("15:04 MST"))
	}
	return tm.Format("Mon 2 Jan 2006 15:04 MST")
}

const langCookie = "pumi_lang"

// pickLang is the cookie's language, else the browser's best match
// (Accept-Language), else English (scripts and curl send no header).
func pickLang(r *http.Request) Lang {
	if c, err := r.Cookie(langCookie); err == nil {
		if l, ok := parseLang(c.Value); ok {
			return l
		}
	}
	if l, ok := acceptLanguage(r.Header.Get("Accept-Language")); ok {
		return l
	}
	return English
}

func parseLang(s string) (Lang, bool) {
	s = strings.ToLower(strings.TrimSpace(s))
	base, _, _ := strings.Cut(s, "-")
	base, _, _ = strings.Cut(base, "_")
	for _, l := range Langs {
		if base == string(l) {
			return l, true
		}
	}
	return "", false
}

// acceptLanguage picks the language pumi speaks with the highest q in an
// Accept-Language header (RFC 9110 12.5.4); ties go to the earlier entry.
// At most 32 entries are read: the header comes from anyone.
func acceptLanguage(h string) (Lang, bool) {
	best, bestQ := Lang(""), 0.0
	for i, part := range strings.SplitN(h, ",", 33) {
		if i == 32 {
			break
		}
		tag, params, _ := strings.Cut(part, ";")
		q := 1.0
		if v, ok := strings.CutPrefix(strings.TrimSpace(params), "q="); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil || f < 0 || f > 1 {
				continue
			}
			q = f
		}
		l, ok := parseLang(tag)
		if !ok || q <= 0 {
			continue
		}
		if q > bestQ {
			best, bestQ = l, q
		}
	}
	return best, best != ""
}

// getLang remembers the chosen language for a year and goes back to the
// page it was chosen on (only a local path: the link cannot send the
// browser elsewhere).
func (s *Server) getLang(w http.ResponseWriter, r *http.Request) {
	l, ok := parseLang(r.PathValue("lang"))
	if !ok {
		http.NotFound(w, r)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: langCookie, Value: string(l), Path: "/", MaxAge: 365 * 24 * 3600,
		SameSite: http.SameSiteLaxMode, Secure: s.secure(r), HttpOnly: true})
	next := r.URL.Query().Get("next")
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") || strings.ContainsAny(next, "\r\n") {
		next = "/"
	}
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// ago is "3 min 5 s ago" / "hace 3 min 5 s".
func (t translator) ago(now, then time.Time) string {
	if then.IsZero() {
		return "—"
	}
	return t.T("%s ago", elapsed(then, now))
}

// T translates key for the request's language.
func (s *Server) T(r *http.Request, key string, args ...any) string {
	return s.translator(r).T(key, args...)
}

// known translates s when the catalog has it, else returns it unchanged
// (for messages that may carry a lower layer's text).
func (t translator) known(s string) string {
	if v, ok := t.cat[s]; ok && v != "" {
		return v
	}
	return s
}

// reasonParts are the fixed phrases of the runs engine's and the power
// package's seat reasons ("reboot: unreachable: …", "window closed", …),
// which are English text composed with error details; each phrase is a
// catalog key, replaced where it occurs so the details stay as they are.
var reasonParts = []string{
	"cancelled by admin", "window closed", "while Clonezilla was writing the disk (left to finish; the disk may be half-written)",
	"Clonezilla did not start within", "restore did not finish within", "not restorable:", "was removed on the appliance",
	"reported failure", "Wake-on-LAN:", "reboot:", "shutdown:", "; then ",
	"is the seat powered on, booted into its OS and running sshd?",
	"check the room's or image's SSH credentials, and that pumi's public key is in the image's authorized_keys",
	"if the image was rebuilt with new host keys, forget the pinned key for this image and seat",
	"the image needs /home/<user>/Desktop/Signature containing its name without -img",
	"check the image's sudoers rule: <user> ALL=(ALL) NOPASSWD: /sbin/shutdown",
	"Wake-on-LAN needs the lab interface (netboot.interface)", "has no SSH user (set one in the inventory or an SSH login for its room)",
	"has no IP address in the inventory",
}

// reason shows a seat's reason in the page's language: its known phrases
// translated, the rest (addresses, error details) as it is.
func (t translator) reason(s string) string {
	if t.lang == English || s == "" {
		return s
	}
	for _, p := range reasonParts {
		if strings.Contains(s, p) {
			s = strings.ReplaceAll(s, p, t.T(p))
		}
	}
	return s
}
