// Command nfs benchmarks pumi's NFS export against nfs-ganesha (and plain
// go-nfs, the "before" of pumi's read path): sequential reads of one large
// file by 1 and by 10 parallel libnfs readers (nfs-cat to /dev/null), over a
// veth between two network namespaces it creates, unshaped and shaped to
// 1 Gbit/s with tc. Run as root on an otherwise idle machine:
//
//	go run ./bench/nfs -out bench/nfs/RESULTS.md
//
// With -readdir N it measures directory listing instead: libnfs nfs-ls of a
// directory of N empty files, pumi against ganesha:
//
//	go run ./bench/nfs -readdir 20000 -out bench/nfs/READDIR.md
//
// Debian packages: nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils iproute2.
// Everything it starts runs inside its own namespaces and is stopped at the
// end; the data files are kept in -dir for the next run.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pumi-lab/pumi/internal/nfsexport"
)

const (
	nsSrv   = "pumibench-srv"
	nsCli   = "pumibench-cli"
	srvIP   = "10.203.0.1"
	cliIP   = "10.203.0.2"
	pumiP   = 2049
	goNFSP  = 2051
	ganNFSP = 2050
	ganMntP = 20048
)

type server struct {
	port       int
	goNFSReads bool
	name       string
	url        func(file string) string
	start, end func() error
}

func main() {
	size := flag.Int64("size", 2<<30, "bytes of the unshaped test file")
	shapedSize := flag.Int64("shaped-size", 512<<20, "bytes of the file read over the 1 Gbit/s link")
	dir := flag.String("dir", "/var/tmp/pumi-nfs-bench", "data directory (kept between runs)")
	out := flag.String("out", "", "write the Markdown results here too")
	readers := flag.String("readers", "1,10", "parallel reader counts")
	only := flag.String("servers", "ganesha,pumi,gonfs", "servers to measure")
	links := flag.String("links", "none,1gbit", "link shapes to measure (none, or a tc rate)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of this process (which hosts pumi's server) here")
	readdir := flag.Int("readdir", 0, "measure nfs-ls of a directory with this many entries instead of reads")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "nfs bench:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "nfs bench:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	run := func() error { return run(*size, *shapedSize, *dir, *out, *readers, *only, *links) }
	if *readdir > 0 {
		run = func() error { return runReaddir(*readdir, *dir, *out) }
	}
	if err := run(); err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "nfs bench:", err)
		os.Exit(1)
	}
}

func sh(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// inNS runs fn on a thread inside namespace ns and moves the thread back
// before unlocking it (a thread left there would make netDown's "kill every
// pid in the namespace" hit this process when it was the main thread).
func inNS(ns string, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return err
	}
	defer orig.Close()
	f, err := os.Open("/run/netns/" + ns)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return err
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.LockOSThread() // stays locked: the thread dies with the goroutine
		return err
	}
	return ferr
}

func netUp() error {
	netDown()
	for _, c := range [][]string{
		{"netns", "add", nsSrv}, {"netns", "add", nsCli},
		{"link", "add", "pbs0", "type", "veth", "peer", "name", "pbc0"},
		{"link", "set", "pbs0", "netns", nsSrv}, {"link", "set", "pbc0", "netns", nsCli},
		{"-n", nsSrv, "addr", "add", srvIP + "/24", "dev", "pbs0"},
		{"-n", nsCli, "addr", "add", cliIP + "/24", "dev", "pbc0"},
		{"-n", nsSrv, "link", "set", "pbs0", "up"}, {"-n", nsCli, "link", "set", "pbc0", "up"},
		{"-n", nsSrv, "link", "set", "lo", "up"}, {"-n", nsCli, "link", "set", "lo", "up"},
	} {
		if err := sh("ip", c...); err != nil {
			return err
		}
	}
	return nil
}

func netDown() {
	for _, ns := range []string{nsSrv, nsCli} {
		if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
			for _, pid := range strings.Fields(string(out)) {
				if pid == fmt.Sprint(os.Getpid()) {
					continue // our own threads serve from the namespace
				}
				_ = exec.Command("kill", "-9", pid).Run()
			}
		}
		_ = exec.Command("ip", "netns", "del", ns).Run()
	}
}

// shape limits the server's egress (the read direction) to rate, or removes
// the limit when rate is "".
func shape(rate string) error {
	_ = exec.Command("ip", "netns", "exec", nsSrv, "tc", "qdisc", "del", "dev", "pbs0", "root").Run()
	if rate == "" {
		return nil
	}
	return sh("ip", "netns", "exec", nsSrv, "tc", "qdisc", "add", "dev", "pbs0", "root", "tbf",
		"rate", rate, "burst", "1mb", "latency", "50ms")
}

func ensureFile(p string, n int64) error {
	if st, err := os.Stat(p); err == nil && st.Size() == n {
		return nil
	}
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	defer f.Close()
	// Incompressible but cheap: a 1 MiB random block with a counter.
	block := make([]byte, 1<<20)
	if _, err := io.ReadFull(randReader(), block); err != nil {
		return err
	}
	for off := int64(0); off < n; off += int64(len(block)) {
		copy(block, fmt.Sprintf("%016x", off))
		m := min(int64(len(block)), n-off)
		if _, err := f.Write(block[:m]); err != nil {
			return err
		}
	}
	return f.Sync()
}

func randReader() io.Reader { f, _ := os.Open("/dev/urandom"); return f }

type allowAll struct{}

func (allowAll) AllowClient(netip.Addr, string, bool) bool { return true }
func (allowAll) AllowConnect(netip.Addr) bool              { return true }

// serveInNS starts fn's listener inside the server namespace.
func listenSrv(port int) (net.Listener, error) {
	var l net.Listener
	err := inNS(nsSrv, func() (err error) {
		l, err = net.Listen("tcp", fmt.Sprintf("%s:%d", srvIP, port))
		return err
	})
	return l, err
}

func pumiServer(dir string) *server {
	var cancel context.CancelFunc
	var done chan error
	s := &server{name: "pumi", port: pumiP}
	s.url = func(f string) string {
		return fmt.Sprintf("nfs://%s/images/%s?version=3&nfsport=%d&mountport=%d", srvIP, f, s.port, s.port)
	}
	s.start = func() error {
		srv, err := nfsexport.New(nfsexport.Config{Exports: []nfsexport.Export{{Path: "/images", Dir: dir}}, GoNFSReads: s.goNFSReads},
			allowAll{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			return err
		}
		l, err := listenSrv(s.port)
		if err != nil {
			return err
		}
		var ctx context.Context
		ctx, cancel = context.WithCancel(context.Background())
		done = make(chan error, 1)
		go func() { done <- srv.Serve(ctx, l) }()
		return nil
	}
	s.end = func() error { cancel(); return <-done }
	return s
}

// goNFSServer is pumi with READ served by go-nfs's own handler: the
// "before" of pumi's read path. (Plain go-nfs cannot be used directly: libnfs
// asks MOUNT EXPORT first, which go-nfs does not implement.)
func goNFSServer(dir string) *server {
	s := pumiServer(dir)
	s.name = "pumi, go-nfs READ path"
	s.port = goNFSP
	s.goNFSReads = true
	return s
}

const ganeshaConf = `NFS_CORE_PARAM {
    Bind_addr = %[1]s;
    Protocols = 3;
    NFS_Port = %[2]d;
    MNT_Port = %[3]d;
    Enable_NLM = false;
    Enable_RQUOTA = false;
}
NFSV4 { Graceless = true; RecoveryBackend = fs; }
NFS_KRB5 { Active_krb5 = false; }
EXPORT {
    Export_Id = 1;
    Path = %[4]s;
    Pseudo = /bench;
    Access_Type = RO;
    Squash = No_Root_Squash;
    Protocols = 3;
    Transports = TCP;
    SecType = sys;
    FSAL { Name = VFS; }
}
LOG { Default_Log_Level = EVENT; }
`

func ganeshaServer(dir, work string) *server {
	var procs []*exec.Cmd
	return &server{
		name: "nfs-ganesha (VFS)",
		url: func(f string) string {
			return fmt.Sprintf("nfs://%s%s/%s?version=3&nfsport=%d&mountport=%d", srvIP, dir, f, ganNFSP, ganMntP)
		},
		start: func() error {
			conf := filepath.Join(work, "ganesha.conf")
			if err := os.WriteFile(conf, []byte(fmt.Sprintf(ganeshaConf, srvIP, ganNFSP, ganMntP, dir)), 0o644); err != nil {
				return err
			}
			rpcb := exec.Command("ip", "netns", "exec", nsSrv, "rpcbind", "-f", "-w")
			if err := rpcb.Start(); err != nil {
				return fmt.Errorf("rpcbind: %w (install rpcbind)", err)
			}
			procs = append(procs, rpcb)
			time.Sleep(500 * time.Millisecond)
			g := exec.Command("ip", "netns", "exec", nsSrv, "ganesha.nfsd", "-F", "-f", conf,
				"-L", filepath.Join(work, "ganesha.log"), "-p", filepath.Join(work, "ganesha.pid"), "-N", "NIV_EVENT")
			if err := g.Start(); err != nil {
				return fmt.Errorf("ganesha.nfsd: %w (install nfs-ganesha nfs-ganesha-vfs)", err)
			}
			procs = append(procs, g)
			for i := 0; i < 120; i++ {
				out, _ := exec.Command("ip", "netns", "exec", nsCli, "rpcinfo", "-p", srvIP).CombinedOutput()
				if bytes.Contains(out, []byte("mountd")) && bytes.Contains(out, []byte("nfs")) {
					return nil
				}
				time.Sleep(250 * time.Millisecond)
			}
			return errors.New("ganesha did not register with rpcbind within 30 s; see " + work + "/ganesha.log")
		},
		end: func() error {
			for i := len(procs) - 1; i >= 0; i-- {
				_ = procs[i].Process.Kill()
				_ = procs[i].Wait()
			}
			return nil
		},
	}
}

// measure runs n nfs-cat readers of url at once and returns MB/s (10^6
// bytes per second of payload, all readers together).
func measure(url string, n int, fileSize int64) (float64, time.Duration, error) {
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c := exec.Command("ip", "netns", "exec", nsCli, "nfs-cat", url)
			devnull, _ := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
			defer devnull.Close()
			var stderr bytes.Buffer
			c.Stdout, c.Stderr = devnull, &stderr
			if err := c.Run(); err != nil {
				errs[i] = fmt.Errorf("nfs-cat %s: %w: %s", url, err, stderr.String())
			}
		}(i)
	}
	wg.Wait()
	d := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return 0, d, err
	}
	return float64(fileSize) * float64(n) / d.Seconds() / 1e6, d, nil
}

func run(size, shapedSize int64, dir, out, readerList, only, linkList string) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, tc)")
	}
	for _, p := range []string{"nfs-cat", "ganesha.nfsd", "rpcbind", "rpcinfo", "tc", "ip"} {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("%s not found: apt-get install nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils iproute2", p)
		}
	}
	var counts []int
	for _, s := range strings.Split(readerList, ",") {
		var n int
		if _, err := fmt.Sscan(s, &n); err != nil || n < 1 {
			return fmt.Errorf("-readers %q: want a list such as 1,10", readerList)
		}
		counts = append(counts, n)
	}
	data := filepath.Join(dir, "data")
	work := filepath.Join(dir, "work")
	for _, d := range []string{data, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := ensureFile(filepath.Join(data, "big.img"), size); err != nil {
		return err
	}
	if err := ensureFile(filepath.Join(data, "shaped.img"), shapedSize); err != nil {
		return err
	}
	if err := netUp(); err != nil {
		return err
	}
	defer netDown()

	// ganesha first: the other rows are compared with its figure.
	var servers []*server
	for _, s := range []struct {
		key string
		s   *server
	}{{"ganesha", ganeshaServer(data, work)}, {"pumi", pumiServer(data)}, {"gonfs", goNFSServer(data)}} {
		if strings.Contains(","+only+",", ","+s.key+",") {
			servers = append(servers, s.s)
		}
	}
	for _, s := range servers {
		if err := s.start(); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		defer s.end()
	}
	// Warm the page cache so every server reads from memory.
	for _, f := range []string{"big.img", "shaped.img"} {
		if err := exec.Command("cat", filepath.Join(data, f)).Run(); err != nil {
			return err
		}
	}

	var rep strings.Builder
	fmt.Fprintf(&rep, "| link | readers | file | server | MB/s | time | vs ganesha |\n|---|---|---|---|---|---|---|\n")
	for _, link := range strings.Split(linkList, ",") {
		if link == "none" {
			link = ""
		}
		if err := shape(link); err != nil {
			return err
		}
		file, fsize, linkName := "big.img", size, "veth, unshaped"
		if link != "" {
			file, fsize, linkName = "shaped.img", shapedSize, "veth, tc tbf 1 Gbit/s"
		}
		for _, n := range counts {
			res := map[string]float64{}
			for _, s := range servers {
				mbs, d, err := measure(s.url(file), n, fsize)
				if err != nil {
					return fmt.Errorf("%s: %w", s.name, err)
				}
				res[s.name] = mbs
				fmt.Fprintf(os.Stderr, "%s %d readers %s: %.0f MB/s (%.1fs)\n", linkName, n, s.name, mbs, d.Seconds())
				ratio := mbs / res["nfs-ganesha (VFS)"]
				if res["nfs-ganesha (VFS)"] == 0 {
					ratio = 0
				}
				rs := "-"
				if ratio > 0 {
					rs = fmt.Sprintf("%.2f×", ratio)
				}
				fmt.Fprintf(&rep, "| %s | %d | %d MiB | %s | %.0f | %.1f s | %s |\n", linkName, n, fsize>>20, s.name, mbs, d.Seconds(), rs)
			}
		}
	}
	_ = shape("")
	fmt.Print(rep.String())
	if out != "" {
		return writeResults(out, rep.String(), size, shapedSize)
	}
	return nil
}

func writeResults(path, table string, size, shapedSize int64) error {
	host, _ := os.Hostname()
	var b strings.Builder
	fmt.Fprintf(&b, "# NFS read benchmark: pumi vs nfs-ganesha\n\n")
	fmt.Fprintf(&b, "Command: `go run ./bench/nfs -out bench/nfs/RESULTS.md` (root; Debian nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils iproute2).\n\n")
	fmt.Fprintf(&b, "Run %s on %s, %d CPUs, %s. Server and client in two network namespaces joined by a veth; ",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), host, runtime.NumCPU(), runtime.Version())
	fmt.Fprintf(&b, "clients are libnfs `nfs-cat URL > /dev/null` (NFSv3/TCP, one process and one TCP connection per reader), ")
	fmt.Fprintf(&b, "all readers read the same file from the start; MB/s = file size × readers / wall time; the file is in the page cache. ")
	fmt.Fprintf(&b, "Unshaped file %d MiB, shaped file %d MiB. Shaping: `tc qdisc add dev <server veth> root tbf rate 1gbit burst 1mb latency 50ms` (server → client).\n\n", size>>20, shapedSize>>20)
	b.WriteString(table)
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// runReaddir times libnfs nfs-ls of a directory of n empty files on pumi
// and on ganesha, three times each, and reports pumi's time as a ratio of
// ganesha's.
func runReaddir(n int, dir, out string) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces)")
	}
	for _, p := range []string{"nfs-ls", "ganesha.nfsd", "rpcbind", "rpcinfo", "ip"} {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("%s not found: apt-get install nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils iproute2", p)
		}
	}
	data := filepath.Join(dir, "data")
	work := filepath.Join(dir, "work")
	name := fmt.Sprintf("dir-%d", n)
	many := filepath.Join(data, name)
	if err := os.MkdirAll(many, 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	for i := range n {
		f, err := os.OpenFile(filepath.Join(many, fmt.Sprintf("entry-%06d.ptcl", i)), os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		f.Close()
	}
	if err := netUp(); err != nil {
		return err
	}
	defer netDown()
	servers := []*server{ganeshaServer(data, work), pumiServer(data)}
	for _, s := range servers {
		if err := s.start(); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		defer s.end()
	}
	var rep strings.Builder
	fmt.Fprintf(&rep, "| entries | server | run | time | vs ganesha (time) |\n|---|---|---|---|---|\n")
	best := map[string]time.Duration{}
	for run := 1; run <= 3; run++ {
		for _, s := range servers {
			start := time.Now()
			c := exec.Command("ip", "netns", "exec", nsCli, "nfs-ls", s.url(name))
			outb, err := c.Output()
			d := time.Since(start)
			if err != nil {
				return fmt.Errorf("%s: nfs-ls: %w", s.name, err)
			}
			if got := bytes.Count(outb, []byte("entry-")); got != n {
				return fmt.Errorf("%s: nfs-ls listed %d of %d entries", s.name, got, n)
			}
			if b, ok := best[s.name]; !ok || d < b {
				best[s.name] = d
			}
			ratio := "-"
			if g := best["nfs-ganesha (VFS)"]; g > 0 && s.name != "nfs-ganesha (VFS)" {
				ratio = fmt.Sprintf("%.2f×", d.Seconds()/g.Seconds())
			}
			fmt.Fprintf(os.Stderr, "%s run %d: %v\n", s.name, run, d)
			fmt.Fprintf(&rep, "| %d | %s | %d | %.3f s | %s |\n", n, s.name, run, d.Seconds(), ratio)
		}
	}
	fmt.Print(rep.String())
	if out == "" {
		return nil
	}
	host, _ := os.Hostname()
	var b strings.Builder
	fmt.Fprintf(&b, "# NFS directory listing benchmark: pumi vs nfs-ganesha\n\n")
	fmt.Fprintf(&b, "Command: `go run ./bench/nfs -readdir %d -out %s` (root; Debian nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils iproute2).\n\n", n, out)
	fmt.Fprintf(&b, "Run %s on %s, %d CPUs, %s. Server and client in two network namespaces joined by a veth; the client is libnfs "+
		"`nfs-ls URL` (READDIRPLUS, NFSv3/TCP) of a directory of %d empty files; the servers alternate, three runs each; "+
		"the ratio is this run's time over ganesha's best time so far (below 1: pumi is faster).\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), host, runtime.NumCPU(), runtime.Version(), n)
	b.WriteString(rep.String())
	return os.WriteFile(out, []byte(b.String()), 0o644)
}
