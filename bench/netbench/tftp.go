package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"sync"
	"time"

	"github.com/pin/tftp/v3"

	"github.com/pumi-lab/pumi/internal/netboot"
)

// tftpServe runs pumi's TFTP server (internal/netboot, the code the appliance
// runs) over a directory until it is signalled.
func tftpServe(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("tftp-serve", flag.ContinueOnError)
	root := fl.String("root", "", "directory to serve")
	addr := fl.String("addr", ":69", "UDP address to listen on")
	profile := fl.String("cpuprofile", "", "write a CPU profile here")
	if err := fl.Parse(args); err != nil {
		return err
	}
	ua, err := net.ResolveUDPAddr("udp4", *addr)
	if err != nil {
		return fmt.Errorf("tftp-serve: -addr %q: %w", *addr, err)
	}
	conn, err := net.ListenUDP("udp4", ua)
	if err != nil {
		return fmt.Errorf("tftp-serve: %w", err)
	}
	if *profile != "" {
		f, err := os.Create(*profile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	// Info level, as the appliance logs: one line per transfer.
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	return netboot.NewTFTP(os.DirFS(*root), log).Serve(ctx, conn)
}

// tftpResult is one load run: clients fetching the same file at once.
type tftpResult struct {
	Clients   int     `json:"clients"`
	Bytes     int64   `json:"bytes"`
	Seconds   float64 `json:"seconds"`
	MBps      float64 `json:"mbps"` // aggregate, 10^6 bytes per second
	Errors    int     `json:"errors"`
	FirstErr  string  `json:"first_err,omitempty"`
	MedianSec float64 `json:"median_client_seconds"`
	ServerCPU float64 `json:"server_cpu_seconds"` // filled in by the orchestrator
}

// tftpLoad fetches one file with N parallel pin/tftp clients, checks every
// copy's sha256 and prints a tftpResult as JSON.
func tftpLoad(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("tftp-load", flag.ContinueOnError)
	server := fl.String("server", "", "server ip:port")
	file := fl.String("file", "", "file name to fetch")
	clients := fl.Int("clients", 20, "parallel clients")
	blksize := fl.Int("blksize", 1468, "blksize to ask for")
	want := fl.String("sha256", "", "expected sha256 of the file")
	window := fl.Int("atftp-window", 0, "use atftp (Debian's, a real RFC 7440 client) asking for this windowsize instead of the pin/tftp client")
	if err := fl.Parse(args); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "tftp-load-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	var (
		mu    sync.Mutex
		res   = tftpResult{Clients: *clients}
		times []float64
		wg    sync.WaitGroup
		start = time.Now()
	)
	for i := 0; i < *clients; i++ {
		wg.Go(func() {
			t0 := time.Now()
			var n int64
			var err error
			if *window > 0 {
				n, err = fetchAtftp(ctx, *server, *file, *blksize, *window, *want, filepath.Join(tmp, fmt.Sprint(i)))
			} else {
				n, err = fetchOnce(*server, *file, *blksize, *want)
			}
			d := time.Since(t0).Seconds()
			mu.Lock()
			defer mu.Unlock()
			res.Bytes += n
			times = append(times, d)
			if err != nil {
				res.Errors++
				if res.FirstErr == "" {
					res.FirstErr = err.Error()
				}
			}
		})
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	res.MBps = float64(res.Bytes) / res.Seconds / 1e6
	sort.Float64s(times)
	res.MedianSec = times[len(times)/2]
	return json.NewEncoder(os.Stdout).Encode(res)
}

// fetchAtftp fetches file with atftp asking for blksize and windowsize,
// into local, and checks its sha256.
func fetchAtftp(ctx context.Context, server, file string, blksize, window int, want, local string) (int64, error) {
	host, port, err := net.SplitHostPort(server)
	if err != nil {
		return 0, err
	}
	out, err := exec.CommandContext(ctx, "atftp", "--option", fmt.Sprintf("blksize %d", blksize),
		"--option", fmt.Sprintf("windowsize %d", window), "--option", "tsize 0",
		"-g", "-r", file, "-l", local, host, port).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("atftp: %w: %s", err, out)
	}
	defer os.Remove(local)
	f, err := os.Open(local)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return n, err
	}
	if got := hex.EncodeToString(h.Sum(nil)); want != "" && got != want {
		return n, errors.New("content differs (sha256 " + got + ")")
	}
	return n, nil
}

func fetchOnce(server, file string, blksize int, want string) (int64, error) {
	c, err := tftp.NewClient(server)
	if err != nil {
		return 0, err
	}
	c.SetTimeout(2 * time.Second)
	c.SetRetries(5)
	c.SetBlockSize(blksize)
	c.RequestTSize(true)
	wt, err := c.Receive(file, "octet")
	if err != nil {
		return 0, err
	}
	h := sha256.New()
	n, err := wt.WriteTo(h)
	if err != nil {
		return n, err
	}
	if got := hex.EncodeToString(h.Sum(nil)); want != "" && got != want {
		return n, errors.New("content differs (sha256 " + got + ")")
	}
	return n, nil
}
