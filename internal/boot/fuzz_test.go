package boot

import (
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// FuzzScriptPath feeds arbitrary request paths through the parser and the
// handler: never a panic, a MAC only for a path that round-trips through
// ScriptURL, and a 200 only for such a path.
func FuzzScriptPath(f *testing.F) {
	for _, s := range []string{"/boot/52-54-00-ab-cd-ef.ipxe", "/boot/5254.00ab.cdef.ipxe", "/boot/.ipxe", "/boot/../x.ipxe", "/boot/52:54:00:ab:cd:ef:00.ipxe", "/boot/%00.ipxe", ""} {
		f.Add(s)
	}
	h := Handler(&StaticDecider{}, quietLog())
	f.Fuzz(func(t *testing.T, p string) {
		mac, ok, err := ParseScriptPath(p)
		if ok && err == nil {
			if len(mac) != 6 {
				t.Fatalf("ParseScriptPath(%q) = %v", p, mac)
			}
			if u := ScriptURL("http://h", mac); !strings.HasSuffix(u, ".ipxe") {
				t.Fatalf("ScriptURL = %q", u)
			}
		}
		req := httptest.NewRequest("GET", "/", nil)
		req.URL = &url.URL{Path: p}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code == 200 && !(ok && err == nil) {
			t.Fatalf("path %q served 200 without a valid MAC", p)
		}
	})
}

// FuzzScript renders decisions with arbitrary text: never a panic, and any
// script produced has exactly the lines Script writes (no injected line, no
// setting expansion other than pumi's own ${net0/mac}).
func FuzzScript(f *testing.F) {
	f.Add("http://10.0.0.1/vmlinuz", "http://10.0.0.1/initrd.gz", "console=ttyS0 quiet", "reason")
	f.Add("http://h/k", "tftp://h/i", "a ;b", "x\ny")
	f.Add("https://h/k?x=${y}", "", "#", "$")
	f.Fuzz(func(t *testing.T, kernel, initrd, cmdline, reason string) {
		var initrds []string
		if initrd != "" {
			initrds = []string{initrd}
		}
		for _, d := range []Decision{{Action: Exit, Reason: reason}, {Action: Linux, Kernel: kernel, Initrds: initrds, Cmdline: cmdline, Reason: reason}} {
			s, err := Script(d)
			if err != nil {
				continue
			}
			lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
			want := 3
			if d.Action == Linux {
				want = 6 + len(initrds)
			}
			if len(lines) != want {
				t.Fatalf("%d lines, want %d:\n%s", len(lines), want, s)
			}
			if strings.Count(s, "${") != 1 {
				t.Fatalf("unexpected ${ in:\n%s", s)
			}
			for _, l := range lines[1:] {
				for _, w := range strings.Fields(l) {
					if strings.HasPrefix(w, "#") || strings.HasPrefix(w, "||") || strings.HasPrefix(w, "&&") || strings.HasPrefix(w, ";") {
						t.Fatalf("word %q in:\n%s", w, s)
					}
				}
			}
		}
	})
}

// FuzzParseStatic: arbitrary config files are refused or accepted, never a
// panic, and an accepted one only holds renderable decisions.
func FuzzParseStatic(f *testing.F) {
	f.Add(`{"52:54:00:12:34:56": "local"}`)
	f.Add(`{"52-54-00-12-34-57": {"kernel": "http://10.0.0.1/k", "initrds": ["http://10.0.0.1/i"], "cmdline": "quiet"}}`)
	f.Add(`{"x": 1}`)
	f.Fuzz(func(t *testing.T, js string) {
		s, err := ParseStatic([]byte(js))
		if err != nil {
			return
		}
		for _, m := range s.MACs() {
			d, err := s.Decide(t.Context(), Machine{MAC: m})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Script(d); err != nil {
				t.Fatalf("accepted config holds unrenderable %+v: %v", d, err)
			}
		}
	})
}
