package testseat

import (
	"bytes"
	"net"
	"testing"

	"github.com/pumi-lab/pumi/internal/power"
)

// FuzzMagicPacket checks the simulated NIC's magic packet check against
// internal/power's parser, an independent implementation: for every input
// both must agree whether it wakes mac, and nothing may panic. Seeds:
// testdata/fuzz/FuzzMagicPacket.
func FuzzMagicPacket(f *testing.F) {
	mac := net.HardwareAddr{0x02, 0x83, 0, 0, 0, 0x0a}
	good, err := power.MagicPacket(mac)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, []byte(mac))
	f.Add(good[:len(good)-1], []byte(mac))
	f.Add(append(bytes.Clone(good), 1, 2, 3, 4, 5, 6), []byte(mac)) // SecureOn password: not ours
	f.Add(good, []byte{0x02, 0x83, 0, 0, 0, 0x0b})
	f.Fuzz(func(t *testing.T, b, m []byte) {
		got := isMagicPacket(b, net.HardwareAddr(m))
		parsed, err := power.ParseMagicPacket(b)
		want := err == nil && len(m) == 6 && bytes.Equal(parsed, m)
		if got != want {
			t.Fatalf("isMagicPacket(%x, %x) = %v, power.ParseMagicPacket says %v (%v)", b, m, got, want, err)
		}
	})
}

// TestMagicPacketFromPower: what internal/power sends wakes exactly the
// seat it names.
func TestMagicPacketFromPower(t *testing.T) {
	a, b := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}, net.HardwareAddr{0x52, 0x54, 0, 0, 0, 2}
	p, err := power.MagicPacket(a)
	if err != nil {
		t.Fatal(err)
	}
	if !isMagicPacket(p, a) || isMagicPacket(p, b) || isMagicPacket(p[:len(p)-1], a) {
		t.Fatal("simulated NIC disagrees with power.MagicPacket")
	}
}
