package roomcast

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/boot"
	"github.com/pumi-lab/pumi/internal/clonezilla"
	"github.com/pumi-lab/pumi/internal/seatjob"
	"github.com/pumi-lab/pumi/internal/store"
	"github.com/pumi-lab/pumi/internal/testnet"
	"github.com/pumi-lab/pumi/internal/testseat"
)

// The test's lab VLAN: a bridge, pumi at .1 and three seats, each seat a
// namespace running real udp-receiver processes the way Clonezilla's
// multicast client does (one per partition, port += 2).
const (
	labEnv  = "PUMI_ROOMCAST_TEST" // in the re-executed child: "<sender ns>,<seat ns>,..."
	pumiIP  = "10.57.0.1"
	seatNet = "10.57.0."
)

var seatMACs = []string{"52:54:00:57:00:0a", "52:54:00:57:00:0b", "52:54:00:57:00:0c"}

func seatAddr(i int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("%s%d", seatNet, 11+i)) }

// TestRoomRestore runs a group of three seats through pumi's multicast
// sessions with real udp-receivers: two join and receive every partition
// byte for byte; the third starts its receiver only after the stream and is
// refused at once (it does not wait forever), its job moves to unicast, and
// its Clonezilla's failure report starts the restore over instead of failing
// the seat. The manager runs in the test process, so the process re-executes
// itself inside pumi's namespace: not one packet leaves the lab.
func TestRoomRestore(t *testing.T) {
	if env := os.Getenv(labEnv); env != "" {
		names := strings.Split(env, ",")
		if own, ok := testseat.OwnNamespace(); !ok || own != names[0] {
			t.Fatalf("%s is set but this process is in namespace %q", labEnv, own)
		}
		roomRestore(t, names[1:])
		return
	}
	testnet.Require(t, "udp-receiver", "nsenter")
	br := testnet.New(t)
	br.Bridge("br0", "")
	pumi := br.Host("br0", "", pumiIP+"/24")
	pumi.MustIP("route", "add", "224.0.0.0/4", "dev", "eth0")
	names := []string{pumi.Name}
	for i := range seatMACs {
		h := br.Host("br0", "", seatAddr(i).String()+"/24")
		h.MustIP("route", "add", "224.0.0.0/4", "dev", "eth0")
		names = append(names, h.Name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", "--net=/run/netns/"+pumi.Name, "--",
		os.Args[0], "-test.run=^TestRoomRestore$", "-test.v", "-test.count=1", "-test.timeout=230s")
	cmd.Env = append(os.Environ(), labEnv+"="+strings.Join(names, ","))
	out, err := cmd.CombinedOutput()
	t.Logf("inside pumi's namespace:\n%s", out)
	if err != nil {
		t.Fatalf("the room restore failed: %v", err)
	}
}

var tokenRE = regexp.MustCompile(`pumi_token=([A-Za-z0-9_-]+)`)

func roomRestore(t *testing.T, seatNS []string) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "state"), log)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	repo, err := filepath.Abs("../clonezilla/testdata/repo")
	if err != nil {
		t.Fatal(err)
	}
	addrOf := map[string]netip.Addr{}
	for i, m := range seatMACs {
		addrOf[m] = seatAddr(i)
	}
	pumiAddr := netip.MustParseAddr(pumiIP)
	m := &Manager{Log: log, FirstWait: 20 * time.Second, Settings: func(context.Context) (Settings, error) {
		return Settings{Interface: "eth0", LocalAddr: pumiAddr, Repository: repo, PortBase: 2232, MaxWait: 15 * time.Second}, nil
	}}
	jobs, err := seatjob.New(ctx, seatjob.Config{Store: st, Log: log, LogDir: t.TempDir(), Multicast: m.Port, Changed: m.Poke,
		Addr: func(_ *store.Tx, mac string) (netip.Addr, error) {
			if a, ok := addrOf[mac]; ok {
				return a, nil
			}
			return netip.Addr{}, seatjob.ErrUnknownSeat
		},
		Env: func(context.Context) (seatjob.Env, error) {
			return seatjob.Env{Base: "http://" + pumiIP + ":8080", Server: pumiAddr, NFSPort: 2049, Live: "3.3.0-33-amd64", Repository: repo}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	m.Jobs = jobs
	go m.Run(ctx)

	img, err := clonezilla.Inspect(ctx, repo, "LAB-A-img")
	if err != nil || !img.Valid || len(img.Partitions) < 2 {
		t.Fatalf("fixture image: %+v %v", img, err)
	}
	var total int64
	for _, p := range img.Partitions {
		total += p.Bytes
	}
	// Every seat boots into Clonezilla's multicast client.
	toks := map[string]string{}
	var ports []int
	for _, mac := range seatMACs {
		if _, err := jobs.Start(ctx, seatjob.Request{Key: "run1#1", MAC: mac, Action: seatjob.Restore, Image: "LAB-A-img", Group: "run1"}); err != nil {
			t.Fatal(err)
		}
		hw, _ := net.ParseMAC(mac)
		d, err := jobs.Decide(ctx, boot.Machine{MAC: hw, Addr: addrOf[mac]})
		if err != nil || !strings.Contains(d.Cmdline, "multicast_restoredisk LAB-A-img") || !strings.Contains(d.Cmdline, "--mcast-port 2232") {
			t.Fatalf("seat %s boot: %v\n%s", mac, err, d.Cmdline)
		}
		toks[mac] = tokenRE.FindStringSubmatch(d.Cmdline)[1]
	}
	for k := range img.Partitions {
		ports = append(ports, 2232+2*k)
	}
	dir := t.TempDir()
	// Seats A and B report "started" and run their receivers in turn, as
	// Clonezilla does; seat C stays silent (still booting).
	type result struct {
		seat int
		err  error
		out  string
	}
	results := make(chan result, 2)
	for i := range 2 {
		if err := jobs.Report(ctx, toks[seatMACs[i]], "started", seatAddr(i), nil); err != nil {
			t.Fatal(err)
		}
		go func() {
			for k, port := range ports {
				out, err := receive(ctx, seatNS[i], port, filepath.Join(dir, fmt.Sprintf("seat%d.part%d", i, k)))
				if err != nil {
					results <- result{i, err, out}
					return
				}
			}
			results <- result{i, nil, ""}
		}()
	}
	for range 2 {
		select {
		case r := <-results:
			if r.err != nil {
				t.Fatalf("seat %d's udp-receiver: %v\n%s", r.seat, r.err, r.out)
			}
		case <-time.After(2 * time.Minute):
			t.Fatal("the stream did not finish within 2 minutes")
		}
	}
	for i := range 2 {
		for k, p := range img.Partitions {
			want := sha256.New()
			for _, f := range p.Files {
				b, _ := os.ReadFile(filepath.Join(repo, "LAB-A-img", f))
				want.Write(b)
			}
			got, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("seat%d.part%d", i, k)))
			if sum := sha256.Sum256(got); !bytes.Equal(sum[:], want.Sum(nil)) {
				t.Errorf("seat %d partition %s: %d bytes differ from the image's", i, p.Name, len(got))
			}
		}
		if j, _ := jobs.Get(ctx, seatMACs[i], ""); j.Demoted != "" || j.Transport() != "multicast" {
			t.Errorf("seat %d: %+v", i, j)
		}
	}
	// Seat C missed the stream: demoted, and its late receiver is refused at
	// once instead of waiting forever.
	deadline := time.Now().Add(30 * time.Second)
	for {
		j, _ := jobs.Get(ctx, seatMACs[2], "")
		if j.Demoted != "" {
			t.Logf("seat C: %s", j.Transport())
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("seat C was not moved to unicast: %+v", j)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := jobs.Report(ctx, toks[seatMACs[2]], "started", seatAddr(2), nil); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	out, err := receive(ctx, seatNS[2], ports[0], filepath.Join(dir, "late"))
	if err == nil || time.Since(t0) > 20*time.Second {
		t.Fatalf("a late receiver: err %v after %v, want refused at once\n%s", err, time.Since(t0), out)
	}
	if err := jobs.Report(ctx, toks[seatMACs[2]], "finished", seatAddr(2), []byte("udp-receiver failed\n")); err != nil {
		t.Fatal(err)
	}
	if j, _ := jobs.Get(ctx, seatMACs[2], ""); j.State != seatjob.Pending || j.McastBoot {
		t.Fatalf("seat C after its failed multicast restore: %+v, want pending (unicast at its next boot)", j)
	}
	hw, _ := net.ParseMAC(seatMACs[2])
	if d, _ := jobs.Decide(ctx, boot.Machine{MAC: hw, Addr: seatAddr(2)}); !strings.Contains(d.Cmdline, " restoredisk LAB-A-img") {
		t.Fatalf("seat C's next boot: %s", d.Cmdline)
	}
	s := m.Sessions()
	if len(s) != 1 || len(s[0].Joined) != 2 || s[0].State != "done" {
		t.Fatalf("sessions %+v", s)
	}
	t.Logf("FIGURE room restore: %d partitions, %d bytes of image, %d bytes on the wire (%.2f×) for 2 seats",
		len(img.Partitions), total, s[0].WireBytes, float64(s[0].WireBytes)/float64(total))

	// A room where nothing joins (multicast blocked): every seat moves to
	// unicast and the reason says why.
	for i, mac := range seatMACs[:2] {
		if _, err := jobs.Start(ctx, seatjob.Request{Key: "run2#1", MAC: mac, Action: seatjob.Restore, Image: "LAB-A-img", Group: "run2"}); err != nil {
			t.Fatal(err)
		}
		hw, _ := net.ParseMAC(mac)
		d, _ := jobs.Decide(ctx, boot.Machine{MAC: hw, Addr: seatAddr(i)})
		if err := jobs.Report(ctx, tokenRE.FindStringSubmatch(d.Cmdline)[1], "started", seatAddr(i), nil); err != nil {
			t.Fatal(err)
		}
	}
	deadline = time.Now().Add(45 * time.Second)
	for _, mac := range seatMACs[:2] {
		for {
			j, _ := jobs.Get(ctx, mac, "")
			if strings.Contains(j.Demoted, "no seat joined") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("a room where nothing joined: %+v", j)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// receive runs one real udp-receiver in a seat's namespace, as Clonezilla's
// client does for one partition.
func receive(ctx context.Context, ns string, port int, out string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "udp-receiver", "--nokbd", "--mcast-all-addr", "224.0.0.1",
		"--portbase", fmt.Sprint(port), "--ttl", "1", "--file", out)
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	return b.String(), err
}
