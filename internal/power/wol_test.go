package power

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pumi-lab/pumi/internal/testnet"
)

func TestMagicPacketBytes(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0x00, 0xab, 0xcd, 0xef}
	p, err := MagicPacket(mac)
	must(t, err)
	want := bytes.Repeat([]byte{0xff}, 6)
	for range 16 {
		want = append(want, 0x52, 0x54, 0x00, 0xab, 0xcd, 0xef)
	}
	if !bytes.Equal(p, want) {
		t.Fatalf("magic packet\n got %x\nwant %x", p, want)
	}
	got, err := ParseMagicPacket(p)
	if err != nil || got.String() != mac.String() {
		t.Fatalf("parse: %v %v", got, err)
	}
	for _, bad := range []net.HardwareAddr{nil, {1, 2, 3}, {1, 2, 3, 4, 5, 6, 7, 8}, {0x01, 0, 0x5e, 0, 0, 1}, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff}} {
		if _, err := MagicPacket(bad); err == nil {
			t.Errorf("MagicPacket(%v) accepted", bad)
		}
	}
	corrupt := append([]byte(nil), p...)
	corrupt[50] ^= 1
	for _, b := range [][]byte{nil, p[:101], append(append([]byte(nil), p...), 0), corrupt, append([]byte{0xfe}, p[1:]...)} {
		if _, err := ParseMagicPacket(b); err == nil {
			t.Errorf("ParseMagicPacket(%x) accepted", b)
		}
	}
}

// received is one magic packet a listener got, with the kernel's receive
// time (SO_TIMESTAMPNS), so listener scheduling does not distort gaps.
type received struct {
	mac net.HardwareAddr
	at  time.Time
}

// listenUDP opens a UDP socket on port inside h with kernel timestamps.
func listenUDP(t *testing.T, h *testnet.NS, port int) int {
	var fd int
	must(t, h.Do(func() (err error) {
		if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		if err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrInet4{Port: port})
	}))
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// listenRaw opens an AF_PACKET socket for EtherType 0x0842 on h's eth0 with
// kernel timestamps. It is written against the kernel directly, not with the
// library Wake uses, so the two cannot share a mistake.
func listenRaw(t *testing.T, h *testnet.NS) int {
	var fd int
	proto := int(htons(EtherTypeWoL))
	must(t, h.Do(func() (err error) {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto); err != nil {
			return err
		}
		if err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifi.Index})
	}))
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// drain reads everything queued on fd without blocking. Wake's sends over
// veth are delivered before its write returns, so once Wake has returned
// every packet is already queued.
func drain(t *testing.T, fd int, raw bool) []received {
	var out []received
	buf := make([]byte, 2048)
	oob := make([]byte, 256)
	for {
		n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) {
			return out
		}
		must(t, err)
		payload := buf[:n]
		if raw {
			if n < 14 || !bytes.Equal(payload[:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) ||
				binary.BigEndian.Uint16(payload[12:14]) != EtherTypeWoL {
				t.Fatalf("raw frame is not an 0x0842 broadcast: %x", payload)
			}
			payload = payload[14:]
			// Short frames are padded to 60 bytes, but 14+102 never is.
		}
		mac, err := ParseMagicPacket(payload)
		if err != nil {
			t.Fatalf("malformed magic packet %x: %v", payload, err)
		}
		var at time.Time
		cms, err := unix.ParseSocketControlMessage(oob[:oobn])
		must(t, err)
		for _, m := range cms {
			if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SO_TIMESTAMPNS && len(m.Data) >= 16 {
				at = time.Unix(int64(binary.NativeEndian.Uint64(m.Data[0:8])), int64(binary.NativeEndian.Uint64(m.Data[8:16])))
			}
		}
		if at.IsZero() {
			t.Fatal("no kernel timestamp on received packet")
		}
		out = append(out, received{mac, at})
	}
}

func TestWakeOnLANInNamespace(t *testing.T) {
	testnet.Require(t)
	lab := testnet.New(t)
	lab.Bridge("br0", "10.77.0.1/24")
	seat := lab.Host("br0", "", "10.77.0.2/24")
	udp9, udp7, raw := listenUDP(t, seat, 9), listenUDP(t, seat, 7), listenRaw(t, seat)

	macs := []net.HardwareAddr{
		{0x52, 0x54, 0x00, 0x00, 0x00, 0x01},
		{0x52, 0x54, 0x00, 0x00, 0x00, 0x02},
		{0x00, 0x1b, 0x21, 0xaa, 0xbb, 0xcc},
		{0x52, 0x54, 0x00, 0x00, 0x00, 0x03},
	}
	const repeat = 3
	const gap = 150 * time.Millisecond
	w := WoL{Interface: "br0", Repeat: repeat, Gap: gap, Raw: true}

	t.Run("BadMACSendsNothing", func(t *testing.T) {
		bad := append(append([]net.HardwareAddr(nil), macs[:2]...), net.HardwareAddr{0x01, 0x00, 0x5e, 0, 0, 1})
		err := lab.Do(func() error { return w.Wake(context.Background(), bad) })
		if err == nil {
			t.Fatal("multicast MAC accepted")
		}
		for _, fd := range []int{udp9, udp7, raw} {
			if got := drain(t, fd, fd == raw); len(got) != 0 {
				t.Fatalf("bad input still sent %d packets", len(got))
			}
		}
	})

	t.Run("NoIPv4", func(t *testing.T) {
		// br1 has no address: UDP is impossible, raw frames still work.
		lab.Bridge("br1", "")
		bare := lab.Host("br1", "", "")
		bareRaw := listenRaw(t, bare)
		err := lab.Do(func() error { return WoL{Interface: "br1"}.Wake(context.Background(), macs[:1]) })
		if err == nil {
			t.Fatal("no error for an interface without IPv4 and raw off")
		}
		must(t, lab.Do(func() error { return WoL{Interface: "br1", Raw: true}.Wake(context.Background(), macs[1:2]) }))
		got := drain(t, bareRaw, true)
		if len(got) != 3 || got[0].mac.String() != macs[1].String() {
			t.Fatalf("raw-only wake: got %v, want 3 frames for %s", got, macs[1])
		}
		if err := lab.Do(func() error { return WoL{Interface: "nonexistent0"}.Wake(context.Background(), macs[:1]) }); err == nil {
			t.Fatal("no error for a missing interface")
		}
	})

	t.Run("StaggeredInOrder", func(t *testing.T) {
		must(t, lab.Do(func() error { return w.Wake(context.Background(), macs) }))
		for _, l := range []struct {
			name string
			fd   int
		}{{"udp/9", udp9}, {"udp/7", udp7}, {"ethertype 0x0842", raw}} {
			got := drain(t, l.fd, l.fd == raw)
			if len(got) != len(macs)*repeat {
				t.Fatalf("%s: %d packets, want %d", l.name, len(got), len(macs)*repeat)
			}
			for i, r := range got {
				if want := macs[i/repeat]; r.mac.String() != want.String() {
					t.Fatalf("%s: packet %d wakes %s, want %s", l.name, i, r.mac, want)
				}
			}
			for m := 1; m < len(macs); m++ {
				last, next := got[m*repeat-1].at, got[m*repeat].at
				if d := next.Sub(last); d < gap {
					t.Errorf("%s: %s woken %v after %s, want at least %v", l.name, macs[m], d, macs[m-1], gap)
				} else {
					t.Logf("%s: %s woken %v after %s", l.name, macs[m], d.Round(time.Millisecond), macs[m-1])
				}
			}
		}
	})

	t.Run("CancelStopsBetweenMachines", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		slow := w
		slow.Gap = time.Hour
		slow.Log = nil
		done := make(chan error, 1)
		go func() { done <- lab.Do(func() error { return slow.Wake(ctx, macs) }) }()
		// The first machine is sent at once; cancel once its packets are
		// seen, during the hour-long gap.
		var got []received
		for deadline := time.Now().Add(10 * time.Second); len(got) == 0; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("first machine's packets never arrived")
			}
			got = append(got, drain(t, udp9, false)...)
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		got = append(got, drain(t, udp9, false)...)
		if len(got) != repeat {
			t.Fatalf("%d packets on udp/9 after cancel, want only the first machine's %d", len(got), repeat)
		}
		for _, r := range got {
			if r.mac.String() != macs[0].String() {
				t.Fatalf("packet for %s sent after cancel", r.mac)
			}
		}
		drain(t, udp7, false)
		drain(t, raw, true)
	})
}
