package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pumi-lab/pumi/internal/boot"
)

// httpServe runs pumi's boot HTTP endpoint (internal/boot: /files/ over a
// directory, the handler the appliance serves Clonezilla's kernel, initrd
// and squashfs with) until it is signalled.
func httpServe(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("http-serve", flag.ContinueOnError)
	root := fl.String("root", "", "directory to serve under /files/")
	addr := fl.String("addr", ":8080", "TCP address to listen on")
	if err := fl.Parse(args); err != nil {
		return err
	}
	// Info level, as the appliance logs: one line per request.
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	dec, err := boot.ParseStatic([]byte(`{}`))
	if err != nil {
		return err
	}
	mux, err := boot.NewMux(dec, *root, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("http-serve: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// httpResult is one load run: every client fetching the boot files at once.
type httpResult struct {
	Clients   int     `json:"clients"`
	Requests  int     `json:"requests"`
	Bytes     int64   `json:"bytes"`
	Seconds   float64 `json:"seconds"`
	MBps      float64 `json:"mbps"` // aggregate, 10^6 bytes per second
	Errors    int     `json:"errors"`
	FirstErr  string  `json:"first_err,omitempty"`
	MedianSec float64 `json:"median_client_seconds"`
	MaxSec    float64 `json:"max_client_seconds"`
	ServerCPU float64 `json:"server_cpu_seconds"` // filled in by the orchestrator
}

// httpLoad makes N clients each fetch the kernel and initrd whole and the
// squashfs in Range requests of -chunk bytes (as a seat booting Clonezilla
// does: the kernel and initrd by iPXE, then the live system's squashfs), at
// the same time; every byte received is compared with the served file (the
// load runs on the same machine and reads the originals).
func httpLoad(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("http-load", flag.ContinueOnError)
	base := fl.String("base", "", "base URL, e.g. http://10.98.0.1:8080/files")
	dir := fl.String("dir", "", "directory holding the originals")
	clients := fl.Int("clients", 40, "parallel clients")
	chunk := fl.Int64("chunk", 4<<20, "Range request size for the squashfs")
	if err := fl.Parse(args); err != nil {
		return err
	}
	whole := []string{"vmlinuz", "initrd.img"}
	ranged := "filesystem.squashfs"
	tr := &http.Transport{MaxIdleConnsPerHost: *clients, DisableCompression: true}
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Minute}
	var (
		mu    sync.Mutex
		res   = httpResult{Clients: *clients}
		times []float64
		wg    sync.WaitGroup
		start = time.Now()
	)
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		res.Errors++
		if res.FirstErr == "" {
			res.FirstErr = err.Error()
		}
	}
	for i := 0; i < *clients; i++ {
		wg.Go(func() {
			t0 := time.Now()
			var n int64
			var reqs int
			get := func(name string, off, length int64) error {
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, *base+"/"+name, nil)
				if err != nil {
					return err
				}
				want := http.StatusOK
				if length >= 0 {
					req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+length-1))
					want = http.StatusPartialContent
				}
				resp, err := hc.Do(req)
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				reqs++
				if resp.StatusCode != want {
					return fmt.Errorf("%s: status %d, want %d", name, resp.StatusCode, want)
				}
				return compare(resp.Body, filepath.Join(*dir, name), off, &n)
			}
			var err error
			for _, name := range whole {
				if err = get(name, 0, -1); err != nil {
					break
				}
			}
			if err == nil {
				var st os.FileInfo
				if st, err = os.Stat(filepath.Join(*dir, ranged)); err == nil {
					for off := int64(0); off < st.Size() && err == nil; off += *chunk {
						err = get(ranged, off, min(*chunk, st.Size()-off))
					}
				}
			}
			if err != nil {
				fail(err)
			}
			d := time.Since(t0).Seconds()
			mu.Lock()
			defer mu.Unlock()
			res.Bytes += n
			res.Requests += reqs
			times = append(times, d)
		})
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	res.MBps = float64(res.Bytes) / res.Seconds / 1e6
	sort.Float64s(times)
	res.MedianSec = times[len(times)/2]
	res.MaxSec = times[len(times)-1]
	return json.NewEncoder(os.Stdout).Encode(res)
}

// compare reads body and checks it equals the file at path from off on,
// adding the bytes read to *n.
func compare(body io.Reader, path string, off int64, n *int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	got := make([]byte, 256<<10)
	want := make([]byte, len(got))
	for {
		k, rerr := io.ReadFull(body, got)
		if k > 0 {
			if _, err := f.ReadAt(want[:k], off); err != nil {
				return fmt.Errorf("%s: more bytes than the file has at %d: %w", filepath.Base(path), off, err)
			}
			if !bytes.Equal(got[:k], want[:k]) {
				return fmt.Errorf("%s: content differs in the %d bytes at %d", filepath.Base(path), k, off)
			}
			off += int64(k)
			*n += int64(k)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

var httpServerNames = [2]string{"nginx", "pumi"}

// nginxConf is Debian's nginx tuned as one would for serving large static
// files: sendfile, one worker per core, no access log (pumi logs every
// request at info level, as the appliance does: nginx is given the
// advantage).
const nginxConf = `daemon off;
master_process on;
worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/nginx-error.log warn;
events { worker_connections 1024; }
http {
	sendfile on;
	tcp_nopush on;
	keepalive_requests 100000;
	access_log off;
	client_body_temp_path %[1]s/nginx-body;
	proxy_temp_path %[1]s/nginx-proxy;
	fastcgi_temp_path %[1]s/nginx-fastcgi;
	uwsgi_temp_path %[1]s/nginx-uwsgi;
	scgi_temp_path %[1]s/nginx-scgi;
	types { }
	default_type application/octet-stream;
	server {
		listen %[2]s:8080;
		location /files/ { alias %[3]s/; }
	}
}
`

func runHTTP(ctx context.Context, e *env, self string, o *options, rep *report) error {
	root := filepath.Join(e.work, "http")
	if err := os.Mkdir(root, 0o755); err != nil {
		return err
	}
	sizes := []struct {
		name string
		size int
	}{{"vmlinuz", 8 << 20}, {"initrd.img", 48 << 20}, {"filesystem.squashfs", o.squashfs}}
	var total int64
	for _, f := range sizes {
		if _, err := writeRandom(filepath.Join(root, f.name), f.size); err != nil {
			return err
		}
		total += int64(f.size)
		rep.httpFiles = append(rep.httpFiles, fileDesc{f.name, f.size})
	}
	conf := filepath.Join(e.work, "nginx.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(nginxConf, e.work, serverIP, root)), 0o644); err != nil {
		return err
	}
	rep.http = &[2][]httpResult{}
	for r := 0; r < o.rounds; r++ {
		for _, si := range order(r) {
			var argv []string
			if si == 0 {
				argv = []string{"nginx", "-c", conf, "-e", filepath.Join(e.work, "nginx-error.log")}
			} else {
				argv = []string{self, "http-serve", "-root", root, "-addr", serverIP + ":8080"}
			}
			s, err := e.start(ctx, httpServerNames[si], 8080, argv...)
			if err != nil {
				return err
			}
			var res httpResult
			cpu0 := s.cpuSecondsTree()
			err = e.load(ctx, self, &res, "http-load", "-base", "http://"+serverIP+":8080/files", "-dir", root,
				"-clients", fmt.Sprint(o.httpClients))
			res.ServerCPU = s.cpuSecondsTree() - cpu0
			s.stop()
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "http round %d %-5s %7.1f MB/s requests=%d errors=%d %s server-cpu=%.2fs\n", r, httpServerNames[si], res.MBps, res.Requests, res.Errors, res.FirstErr, res.ServerCPU)
			rep.http[si] = append(rep.http[si], res)
		}
	}
	rep.httpTotal = total
	return nil
}

func nginxVersion() string {
	out, err := exec.Command("nginx", "-v").CombinedOutput()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(strings.TrimPrefix(string(out), "nginx version: "))
}
