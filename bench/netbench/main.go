// Command netbench compares pumi's netboot services with dnsmasq's on the same
// machine, in one run: TFTP throughput with 20 parallel clients (a 1 MiB
// iPXE-sized file and a 30 MiB file) and a DHCP burst of 1,000+ distinct MACs
// doing DISCOVER→OFFER→REQUEST→ACK against full-mode DHCP.
//
// Everything runs inside two network namespaces it creates and deletes (a
// server "machine" and a client "machine" joined by one veth pair, 10.98.0.0/16);
// nothing touches the host's interfaces. It needs root, `ip` and `dnsmasq`
// (Debian: iproute2, dnsmasq-base).
//
// Usage (from the repository root): sudo go run ./bench/netbench -out bench/RESULTS.md
//
// The same binary is re-executed inside the namespaces for its parts:
// "tftp-serve" (pumi's TFTP over a directory), "dhcp-serve" (pumi's full-mode
// DHCP server), "tftp-load" and "dhcp-load" (the load generators); each prints
// one JSON result line.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	sub := ""
	if len(os.Args) > 1 {
		sub = os.Args[1]
	}
	switch sub {
	case "tftp-serve":
		err = tftpServe(ctx, os.Args[2:])
	case "dhcp-serve":
		err = dhcpServe(ctx, os.Args[2:])
	case "tftp-load":
		err = tftpLoad(ctx, os.Args[2:])
	case "dhcp-load":
		err = dhcpLoad(ctx, os.Args[2:])
	case "dhcp-spoof":
		err = dhcpSpoof(ctx, os.Args[2:])
	case "http-serve":
		err = httpServe(ctx, os.Args[2:])
	case "http-load":
		err = httpLoad(ctx, os.Args[2:])
	default:
		err = orchestrate(ctx, os.Args[1:])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "netbench:", err)
		os.Exit(1)
	}
}
