package boot

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/pumi-lab/pumi/assets"
	"github.com/pumi-lab/pumi/internal/macaddr"
)

// ParseScriptPath extracts the MAC from a script path "/boot/<mac>.ipxe"
// (any MAC spelling internal/macaddr accepts). ok is false when the path is
// not a script path at all (404); err is set when it is one but the MAC is
// malformed (400).
func ParseScriptPath(p string) (mac net.HardwareAddr, ok bool, err error) {
	rest, found := strings.CutPrefix(p, "/boot/")
	if !found {
		return nil, false, nil
	}
	name, found := strings.CutSuffix(rest, ".ipxe")
	if !found || strings.Contains(name, "/") {
		return nil, false, nil
	}
	m, err := macaddr.Parse(name)
	if err != nil {
		return nil, true, err
	}
	return m, true, nil
}

// Handler serves GET (and HEAD) /boot/<mac>.ipxe with the script for the
// Decider's decision. It must be mounted so that it sees the full path
// (mux.Handle("/boot/", Handler(...))).
//
// A Decider error is answered with status 500 and a script that prints the
// error and exits to the local disk: iPXE does not run a script from an
// error response, and with no script it falls through to the next boot
// option anyway, so the seat boots its disk either way and the body helps a
// human with curl.
func Handler(d Decider, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "only GET and HEAD", http.StatusMethodNotAllowed)
			return
		}
		mac, ok, err := ParseScriptPath(r.URL.Path)
		if !ok {
			http.NotFound(w, r)
			return
		}
		if err != nil {
			log.Warn("boot script request with malformed MAC", "path", r.URL.Path, "remote", r.RemoteAddr, "err", err)
			http.Error(w, "malformed MAC in "+r.URL.Path+": want /boot/52-54-00-ab-cd-ef.ipxe", http.StatusBadRequest)
			return
		}
		// Decisions change from one boot to the next; no cache may keep one.
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		dec, err := d.Decide(r.Context(), Machine{MAC: mac, Addr: RemoteAddr(r.RemoteAddr)})
		if err != nil {
			log.Error("boot decision failed; the seat will boot its local disk", "mac", mac.String(), "remote", r.RemoteAddr, "err", err)
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprint(w, ErrorScript("decision failed: "+err.Error()))
			return
		}
		script, err := Script(dec)
		if err != nil {
			log.Error("boot decision cannot be rendered; the seat will boot its local disk", "mac", mac.String(), "remote", r.RemoteAddr, "err", err)
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprint(w, ErrorScript("decision cannot be rendered: "+err.Error()))
			return
		}
		log.Info("boot script served", "mac", mac.String(), "action", dec.Action.String(), "kernel", dec.Kernel, "reason", dec.Reason, "remote", r.RemoteAddr)
		http.ServeContent(w, r, "", time.Time{}, strings.NewReader(script))
	})
}

// RemoteAddr is the IP of an http.Request's RemoteAddr ("ip:port"), with
// IPv4-mapped IPv6 unmapped; invalid if it cannot be parsed.
func RemoteAddr(hostport string) netip.Addr {
	ap, err := netip.ParseAddrPort(hostport)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// Files serves the regular files below dir (kernels, initrds, squashfs) by
// their path relative to dir, with Range, If-Modified-Since and HEAD support
// from http.ServeContent. Mount it with http.StripPrefix. Paths are resolved
// with os.Root, so neither ".." nor a symlink can leave dir; directories are
// not listed.
func Files(dir string, log *slog.Logger) (http.Handler, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("boot files directory: %w (create it or fix the path)", err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "only GET and HEAD", http.StatusMethodNotAllowed)
			return
		}
		name := strings.TrimPrefix(r.URL.Path, "/")
		if name == "" || !fs.ValidPath(name) {
			http.NotFound(w, r)
			return
		}
		f, err := root.Open(name)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				log.Warn("boot file refused", "path", name, "remote", r.RemoteAddr, "err", err)
			}
			http.NotFound(w, r)
			return
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil || !st.Mode().IsRegular() {
			http.NotFound(w, r)
			return
		}
		log.Info("boot file requested", "path", name, "range", r.Header.Get("Range"), "remote", r.RemoteAddr)
		http.ServeContent(w, r, st.Name(), st.ModTime(), f)
	}), nil
}

// IPXE serves the embedded iPXE programs (bootx64.efi, undionly.kpxe) by name,
// for UEFI HTTP boot clients (DHCP arch 16 is sent HTTPBase/ipxe/bootx64.efi).
// Mount it with http.StripPrefix("/ipxe", ...).
func IPXE(log *slog.Logger) http.Handler {
	files := assets.IPXE()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "only GET and HEAD", http.StatusMethodNotAllowed)
			return
		}
		name := strings.TrimPrefix(r.URL.Path, "/")
		if !fs.ValidPath(name) || strings.Contains(name, "/") || name == "." {
			http.NotFound(w, r)
			return
		}
		b, err := fs.ReadFile(files, name)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		log.Info("iPXE requested over HTTP", "file", name, "remote", r.RemoteAddr)
		w.Header().Set("Content-Type", "application/efi")
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(b))
	})
}

// NewMux returns the boot HTTP endpoint: /boot/<mac>.ipxe (scripts),
// /files/... (boot files from filesDir; omitted when filesDir is "") and
// /ipxe/... (embedded iPXE). Callers may add their own routes to it.
func NewMux(d Decider, filesDir string, log *slog.Logger) (*http.ServeMux, error) {
	mux := http.NewServeMux()
	mux.Handle("/boot/", Handler(d, log))
	mux.Handle("/ipxe/", http.StripPrefix("/ipxe", IPXE(log)))
	if filesDir != "" {
		h, err := Files(filesDir, log)
		if err != nil {
			return nil, err
		}
		mux.Handle("/files/", http.StripPrefix("/files", h))
	}
	return mux, nil
}
