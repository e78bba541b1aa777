package boot

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStatic(t *testing.T) {
	js := `{
	  "52:54:00:12:34:56": "local",
	  "52-54-00-12-34-57": {"kernel": "http://10.0.0.1:8080/files/vmlinuz",
	                        "initrds": ["http://10.0.0.1:8080/files/initrd.gz"],
	                        "cmdline": "console=ttyS0,115200 quiet"}
	}`
	p := filepath.Join(t.TempDir(), "boot.json")
	if err := os.WriteFile(p, []byte(js), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := LoadStatic(p)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	mac := func(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }

	d, _ := s.Decide(ctx, Machine{MAC: mac("52:54:00:12:34:56")})
	if d.Action != Exit || d.Reason != "static config: local" {
		t.Errorf("local: %+v", d)
	}
	d, _ = s.Decide(ctx, Machine{MAC: mac("52:54:00:12:34:57")})
	if d.Action != Linux || d.Kernel != "http://10.0.0.1:8080/files/vmlinuz" || len(d.Initrds) != 1 || d.Cmdline != "console=ttyS0,115200 quiet" {
		t.Errorf("linux: %+v", d)
	}
	d.Initrds[0] = "changed"
	if d2, _ := s.Decide(ctx, Machine{MAC: mac("52:54:00:12:34:57")}); d2.Initrds[0] == "changed" {
		t.Error("Decide returned the table's own slice")
	}
	d, _ = s.Decide(ctx, Machine{MAC: mac("52:54:00:12:34:58")})
	if d.Action != Exit || d.Reason != "unknown MAC" {
		t.Errorf("unknown: %+v", d)
	}
	if got := s.MACs(); len(got) != 2 || got[0].String() != "52:54:00:12:34:56" || got[1].String() != "52:54:00:12:34:57" {
		t.Errorf("MACs = %v", got)
	}
	if _, err := LoadStatic(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Error("missing file: no error")
	}
}

func TestStaticRefuses(t *testing.T) {
	for _, c := range []struct{ js, want string }{
		{`[]`, "JSON object"},
		{`{"52:54:00:12:34:5": "local"}`, "52:54:00:12:34:5"},
		{`{"52:54:00:12:34:56": "locale"}`, `"locale"`},
		{`{"52:54:00:12:34:56": null}`, "want"},
		{`{"52:54:00:12:34:56": 3}`, "want"},
		{`{"52:54:00:12:34:56": "local", "525400123456": "local"}`, "twice"},
		{`{"52:54:00:12:34:56": {"kernel": "http://h/k", "cmdline": "a #b"}}`, "unsafe"},
		{`{"52:54:00:12:34:56": {"kernel": "", "cmdline": "a"}}`, "kernel URL is empty"},
		{`{"52:54:00:12:34:56": {"kernel": "http://h/k", "cmdlin": "typo"}}`, "cmdlin"},
		{`{"52:54:00:12:34:56": {"kernel": "http://h/k", "initrds": "one"}}`, "want"},
	} {
		if _, err := ParseStatic([]byte(c.js)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseStatic(%s) = %v, want error containing %q", c.js, err, c.want)
		}
	}
}
