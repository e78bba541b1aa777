package web

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/pumi-lab/pumi/internal/inventory"
)

// The parsers here read what a browser sends; whatever it sends, they must
// answer with a value or a plain error, never a panic. Seeds are also in
// testdata/fuzz.

func FuzzAnnotate(f *testing.F) {
	f.Add("mac,ip\n52:54:00:00:00:01,10.0.0.1\nbad\n", 3, 2, "mac")
	f.Add("", 0, 0, "")
	f.Add("\r\n\r\n", -5, 99, "x")
	f.Fuzz(func(t *testing.T, text string, line, col int, field string) {
		out := annotate(text, []inventory.RowError{{Line: line, Column: col, Field: field, Reason: "r"}})
		n := 0
		for _, l := range out {
			n += len(l.Errors)
		}
		if n != 1 {
			t.Fatalf("one row error shown %d times: %+v", n, out)
		}
	})
}

func FuzzParseSettings(f *testing.F) {
	f.Add("net_mode=static&net_address=192.168.1.20%2F24&net_gateway=192.168.1.1&net_dns=9.9.9.9&nb_mode=full&nb_interface=eth1&nb_subnet=10.20.0.0%2F24&nb_start=10.20.0.100&nb_end=10.20.0.199&time_zone=Europe%2FZurich")
	f.Add("net_mode=dhcp&nb_mode=off&mail_host=smtp.example.org&mail_port=587&mail_from=a%40b&mail_to=c%40d")
	f.Add("net_mode=x&nb_mode=full&nb_start=1.2.3.4&nb_end=::1&mail_port=-1&time_zone=..%2F..%2Fetc")
	f.Fuzz(func(t *testing.T, body string) {
		r, _ := http.NewRequest("POST", "/settings", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		st, raw, fe := parseSettings(r, Settings{}, translator{lang: Spanish, cat: catalog{}})
		if fe.err() != nil {
			return
		}
		// The form is given back as typed: every field read is kept.
		for k, v := range raw {
			if strings.TrimSpace(r.PostFormValue(k)) != v {
				t.Fatalf("field %s kept as %q, typed %q", k, v, r.PostFormValue(k))
			}
		}
		// Accepted settings are consistent.
		if st.Netboot.Mode == "full" && (!st.Netboot.Subnet.Contains(st.Netboot.RangeStart) || st.Netboot.RangeEnd.Less(st.Netboot.RangeStart)) {
			t.Fatalf("accepted a bad range: %+v", st.Netboot)
		}
		if st.Network.Mode != "dhcp" && st.Network.Mode != "static" {
			t.Fatalf("accepted network mode %q", st.Network.Mode)
		}
	})
}

func FuzzParseScheduleForm(f *testing.F) {
	f.Add("new=1&name=Room+A&spec=0+2+*+*+SAT&kind=restore&image=LAB-img&window=6h&rooms=A&enabled=on")
	f.Add("name=&spec=61+*+*+*+*&kind=capture&window=1s&seats=a,a")
	f.Add("name=%00%ff&spec=%40every+1h&kind=wake&window=200h&rooms=..")
	f.Fuzz(func(t *testing.T, body string) {
		r, _ := http.NewRequest("POST", "/schedules", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		_, sc, err := (&Server{}).parseScheduleForm(r)
		if err == nil {
			if verr := sc.Validate(); verr != nil {
				t.Fatalf("accepted an invalid schedule: %v", verr)
			}
		}
	})
}

var idRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,63}$`)

func FuzzSlugAndNext(f *testing.F) {
	f.Add("Room A101 weekly")
	f.Add("//evil.example/x")
	f.Add("/\\evil")
	f.Add("ÄÖÜ ---")
	f.Fuzz(func(t *testing.T, s string) {
		id := slug(s)
		if !idRE.MatchString(id) {
			t.Fatalf("slug(%q) = %q is not a schedule ID", s, id)
		}
		n := safeNext(s)
		u, err := url.Parse(n)
		if !strings.HasPrefix(n, "/") || strings.HasPrefix(n, "//") || (err == nil && u.Host != "") {
			t.Fatalf("safeNext(%q) = %q leaves the site", s, n)
		}
	})
}

func FuzzAcceptLanguage(f *testing.F) {
	f.Add("es-ES,es;q=0.9,en;q=0.8")
	f.Add("en-US,en;q=0.9")
	f.Add("fr;q=1, de;q=0.5, es;q=0.1")
	f.Add("*;q=abc, es;q=2, en;q=-1")
	f.Fuzz(func(t *testing.T, h string) {
		l, ok := acceptLanguage(h)
		if ok != (l != "") || (ok && l != Spanish && l != English) {
			t.Fatalf("acceptLanguage(%q) = %q, %v", h, l, ok)
		}
	})
}
