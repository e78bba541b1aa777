package power

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"syscall"
	"time"

	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

// EtherTypeWoL is the EtherType of a raw (non-IP) Wake-on-LAN frame.
const EtherTypeWoL = 0x0842

// MagicPacketLen is the length of a magic packet without SecureOn password.
const MagicPacketLen = 6 + 16*6

// MagicPacket returns the Wake-on-LAN payload for mac: six 0xFF bytes then
// the MAC sixteen times.
func MagicPacket(mac net.HardwareAddr) ([]byte, error) {
	if err := checkWakeMAC(mac); err != nil {
		return nil, err
	}
	b := make([]byte, 0, MagicPacketLen)
	for range 6 {
		b = append(b, 0xff)
	}
	for range 16 {
		b = append(b, mac...)
	}
	return b, nil
}

// ParseMagicPacket returns the MAC that the magic packet b wakes. It accepts
// exactly the 102-byte form MagicPacket produces and rejects anything else
// (it is what tests and diagnostics use to prove a packet is well formed).
func ParseMagicPacket(b []byte) (net.HardwareAddr, error) {
	if len(b) != MagicPacketLen {
		return nil, fmt.Errorf("magic packet: %d bytes, want %d", len(b), MagicPacketLen)
	}
	for i := range 6 {
		if b[i] != 0xff {
			return nil, fmt.Errorf("magic packet: byte %d is %#02x, want 0xff sync stream", i, b[i])
		}
	}
	mac := net.HardwareAddr(append([]byte(nil), b[6:12]...))
	for i := 1; i < 16; i++ {
		if string(b[6+6*i:12+6*i]) != string(mac) {
			return nil, fmt.Errorf("magic packet: repetition %d differs from the first MAC %s", i+1, mac)
		}
	}
	return mac, nil
}

func checkWakeMAC(mac net.HardwareAddr) error {
	if len(mac) != 6 {
		return fmt.Errorf("wake-on-lan needs a 6-byte Ethernet MAC, got %d bytes (%q)", len(mac), mac.String())
	}
	// A group (multicast/broadcast) address cannot be a NIC's own address,
	// so it is a typo or a mixed-up column, not a seat.
	if mac[0]&1 != 0 {
		return fmt.Errorf("wake-on-lan: %s is a multicast/broadcast address, not a seat's NIC", mac)
	}
	return nil
}

// WoL sends Wake-on-LAN magic packets on one lab interface.
type WoL struct {
	// Interface is the lab interface (required). Packets are bound to it with
	// SO_BINDTODEVICE so they can never leave through another interface.
	Interface string
	// Ports are the UDP ports to send to; nil means 9 and 7 (both are in
	// use by NIC firmwares and tools).
	Ports []int
	// Repeat is how many times each machine's packets are sent (0: 3),
	// because a single UDP broadcast is easily lost on a busy switch.
	Repeat int
	// Gap is the pause between the last packet for one machine and the first
	// for the next, so that a room does not power up all at once (inrush
	// current, DHCP/TFTP burst). Zero sends back to back.
	Gap time.Duration
	// Raw additionally sends an EtherType 0x0842 broadcast frame, which
	// needs no IP address on the interface and passes L3 filters.
	Raw bool
	// Log receives one line per machine woken; nil discards.
	Log *slog.Logger
}

// Wake wakes macs in order, Gap apart. All MACs are validated before
// anything is sent, so bad input sends nothing.
func (w WoL) Wake(ctx context.Context, macs []net.HardwareAddr) error {
	log := w.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	payloads := make([][]byte, len(macs))
	for i, m := range macs {
		p, err := MagicPacket(m)
		if err != nil {
			return fmt.Errorf("wake machine %d of %d: %w; fix the seat's MAC in the inventory", i+1, len(macs), err)
		}
		payloads[i] = p
	}
	if w.Interface == "" {
		return errors.New("wake-on-lan: no lab interface configured; set the lab interface in the netboot settings")
	}
	if w.Gap < 0 {
		return fmt.Errorf("wake-on-lan: negative gap %v", w.Gap)
	}
	ports := w.Ports
	if ports == nil {
		ports = []int{9, 7}
	}
	for _, p := range ports {
		if p < 1 || p > 65535 {
			return fmt.Errorf("wake-on-lan: UDP port %d out of range 1-65535", p)
		}
	}
	repeat := w.Repeat
	if repeat == 0 {
		repeat = 3
	}
	if repeat < 0 {
		return fmt.Errorf("wake-on-lan: negative repeat count %d", repeat)
	}
	ifi, err := net.InterfaceByName(w.Interface)
	if err != nil {
		return fmt.Errorf("wake-on-lan: lab interface %q: %w; check the interface name in the netboot settings", w.Interface, err)
	}
	bcasts, err := directedBroadcasts(ifi)
	if err != nil {
		return err
	}
	if len(bcasts) == 0 && !w.Raw {
		return fmt.Errorf("wake-on-lan: interface %s has no IPv4 address for a directed broadcast; give it one or enable raw (EtherType 0x0842) wake-up", ifi.Name)
	}
	if len(macs) == 0 {
		return nil
	}

	var udp net.PacketConn
	if len(bcasts) > 0 {
		udp, err = listenBroadcastUDP(ctx, ifi.Name)
		if err != nil {
			return err
		}
		defer udp.Close()
	}
	var raw *packet.Conn
	if w.Raw {
		// Protocol 0 binds a send-only socket: it receives nothing, so no
		// buffer fills up with frames nobody reads.
		raw, err = packet.Listen(ifi, packet.Raw, 0, nil)
		if err != nil {
			return fmt.Errorf("wake-on-lan: raw socket on %s: %w (needs CAP_NET_RAW)", ifi.Name, err)
		}
		defer raw.Close()
	}

	for i, m := range macs {
		if i > 0 && w.Gap > 0 {
			t := time.NewTimer(w.Gap)
			select {
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("wake-on-lan: stopped before %s (%d of %d woken): %w", m, i, len(macs), ctx.Err())
			case <-t.C:
			}
		} else if err := ctx.Err(); err != nil {
			return fmt.Errorf("wake-on-lan: stopped before %s (%d of %d woken): %w", m, i, len(macs), err)
		}
		var frame []byte
		if raw != nil {
			f := ethernet.Frame{Destination: ethernet.Broadcast, Source: ifi.HardwareAddr, EtherType: EtherTypeWoL, Payload: payloads[i]}
			if frame, err = f.MarshalBinary(); err != nil {
				return fmt.Errorf("wake-on-lan: build frame for %s: %w", m, err)
			}
		}
		sent := 0
		for range repeat {
			for _, b := range bcasts {
				for _, p := range ports {
					if _, err := udp.WriteTo(payloads[i], &net.UDPAddr{IP: b, Port: p}); err != nil {
						return fmt.Errorf("wake-on-lan: send to %s:%d for %s: %w", b, p, m, err)
					}
					sent++
				}
			}
			if raw != nil {
				if _, err := raw.WriteTo(frame, &packet.Addr{HardwareAddr: ethernet.Broadcast}); err != nil {
					return fmt.Errorf("wake-on-lan: raw frame on %s for %s: %w", ifi.Name, m, err)
				}
				sent++
			}
		}
		log.Info("wake-on-lan sent", "mac", m.String(), "interface", ifi.Name, "packets", sent)
	}
	return nil
}

// directedBroadcasts returns the subnet-directed broadcast address of every
// IPv4 prefix on ifi. Routers and VLAN setups drop the limited broadcast
// (255.255.255.255) more often than the directed one.
func directedBroadcasts(ifi *net.Interface) ([]net.IP, error) {
	addrs, err := ifi.Addrs()
	if err != nil {
		return nil, fmt.Errorf("wake-on-lan: addresses of %s: %w", ifi.Name, err)
	}
	var out []net.IP
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip4 := n.IP.To4()
		if ip4 == nil || len(n.Mask) != net.IPv4len {
			continue
		}
		ones, _ := n.Mask.Size()
		if ones >= 31 {
			// /31 and /32 have no broadcast address of their own.
			out = append(out, net.IPv4bcast)
			continue
		}
		b := make(net.IP, net.IPv4len)
		for i := range b {
			b[i] = ip4[i] | ^n.Mask[i]
		}
		out = append(out, b)
	}
	return out, nil
}

func listenBroadcastUDP(ctx context.Context, ifname string) (net.PacketConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1); serr != nil {
				return
			}
			serr = unix.BindToDevice(int(fd), ifname)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(ctx, "udp4", ":0")
	if err != nil {
		return nil, fmt.Errorf("wake-on-lan: UDP socket bound to %s: %w (needs root or CAP_NET_RAW for SO_BINDTODEVICE)", ifname, err)
	}
	return pc, nil
}
