package netboot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/sys/unix"
)

type dhcpSocket struct {
	conn *net.UDPConn
	port int
}

type listeners struct {
	dhcp []dhcpSocket
	tftp *net.UDPConn
}

func (l *listeners) close() {
	for _, d := range l.dhcp {
		d.conn.Close()
	}
	if l.tftp != nil {
		l.tftp.Close()
	}
}

// Ready is closed once Run has bound every socket, so a caller (a test, the
// appliance's status page) knows DHCP and TFTP are answering.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// ServerIP is the address pumi answers as; valid once Ready is closed.
func (s *Server) ServerIP() netip.Addr {
	if s.h == nil {
		return netip.Addr{}
	}
	s.h.mu.Lock()
	defer s.h.mu.Unlock()
	return s.h.serverIP
}

// Run binds DHCP 67 (and 4011 in proxy mode) and TFTP 69 on the interface and
// serves until ctx ends. In mode off it returns nil at once. Run is meant to
// be called once per Server.
//
// Sockets are created, and TFTP is served, on the calling goroutine: a caller
// that locked its OS thread into a network namespace (testnet.NS.Do) keeps
// every socket, including TFTP's per-transfer ones, in that namespace.
func (s *Server) Run(ctx context.Context) error {
	if s.cfg.Mode == ModeOff {
		s.log.Info("netboot is off")
		return nil
	}
	l, err := s.listen()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.log.Info("netboot serving", "mode", string(s.cfg.Mode), "interface", s.cfg.Interface, "server_ip", s.ServerIP().String(), "http_base", s.cfg.HTTPBase)
	close(s.ready)

	var wg sync.WaitGroup
	seenCtx, stopSeen := context.WithCancel(context.Background())
	seenDone := make(chan struct{})
	go func() { defer close(seenDone); s.h.seenQ.run(seenCtx) }()
	defer func() { stopSeen(); <-seenDone }() // after the DHCP loops: every answered client is reported
	for _, d := range l.dhcp {
		wg.Go(func() { s.serveDHCP(ctx, d) })
	}
	wg.Go(func() {
		<-ctx.Done()
		for _, d := range l.dhcp {
			d.conn.Close()
		}
	})
	err = NewTFTP(s.files, s.log.With("svc", "tftp")).Serve(ctx, l.tftp)
	cancel() // TFTP failing takes DHCP down too, so the caller sees one error
	wg.Wait()
	if err != nil {
		return fmt.Errorf("netboot: TFTP: %w", err)
	}
	return nil
}

// listen checks the interface and binds every socket, or binds none.
func (s *Server) listen() (*listeners, error) {
	ifi, err := net.InterfaceByName(s.cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("netboot: interface %q not found (see `ip link`): %w", s.cfg.Interface, err)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return nil, fmt.Errorf("netboot: reading addresses of %s: %w", ifi.Name, err)
	}
	var have []netip.Prefix
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP.To4()); ok {
				bits, _ := n.Mask.Size()
				have = append(have, netip.PrefixFrom(ip, bits))
			}
		}
	}
	ip := s.cfg.ServerIP
	switch {
	case len(have) == 0:
		return nil, fmt.Errorf("netboot: interface %s has no IPv4 address: give it one (ip addr add ...) before starting", ifi.Name)
	case !ip.IsValid():
		ip = have[0].Addr()
	default:
		found := false
		for _, p := range have {
			found = found || p.Addr() == ip
		}
		if !found {
			return nil, fmt.Errorf("netboot: %s is not an address of %s (it has %s): fix the server IP or the interface", ip, ifi.Name, prefixList(have))
		}
	}
	if s.cfg.Mode == ModeFull && !s.cfg.Netmask.Masked().Contains(ip) {
		return nil, fmt.Errorf("netboot: server IP %s is outside the DHCP subnet %s: fix the netmask or the server IP", ip, s.cfg.Netmask.Masked())
	}

	l := &listeners{}
	ok := false
	defer func() {
		if !ok {
			l.close()
		}
	}()
	// In proxy mode port 67 is shared (SO_REUSEADDR) with a DHCP server that
	// may run on the same host, as dnsmasq with bind-interfaces does; both get
	// every broadcast. In full mode pumi must be the only one, so a busy port
	// is an error. 4011 and 69 are never shared.
	c, err := bindUDP(ifi.Name, netip.IPv4Unspecified(), PortServer, s.cfg.Mode == ModeProxy)
	if err != nil {
		return nil, err
	}
	l.dhcp = append(l.dhcp, dhcpSocket{c, PortServer})
	if s.cfg.Mode == ModeProxy {
		c, err := bindUDP(ifi.Name, netip.IPv4Unspecified(), PortPXE, false)
		if err != nil {
			return nil, err
		}
		l.dhcp = append(l.dhcp, dhcpSocket{c, PortPXE})
	}
	for _, d := range l.dhcp {
		got, err := setRcvBuf(d.conn, dhcpRcvBuf)
		switch {
		case err != nil:
			s.log.Warn("DHCP receive buffer left at the default: a burst of PXE clients may be dropped and wait for their retransmission", "port", d.port, "err", err)
		case got < dhcpRcvBuf:
			s.log.Warn("DHCP receive buffer smaller than asked (raise net.core.rmem_max or run as root)", "port", d.port, "bytes", got, "asked", dhcpRcvBuf)
		}
	}
	if l.tftp, err = bindUDP(ifi.Name, ip, 69, false); err != nil {
		return nil, err
	}
	s.h.setServerIP(ip)
	ok = true
	return l, nil
}

func prefixList(ps []netip.Prefix) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.String())
	}
	return strings.Join(s, ", ")
}

// bindUDP opens a UDP socket bound to ip:port and to the device, so it only
// sees, and its broadcasts only leave on, that interface. Unlike
// server4.NewIPv4UDPConn it sets no SO_REUSEPORT, with which a second server
// would silently share the port instead of failing.
func bindUDP(iface string, ip netip.Addr, port int, reuseAddr bool) (*net.UDPConn, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("netboot: UDP socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("udp:%d", port))
	defer f.Close() // FilePacketConn dups the descriptor
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BROADCAST, 1); err != nil {
		return nil, fmt.Errorf("netboot: SO_BROADCAST: %w", err)
	}
	if reuseAddr {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return nil, fmt.Errorf("netboot: SO_REUSEADDR: %w", err)
		}
	}
	if err := unix.BindToDevice(fd, iface); err != nil {
		if errors.Is(err, syscall.EPERM) {
			return nil, fmt.Errorf("netboot: binding to %s needs root (or CAP_NET_RAW): %w", iface, err)
		}
		return nil, fmt.Errorf("netboot: binding to interface %s: %w", iface, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port, Addr: ip.As4()}); err != nil {
		switch {
		case errors.Is(err, syscall.EADDRINUSE):
			return nil, fmt.Errorf("netboot: UDP port %d on %s is already in use by another program (another DHCP/TFTP server? see `ss -ulpn`)", port, iface)
		case errors.Is(err, syscall.EACCES):
			return nil, fmt.Errorf("netboot: UDP port %d needs root (or CAP_NET_BIND_SERVICE): %w", port, err)
		}
		return nil, fmt.Errorf("netboot: binding UDP %s:%d on %s: %w", ip, port, iface, err)
	}
	pc, err := net.FilePacketConn(f)
	if err != nil {
		return nil, fmt.Errorf("netboot: UDP port %d: %w", port, err)
	}
	return pc.(*net.UDPConn), nil
}

// dhcpRcvBuf is the DHCP sockets' receive buffer. A room of PCs switched on
// together sends its DISCOVERs within milliseconds; the kernel default
// (~208 KiB, about 90 queued packets) drops most of a 1,000-client burst,
// and each dropped client waits 4 s for its retransmission. 4 MiB queues
// ~1,800 packets (each costs ~2.3 KiB of buffer).
const dhcpRcvBuf = 4 << 20

// setRcvBuf asks for a receive buffer of want bytes and returns what the
// kernel granted (the kernel reports twice the asked size, its bookkeeping
// included; half of that is returned). As root SO_RCVBUFFORCE ignores
// net.core.rmem_max; otherwise SO_RCVBUF is capped by it.
func setRcvBuf(c *net.UDPConn, want int) (got int, err error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("netboot: receive buffer: %w", err)
	}
	var serr error
	cerr := raw.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, want); serr != nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, want)
		}
		if serr == nil {
			got, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
			got /= 2
		}
	})
	if cerr != nil {
		return 0, fmt.Errorf("netboot: receive buffer: %w", cerr)
	}
	if serr != nil {
		return 0, fmt.Errorf("netboot: receive buffer: %w", serr)
	}
	return got, nil
}

// dhcpInFlight bounds the DHCP packets being answered at once. A REQUEST
// waits for its lease write; letting a whole room's REQUESTs wait together is
// what lets the lease store write them in one go. Beyond the bound, packets
// wait in the socket's receive buffer (dhcpRcvBuf).
const dhcpInFlight = 1024

// serveDHCP reads packets and answers each on its own goroutine (see
// handler.reply), so DISCOVERs are answered while REQUESTs wait for their
// lease to be written.
func (s *Server) serveDHCP(ctx context.Context, d dhcpSocket) {
	var wg sync.WaitGroup
	defer wg.Wait()
	slots := make(chan struct{}, dhcpInFlight)
	buf := make([]byte, 4096)
	for {
		n, peer, err := d.conn.ReadFromUDP(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			s.h.noisy.Log(slog.LevelWarn, "DHCP read failed", "port", d.port, "err", err)
			continue
		}
		// FromBytes copies what it keeps, so buf can be reused at once.
		req, err := dhcpv4.FromBytes(buf[:n])
		if err != nil {
			s.h.noisy.Log(slog.LevelDebug, "ignoring malformed DHCP packet", "from", peer.String(), "err", err)
			continue
		}
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			s.answerDHCP(d, req, peer)
		})
	}
}

func (s *Server) answerDHCP(d dhcpSocket, req *dhcpv4.DHCPv4, peer *net.UDPAddr) {
	resp, err := s.h.reply(req, d.port)
	if err != nil {
		s.log.Error("DHCP request not answered", "mac", req.ClientHWAddr.String(), "err", err)
		return
	}
	if resp == nil {
		return
	}
	dst := destination(req, resp, peer, d.port)
	if _, err := d.conn.WriteToUDP(resp.ToBytes(), dst); err != nil {
		s.log.Warn("DHCP reply not sent", "mac", req.ClientHWAddr.String(), "to", dst.String(), "err", err)
	}
}

// Leases lists the committed, unexpired leases (full mode), for a status
// page; it is a copy.
func (s *Server) Leases() []Lease {
	if s.h == nil || s.h.pool == nil {
		return nil
	}
	s.h.mu.Lock()
	defer s.h.mu.Unlock()
	now := s.h.now()
	var out []Lease
	for _, e := range s.h.pool.byMAC {
		if e.bound && now.Before(e.expiry) {
			mac, err := net.ParseMAC(e.mac)
			if err != nil {
				continue
			}
			out = append(out, Lease{MAC: mac, IP: e.ip, Expiry: e.expiry, Hostname: e.hostname})
		}
	}
	slices.SortFunc(out, func(a, b Lease) int { return a.IP.Compare(b.IP) })
	return out
}
