package boot

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pumi-lab/pumi/assets"
)

type deciderFunc func(ctx context.Context, m Machine) (Decision, error)

func (f deciderFunc) Decide(ctx context.Context, m Machine) (Decision, error) {
	return f(ctx, m)
}

func quietLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

func do(t *testing.T, h http.Handler, method, target string, hdr ...string) *http.Response {
	t.Helper()
	req := httptest.NewRequest(method, target, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Result()
}

func body(t *testing.T, r *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestHandler(t *testing.T) {
	var asked []string
	d := deciderFunc(func(_ context.Context, m Machine) (Decision, error) {
		asked = append(asked, m.MAC.String())
		switch m.MAC.String() {
		case "52:54:00:00:00:01":
			return Decision{Action: Linux, Kernel: "http://10.0.0.1/files/vmlinuz", Cmdline: "quiet", Reason: "test"}, nil
		case "52:54:00:00:00:02":
			return Decision{}, errors.New("state file unreadable")
		case "52:54:00:00:00:03":
			return Decision{Action: Linux, Kernel: "http://10.0.0.1/files/vmlinuz", Cmdline: "a ;b"}, nil
		}
		return Decision{Action: Exit, Reason: "unknown MAC"}, nil
	})
	h := Handler(d, quietLog())

	for _, p := range []string{"/boot/52-54-00-00-00-01.ipxe", "/boot/52:54:00:00:00:01.ipxe", "/boot/525400000001.ipxe", "/boot/5254.0000.0001.ipxe", "/boot/52-54-00-00-00-01.IPXE"} {
		r := do(t, h, "GET", p)
		b := body(t, r)
		if p == "/boot/52-54-00-00-00-01.IPXE" {
			if r.StatusCode != 404 {
				t.Errorf("%s: status %d, want 404 (suffix is case-sensitive)", p, r.StatusCode)
			}
			continue
		}
		if r.StatusCode != 200 || !strings.HasPrefix(b, "#!ipxe\n") || !strings.Contains(b, "kernel http://10.0.0.1/files/vmlinuz quiet\n") {
			t.Errorf("GET %s: %d\n%s", p, r.StatusCode, b)
		}
		if r.Header.Get("Cache-Control") != "no-store" {
			t.Errorf("GET %s: Cache-Control %q", p, r.Header.Get("Cache-Control"))
		}
	}
	if len(asked) != 4 {
		t.Errorf("decider asked %d times, want 4: %v", len(asked), asked)
	}

	r := do(t, h, "GET", "/boot/52-54-00-00-00-09.ipxe")
	if b := body(t, r); r.StatusCode != 200 || !strings.Contains(b, "exit 1\n") || !strings.Contains(b, "unknown MAC") {
		t.Errorf("unknown MAC: %d\n%s", r.StatusCode, b)
	}
	r = do(t, h, "HEAD", "/boot/52-54-00-00-00-09.ipxe")
	if b := body(t, r); r.StatusCode != 200 || b != "" || r.ContentLength <= 0 {
		t.Errorf("HEAD: %d len %d body %q", r.StatusCode, r.ContentLength, b)
	}

	for _, c := range []struct {
		mac  string
		want string
	}{{"52-54-00-00-00-02", "state file unreadable"}, {"52-54-00-00-00-03", "cannot be rendered"}} {
		r = do(t, h, "GET", "/boot/"+c.mac+".ipxe")
		b := body(t, r)
		if r.StatusCode != 500 || !strings.HasPrefix(b, "#!ipxe\n") || !strings.HasSuffix(b, "exit 1\n") || !strings.Contains(b, c.want) {
			t.Errorf("%s: %d\n%s", c.mac, r.StatusCode, b)
		}
		if strings.Contains(b, "\nkernel ") {
			t.Errorf("%s: error script loads a kernel:\n%s", c.mac, b)
		}
	}

	n := len(asked)
	for _, p := range []string{"/boot/52-54-00-00-00.ipxe", "/boot/zz-54-00-00-00-01.ipxe", "/boot/.ipxe", "/boot/52-54-00-00-00-01-02.ipxe"} {
		if r := do(t, h, "GET", p); r.StatusCode != 400 {
			t.Errorf("GET %s: %d, want 400", p, r.StatusCode)
		}
	}
	for _, p := range []string{"/boot/", "/boot/x/52-54-00-00-00-01.ipxe", "/other/52-54-00-00-00-01.ipxe", "/boot/52-54-00-00-00-01"} {
		if r := do(t, h, "GET", p); r.StatusCode != 404 {
			t.Errorf("GET %s: %d, want 404", p, r.StatusCode)
		}
	}
	for _, m := range []string{"POST", "PUT", "DELETE"} {
		r := do(t, h, m, "/boot/52-54-00-00-00-01.ipxe")
		if r.StatusCode != 405 || r.Header.Get("Allow") != "GET, HEAD" {
			t.Errorf("%s: %d Allow %q", m, r.StatusCode, r.Header.Get("Allow"))
		}
	}
	if len(asked) != n {
		t.Errorf("decider asked for rejected requests: %v", asked[n:])
	}
}

func TestFiles(t *testing.T) {
	dir := t.TempDir()
	content := strings.Repeat("0123456789", 1000)
	if err := os.WriteFile(filepath.Join(dir, "vmlinuz"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "live"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "live", "initrd.img"), []byte("initrd"), 0o644); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(outside, []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("vmlinuz", filepath.Join(dir, "inside-link")); err != nil {
		t.Fatal(err)
	}
	mux, err := NewMux(deciderFunc(func(context.Context, Machine) (Decision, error) { return Decision{}, nil }), dir, quietLog())
	if err != nil {
		t.Fatal(err)
	}

	r := do(t, mux, "GET", "/files/vmlinuz")
	if b := body(t, r); r.StatusCode != 200 || b != content {
		t.Errorf("GET: %d len %d", r.StatusCode, len(b))
	}
	r = do(t, mux, "GET", "/files/vmlinuz", "Range", "bytes=10-19")
	if b := body(t, r); r.StatusCode != 206 || b != "0123456789" || r.Header.Get("Content-Range") != "bytes 10-19/10000" {
		t.Errorf("Range: %d %q %q", r.StatusCode, b, r.Header.Get("Content-Range"))
	}
	r = do(t, mux, "HEAD", "/files/vmlinuz")
	if b := body(t, r); r.StatusCode != 200 || b != "" || r.ContentLength != 10000 || r.Header.Get("Accept-Ranges") != "bytes" {
		t.Errorf("HEAD: %d len %d %q", r.StatusCode, r.ContentLength, b)
	}
	r = do(t, mux, "GET", "/files/live/initrd.img")
	if b := body(t, r); r.StatusCode != 200 || b != "initrd" {
		t.Errorf("subdir: %d %q", r.StatusCode, b)
	}
	r = do(t, mux, "GET", "/files/inside-link")
	if b := body(t, r); r.StatusCode != 200 || b != content {
		t.Errorf("symlink inside: %d", r.StatusCode)
	}
	for _, p := range []string{"/files/escape", "/files/live", "/files/live/", "/files/missing", "/files/", "/files/..%2f..%2fetc%2fpasswd"} {
		r := do(t, mux, "GET", p)
		if b := body(t, r); r.StatusCode == 200 || strings.Contains(b, "secret") {
			t.Errorf("GET %s: %d %q", p, r.StatusCode, b)
		}
	}
	// ".." that the mux does not clean away must still not escape.
	h, err := Files(dir, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/../secret", "/live/../../secret", "/./vmlinuz"} {
		req := httptest.NewRequest("GET", "/", nil)
		req.URL.Path = p
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code == 200 {
			t.Errorf("Files %s: 200", p)
		}
	}
	if r := do(t, mux, "POST", "/files/vmlinuz"); r.StatusCode != 405 {
		t.Errorf("POST: %d", r.StatusCode)
	}
	if _, err := Files(filepath.Join(dir, "nope"), quietLog()); err == nil {
		t.Error("Files on a missing directory: no error")
	}

	want, err := io.ReadAll(must(assets.IPXE().Open("bootx64.efi")))
	if err != nil {
		t.Fatal(err)
	}
	r = do(t, mux, "GET", "/ipxe/bootx64.efi")
	if b := body(t, r); r.StatusCode != 200 || b != string(want) || len(want) < 100000 {
		t.Errorf("/ipxe/bootx64.efi: %d len %d want %d", r.StatusCode, len(b), len(want))
	}
	r = do(t, mux, "GET", "/ipxe/bootx64.efi", "Range", "bytes=0-1")
	if b := body(t, r); r.StatusCode != 206 || b != "MZ" {
		t.Errorf("/ipxe range: %d %q", r.StatusCode, b)
	}
	for _, p := range []string{"/ipxe/", "/ipxe/nope.efi", "/ipxe/../assets.go"} {
		if r := do(t, mux, "GET", p); r.StatusCode == 200 {
			t.Errorf("GET %s: 200", p)
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
