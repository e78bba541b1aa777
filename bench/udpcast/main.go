// Command udpcast benchmarks pumi's multicast sender (internal/udpcast)
// against Debian's udp-sender, both feeding 10 real udp-receiver processes
// (as Clonezilla runs them), each in its own network namespace on a bridge
// this program creates: plain, shaped with tc tbf on the sender's link, and
// with 1 % and 5 % random loss on the sender's bridge port (nftables; this
// kernel has no netem). Run as root:
//
//	go run ./bench/udpcast -out bench/udpcast/RESULTS.md
//
// Debian packages: udpcast nftables iproute2. Everything runs inside its own
// namespaces, which are deleted at the end.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pumi-lab/pumi/internal/udpcast"
)

const (
	nsBr     = "pumiub-br"
	nsSnd    = "pumiub-s"
	sndIP    = "10.56.0.1"
	portBase = 2232
)

var (
	sliceBlocks int
	imageFile   string // removed on a signal
)

func rxNS(i int) string { return fmt.Sprintf("pumiub-r%d", i) }

func main() {
	size := flag.Int("size", 48<<20, "image bytes")
	n := flag.Int("receivers", 10, "receivers")
	rounds := flag.Int("rounds", 2, "rounds per scenario (the order of the senders alternates)")
	out := flag.String("out", "", "write the Markdown results here too")
	only := flag.String("scenarios", "plain,tbf,loss1,loss5", "scenarios to run")
	timeout := flag.Duration("timeout", 90*time.Second, "per transfer")
	flag.IntVar(&sliceBlocks, "slice-blocks", 0, "pumi's SliceBlocks (0: its default)")
	flag.Parse()
	// Ctrl-C or a kill still removes the namespaces (and the processes in
	// them) and the image file.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		netDown(*n)
		if imageFile != "" {
			os.Remove(imageFile)
		}
		os.Exit(130)
	}()
	if err := run(*size, *n, *rounds, *out, *only, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "udpcast bench:", err)
		netDown(*n)
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

// inNS runs fn on a thread inside namespace ns and moves the thread back.
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

// netUp: a bridge (snooping on) in its own namespace, the sender and n
// receivers each in a namespace of its own; the veths are created inside
// the bridge namespace, so nothing appears in the host's.
func netUp(n int) error {
	netDown(n)
	cmds := [][]string{
		{"netns", "add", nsBr},
		{"-n", nsBr, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0", "mcast_snooping", "1"},
		{"-n", nsBr, "link", "set", "br0", "up"},
	}
	for i := 0; i <= n; i++ {
		ns, port, ip := nsSnd, "s0", sndIP
		if i > 0 {
			ns, port, ip = rxNS(i), fmt.Sprintf("r%d", i), fmt.Sprintf("10.56.0.%d", 10+i)
		}
		cmds = append(cmds,
			[]string{"netns", "add", ns},
			[]string{"-n", ns, "link", "set", "lo", "up"},
			[]string{"-n", nsBr, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns},
			[]string{"-n", nsBr, "link", "set", port, "master", "br0", "up"},
			[]string{"-n", ns, "addr", "add", ip + "/24", "dev", "eth0"},
			[]string{"-n", ns, "link", "set", "eth0", "up"},
			[]string{"-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0"},
		)
	}
	for _, c := range cmds {
		if err := sh("ip", c...); err != nil {
			return err
		}
	}
	time.Sleep(time.Second)
	return nil
}

func netDown(n int) {
	names := []string{nsBr, nsSnd}
	for i := 1; i <= n; i++ {
		names = append(names, rxNS(i))
	}
	for _, ns := range names {
		if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
			for _, pid := range strings.Fields(string(out)) {
				if pid == fmt.Sprint(os.Getpid()) {
					continue
				}
				_ = exec.Command("kill", "-9", pid).Run()
			}
		}
		_ = exec.Command("ip", "netns", "del", ns).Run()
	}
}

type scenario struct {
	name, desc string
	tbf        string // tc tbf rate on the sender's eth0
	lossPerMil int    // nft random drop at the sender's bridge port
}

var scenarios = []scenario{
	{"plain", "no loss, no shaping", "", 0},
	{"tbf", "tc tbf 40 Mbit/s on the sender's link", "40mbit", 0},
	{"loss1", "1 % random loss on the sender's link", "", 10},
	{"loss5", "5 % random loss on the sender's link", "", 50},
}

func setLink(sc scenario) error {
	_ = exec.Command("ip", "netns", "exec", nsSnd, "tc", "qdisc", "del", "dev", "eth0", "root").Run()
	_ = exec.Command("ip", "netns", "exec", nsBr, "nft", "delete", "table", "netdev", "pumiub").Run()
	if sc.tbf != "" {
		if err := sh("ip", "netns", "exec", nsSnd, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", sc.tbf, "burst", "32kbit", "latency", "400ms"); err != nil {
			return err
		}
	}
	if sc.lossPerMil > 0 {
		rules := fmt.Sprintf("table netdev pumiub {\n chain in { type filter hook ingress device \"s0\" priority 0; policy accept;\n  numgen random mod 1000 < %d drop\n }\n}\n", sc.lossPerMil)
		c := exec.Command("ip", "netns", "exec", nsBr, "nft", "-f", "-")
		c.Stdin = strings.NewReader(rules)
		if out, err := c.CombinedOutput(); err != nil {
			return fmt.Errorf("nft: %w\n%s", err, out)
		}
	}
	return nil
}

func txBytes() int64 {
	out, err := exec.Command("ip", "netns", "exec", nsSnd, "cat", "/sys/class/net/eth0/statistics/tx_bytes").Output()
	if err != nil {
		return 0
	}
	v, _ := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	return v
}

type result struct {
	sender   string
	ok, n    int
	wall     time.Duration // receivers started → all exited
	xfer     time.Duration // data phase
	txRatio  float64       // sender eth0 tx bytes / image size
	stalled  bool
	errNotes string
}

func (r result) mibps(size int) float64 {
	if r.xfer <= 0 {
		return 0
	}
	return float64(size) / (1 << 20) / r.xfer.Seconds()
}

// receivers starts n udp-receivers exactly as Clonezilla does, each piped
// into sha256sum (no disk in the measurement).
func startReceivers(ctx context.Context, n int, dir string) ([]*exec.Cmd, error) {
	var cmds []*exec.Cmd
	for i := 1; i <= n; i++ {
		script := fmt.Sprintf("udp-receiver --nokbd --mcast-all-addr 224.0.0.1 --portbase %d --ttl 1 2>%s | sha256sum >%s",
			portBase, filepath.Join(dir, fmt.Sprintf("r%d.log", i)), filepath.Join(dir, fmt.Sprintf("r%d.sum", i)))
		c := exec.CommandContext(ctx, "ip", "netns", "exec", rxNS(i), "sh", "-c", script)
		c.SysProcAttr = &unix.SysProcAttr{Setpgid: true}
		c.Cancel = func() error { return unix.Kill(-c.Process.Pid, unix.SIGKILL) }
		if err := c.Start(); err != nil {
			return nil, err
		}
		cmds = append(cmds, c)
	}
	return cmds, nil
}

func checkSums(n int, dir, want string) int {
	ok := 0
	for i := 1; i <= n; i++ {
		b, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("r%d.sum", i)))
		if strings.HasPrefix(string(b), want) {
			ok++
		}
	}
	return ok
}

var hms = regexp.MustCompile(`^(\d\d):(\d\d):(\d\d\.\d+)`)

// logTime reads udp-sender's --log time stamp (local time of day).
func logTime(line string) (float64, bool) {
	m := hms.FindStringSubmatch(line)
	if m == nil {
		return 0, false
	}
	h, _ := strconv.Atoi(m[1])
	mi, _ := strconv.Atoi(m[2])
	s, _ := strconv.ParseFloat(m[3], 64)
	return float64(h*3600+mi*60) + s, true
}

func one(sender string, extra []string, n int, img []byte, file, want string, timeout time.Duration) (result, error) {
	res := result{sender: sender, n: n}
	dir, err := os.MkdirTemp("", "pumiub")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tx0 := txBytes()
	t0 := time.Now()
	rx, err := startReceivers(ctx, n, dir)
	if err != nil {
		return res, err
	}
	time.Sleep(300 * time.Millisecond)
	var serr error
	if sender == "pumi" {
		expect := make([]netip.Addr, n)
		for i := range expect {
			expect[i] = netip.AddrFrom4([4]byte{10, 56, 0, byte(11 + i)})
		}
		var st udpcast.Stats
		serr = inNS(nsSnd, func() error {
			s, err := udpcast.NewSession(udpcast.Config{Interface: "eth0", PortBase: portBase, Expect: expect, MaxWait: 30 * time.Second, SliceBlocks: sliceBlocks}, benchLog())
			if err != nil {
				return err
			}
			st, err = s.Run(ctx, bytes.NewReader(img))
			return err
		})
		res.xfer = st.Finished.Sub(st.DataFrom)
	} else {
		logf := filepath.Join(dir, "sender.log")
		args := append([]string{"netns", "exec", nsSnd, "udp-sender", "--file", file, "--nokbd", "--mcast-all-addr", "224.0.0.1",
			"--portbase", fmt.Sprint(portBase), "--ttl", "1", "--interface", "eth0", "--min-receivers", fmt.Sprint(n), "--max-wait", "30", "--log", logf}, extra...)
		c := exec.CommandContext(ctx, "ip", args...)
		c.Cancel = func() error { return c.Process.Kill() }
		var b bytes.Buffer
		c.Stdout, c.Stderr = &b, &b
		serr = c.Run()
		lg, _ := os.ReadFile(logf)
		var a, z float64
		var okA, okZ bool
		for _, line := range strings.Split(string(lg), "\n") {
			if strings.Contains(line, "Starting transfer") && !okA {
				a, okA = logTime(line)
			}
			if strings.Contains(line, "Transfer complete") {
				z, okZ = logTime(line)
			}
		}
		if okA && okZ {
			res.xfer = time.Duration((z - a) * float64(time.Second))
		}
	}
	var wg sync.WaitGroup
	for _, c := range rx {
		wg.Add(1)
		go func() { defer wg.Done(); c.Wait() }()
	}
	wg.Wait()
	res.wall = time.Since(t0)
	res.txRatio = float64(txBytes()-tx0) / float64(len(img))
	res.ok = checkSums(n, dir, want)
	if ctx.Err() != nil {
		res.stalled = true
		res.xfer = 0
	}
	if serr != nil {
		res.errNotes = strings.SplitN(serr.Error(), "\n", 2)[0]
	}
	return res, nil
}

func run(size, n, rounds int, out, only string, timeout time.Duration) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces)")
	}
	for _, p := range []string{"udp-sender", "udp-receiver", "nft", "tc", "ip"} {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("%s missing (apt-get install udpcast nftables iproute2)", p)
		}
	}
	load0 := loadavg()
	img := make([]byte, size)
	if _, err := rand.Read(img); err != nil {
		return err
	}
	sum := sha256.Sum256(img)
	want := hex.EncodeToString(sum[:])
	f, err := os.CreateTemp("", "pumiub-img")
	if err != nil {
		return err
	}
	imageFile = f.Name()
	defer os.Remove(f.Name())
	if _, err := f.Write(img); err != nil {
		return err
	}
	f.Close()
	if err := netUp(n); err != nil {
		return err
	}
	defer netDown(n)

	type peer struct {
		name  string
		extra []string
	}
	var b strings.Builder
	fmt.Fprintf(&b, "| scenario | sender | round | receivers ok | data phase MiB/s | wall s | sender tx bytes / image | vs udp-sender (throughput) |\n|---|---|---|---|---|---|---|---|\n")
	var summary []string
	for _, sc := range scenarios {
		if !strings.Contains(","+only+",", ","+sc.name+",") {
			continue
		}
		if err := setLink(sc); err != nil {
			return err
		}
		peers := []peer{{"udp-sender", nil}, {"pumi", nil}}
		if sc.lossPerMil > 0 {
			// Clonezilla's command sends one HELLO; the note shows a lost one
			// stalls the session, so udp-sender is also measured with its
			// remedy.
			peers = append(peers, peer{"udp-sender --rexmit-hello-interval 1000", []string{"--rexmit-hello-interval", "1000"}})
		}
		agg := map[string][]result{}
		for r := range rounds {
			order := peers
			if r%2 == 1 {
				order = append([]peer{peers[1]}, append([]peer{peers[0]}, peers[2:]...)...)
			}
			for _, p := range order {
				name := p.name
				sender := "udp-sender"
				if name == "pumi" {
					sender = "pumi"
				}
				res, err := one(sender, p.extra, n, img, f.Name(), want, timeout)
				if err != nil {
					return err
				}
				res.sender = name
				agg[name] = append(agg[name], res)
				fmt.Fprintf(os.Stderr, "%s %s round %d: ok %d/%d, %.1f MiB/s, wall %.1fs, tx/size %.3f %s\n",
					sc.name, name, r+1, res.ok, res.n, res.mibps(size), res.wall.Seconds(), res.txRatio, res.errNotes)
			}
		}
		base := mean(agg["udp-sender"], size)
		for _, p := range peers {
			for i, res := range agg[p.name] {
				ratio := "–"
				if base > 0 && res.mibps(size) > 0 {
					ratio = fmt.Sprintf("%.2f×", res.mibps(size)/base)
				}
				mib := fmt.Sprintf("%.1f", res.mibps(size))
				if res.stalled {
					mib = fmt.Sprintf("stalled (killed at %v)", timeout)
				}
				fmt.Fprintf(&b, "| %s | %s | %d | %d/%d | %s | %.1f | %.3f | %s |\n", sc.desc, p.name, i+1, res.ok, res.n, mib, res.wall.Seconds(), res.txRatio, ratio)
			}
		}
		pm := mean(agg["pumi"], size)
		line := fmt.Sprintf("- %s: pumi %.1f MiB/s, udp-sender %.1f MiB/s", sc.desc, pm, base)
		if base > 0 {
			line += fmt.Sprintf(" → **%.2f×**", pm/base)
		} else {
			line += " (udp-sender stalled in every round)"
		}
		line += fmt.Sprintf("; whole session (receivers started → all done) pumi %.1f s, udp-sender %s", meanWall(agg["pumi"]), wallStr(agg["udp-sender"]))
		if w := meanWall(agg["udp-sender"]); w > 0 {
			line += fmt.Sprintf(" → **%.2f×** udp-sender's speed", w/meanWall(agg["pumi"]))
		}
		line += fmt.Sprintf("; pumi's wire bytes %.3f× the image (udp-sender %.3f×)", meanTx(agg["pumi"]), meanTx(agg["udp-sender"]))
		if rh := agg["udp-sender --rexmit-hello-interval 1000"]; len(rh) > 0 {
			if m := mean(rh, size); m > 0 {
				line += fmt.Sprintf("; vs udp-sender --rexmit-hello-interval 1000 (%.1f MiB/s): %.2f×", m, pm/m)
			}
		}
		summary = append(summary, line)
	}
	_ = setLink(scenario{})
	host, _ := os.Hostname()
	var u unix.Utsname
	_ = unix.Uname(&u)
	rep := fmt.Sprintf(`# Multicast benchmark: pumi's sender vs udp-sender

Command: `+"`sudo go run ./bench/udpcast -out bench/udpcast/RESULTS.md`"+` (root; Debian udpcast nftables iproute2).

Run %s on %s, %d CPUs, kernel %s, %s. One bridge (multicast snooping on) and %d+1 network namespaces this program
creates; %d real `+"`udp-receiver --nokbd --mcast-all-addr 224.0.0.1 --portbase %d --ttl 1`"+` (udpcast 20120424, as
Clonezilla's ocs-sr runs it), each piped into sha256sum; the image is %d MiB of random bytes. udp-sender runs as
Clonezilla SE runs it (`+"`udp-sender --file IMG --nokbd --mcast-all-addr 224.0.0.1 --portbase %d --ttl 1 --interface eth0 --min-receivers %d --max-wait 30`"+`);
pumi's sender is `+"`internal/udpcast`"+` with its defaults and the %d receivers as Expect. Loss: nftables `+"`numgen random mod 1000 < N drop`"+`
on netdev ingress of the sender's bridge port (invisible to the sender, like loss on its wire; this kernel has no
netem). Shaping: `+"`tc qdisc add dev eth0 root tbf rate 40mbit burst 32kbit latency 400ms`"+` in the sender's namespace.
Load average (1, 5, 15 min) at the start: %s; at the end: %s (the machine is shared: other engineers' tests run).

Data phase: udp-sender's `+"`--log`"+` "Starting transfer" → "Transfer complete"; pumi's Stats DataFrom → Finished (first
data packet → every receiver acknowledged the end). Wall: receivers started → all receivers exited (includes the
rendezvous; udp-sender waits ~2 s after the last receiver connected). Wire bytes: the sender's eth0 tx_bytes
(Ethernet frames, control and retransmissions included) / image size; pure framing is 1514/1456 = 1.040.
The ratio column is each run's data-phase throughput over the mean of udp-sender's runs in that scenario.

## Summary

%s

## All runs

%s`, time.Now().UTC().Format("2006-01-02 15:04 UTC"), host, runtime.NumCPU(), unix.ByteSliceToString(u.Release[:]), runtime.Version(),
		n, n, portBase, size>>20, portBase, n, n, load0, loadavg(), strings.Join(summary, "\n"), b.String())
	fmt.Println(rep)
	if out != "" {
		return os.WriteFile(out, []byte(rep), 0o644)
	}
	return nil
}

func mean(rs []result, size int) float64 {
	var s float64
	k := 0
	for _, r := range rs {
		if m := r.mibps(size); m > 0 {
			s += m
			k++
		}
	}
	if k == 0 {
		return 0
	}
	return s / float64(k)
}

func meanTx(rs []result) float64 {
	var s float64
	k := 0
	for _, r := range rs {
		if !r.stalled {
			s += r.txRatio
			k++
		}
	}
	if k == 0 {
		return 0
	}
	return s / float64(k)
}

// meanWall is the mean wall time of the runs that did not stall (0: none).
func meanWall(rs []result) float64 {
	var s float64
	k := 0
	for _, r := range rs {
		if !r.stalled && r.ok == r.n {
			s += r.wall.Seconds()
			k++
		}
	}
	if k == 0 {
		return 0
	}
	return s / float64(k)
}

func wallStr(rs []result) string {
	w := meanWall(rs)
	bad := 0
	for _, r := range rs {
		if r.stalled || r.ok != r.n {
			bad++
		}
	}
	out := fmt.Sprintf("%.1f s", w)
	if w == 0 {
		out = "no complete run"
	}
	if bad > 0 {
		out += fmt.Sprintf(" (%d of %d runs stalled or lost a receiver, left out)", bad, len(rs))
	}
	return out
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// benchLog: the sender's log goes to stderr with PUMI_BENCH_LOG=debug|info.
func benchLog() *slog.Logger {
	switch os.Getenv("PUMI_BENCH_LOG") {
	case "debug":
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	case "info":
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.DiscardHandler)
}
