package netboot

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/pumi-lab/pumi/assets"
	"github.com/pumi-lab/pumi/internal/testnet"
)

// Integration tests: real DHCP clients (busybox udhcpc, ISC dhclient) and a
// real second DHCP server (dnsmasq) against pumi, all inside network
// namespaces the test creates; nothing reaches the machine's interfaces.
// Each test uses its own 10.99.N.0/24 so parallel runs cannot collide.

// startServer runs s inside ns (sockets and TFTP transfers included) until
// the test ends; it returns a stop function that waits for Run to return.
func startServer(t *testing.T, ns *testnet.NS, s *Server) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- ns.Do(func() error { return s.Run(ctx) }) }()
	select {
	case <-s.Ready():
	case err := <-errc:
		cancel()
		t.Fatalf("pumi did not start: %v", err)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatalf("pumi did not bind its sockets within 10 s")
	}
	stopped := false
	var runErr error
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			runErr = <-errc
		}
		return runErr
	}
	t.Cleanup(func() { stop() })
	return stop
}

func newServer(t *testing.T, cfg Config, known []net.HardwareAddr, leasePath string) *Server {
	t.Helper()
	s, err := New(cfg, NewStaticAdmission(known, discardLog()), FileLeaseStore(leasePath), assets.IPXE(), discardLog())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func fullNetConfig(subnet int) Config {
	p := func(s string) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("10.99.%d.%s", subnet, s)) }
	return Config{
		Interface:  "br0",
		Mode:       ModeFull,
		ServerIP:   p("1"),
		HTTPBase:   fmt.Sprintf("http://10.99.%d.1:8080", subnet),
		RangeStart: p("100"),
		RangeEnd:   p("120"),
		Netmask:    netip.MustParsePrefix(fmt.Sprintf("10.99.%d.0/24", subnet)),
		Router:     p("1"),
		DNS:        []netip.Addr{p("1")},
		LeaseTime:  time.Hour,
	}
}

// udhcpcScript prints what udhcpc learnt instead of configuring anything.
const udhcpcScript = `#!/bin/sh
[ "$1" = bound ] && echo "LEASE ip=$ip mask=$subnet router=$router dns=$dns hostname=$hostname lease=$lease siaddr=$siaddr boot_file=$boot_file"
exit 0
`

func writeExec(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

var leaseLine = regexp.MustCompile(`LEASE ip=(\S+) mask=(\S*) router=(\S*) dns=(\S*) hostname=(\S*) lease=(\S*)`)

// udhcpc runs one busybox udhcpc exchange on h's eth0 and returns the fields
// of the lease it got.
func udhcpc(t *testing.T, h *testnet.NS, script string, extra ...string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := append([]string{"udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1", "-A", "1", "-s", script}, extra...)
	out, err := h.Output(ctx, "busybox", args...)
	if err != nil {
		t.Fatalf("udhcpc: %v\n%s", err, out)
	}
	m := leaseLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("udhcpc got no lease:\n%s", out)
	}
	return m[1:]
}

func TestIntegrationFullUdhcpc(t *testing.T) {
	testnet.Require(t, "busybox")
	ns := testnet.New(t)
	ns.Bridge("br0", "10.99.31.1/24")
	cfg := fullNetConfig(31)
	resMAC := net.HardwareAddr{0x52, 0x54, 0x00, 0x31, 0, 0x99}
	cfg.Reservations = []Reservation{{MAC: resMAC, IP: netip.MustParseAddr("10.99.31.50"), Hostname: "seat-31"}}
	leases := filepath.Join(t.TempDir(), "leases.json")
	startServer(t, ns, newServer(t, cfg, nil, leases))
	script := writeExec(t, "udhcpc.sh", udhcpcScript)

	a := ns.Host("br0", "52:54:00:31:00:01", "")
	got := udhcpc(t, a, script)
	if ip := netip.MustParseAddr(got[0]); ip.Less(cfg.RangeStart) || cfg.RangeEnd.Less(ip) {
		t.Errorf("udhcpc got %s, outside the range", ip)
	}
	if got[1] != "255.255.255.0" || got[2] != "10.99.31.1" || got[3] != "10.99.31.1" || got[5] != "3600" {
		t.Errorf("options mask=%s router=%s dns=%s lease=%s", got[1], got[2], got[3], got[5])
	}

	r := ns.Host("br0", resMAC.String(), "")
	got = udhcpc(t, r, script)
	if got[0] != "10.99.31.50" || got[4] != "seat-31" {
		t.Errorf("reserved seat got ip=%s hostname=%q, want 10.99.31.50 seat-31", got[0], got[4])
	}
	// The reservation holds even when the client asks for another address.
	got = udhcpc(t, r, script, "-r", "10.99.31.101")
	if got[0] != "10.99.31.50" {
		t.Errorf("reserved seat asking for .101 got %s", got[0])
	}

	b, err := os.ReadFile(leases)
	if err != nil || !bytes.Contains(b, []byte(`"10.99.31.50"`)) {
		t.Fatalf("lease file after two leases: %v\n%s", err, b)
	}
}

func TestIntegrationLeaseSurvivesRestart(t *testing.T) {
	testnet.Require(t, "busybox")
	ns := testnet.New(t)
	ns.Bridge("br0", "10.99.32.1/24")
	cfg := fullNetConfig(32)
	leases := filepath.Join(t.TempDir(), "leases.json")
	script := writeExec(t, "udhcpc.sh", udhcpcScript)
	a := ns.Host("br0", "52:54:00:32:00:01", "")
	b := ns.Host("br0", "52:54:00:32:00:02", "")

	stop := startServer(t, ns, newServer(t, cfg, nil, leases))
	first := udhcpc(t, a, script)[0]
	if err := stop(); err != nil {
		t.Fatalf("stopping pumi: %v", err)
	}

	// A new server process state: only the lease file is shared.
	startServer(t, ns, newServer(t, cfg, nil, leases))
	if other := udhcpc(t, b, script)[0]; other == first {
		t.Fatalf("after restart a new PC got %s, which is still leased to the first", other)
	}
	if again := udhcpc(t, a, script)[0]; again != first {
		t.Fatalf("after restart the PC got %s, had %s", again, first)
	}
}

func TestIntegrationFullDhclient(t *testing.T) {
	testnet.Require(t, "dhclient")
	ns := testnet.New(t)
	ns.Bridge("br0", "10.99.33.1/24")
	cfg := fullNetConfig(33)
	leases := filepath.Join(t.TempDir(), "leases.json")
	startServer(t, ns, newServer(t, cfg, nil, leases))
	h := ns.Host("br0", "52:54:00:33:00:01", "")

	dir := t.TempDir()
	record := filepath.Join(dir, "record")
	// dhclient must never run its default script (it rewrites
	// /etc/resolv.conf and configures interfaces): this one only records.
	script := writeExec(t, "dhclient.sh", fmt.Sprintf(`#!/bin/sh
echo "$reason ip=$new_ip_address mask=$new_subnet_mask routers=$new_routers dns=$new_domain_name_servers" >> %s
exit 0
`, record))
	lf, pf := filepath.Join(dir, "dhclient.leases"), filepath.Join(dir, "dhclient.pid")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := h.Command(ctx, "dhclient", "-4", "-d", "-1", "-v", "-sf", script, "-lf", lf, "-pf", pf, "eth0")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := h.Start(cmd); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	var bound string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		b, _ := os.ReadFile(record)
		if m := regexp.MustCompile(`BOUND ip=(\S+) mask=(\S+) routers=(\S+) dns=(\S+)`).FindStringSubmatch(string(b)); m != nil {
			bound = m[1]
			if m[2] != "255.255.255.0" || m[3] != "10.99.33.1" || m[4] != "10.99.33.1" {
				t.Errorf("dhclient options: %s", m[0])
			}
			break
		}
	}
	if bound == "" {
		t.Fatalf("dhclient got no lease:\n%s", out.String())
	}
	stored, err := FileLeaseStore(leases).Load()
	if err != nil || len(stored) != 1 || stored[0].IP.String() != bound {
		t.Fatalf("stored leases %+v (%v), want one for %s", stored, err, bound)
	}

	// dhclient -r sends a real DHCPRELEASE (unicast, so the address the
	// recording script did not configure is added first): pumi forgets the
	// lease.
	h.MustIP("addr", "add", bound+"/24", "dev", "eth0")
	out2, err := h.Output(ctx, "dhclient", "-4", "-r", "-v", "-sf", script, "-lf", lf, "-pf", pf, "eth0")
	if err != nil {
		t.Fatalf("dhclient -r: %v\n%s", err, out2)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		stored, err = FileLeaseStore(leases).Load()
		if err == nil && len(stored) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after DHCPRELEASE stored leases are %+v (%v)\n%s", stored, err, out2)
		}
	}
}

// pxeClient is a PXE ROM's DHCP exchange, crafted with dhcpv4 on a veth host.
type pxeClient struct {
	t    *testing.T
	h    *testnet.NS
	conn *net.UDPConn
	mac  net.HardwareAddr
}

func newPXEClient(t *testing.T, h *testnet.NS, mac net.HardwareAddr) *pxeClient {
	t.Helper()
	c := &pxeClient{t: t, h: h, mac: mac}
	if err := h.Do(func() (err error) {
		c.conn, err = bindUDP("eth0", netip.IPv4Unspecified(), PortClient, false)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.conn.Close() })
	return c
}

func (c *pxeClient) send(m *dhcpv4.DHCPv4, to *net.UDPAddr) {
	c.t.Helper()
	if _, err := c.conn.WriteToUDP(m.ToBytes(), to); err != nil {
		c.t.Fatalf("sending %s: %v", m.MessageType(), err)
	}
}

// collect gathers replies to xid for d.
func (c *pxeClient) collect(xid dhcpv4.TransactionID, d time.Duration) []*dhcpv4.DHCPv4 {
	var out []*dhcpv4.DHCPv4
	buf := make([]byte, 4096)
	deadline := time.Now().Add(d)
	for {
		c.conn.SetReadDeadline(deadline)
		n, _, err := c.conn.ReadFromUDP(buf)
		if err != nil {
			return out
		}
		m, err := dhcpv4.FromBytes(buf[:n])
		if err == nil && m.OpCode == dhcpv4.OpcodeBootReply && m.TransactionID == xid {
			out = append(out, m)
		}
	}
}

func pxeMods(mac net.HardwareAddr) []dhcpv4.Modifier {
	return []dhcpv4.Modifier{
		dhcpv4.WithHwAddr(mac),
		dhcpv4.WithBroadcast(true),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003000")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64)),
		dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, guid)),
		dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionClientNetworkInterfaceIdentifier, []byte{1, 3, 0})),
	}
}

func TestIntegrationProxyBesideDnsmasq(t *testing.T) {
	testnet.Require(t, "dnsmasq", "busybox")
	ns := testnet.New(t)
	ns.Bridge("br0", "10.99.34.1/24")
	dir := t.TempDir()
	// dnsmasq plays the school's DHCP server, in the same namespace as pumi
	// (pumi-netboot on an existing Linux server). It knows nothing of PXE.
	dm := ns.Command(context.Background(), "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
		"--interface=br0", "--bind-interfaces", "--except-interface=lo", "--user=root",
		"--dhcp-range=10.99.34.100,10.99.34.150,255.255.255.0,1h", "--dhcp-authoritative",
		"--dhcp-leasefile="+filepath.Join(dir, "dnsmasq.leases"), "--pid-file="+filepath.Join(dir, "dnsmasq.pid"),
		"--log-dhcp", "--log-facility="+filepath.Join(dir, "dnsmasq.log"))
	var dmOut bytes.Buffer
	dm.Stdout, dm.Stderr = &dmOut, &dmOut
	if err := ns.Start(dm); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "dnsmasq.log"))
			t.Logf("dnsmasq output:\n%s\n%s", dmOut.String(), log)
		}
	})
	waitUDPPort(t, ns, 67) // dnsmasq owns 67 before pumi shares it

	known := net.HardwareAddr{0x52, 0x54, 0x00, 0x34, 0, 0x01}
	cfg := Config{Interface: "br0", Mode: ModeProxy, HTTPBase: "http://10.99.34.1:8080"} // ServerIP from the interface
	startServer(t, ns, newServer(t, cfg, []net.HardwareAddr{known}, filepath.Join(dir, "unused")))

	h := ns.Host("br0", known.String(), "")
	c := newPXEClient(t, h, known)
	bcast := &net.UDPAddr{IP: net.IPv4bcast, Port: PortServer}

	disc, err := dhcpv4.New(append(pxeMods(known), dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover))...)
	if err != nil {
		t.Fatal(err)
	}
	var addrOffer, bootOffer *dhcpv4.DHCPv4
	for try := 0; try < 4 && (addrOffer == nil || bootOffer == nil); try++ {
		c.send(disc, bcast)
		for _, r := range c.collect(disc.TransactionID, 2*time.Second) {
			switch {
			case r.MessageType() == dhcpv4.MessageTypeOffer && !r.YourIPAddr.IsUnspecified():
				addrOffer = r
			case r.MessageType() == dhcpv4.MessageTypeOffer && r.BootFileName != "":
				bootOffer = r
			}
		}
	}
	if addrOffer == nil {
		t.Fatalf("no address OFFER from dnsmasq")
	}
	if bootOffer == nil {
		t.Fatalf("no proxy OFFER from pumi")
	}
	if addrOffer.BootFileName != "" {
		t.Errorf("dnsmasq offered a boot file %q: the test is not isolating pumi", addrOffer.BootFileName)
	}
	checkPXEAnswer(t, bootOffer, "10.99.34.1")

	// Take dnsmasq's address: broadcast REQUEST naming it as server. pumi,
	// which shares dnsmasq's IP here, must leave it alone.
	req, err := dhcpv4.New(append(pxeMods(known), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithTransactionID(disc.TransactionID),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(addrOffer.YourIPAddr)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(addrOffer.ServerIdentifier())))...)
	if err != nil {
		t.Fatal(err)
	}
	c.send(req, bcast)
	var acks []*dhcpv4.DHCPv4
	for _, r := range c.collect(req.TransactionID, 2*time.Second) {
		if r.MessageType() == dhcpv4.MessageTypeAck {
			acks = append(acks, r)
		}
	}
	if len(acks) != 1 || !acks[0].YourIPAddr.Equal(addrOffer.YourIPAddr) {
		t.Fatalf("want exactly dnsmasq's ACK for %s, got %d ACKs", addrOffer.YourIPAddr, len(acks))
	}
	addr := acks[0].YourIPAddr

	// With its address configured, the client asks pumi on 4011 (PXE boot
	// server request), unicast, as firmware does.
	h.MustIP("addr", "add", addr.String()+"/24", "dev", "eth0")
	req4011, err := dhcpv4.New(append(pxeMods(known), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithBroadcast(false), dhcpv4.WithClientIP(addr))...)
	if err != nil {
		t.Fatal(err)
	}
	c.send(req4011, &net.UDPAddr{IP: bootOffer.ServerIPAddr, Port: PortPXE})
	rs := c.collect(req4011.TransactionID, 3*time.Second)
	if len(rs) != 1 || rs[0].MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("4011 REQUEST: %d replies, want one ACK", len(rs))
	}
	checkPXEAnswer(t, rs[0], "10.99.34.1")

	// The boot program is really there: TFTP it from pumi like the firmware.
	out, err := h.Output(context.Background(), "busybox", "tftp", "-g", "-r", rs[0].BootFileName, "-l", filepath.Join(dir, "got.efi"), "-b", "1468", "10.99.34.1")
	if err != nil {
		t.Fatalf("tftp %s: %v\n%s", rs[0].BootFileName, err, out)
	}
	want, _ := fs.ReadFile(assets.IPXE(), FileUEFI)
	if got, _ := os.ReadFile(filepath.Join(dir, "got.efi")); !bytes.Equal(got, want) {
		t.Fatalf("TFTP %s: %d bytes differ from the embedded %d", FileUEFI, len(got), len(want))
	}

	// An unknown PC still gets its address from dnsmasq, but nothing from pumi.
	stranger := net.HardwareAddr{0x52, 0x54, 0x00, 0x34, 0, 0x77}
	h2 := ns.Host("br0", stranger.String(), "")
	c2 := newPXEClient(t, h2, stranger)
	disc2, _ := dhcpv4.New(append(pxeMods(stranger), dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover))...)
	gotAddr := false
	for try := 0; try < 3 && !gotAddr; try++ {
		c2.send(disc2, bcast)
		for _, r := range c2.collect(disc2.TransactionID, 2*time.Second) {
			if r.BootFileName != "" || r.Options.Has(dhcpv4.OptionVendorSpecificInformation) {
				t.Fatalf("unknown MAC got a boot answer: %s", r.Summary())
			}
			gotAddr = gotAddr || !r.YourIPAddr.IsUnspecified()
		}
	}
	if !gotAddr {
		t.Fatalf("unknown MAC got no address from dnsmasq")
	}
}

func checkPXEAnswer(t *testing.T, r *dhcpv4.DHCPv4, server string) {
	t.Helper()
	if r.BootFileName != FileUEFI || !r.ServerIPAddr.Equal(net.ParseIP(server)) || !r.ServerIdentifier().Equal(net.ParseIP(server)) {
		t.Errorf("PXE answer file=%q siaddr=%s opt54=%s", r.BootFileName, r.ServerIPAddr, r.ServerIdentifier())
	}
	if !r.YourIPAddr.IsUnspecified() {
		t.Errorf("proxy answer carries an address %s", r.YourIPAddr)
	}
	if r.ClassIdentifier() != "PXEClient" || !bytes.Equal(r.Options.Get(dhcpv4.OptionVendorSpecificInformation), []byte{6, 1, 8}) ||
		!bytes.Equal(r.Options.Get(dhcpv4.OptionClientMachineIdentifier), guid) {
		t.Errorf("PXE options: %s", r.Summary())
	}
}

func TestIntegrationStartupErrors(t *testing.T) {
	testnet.Require(t, "dnsmasq", "busybox")
	ns := testnet.New(t)
	ns.Bridge("br0", "10.99.35.1/24")
	ns.Bridge("br1", "")
	leases := filepath.Join(t.TempDir(), "leases.json")
	run := func(cfg Config) error {
		s := newServer(t, cfg, nil, leases)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return ns.Do(func() error { return s.Run(ctx) })
	}
	cfg := fullNetConfig(35)
	cfg.Interface = "nosuch0"
	want(t, run(cfg), `interface "nosuch0" not found`)
	cfg = fullNetConfig(35)
	cfg.ServerIP = netip.MustParseAddr("10.99.35.2")
	want(t, run(cfg), "10.99.35.2 is not an address of br0 (it has 10.99.35.1/24)")
	cfg = fullNetConfig(35)
	cfg.Interface = "br1"
	cfg.ServerIP = netip.Addr{}
	want(t, run(cfg), "br1 has no IPv4 address")

	// Another DHCP server already on 67: full mode refuses to share it.
	dm := ns.Command(context.Background(), "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
		"--interface=br0", "--bind-interfaces", "--except-interface=lo", "--user=root",
		"--dhcp-range=10.99.35.100,10.99.35.150,1h", "--dhcp-leasefile="+filepath.Join(t.TempDir(), "l"), "--pid-file=")
	if err := ns.Start(dm); err != nil {
		t.Fatal(err)
	}
	waitUDPPort(t, ns, 67)
	want(t, run(fullNetConfig(35)), "UDP port 67 on br0 is already in use")
	// TFTP port taken (by a plain socket): also one clear line, and DHCP is
	// not left bound.
	dm.Process.Kill()
	dm.Wait()
	var hold *net.UDPConn
	if err := ns.Do(func() (err error) {
		hold, err = net.ListenUDP("udp4", &net.UDPAddr{Port: 69})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	want(t, run(fullNetConfig(35)), "UDP port 69 on br0 is already in use")
	hold.Close()
	s := newServer(t, fullNetConfig(35), nil, leases)
	startServer(t, ns, s) // everything was released: a clean start works
}

func want(t *testing.T, err error, sub string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), sub) {
		t.Errorf("err = %v, want one containing %q", err, sub)
	} else if strings.Contains(err.Error(), "\n") {
		t.Errorf("error is not one line: %q", err)
	}
}

// waitUDPPort waits until something in ns listens on UDP port.
func waitUDPPort(t *testing.T, ns *testnet.NS, port int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		out, _ := ns.Output(context.Background(), "busybox", "netstat", "-uln")
		if strings.Contains(out, fmt.Sprintf(":%d ", port)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on UDP %d in the namespace:\n%s", port, out)
		}
	}
}
