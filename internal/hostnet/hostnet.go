// Package hostnet manages the appliance's own address on gokrazy. gokrazy's DHCP client
// (/gokrazy/dhcp) only takes a static address as a command-line flag baked
// into the image, but the admin sets it on the setup page (Config.Network),
// which can change at any time. So the image has gokrazy not start its dhcp
// (PackageConfig DontStart; the program stays in the image) and pumi runs
// that same program itself, with the flags the stored settings call for,
// and runs it again when they change.
// Off unless -manage-network is given: a development machine's network is
// never touched.
package hostnet

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DHCPProgram is gokrazy's network configuration program in the image.
const DHCPProgram = "/gokrazy/dhcp"

// dhcpConfigured is dhcp's exit status after applying a static address:
// gokrazy's "done, do not restart me".
const dhcpConfigured = 125

// ParseManageNetwork reads the -manage-network value: "" (pumi leaves the
// machine's network alone), "dhcp" (DHCP client until the setup page says
// otherwise) or a network object as in the config's "network" field, e.g.
// {"mode":"static","address":"10.20.0.2/24","gateway":"10.20.0.1"}: the
// address the image starts with until the setup page sets one (pumi-image
// -static). on is false for "".
func ParseManageNetwork(s string) (def NetworkSettings, on bool, err error) {
	s = strings.TrimSpace(s)
	switch s {
	case "":
		return NetworkSettings{}, false, nil
	case "dhcp":
		return NetworkSettings{Mode: "dhcp"}, true, nil
	}
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&def); err != nil {
		return NetworkSettings{}, false, fmt.Errorf("-manage-network %q: want dhcp or a network object like {\"mode\":\"static\",\"address\":\"10.20.0.2/24\"}: %w", s, err)
	}
	if dec.More() {
		return NetworkSettings{}, false, fmt.Errorf("-manage-network %q: trailing data after the network object", s)
	}
	if def.Mode == "" {
		def.Mode = "dhcp"
	}
	if _, err := DHCPArgs(def); err != nil {
		return NetworkSettings{}, false, fmt.Errorf("-manage-network: %w", err)
	}
	return def, true, nil
}

// DHCPArgs are the flags gokrazy's dhcp needs for n: none for the DHCP
// client, -static_network_config with an rtr7/dhcp4 Lease for a static
// address. It refuses what dhcp would fail on at every start (leaving the
// box with no address at all), and what Config.Validate lets through but
// cannot work, such as a gateway outside the subnet.
func DHCPArgs(n NetworkSettings) ([]string, error) {
	switch n.Mode {
	case "", "dhcp":
		return nil, nil
	case "static":
	default:
		return nil, fmt.Errorf("network mode %q: want dhcp or static", n.Mode)
	}
	p := n.Address
	if !p.IsValid() || !p.Addr().Is4() || p.Bits() < 1 || p.Bits() > 30 {
		return nil, fmt.Errorf("static address %q: want an IPv4 address with a prefix length of 1 to 30, like 10.20.0.2/24", p)
	}
	if p.Addr() == p.Masked().Addr() || p.Addr() == lastAddr(p) {
		return nil, fmt.Errorf("static address %s is the subnet's network or broadcast address: give the appliance an address inside it", p)
	}
	// The field types mirror rtr7/dhcp4's Lease, which dhcp decodes:
	// net.IP marshals as dotted text, but Netmask is a net.IPMask, a byte
	// slice, so JSON carries it base64-encoded ("////AA==" for /24). A
	// dotted mask there makes dhcp exit at every start.
	lease := struct {
		IP      net.IP
		Netmask net.IPMask
		Router  net.IP   `json:",omitempty"`
		DNS     []net.IP `json:",omitempty"`
	}{IP: net.IP(p.Addr().AsSlice()), Netmask: net.CIDRMask(p.Bits(), 32)}
	if g := n.Gateway; g.IsValid() {
		if !g.Is4() || !p.Contains(g) || g == p.Addr() || g == p.Masked().Addr() || g == lastAddr(p) {
			return nil, fmt.Errorf("gateway %s: want another host address in %s (dhcp cannot route through anything else)", g, p.Masked())
		}
		lease.Router = net.IP(g.AsSlice())
	}
	for _, d := range n.DNS {
		if !d.Is4() {
			return nil, fmt.Errorf("DNS server %s: gokrazy's dhcp takes IPv4 addresses only", d)
		}
		lease.DNS = append(lease.DNS, net.IP(d.AsSlice()))
	}
	b, err := json.Marshal(lease)
	if err != nil {
		return nil, err
	}
	return []string{"-static_network_config=" + string(b)}, nil
}

// lastAddr is p's broadcast address.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := binary.BigEndian.Uint32(a[:]) | (1<<(32-p.Bits()) - 1)
	binary.BigEndian.PutUint32(a[:], v)
	return netip.AddrFrom4(a)
}

// hostNet runs gokrazy's dhcp for the interface's settings.
type hostNet struct {
	program []string // the dhcp command (tests prefix it to run in a namespace)
	iface   string
	def     NetworkSettings // used while the setup page has not set the network
	// settings returns the stored network settings and a channel closed on
	// the next change (taken before reading, so no change is missed).
	settings func(ctx context.Context) (NetworkSettings, <-chan struct{}, error)
	// flush removes the interface's IPv4 addresses except keep, so that
	// an address given up does not linger (another machine may get it).
	flush func(iface string, keep netip.Prefix) error
	// settle is how long a change waits before the address goes away, so
	// the answer to the admin's request that changed it still gets out.
	settle  time.Duration
	backoff time.Duration // first wait before running a failed dhcp again
	log     *slog.Logger
}

// Settings returns the stored network settings and a channel closed when
// they change; the supervisor calls it once at start and after each change.
type Settings func(ctx context.Context) (NetworkSettings, <-chan struct{}, error)

// Supervise applies the appliance's own network settings when manage (the
// -manage-network flag) is set, until ctx ends; with manage "" it returns at
// once and touches nothing.
func Supervise(ctx context.Context, manage string, log *slog.Logger, settings Settings) {
	if h := newHostNet(manage, log, settings); h != nil {
		h.run(ctx)
	}
}

// RunDefault applies the -manage-network default alone (no stored settings)
// until ctx ends: for when pumi cannot open its state and must still be
// reachable to say so.
func RunDefault(ctx context.Context, manage string, log *slog.Logger) {
	never := make(chan struct{})
	Supervise(ctx, manage, log, func(context.Context) (NetworkSettings, <-chan struct{}, error) {
		return NetworkSettings{}, never, nil
	})
}

// NetworkSettings is the appliance's own address on its interface.
type NetworkSettings struct {
	Mode    string       `json:"mode,omitempty"` // "dhcp" (default) or "static"
	Address netip.Prefix `json:"address,omitzero"`
	Gateway netip.Addr   `json:"gateway,omitzero"`
	DNS     []netip.Addr `json:"dns,omitempty"`
}

// newHostNet is the supervisor for gokrazy's eth0, nil if manage is "".
func newHostNet(manage string, log *slog.Logger, settings Settings) *hostNet {
	def, on, err := ParseManageNetwork(manage)
	if err != nil {
		// A bad image default must not leave the box without an address:
		// the DHCP client is the one setting that reaches it on any LAN.
		log.Error("host network: bad -manage-network, using DHCP until the setup page sets an address", "err", err)
		def, on = NetworkSettings{Mode: "dhcp"}, true
	}
	if !on {
		return nil
	}
	return &hostNet{program: []string{DHCPProgram}, iface: "eth0", def: def, settings: settings, flush: flushIPv4,
		settle: time.Second, backoff: time.Second, log: log.With("component", "host network")}
}

// run keeps dhcp running with the current settings' flags. dhcp in client
// mode runs for good (it renews the lease); with a static address it
// exits 125 once applied. Any other exit is retried with a growing pause.
// A change of the settings that changes dhcp's flags stops it, removes the
// old address and starts it with the new flags; any other config change
// leaves the network alone.
func (h *hostNet) run(ctx context.Context) {
	var (
		running []string // flags of the dhcp that runs or last ran
		first   = true
		failed  bool // dhcp exited with an error and waits for its retry
		proc    *dhcpProc
	)
	defer func() {
		if proc != nil {
			proc.stop()
		}
	}()
	for {
		n, changed, err := h.settings(ctx)
		if err != nil {
			h.log.Error("cannot read the network settings", "err", err)
			n = NetworkSettings{}
		}
		if n.Mode == "" {
			n = h.def
		}
		args, aerr := DHCPArgs(n)
		switch {
		case aerr != nil && first:
			h.log.Error("network settings cannot be applied; using the image's default until they are fixed on the setup page", "err", aerr)
			n = h.def
			args, _ = DHCPArgs(n)
		case aerr != nil:
			h.log.Error("network settings cannot be applied; the address stays as it is (fix them on the setup page)", "err", aerr)
			args = running
		}
		if first || failed || !slices.Equal(args, running) {
			if !first {
				// The answer to the request that changed the address is on
				// its way out over the old one; let it go first.
				select {
				case <-ctx.Done():
					return
				case <-time.After(h.settle):
				}
			}
			if proc != nil {
				proc.stop()
			}
			var keep netip.Prefix
			if len(args) > 0 {
				keep = n.Address
			}
			// Addresses from an earlier setting would otherwise stay on the
			// interface, and a DHCP server may give them to another machine.
			if err := h.flush(h.iface, keep); err != nil {
				h.log.Warn("cannot remove the interface's previous addresses", "interface", h.iface, "err", err)
			}
			running, first, failed = args, false, false
			proc = h.start(ctx, args)
		}
		wait := h.backoff
		var retry <-chan time.Time
	waiting:
		for {
			var exited <-chan error
			if proc != nil {
				exited = proc.done
			}
			select {
			case <-ctx.Done():
				return
			case <-changed:
				break waiting
			case err := <-exited:
				proc = nil
				var ee *exec.ExitError
				if errors.As(err, &ee) && ee.ExitCode() == dhcpConfigured {
					h.log.Info("static address applied", "interface", h.iface)
					continue
				}
				failed = true
				h.log.Error("gokrazy's dhcp stopped; starting it again", "err", err, "in", wait)
				retry = time.After(wait)
				wait = min(2*wait, 30*time.Second)
			case <-retry:
				retry, failed = nil, false
				proc = h.start(ctx, running)
			}
		}
	}
}

type dhcpProc struct {
	cmd  *exec.Cmd
	done chan error
}

// start runs dhcp with args; its output goes to the log line by line.
func (h *hostNet) start(ctx context.Context, args []string) *dhcpProc {
	argv := append(slices.Clone(h.program), "-interface="+h.iface)
	argv = append(argv, args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	p := &dhcpProc{cmd: cmd, done: make(chan error, 1)}
	mode := "dhcp"
	if len(args) > 0 {
		mode = "static"
	}
	h.log.Info("starting gokrazy's dhcp", "mode", mode, "args", strings.Join(argv, " "))
	if err := cmd.Start(); err != nil {
		pw.Close()
		p.done <- fmt.Errorf("starting %s: %w (is this a gokrazy image? -manage-network is only for one)", argv[0], err)
		return p
	}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			h.log.Info("dhcp says", "line", string(bytes.TrimSpace(sc.Bytes())))
		}
		io.Copy(io.Discard, pr)
	}()
	go func() {
		err := cmd.Wait()
		pw.Close()
		p.done <- err
	}()
	return p
}

// stop kills dhcp and waits for it (it keeps no state worth a clean exit).
func (p *dhcpProc) stop() {
	if p.cmd.Process != nil && p.cmd.ProcessState == nil {
		p.cmd.Process.Kill()
	}
	<-p.done
}

// flushIPv4 deletes iface's IPv4 addresses other than keep, over rtnetlink
// (gokrazy has no ip(8)).
func flushIPv4(iface string, keep netip.Prefix) error {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return err
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	var errs []error
	for i, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.To4() == nil {
			continue
		}
		ip, _ := netip.AddrFromSlice(ipn.IP.To4())
		bits, _ := ipn.Mask.Size()
		if p := netip.PrefixFrom(ip, bits); p == keep {
			continue
		}
		if err := delAddr(fd, uint32(i+1), ifi.Index, ip, bits); err != nil {
			errs = append(errs, fmt.Errorf("deleting %s/%d: %w", ip, bits, err))
		}
	}
	return errors.Join(errs...)
}

// delAddr sends RTM_DELADDR for ip/bits on the interface and reads the ack.
func delAddr(fd int, seq uint32, index int, ip netip.Addr, bits int) error {
	const attrLen = unix.SizeofRtAttr + 4
	msg := make([]byte, unix.SizeofNlMsghdr+unix.SizeofIfAddrmsg+attrLen)
	ne := binary.NativeEndian
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], unix.RTM_DELADDR)
	ne.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	ne.PutUint32(msg[8:], seq)
	ifa := msg[unix.SizeofNlMsghdr:]
	ifa[0] = unix.AF_INET
	ifa[1] = byte(bits)
	ne.PutUint32(ifa[4:], uint32(index))
	attr := ifa[unix.SizeofIfAddrmsg:]
	ne.PutUint16(attr[0:], attrLen)
	ne.PutUint16(attr[2:], unix.IFA_LOCAL)
	a4 := ip.As4()
	copy(attr[4:], a4[:])
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Seq != seq || m.Header.Type != syscall.NLMSG_ERROR || len(m.Data) < 4 {
				continue
			}
			if code := int32(ne.Uint32(m.Data[:4])); code != 0 {
				return unix.Errno(-code)
			}
			return nil
		}
	}
}
