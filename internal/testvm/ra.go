package testvm

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pumi-lab/pumi/internal/testnet"
)

// AdvertiseRouter multicasts an IPv6 router advertisement on iface inside ns
// every half second until the test ends. The advertisement carries no
// prefix, no flags and a zero router lifetime ("nothing to configure, I am
// not a default router").
//
// Why: iPXE's "Configuring (net0 ...)" step waits for IPv6
// autoconfiguration, soliciting routers for about 13-18 s before giving up,
// on every boot. One advertisement ends that wait at once, which takes
// ~15 s off every iPXE run in a test (a lab with an IPv6 router sees the
// same). Unsolicited and repeated because the bridge gets its link-local
// address only once the VM's tap has carrier, and a raw socket needs no
// listening for solicitations.
func AdvertiseRouter(t testing.TB, ns *testnet.NS, iface string) {
	t.Helper()
	var fd int
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
		if err != nil {
			return fmt.Errorf("raw ICMPv6 socket: %w", err)
		}
		// RFC 4861: a router advertisement must arrive with hop limit 255.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_HOPS, 255); err != nil {
			unix.Close(fd)
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_IF, ifi.Index); err != nil {
			unix.Close(fd)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatalf("testvm: router advertisements on %s: %v", iface, err)
	}
	// type 134, code 0, checksum (the kernel fills it in for ICMPv6 raw
	// sockets), cur hop limit 64, flags 0, router lifetime 0, reachable 0,
	// retrans 0.
	ra := []byte{134, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	allNodes := &unix.SockaddrInet6{Addr: [16]byte{0xff, 0x02, 15: 1}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			// Fails (EADDRNOTAVAIL) until the bridge has a link-local
			// address; that is expected and retried.
			_ = unix.Sendto(fd, ra, 0, allNodes)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		unix.Close(fd)
	})
}
