package udpcast

import "testing"

// FuzzParseMessage: whatever arrives on the sender's port (the lab VLAN is
// not trusted), the parser never panics and never accepts a packet shorter
// than its opcode's layout.
func FuzzParseMessage(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 0, 1, 2})
	f.Add([]byte{0, 3, 0, 0, 0, 0, 0, 9, 0, 3, 0x40, 0})
	f.Add(append([]byte{0, 1, 0, 0, 0, 0, 0, 5, 0, 0, 0, 2}, make([]byte, bitmapLen)...))
	f.Add([]byte{0, 4, 0, 0})
	f.Add([]byte{5, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseMessage(b)
		if err != nil {
			return
		}
		if n := messageLen(m.op); n == 0 || len(b) < n {
			t.Fatalf("accepted %d bytes for opcode %#x", len(b), m.op)
		}
		if m.op == opRetransmit && len(m.received) != bitmapLen {
			t.Fatalf("bitmap of %d bytes", len(m.received))
		}
	})
}
