package udpcast

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// The encodings below are the layouts udp-receiver reads (udpcast's
// udpc-protoc.h, all big-endian); sizes match a capture of udp-sender
// (HELLO 28, CONNECT_REPLY 32, REQACK 144, DATA 16+1456 bytes).
func TestEncode(t *testing.T) {
	data := netip.MustParseAddr("234.55.0.1")
	var ready bitmap
	ready.set(0)
	ready.set(9)
	hdr := make([]byte, dataHeaderLen)
	putDataHeader(hdr, 7, 111, 163072)
	for _, tc := range []struct {
		name string
		got  []byte
		want string
	}{
		{"hello", appendHello(nil, data),
			"0500 0000 00000009 ea370001 000000000000000000000000 05b0 0000"},
		{"connect reply", appendConnectReply(nil, 3, data),
			"0007 0000 00000003 000005b0 00000009 ea370001 000000000000000000000000"},
		{"refusal", appendConnectReply(nil, -1, data),
			"0007 0000 ffffffff 000005b0 00000009 ea370001 000000000000000000000000"},
		{"data header", hdr, "0008 0000 00000007 006f 0000 00027d00"},
		{"reqack", appendReqAck(nil, 7, 163072, 2, &ready)[:20],
			"0006 0000 00000007 00027d00 00000002 0102 0000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, err := hex.DecodeString(strings.ReplaceAll(tc.want, " ", ""))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(tc.got[:len(want)], want) {
				t.Errorf("got  %x\nwant %x", tc.got, want)
			}
		})
	}
	if n := len(appendHello(nil, data)); n != helloLen || helloLen != 28 {
		t.Errorf("hello is %d bytes", n)
	}
	if n := len(appendReqAck(nil, 0, 0, 0, &ready)); n != 144 {
		t.Errorf("reqack is %d bytes", n)
	}
}

func TestParseMessage(t *testing.T) {
	retransmit := append([]byte{0, 1, 0, 0, 0, 0, 0, 5, 0, 0, 0, 2}, make([]byte, bitmapLen)...)
	retransmit[12] = 0x05 // has blocks 0 and 2
	for _, tc := range []struct {
		name    string
		in      []byte
		want    message
		wantErr bool
	}{
		{"ok", []byte{0, 0, 0, 0, 0, 0, 1, 2}, message{op: opOK, slice: 258}, false},
		{"connect req", []byte{0, 3, 0, 0, 0, 0, 0, 9, 0, 3, 0x40, 0}, message{op: opConnectReq, caps: 9, rcvbuf: 212992}, false},
		{"disconnect", []byte{0, 4, 0, 0}, message{op: opDisconnect}, false},
		{"go", []byte{0, 2, 0, 0}, message{op: opGo}, false},
		{"retransmit", retransmit, message{op: opRetransmit, slice: 5, rxmit: 2}, false},
		{"short ok", []byte{0, 0, 0, 0, 0, 0, 1}, message{}, true},
		{"short retransmit", retransmit[:100], message{}, true},
		{"empty", nil, message{}, true},
		{"sender opcode", []byte{0, 8, 0, 0, 0, 0, 0, 0}, message{}, true},
		{"hello", []byte{5, 0, 0, 0, 0, 0, 0, 9}, message{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseMessage(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				if len(tc.in) < 2 || messageLen(uint16(tc.in[0])<<8|uint16(tc.in[1])) > 0 {
					if !errors.Is(err, errShort) {
						t.Errorf("err %v, want errShort", err)
					}
				}
				return
			}
			rec := got.received
			if got.op != tc.want.op || got.slice != tc.want.slice || got.rxmit != tc.want.rxmit || got.caps != tc.want.caps || got.rcvbuf != tc.want.rcvbuf {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			if tc.want.op == opRetransmit {
				var m bitmap
				copy(m[:], rec)
				if !m.has(0) || m.has(1) || !m.has(2) {
					t.Errorf("bitmap %x", rec[:2])
				}
			}
		})
	}
}

func TestDefaultDataAddr(t *testing.T) {
	for in, want := range map[string]string{
		"10.55.0.1":     "234.55.0.1", // as udp-sender picked in the baseline capture
		"192.168.1.10":  "232.168.1.10",
		"172.16.5.4":    "236.16.5.4",
		"255.255.255.1": "239.255.255.1",
	} {
		if got := DefaultDataAddr(netip.MustParseAddr(in)).String(); got != want {
			t.Errorf("%s: %s, want %s", in, got, want)
		}
	}
}

func TestNewSessionRefuses(t *testing.T) {
	seat := []netip.Addr{netip.MustParseAddr("10.0.0.2")}
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no interface", Config{PortBase: 2232, Expect: seat}},
		{"unknown interface", Config{Interface: "nope0", PortBase: 2232, Expect: seat}},
		{"port", Config{Interface: "lo", LocalAddr: netip.MustParseAddr("127.0.0.1"), PortBase: 70000, Expect: seat}},
		{"nobody admitted", Config{Interface: "lo", LocalAddr: netip.MustParseAddr("127.0.0.1"), PortBase: 2232}},
		{"data group is not multicast", Config{Interface: "lo", LocalAddr: netip.MustParseAddr("127.0.0.1"), PortBase: 2232, Expect: seat, DataAddr: netip.MustParseAddr("10.1.1.1")}},
		{"data group is the rendezvous", Config{Interface: "lo", LocalAddr: netip.MustParseAddr("127.0.0.1"), PortBase: 2232, Expect: seat, DataAddr: netip.MustParseAddr("224.0.0.1")}},
		{"slice too big", Config{Interface: "lo", LocalAddr: netip.MustParseAddr("127.0.0.1"), PortBase: 2232, Expect: seat, SliceBlocks: 2048}},
		{"ipv6 seat", Config{Interface: "lo", LocalAddr: netip.MustParseAddr("127.0.0.1"), PortBase: 2232, Expect: []netip.Addr{netip.MustParseAddr("::1")}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewSession(tc.cfg, nil); err == nil {
				t.Error("accepted")
			}
		})
	}
	s, err := NewSession(Config{Interface: "lo", LocalAddr: netip.MustParseAddr("127.0.0.1"), PortBase: 2232, Expect: seat}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := s.Config()
	if c.MaxWait != DefaultMaxWait || c.DeadAfter != DefaultDeadAfter || c.TTL != 1 || c.Rendezvous.String() != "224.0.0.1" || c.DataAddr.String() != "239.0.0.1" || c.SliceBlocks != DefaultSliceBlocks {
		t.Errorf("defaults: %+v", c)
	}
}
