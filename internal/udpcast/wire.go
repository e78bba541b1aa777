package udpcast

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// The udpcast wire protocol, as udp-receiver (udpcast 20120424, Debian 12,
// every Clonezilla live) speaks it. Every field is big-endian ("network")
// order; the sender announces CAP_BIG_ENDIAN. Ports: receivers bind
// PortBase, the sender PortBase+1; every sender packet must come from the
// same address and port, because the receiver compares each data packet's
// source with the source of the CONNECT_REPLY it accepted.
//
// Receiver to sender (to PortBase+1, unicast or the rendezvous group):
//
//	OK          op=0  reserved u16, slice i32                          8 bytes
//	RETRANSMIT  op=1  reserved u16, slice i32, rxmit i32, map[128]   140 bytes
//	GO          op=2  reserved u16 (a key press on an interactive receiver)
//	CONNECT_REQ op=3  reserved u16, capabilities i32, rcvbuf u32      12 bytes
//	DISCONNECT  op=4  reserved u16                                     4 bytes
//
// Sender to receivers (to PortBase):
//
//	REQACK        op=6  reserved, slice i32, bytes i32, rxmit i32, readySet[128]  144 bytes
//	CONNECT_REPLY op=7  reserved, clNr i32, blockSize i32, capabilities i32, addr[16]  32 bytes
//	DATA          op=8  reserved, slice i32, block u16, reserved u16, bytes i32, payload  16+n
//	HELLO         op=0x0500 reserved, capabilities i32, addr[16], blockSize u16, pad   28 bytes
//
// Bitmaps (RETRANSMIT's map of received blocks, REQACK's set of client
// numbers that already answered OK) are byte arrays, bit i = byte i/8, mask
// 1<<(i%8).
const (
	opOK           = 0
	opRetransmit   = 1
	opGo           = 2
	opConnectReq   = 3
	opDisconnect   = 4
	opReqAck       = 6
	opConnectReply = 7
	opData         = 8
	// opHello is udpcast's original HELLO opcode, outside the enum for
	// historical endianness reasons; every udp-receiver since 2005 also takes
	// HELLO_NEW (10), but udp-sender itself still sends this one.
	opHello = 0x0500

	capNewGen    = 0x0001
	capBigEndian = 0x0008
	capAsync     = 0x0020
	// senderCaps is what udp-sender announces by default (no FEC, not async).
	senderCaps = capNewGen | capBigEndian

	// BlockSize is the payload of one data packet: 1456 + 16 header + 8 UDP
	// + 20 IP = 1500, one Ethernet MTU.
	BlockSize = 1456
	// maxSliceBlocks is the receiver's MAX_SLICE_SIZE: its retransmit map
	// has 1024 bits.
	maxSliceBlocks = 1024
	// maxClients is the receiver's MAX_CLIENTS: REQACK's readySet has 1024
	// bits, so client numbers are 0..1023.
	maxClients = 1024
	bitmapLen  = 128

	dataHeaderLen   = 16
	reqAckLen       = 16 + bitmapLen
	connectReplyLen = 32
	helloLen        = 28
	okLen           = 8
	retransmitLen   = 12 + bitmapLen
	connectReqLen   = 12
)

// errShort is wrapped by parse errors for truncated packets.
var errShort = errors.New("packet too short")

// message is one parsed receiver-to-sender packet.
type message struct {
	op       uint16
	slice    int32  // OK, RETRANSMIT
	rxmit    int32  // RETRANSMIT: the REQACK round it answers
	received []byte // RETRANSMIT: bitmap of blocks the receiver has (bitmapLen bytes)
	caps     uint32 // CONNECT_REQ
	rcvbuf   uint32 // CONNECT_REQ
}

// parseMessage decodes a packet a receiver sent to the sender's port. It
// never panics; it refuses anything short and every opcode a receiver does
// not send. The returned message's bitmap aliases b.
func parseMessage(b []byte) (message, error) {
	if len(b) < 2 {
		return message{}, fmt.Errorf("%d bytes: %w", len(b), errShort)
	}
	m := message{op: binary.BigEndian.Uint16(b)}
	n := messageLen(m.op)
	if n == 0 {
		return message{}, fmt.Errorf("opcode %#04x is not a receiver message", m.op)
	}
	if len(b) < n {
		return message{}, fmt.Errorf("opcode %#04x: %d of %d bytes: %w", m.op, len(b), n, errShort)
	}
	switch m.op {
	case opOK:
		m.slice = int32(binary.BigEndian.Uint32(b[4:]))
	case opRetransmit:
		m.slice = int32(binary.BigEndian.Uint32(b[4:]))
		m.rxmit = int32(binary.BigEndian.Uint32(b[8:]))
		m.received = b[12 : 12+bitmapLen]
	case opConnectReq:
		m.caps = binary.BigEndian.Uint32(b[4:])
		m.rcvbuf = binary.BigEndian.Uint32(b[8:])
	}
	return m, nil
}

// messageLen is the size of each receiver message, 0 for other opcodes.
func messageLen(op uint16) int {
	switch op {
	case opOK:
		return okLen
	case opRetransmit:
		return retransmitLen
	case opGo, opDisconnect:
		return 4
	case opConnectReq:
		return connectReqLen
	}
	return 0
}

func putIPv4(dst []byte, a netip.Addr) {
	v := a.As4()
	copy(dst, v[:])
}

func appendHello(b []byte, data netip.Addr) []byte {
	p := make([]byte, helloLen)
	binary.BigEndian.PutUint16(p, opHello)
	binary.BigEndian.PutUint32(p[4:], senderCaps)
	putIPv4(p[8:24], data)
	binary.BigEndian.PutUint16(p[24:], BlockSize)
	return append(b, p...)
}

// appendConnectReply: clNr -1 makes udp-receiver exit at once with "Too
// many clients already connected" — pumi's refusal.
func appendConnectReply(b []byte, clNr int32, data netip.Addr) []byte {
	p := make([]byte, connectReplyLen)
	binary.BigEndian.PutUint16(p, opConnectReply)
	binary.BigEndian.PutUint32(p[4:], uint32(clNr))
	binary.BigEndian.PutUint32(p[8:], BlockSize)
	binary.BigEndian.PutUint32(p[12:], senderCaps)
	putIPv4(p[16:32], data)
	return append(b, p...)
}

func putDataHeader(p []byte, slice int32, block uint16, sliceBytes int32) {
	binary.BigEndian.PutUint16(p, opData)
	binary.BigEndian.PutUint16(p[2:], 0)
	binary.BigEndian.PutUint32(p[4:], uint32(slice))
	binary.BigEndian.PutUint16(p[8:], block)
	binary.BigEndian.PutUint16(p[10:], 0)
	binary.BigEndian.PutUint32(p[12:], uint32(sliceBytes))
}

func appendReqAck(b []byte, slice, sliceBytes, rxmit int32, ready *bitmap) []byte {
	p := make([]byte, reqAckLen)
	binary.BigEndian.PutUint16(p, opReqAck)
	binary.BigEndian.PutUint32(p[4:], uint32(slice))
	binary.BigEndian.PutUint32(p[8:], uint32(sliceBytes))
	binary.BigEndian.PutUint32(p[12:], uint32(rxmit))
	copy(p[16:], ready[:])
	return append(b, p...)
}

// bitmap is udpcast's 1024-bit set (blocks of a slice, or client numbers).
type bitmap [bitmapLen]byte

func (m *bitmap) set(i int)      { m[i/8] |= 1 << (i % 8) }
func (m *bitmap) clear(i int)    { m[i/8] &^= 1 << (i % 8) }
func (m *bitmap) has(i int) bool { return m[i/8]&(1<<(i%8)) != 0 }

// DefaultDataAddr is udp-sender's default data group for a sender address:
// 232.0.0.0/5 with the low 27 bits of the sender's IPv4 (10.55.0.1 →
// 234.55.0.1).
func DefaultDataAddr(local netip.Addr) netip.Addr {
	v := local.As4()
	u := binary.BigEndian.Uint32(v[:])&0x07ffffff | 0xe8000000
	binary.BigEndian.PutUint32(v[:], u)
	return netip.AddrFrom4(v)
}
