package inventory

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/testnet"
)

// init pins the test binary's main goroutine to the main thread, so that
// no other goroutine can run there. testnet.NS.Do locks a goroutine to its
// thread and moves that thread into a namespace for good; if it lands on
// the main thread (which Go never lets exit), /proc/<pid>/ns/net then names
// the test's namespace, and the namespace's cleanup (kill -9 of every pid
// `ip netns pids` lists) kills this test binary. This happened here.
func init() { runtime.LockOSThread() }

// checkOwnNetns fails the test if the process's main thread has left the
// namespace it started in.
func checkOwnNetns(t *testing.T, want string) {
	t.Helper()
	if got, _ := os.Readlink("/proc/self/ns/net"); got != want {
		t.Fatalf("the main thread moved from network namespace %s to %s", want, got)
	}
}

// TestSweepFindsExactlyTheHosts builds a lab inside network namespaces: a
// bridge (pumi's side) and veth "PCs" with known MACs and addresses, plus
// decoys that must not show up: a PC with no address and one on another
// subnet of the same segment. Every ARP frame stays inside the namespaces.
func TestSweepFindsExactlyTheHosts(t *testing.T) {
	testnet.Require(t)
	home, _ := os.Readlink("/proc/self/ns/net")
	defer checkOwnNetns(t, home)
	ns := testnet.New(t)
	ns.Bridge("br0", "10.99.41.1/24")
	want := map[string]string{ // IP -> MAC
		"10.99.41.10":  "02:00:00:41:00:0a",
		"10.99.41.11":  "02:00:00:41:00:0b",
		"10.99.41.77":  "02:00:00:41:00:4d",
		"10.99.41.254": "02:00:00:41:00:fe",
	}
	for addr, mac := range want {
		ns.Host("br0", mac, addr+"/24")
	}
	ns.Host("br0", "02:00:00:41:00:ee", "")              // up, no address
	ns.Host("br0", "02:00:00:42:00:05", "10.99.42.5/24") // same wire, other subnet

	inv, _ := newInv(t)
	for _, s := range []Seat{{MAC: "02:00:00:41:00:0a", IP: ip("10.99.41.10")}, {MAC: "02:00:00:41:00:fe"}} {
		if _, err := inv.AddSeat(ctx, s); err != nil {
			t.Fatal(err)
		}
	}

	var found []Found
	start := time.Now()
	err := ns.Do(func() error {
		var err error
		found, err = inv.Discover(ctx, "br0", netip.MustParsePrefix("10.99.41.0/24"), SweepOptions{Interval: time.Millisecond, Wait: 300 * time.Millisecond})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("swept a /24 in %v, found %d hosts", time.Since(start).Round(time.Millisecond), len(found))
	var got []string
	for _, f := range found {
		got = append(got, fmt.Sprintf("%s=%s known=%v", f.IP, f.MAC, f.Known))
	}
	wantList := []string{
		"10.99.41.10=02:00:00:41:00:0a known=true",
		"10.99.41.11=02:00:00:41:00:0b known=false",
		"10.99.41.77=02:00:00:41:00:4d known=false",
		"10.99.41.254=02:00:00:41:00:fe known=true",
	}
	if strings.Join(got, "\n") != strings.Join(wantList, "\n") {
		t.Errorf("found:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantList, "\n"))
	}
}

func TestSweepRefusals(t *testing.T) {
	testnet.Require(t)
	home, _ := os.Readlink("/proc/self/ns/net")
	defer checkOwnNetns(t, home)
	ns := testnet.New(t)
	ns.Bridge("br0", "10.99.43.1/24")
	ns.MustIP("link", "add", "down0", "type", "veth", "peer", "name", "down1") // exists but down
	cases := []struct {
		ifname, prefix, want string
	}{
		{"br0", "10.0.0.0/15", "limited to a /16"},
		{"br0", "10.99.44.0/24", "has no IPv4 address in 10.99.44.0/24 (it has 10.99.43.1/24"},
		{"br0", "fd00::/120", "not an IPv4 prefix"},
		{"nosuch0", "10.99.43.0/24", `interface "nosuch0"`},
		{"down0", "10.99.43.0/24", "is down"},
	}
	for _, c := range cases {
		err := ns.Do(func() error {
			_, err := Sweep(ctx, c.ifname, netip.MustParsePrefix(c.prefix), SweepOptions{})
			return err
		})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Sweep(%s, %s) = %v; want an error containing %q", c.ifname, c.prefix, err, c.want)
		}
	}

	// Cancellation: a /16 would take over a minute; it must stop and say why.
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(50*time.Millisecond, cancel)
	err := ns.Do(func() error {
		_, err := Sweep(cctx, "br0", netip.MustParsePrefix("10.99.0.0/16"), SweepOptions{})
		return err
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled sweep returned %v", err)
	}
}

func TestHosts(t *testing.T) {
	count := func(p string) (n int, first, last netip.Addr) {
		for a := range hosts(netip.MustParsePrefix(p)) {
			if n == 0 {
				first = a
			}
			last = a
			n++
		}
		return
	}
	for _, c := range []struct {
		p           string
		n           int
		first, last string
	}{
		{"10.0.0.0/24", 254, "10.0.0.1", "10.0.0.254"},
		{"10.0.0.0/31", 2, "10.0.0.0", "10.0.0.1"},
		{"10.0.0.7/32", 1, "10.0.0.7", "10.0.0.7"},
		{"10.1.0.0/16", 65534, "10.1.0.1", "10.1.255.254"},
	} {
		n, f, l := count(c.p)
		if n != c.n || f.String() != c.first || l.String() != c.last {
			t.Errorf("hosts(%s) = %d %s..%s", c.p, n, f, l)
		}
	}
}
