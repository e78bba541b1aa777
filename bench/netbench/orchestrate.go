package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"
)

// The two "machines". 10.98.0.0/16 exists only inside these namespaces,
// which have no other link and no route anywhere.
const (
	serverIP   = "10.98.0.1"
	clientIP   = "10.98.0.2"
	subnet     = "10.98.0.0/16"
	rangeStart = "10.98.1.0"
	rangeEnd   = "10.98.63.255" // 16k addresses: room for -macs up to 16,000
	serverIf   = "vs"
	clientIf   = "vc"
)

type options struct {
	spoof       int
	out         string
	rounds      int
	clients     int
	macs        int
	small       int
	large       int
	profile     string
	window      int
	skipTFTP    bool
	skipHTTP    bool
	squashfs    int
	httpClients int
	skipDHCP    bool
	leaseDir    string

	skipAppliance bool
	applianceBin  string
	pxe           bool
}

func orchestrate(ctx context.Context, args []string) error {
	var o options
	fl := flag.NewFlagSet("netbench", flag.ContinueOnError)
	fl.StringVar(&o.out, "out", "", "also write the Markdown report to this file")
	fl.IntVar(&o.rounds, "rounds", 3, "rounds per measurement (servers alternate who goes first)")
	fl.IntVar(&o.clients, "clients", 20, "parallel TFTP clients")
	fl.IntVar(&o.macs, "macs", 1000, "distinct MACs in the DHCP burst")
	fl.IntVar(&o.small, "small", 1<<20, "size of the iPXE-sized file in bytes")
	fl.IntVar(&o.large, "large", 30<<20, "size of the large file in bytes")
	fl.StringVar(&o.profile, "cpuprofile-dir", "", "write CPU profiles of pumi's servers into this directory")
	fl.IntVar(&o.window, "windowsize", 16, "TFTP windowsize the atftp clients ask for (0: no atftp runs)")
	fl.BoolVar(&o.skipTFTP, "skip-tftp", false, "skip the TFTP part")
	fl.BoolVar(&o.skipDHCP, "skip-dhcp", false, "skip the DHCP part")
	fl.BoolVar(&o.skipHTTP, "skip-http", false, "skip the HTTP part")
	fl.BoolVar(&o.skipAppliance, "skip-appliance", false, "DHCP: do not run the real pumi-appliance binary beside dnsmasq and pumi's DHCP")
	fl.IntVar(&o.spoof, "spoof", 10000, "DHCP: also measure the appliance's known clients (paced) during this many DISCOVERs from random MACs (0: skip)")
	fl.BoolVar(&o.pxe, "pxe", true, "DHCP: clients send PXE options (class PXEClient, arch 7), as lab PCs' firmware does")
	fl.IntVar(&o.squashfs, "squashfs", 350<<20, "size of the Clonezilla-like squashfs the HTTP clients fetch")
	fl.IntVar(&o.httpClients, "http-clients", 40, "parallel HTTP clients (seats)")
	fl.StringVar(&o.leaseDir, "lease-dir", "", "directory for both servers' lease files (default: a temporary directory under $TMPDIR); /dev/shm shows the cost of fsync")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces): run it with sudo")
	}
	for _, p := range []string{"ip", "dnsmasq", "ss", "atftp", "nginx"} {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("needs %s on PATH (Debian: iproute2, dnsmasq-base, atftp, nginx-light)", p)
		}
	}
	if o.macs > 16000 {
		return errors.New("-macs: at most 16000 (the lease range)")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "netbench-")
	if err != nil {
		return err
	}
	if os.Getenv("NETBENCH_KEEP") == "" {
		defer os.RemoveAll(work)
	}
	// dnsmasq drops to user nobody, who must be able to read the files.
	if err := os.Chmod(work, 0o755); err != nil {
		return err
	}
	if o.profile != "" {
		if o.profile, err = filepath.Abs(o.profile); err != nil {
			return err
		}
		if err := os.MkdirAll(o.profile, 0o755); err != nil {
			return err
		}
	}

	env, err := newEnv(work)
	if err != nil {
		return err
	}
	defer env.close()

	rep := &report{opts: o, started: time.Now().UTC(), cmdline: "go run ./bench/netbench " + strings.Join(args, " ")}
	rep.machine = machineInfo()
	if !o.skipTFTP {
		if err := runTFTP(ctx, env, self, &o, rep); err != nil {
			return err
		}
	}
	if !o.skipHTTP {
		if err := runHTTP(ctx, env, self, &o, rep); err != nil {
			return err
		}
	}
	if !o.skipDHCP {
		rep.dhcp = make([][3][]dhcpResult, len(dhcpScenarios))
		if !o.skipAppliance {
			if o.applianceBin, err = buildAppliance(ctx, work); err != nil {
				return err
			}
		}
		if err := runDHCP(ctx, env, self, &o, rep); err != nil {
			return err
		}
	}
	rep.finished = time.Now().UTC()
	md := rep.markdown()
	fmt.Print(md)
	if o.out != "" {
		return os.WriteFile(o.out, []byte(md), 0o644)
	}
	return nil
}

// env is the pair of namespaces.
type env struct {
	work, srv, cli string
}

func newEnv(work string) (*env, error) {
	id := fmt.Sprintf("%d", os.Getpid())
	e := &env{work: work, srv: "netbench-s-" + id, cli: "netbench-c-" + id}
	steps := [][]string{
		{"netns", "add", e.srv},
		{"netns", "add", e.cli},
		{"-n", e.srv, "link", "set", "lo", "up"},
		{"-n", e.cli, "link", "set", "lo", "up"},
		{"-n", e.srv, "link", "add", serverIf, "type", "veth", "peer", "name", clientIf, "netns", e.cli},
		{"-n", e.srv, "addr", "add", serverIP + "/16", "dev", serverIf},
		{"-n", e.cli, "addr", "add", clientIP + "/16", "dev", clientIf},
		{"-n", e.srv, "link", "set", serverIf, "up"},
		{"-n", e.cli, "link", "set", clientIf, "up"},
	}
	for _, s := range steps {
		if out, err := exec.Command("ip", s...).CombinedOutput(); err != nil {
			e.close()
			return nil, fmt.Errorf("ip %s: %v: %s", strings.Join(s, " "), err, out)
		}
	}
	return e, nil
}

func (e *env) close() {
	for _, ns := range []string{e.srv, e.cli} {
		if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
			for _, pid := range strings.Fields(string(out)) {
				exec.Command("kill", "-9", pid).Run()
			}
		}
		exec.Command("ip", "netns", "del", ns).Run()
	}
}

// rcvbufErrors is the server namespace's count of UDP datagrams the kernel
// dropped because a socket's receive buffer was full.
func (e *env) rcvbufErrors() int {
	out, err := exec.Command("ip", "netns", "exec", e.srv, "cat", "/proc/net/snmp").Output()
	if err != nil {
		return 0
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == "RcvbufErrors" && i < len(f) {
				var v int
				fmt.Sscan(f[i], &v)
				return v
			}
		}
	}
	return 0
}

// server is a server process inside the server namespace.
type server struct {
	name string
	cmd  *exec.Cmd
	log  string
}

func (e *env) start(ctx context.Context, name string, port int, argv ...string) (*server, error) {
	logf := filepath.Join(e.work, fmt.Sprintf("%s-%d.log", name, time.Now().UnixNano()))
	f, err := os.Create(logf)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", e.srv}, argv...)...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	s := &server{name: name, cmd: cmd, log: logf}
	exited := make(chan struct{})
	go func() { cmd.Process.Wait(); close(exited) }()
	// Ready when the port is bound; the server has to be up within 15 s.
	for i := 0; i < 300; i++ {
		out, _ := exec.Command("ip", "netns", "exec", e.srv, "ss", "-Hlntu").Output()
		if bytes.Contains(out, []byte(fmt.Sprintf(":%d ", port))) {
			return s, nil
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(logf)
			return nil, fmt.Errorf("%s exited at start:\n%s", name, b)
		case <-ctx.Done():
			s.stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	s.stop()
	return nil, fmt.Errorf("%s did not bind port %d within 15 s (log: %s)", name, port, logf)
}

// cpuSeconds is the CPU time (user+system) the server process has used so far.
func (s *server) cpuSeconds() float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// Fields after the parenthesised command name; utime and stime are the
	// 14th and 15th fields of the line, in clock ticks (100 per second on
	// Linux/amd64).
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	var ut, st float64
	fmt.Sscan(f[11], &ut)
	fmt.Sscan(f[12], &st)
	return (ut + st) / 100
}

// cpuSecondsTree is cpuSeconds of the server and its child processes (nginx's
// workers).
func (s *server) cpuSecondsTree() float64 {
	total := s.cpuSeconds()
	ents, _ := os.ReadDir("/proc")
	for _, d := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) < 13 || f[1] != fmt.Sprint(s.cmd.Process.Pid) {
			continue
		}
		var ut, st float64
		fmt.Sscan(f[11], &ut)
		fmt.Sscan(f[12], &st)
		total += (ut + st) / 100
	}
	return total
}

func (s *server) stop() {
	s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		s.cmd.Process.Kill()
		<-done
	}
}

// load runs a load generator in the client namespace and decodes its JSON.
func (e *env) load(ctx context.Context, self string, v any, args ...string) error {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", e.cli, self}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("%s: %v\n%s", args[0], err, stderr.String())
	}
	return json.Unmarshal(out, v)
}

func writeRandom(path string, n int) (string, error) {
	b := make([]byte, n)
	rand.Read(b)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

var serverNames = [2]string{"dnsmasq", "pumi"}

// dhcpServerNames: pumi is internal/netboot started directly (in-memory
// admission, JSON lease file); pumi-appliance is the real appliance binary.
var dhcpServerNames = [3]string{"dnsmasq", "pumi", "pumi-appliance"}

// order alternates who goes first, so neither always runs on a warmer (or
// busier) machine.
func order(round int) [2]int {
	if round%2 == 0 {
		return [2]int{0, 1}
	}
	return [2]int{1, 0}
}

func runTFTP(ctx context.Context, e *env, self string, o *options, rep *report) error {
	root := filepath.Join(e.work, "tftp")
	if err := os.Mkdir(root, 0o755); err != nil {
		return err
	}
	files := []struct {
		name string
		size int
		sum  string
	}{{name: "ipxe-sized.bin", size: o.small}, {name: "large.bin", size: o.large}}
	for i := range files {
		var err error
		if files[i].sum, err = writeRandom(filepath.Join(root, files[i].name), files[i].size); err != nil {
			return err
		}
	}
	// Each file is fetched twice per round: by pin/tftp clients, which ask
	// for no windowsize (lock-step, RFC 1350), and by atftp clients asking
	// for windowsize (RFC 7440). dnsmasq ignores windowsize, so with atftp
	// it still answers lock-step; pumi sends o.window blocks per ACK.
	type tcase struct {
		label string
		file  int
		win   int
	}
	var cases []tcase
	rep.tftp = map[string]*[2][]tftpResult{}
	for i, f := range files {
		cs := []tcase{{f.name + ", no windowsize (pin/tftp)", i, 0}}
		if o.window > 0 {
			cs = append(cs, tcase{fmt.Sprintf("%s, windowsize %d asked (atftp)", f.name, o.window), i, o.window})
		}
		for _, c := range cs {
			rep.tftp[c.label] = &[2][]tftpResult{}
			rep.tftpFiles = append(rep.tftpFiles, fileDesc{c.label, f.size})
		}
		cases = append(cases, cs...)
	}
	for r := 0; r < o.rounds; r++ {
		for _, si := range order(r) {
			var argv []string
			if si == 0 {
				argv = []string{"dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
					"--enable-tftp", "--tftp-root=" + root, "--interface=" + serverIf, "--bind-interfaces",
					"--pid-file=" + filepath.Join(e.work, "dnsmasq.pid"), "--log-facility=-"}
			} else {
				argv = []string{self, "tftp-serve", "-root", root, "-addr", serverIP + ":69"}
				if o.profile != "" {
					argv = append(argv, "-cpuprofile", filepath.Join(o.profile, fmt.Sprintf("tftp-round%d.pprof", r)))
				}
			}
			s, err := e.start(ctx, serverNames[si], 69, argv...)
			if err != nil {
				return err
			}
			for _, c := range cases {
				f := files[c.file]
				var res tftpResult
				cpu0 := s.cpuSeconds()
				err := e.load(ctx, self, &res, "tftp-load", "-server", serverIP+":69", "-file", f.name,
					"-clients", fmt.Sprint(o.clients), "-blksize", "1468", "-sha256", f.sum, "-atftp-window", fmt.Sprint(c.win))
				if err != nil {
					s.stop()
					return err
				}
				res.ServerCPU = s.cpuSeconds() - cpu0
				fmt.Fprintf(os.Stderr, "tftp round %d %-7s %-50s %7.1f MB/s errors=%d server-cpu=%.2fs\n", r, serverNames[si], c.label, res.MBps, res.Errors, res.ServerCPU)
				rep.tftp[c.label][si] = append(rep.tftp[c.label][si], res)
			}
			s.stop()
		}
	}
	return nil
}

// dhcpScenarios: a back-to-back burst (1,000 PCs woken at once, worse than
// reality: they arrive within a few ms) and the same MACs paced at 200/s,
// a rate both servers should sustain on an idle machine.
var dhcpScenarios = []struct{ name, pace string }{
	{"burst (back to back)", "0"},
	{"paced (200 DISCOVERs/s)", "5ms"},
}

func runDHCP(ctx context.Context, e *env, self string, o *options, rep *report) error {
	for sc, scen := range dhcpScenarios {
		if err := runDHCPScenario(ctx, e, self, o, rep, sc, scen.pace); err != nil {
			return err
		}
	}
	if !o.skipAppliance && o.spoof > 0 {
		return runSpoofed(ctx, e, self, o, rep)
	}
	return nil
}

// runSpoofed measures the appliance's known clients (paced as lab PCs wake)
// while a visitor floods o.spoof DISCOVERs from random MACs: the flood must
// not slow real seats (each spoofed packet is an admission look-up and a
// "seen" record, batched off the DHCP path).
func runSpoofed(ctx context.Context, e *env, self string, o *options, rep *report) error {
	for r := 0; r < o.rounds; r++ {
		leases := filepath.Join(e.work, fmt.Sprintf("netbench-spoof-%d.leases", r))
		s, err := e.startAppliance(ctx, o.applianceBin, leases, o.macs)
		if err != nil {
			return err
		}
		flood := make(chan error, 1)
		var sent map[string]any
		go func() { flood <- e.load(ctx, self, &sent, "dhcp-spoof", "-iface", clientIf, "-n", fmt.Sprint(o.spoof)) }()
		var res dhcpResult
		err = e.load(ctx, self, &res, "dhcp-load", "-iface", clientIf, "-n", fmt.Sprint(min(o.macs, 500)), "-pace", "5ms", fmt.Sprintf("-pxe=%v", o.pxe))
		ferr := <-flood
		s.stop()
		if err != nil {
			return err
		}
		if ferr != nil {
			return ferr
		}
		fmt.Fprintf(os.Stderr, "spoofed round %d: %v spoofed DISCOVERs in %.1fs; known clients acks=%d/%d p50=%.1fms p99=%.1fms\n",
			r, sent["sent"], sent["seconds"], res.Acks, res.MACs, res.AckP50, res.AckP99)
		rep.spoofed = append(rep.spoofed, res)
	}
	return nil
}

func runDHCPScenario(ctx context.Context, e *env, self string, o *options, rep *report, sc int, pace string) error {
	servers := 2
	if !o.skipAppliance {
		servers = 3
	}
	for r := 0; r < o.rounds; r++ {
		for k := range servers {
			si := (k + r) % servers // who goes first rotates
			// A fresh lease file (state) each time: every burst is 1,000 new clients.
			dir := e.work
			if o.leaseDir != "" {
				dir = o.leaseDir
			}
			leases := filepath.Join(dir, fmt.Sprintf("netbench-%d-%s-%d-%d.leases", os.Getpid(), dhcpServerNames[si], sc, r))
			defer os.RemoveAll(leases)
			var argv []string
			switch si {
			case 0:
				argv = []string{"dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
					"--interface=" + serverIf, "--bind-interfaces", "--dhcp-authoritative",
					"--dhcp-range=" + rangeStart + "," + rangeEnd + ",255.255.0.0,12h",
					"--dhcp-option=option:router," + serverIP,
					"--dhcp-leasefile=" + leases, "--dhcp-lease-max=100000", "--no-ping",
					"--pid-file=" + filepath.Join(e.work, "dnsmasq.pid"), "--log-facility=-"}
			case 1:
				argv = []string{self, "dhcp-serve", "-iface", serverIf, "-server-ip", serverIP, "-subnet", subnet,
					"-range-start", rangeStart, "-range-end", rangeEnd, "-leases", leases}
				if o.profile != "" {
					argv = append(argv, "-cpuprofile", filepath.Join(o.profile, fmt.Sprintf("dhcp-round%d.pprof", r)))
				}
			}
			var s *server
			var err error
			if si == 2 {
				s, err = e.startAppliance(ctx, o.applianceBin, leases, o.macs)
			} else {
				s, err = e.start(ctx, dhcpServerNames[si], 67, argv...)
			}
			if err != nil {
				return err
			}
			drops0, cpu0 := e.rcvbufErrors(), s.cpuSeconds()
			var res dhcpResult
			err = e.load(ctx, self, &res, "dhcp-load", "-iface", clientIf, "-n", fmt.Sprint(o.macs), "-pace", pace, fmt.Sprintf("-pxe=%v", o.pxe))
			res.ServerDrops = e.rcvbufErrors() - drops0
			res.ServerCPU = s.cpuSeconds() - cpu0
			s.stop()
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "server-drops=%d ", res.ServerDrops)
			fmt.Fprintf(os.Stderr, "dhcp round %d %-14s offers=%d acks=%d/%d first-try=%d retrans=%d naks=%d dup=%d unmatched=%d p50=%.1fms p99=%.1fms (log %s)\n",
				r, dhcpServerNames[si], res.Offers, res.Acks, res.MACs, res.AcksFirst, res.Retrans, res.Naks, res.DupIPs, res.Unmatched, res.AckP50, res.AckP99, s.log)
			rep.dhcp[sc][si] = append(rep.dhcp[sc][si], res)
		}
	}
	return nil
}

type fileDesc struct {
	name string
	size int
}

type report struct {
	opts              options
	cmdline           string
	machine           []string
	started, finished time.Time
	tftpFiles         []fileDesc
	tftp              map[string]*[2][]tftpResult
	dhcp              [][3][]dhcpResult // per scenario, per server (dhcpServerNames)
	spoofed           []dhcpResult      // the appliance's known clients during a spoofed flood
	httpFiles         []fileDesc
	httpTotal         int64
	http              *[2][]httpResult // per server
}

func machineInfo() []string {
	var m []string
	run := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).Output()
		if err != nil {
			return "?"
		}
		return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	cpu := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	load := "?"
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	m = append(m,
		fmt.Sprintf("CPU: %s, %d cores visible to Go; load average at start: %s", cpu, runtime.NumCPU(), load),
		"kernel: "+run("uname", "-srm"),
		"Go: "+runtime.Version(),
		"dnsmasq: "+run("dnsmasq", "--version"),
	)
	return m
}

// fsType names the file system holding dir, as df reports it.
func fsType(dir string) string {
	out, err := exec.Command("df", "--output=fstype", dir).Output()
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(out))
	return f[len(f)-1]
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func (r *report) markdown() string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	w("## Run of %s UTC\n\n", r.started.Format("2006-01-02 15:04"))
	w("Command (repository root, as root): `%s` — took %s.\n\n", strings.TrimSpace(r.cmdline), r.finished.Sub(r.started).Round(time.Second))
	for _, m := range r.machine {
		w("- %s\n", m)
	}
	w("- Topology: two network namespaces joined by one veth pair (MTU 1500), server %s, client %s; servers run one at a time.\n\n", serverIP, clientIP)
	if r.tftp != nil {
		w("### TFTP: %d parallel clients, blksize 1468 asked, every copy's sha256 checked\n\n", r.opts.clients)
		w("Clients: pin/tftp (Go, asks blksize and tsize, no windowsize: lock-step) and Debian's atftp (asks blksize, tsize and windowsize; dnsmasq does not implement RFC 7440 and answers it lock-step).\n\n")
		w("Aggregate throughput (MB = 10^6 bytes) per round; the ratio is of the medians.\n\n")
		w("Server CPU is the server process's user+system time during the load, summed over the rounds.\n\n")
		w("| file | dnsmasq MB/s | pumi MB/s | median dnsmasq | median pumi | pumi/dnsmasq | server CPU s d/p | errors d/p |\n|---|---|---|---|---|---|---|---|\n")
		for _, f := range r.tftpFiles {
			res := r.tftp[f.name]
			var cols [2][]string
			var vals [2][]float64
			var errs [2]int
			var cpu [2]float64
			for si := range 2 {
				for _, x := range res[si] {
					cpu[si] += x.ServerCPU
					cols[si] = append(cols[si], fmt.Sprintf("%.1f", x.MBps))
					vals[si] = append(vals[si], x.MBps)
					errs[si] += x.Errors
				}
			}
			md, mp := median(vals[0]), median(vals[1])
			w("| %s (%d B) | %s | %s | %.1f | %.1f | **%.2f×** | %.2f/%.2f | %d/%d |\n", f.name, f.size,
				strings.Join(cols[0], ", "), strings.Join(cols[1], ", "), md, mp, mp/md, cpu[0], cpu[1], errs[0], errs[1])
		}
		w("\n")
	}
	if r.http != nil {
		w("### HTTP: %d seats fetching the Clonezilla boot files at once, pumi (internal/boot) vs nginx\n\n", r.opts.httpClients)
		w("Each client GETs the kernel and the initrd whole, then the squashfs in 4 MiB Range requests, over keep-alive ")
		w("connections (Go's HTTP client); every byte is compared with the served file. Files: ")
		for i, f := range r.httpFiles {
			if i > 0 {
				w(", ")
			}
			w("%s %d MiB", f.name, f.size>>20)
		}
		w(" (%.0f MB per seat). nginx %s: `sendfile on`, one worker per core, no access log; pumi logs every request ", float64(r.httpTotal)/1e6, nginxVersion())
		w("at info level as the appliance does. Server CPU is user+system of the server and its children (nginx's workers).\n\n")
		w("| server | round | MB/s aggregate | requests | median seat s | slowest seat s | server CPU s | errors |\n|---|---|---|---|---|---|---|---|\n")
		var agg [2][]float64
		for si := range 2 {
			for i, x := range r.http[si] {
				w("| %s | %d | %.1f | %d | %.1f | %.1f | %.2f | %d |\n", httpServerNames[si], i, x.MBps, x.Requests, x.MedianSec, x.MaxSec, x.ServerCPU, x.Errors)
				agg[si] = append(agg[si], x.MBps)
			}
		}
		w("\nMedian aggregate: nginx %.1f MB/s, pumi %.1f MB/s: pumi/nginx **%.2f×**.\n\n", median(agg[0]), median(agg[1]), median(agg[1])/median(agg[0]))
	}
	if len(r.dhcp) > 0 {
		w("### DHCP: %d distinct MACs, DISCOVER→OFFER→REQUEST→ACK, full mode\n\n", r.opts.macs)
		w("Servers: dnsmasq; pumi = `internal/netboot` started directly (in-memory admission, JSON lease file); ")
		w("pumi-appliance = the real `cmd/pumi-appliance` binary with a fresh state directory each round, configured through ")
		w("its JSON API (full-mode netboot, the %d MACs uploaded as its inventory, each with a reserved address), so its ", r.opts.macs)
		w("answers go through its own admission and \"seen\" records and its leases into its state file. ")
		if r.opts.pxe {
			w("Clients send PXE options (class `PXEClient:Arch:00007`, option 93 = 7) in DISCOVER and REQUEST, as lab PCs' firmware does.")
		}
		w("\n\n")
		where := "a temporary directory on " + fsType(os.TempDir())
		if r.opts.leaseDir != "" {
			where = r.opts.leaseDir + " (" + fsType(r.opts.leaseDir) + ")"
		}
		w("One client socket sends every MAC's first DISCOVER (back to back, or paced); each OFFER is answered with a ")
		w("REQUEST at once; an unanswered DISCOVER or REQUEST is retransmitted after 4±1 s, then 8±1 s, as real clients ")
		w("do. Latency per MAC from its first DISCOVER leaving the client to its OFFER / ACK arriving (ms). dnsmasq runs ")
		w("with `--no-ping` (otherwise it probes each address with ICMP before offering it; pumi does not). Both write ")
		w("their lease file, in %s. \"Server drops\" are datagrams the server namespace's kernel dropped because the ", where)
		w("server's socket buffer was full (Udp RcvbufErrors).\n\n")
		for sc, scen := range dhcpScenarios {
			res := r.dhcp[sc]
			w("#### %s\n\n", scen.name)
			w("| server | round | ACKed | of them 1st try | retrans. | server drops | NAKs | dup. IPs | offer p50 | offer p99 | ACK p50 | ACK p99 | ACK max | last ACK s | server CPU s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
			var p99, p50 [3][]float64
			var acked [3]int
			for si := range 3 {
				for i, x := range res[si] {
					w("| %s | %d | %d/%d | %d | %d | %d | %d | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.2f | %.2f |\n", dhcpServerNames[si], i, x.Acks, x.MACs,
						x.AcksFirst, x.Retrans, x.ServerDrops, x.Naks, x.DupIPs, x.OfferP50, x.OfferP99, x.AckP50, x.AckP99, x.AckMax, x.Seconds, x.ServerCPU)
					p99[si] = append(p99[si], x.AckP99)
					p50[si] = append(p50[si], x.AckP50)
					acked[si] += x.Acks
				}
			}
			w("\nAll answered: dnsmasq %d/%d, pumi %d/%d. Medians over rounds: ACK p50 dnsmasq %.1f ms, pumi %.1f ms (pumi/dnsmasq **%.2f×**); ",
				acked[0], len(res[0])*r.opts.macs, acked[1], len(res[1])*r.opts.macs,
				median(p50[0]), median(p50[1]), median(p50[1])/median(p50[0]))
			w("ACK p99 dnsmasq %.1f ms, pumi %.1f ms (pumi/dnsmasq **%.2f×**; below 1 means pumi is faster). ",
				median(p99[0]), median(p99[1]), median(p99[1])/median(p99[0]))
			if len(res[2]) > 0 {
				w("The appliance: %d/%d answered; ACK p50 %.1f ms (appliance/dnsmasq **%.2f×**), ACK p99 %.1f ms (appliance/dnsmasq **%.2f×**). ",
					acked[2], len(res[2])*r.opts.macs, median(p50[2]), median(p50[2])/median(p50[0]), median(p99[2]), median(p99[2])/median(p99[0]))
			}
			w("p50/p99 are over the ACKed MACs only.\n\n")
		}
	}
	if len(r.spoofed) > 0 {
		w("### The appliance's seats during a flood of %d DISCOVERs from random MACs\n\n", r.opts.spoof)
		w("A visitor's flood (`dhcp-spoof`: random MACs, PXE options, back to back, never a REQUEST) runs while %d known seats ", r.spoofed[0].MACs)
		w("(inventory MACs) ask at 200/s, against the real appliance.\n\n| round | answered | ACK p50 ms | ACK p99 ms | max ms |\n|---|---|---|---|---|\n")
		for i, x := range r.spoofed {
			w("| %d | %d/%d | %.1f | %.1f | %.1f |\n", i, x.Acks, x.MACs, x.AckP50, x.AckP99, x.AckMax)
		}
		w("\n")
	}
	return b.String()
}
