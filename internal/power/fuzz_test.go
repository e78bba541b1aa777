package power

import (
	"bytes"
	"errors"
	"net"
	"strings"
	"testing"
)

// The seed corpora live in testdata/fuzz/<FuzzName>/; f.Add covers the
// obvious shapes as well.

func FuzzParseMagicPacket(f *testing.F) {
	good, _ := MagicPacket(net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56})
	f.Add(good)
	f.Add(good[:60])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		mac, err := ParseMagicPacket(b)
		if err != nil {
			return
		}
		// Whatever parses must be exactly what MagicPacket builds (when the
		// MAC is a unicast one MagicPacket accepts).
		if again, err := MagicPacket(mac); err == nil && !bytes.Equal(again, b) {
			t.Fatalf("parsed %s from %x but it marshals to %x", mac, b, again)
		}
	})
}

func FuzzParseHostKeys(f *testing.F) {
	f.Add([]byte("# c\nLAB-img 52:54:00:00:00:01 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEj2oL/8b3eW8k1JeQ8Yp2v3vJ0zq8J5yQ2WqkQm0tW9\n"))
	f.Add([]byte("a b c\n"))
	f.Add([]byte("a b ssh-rsa AAAA\n\n#x"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseHostKeys(b)
		if err != nil {
			return
		}
		// What parses survives a rewrite unchanged.
		m2, err := parseHostKeys(formatHostKeys(m))
		if err != nil {
			t.Fatalf("rewritten file does not parse: %v\n%s", err, formatHostKeys(m))
		}
		if len(m2) != len(m) {
			t.Fatalf("rewrite changed %d pins into %d", len(m), len(m2))
		}
		for k, v := range m {
			if !keysEqual(m2[k], v) {
				t.Fatalf("pin %v changed on rewrite", k)
			}
		}
	})
}

func FuzzCheckSignature(f *testing.F) {
	f.Add([]byte("LAB-2026\n"), "LAB-2026-img")
	f.Add([]byte("\ufeffLAB-2026\r\n"), "LAB-2026-img")
	f.Add([]byte("\xff\xfe"), "-img")
	f.Fuzz(func(t *testing.T, content []byte, image string) {
		err := CheckSignature(content, image)
		var wi *WrongImageError
		if errors.As(err, &wi) {
			if wi.Wanted != WantedSignature(image) || len(wi.Found) > 100 {
				t.Fatalf("bad WrongImageError %+v", wi)
			}
		}
		// A Signature holding exactly the wanted name (plus a newline)
		// always verifies; names with surrounding space or a leading byte
		// order mark cannot be written to a file unambiguously.
		if w := WantedSignature(image); w != "" && strings.TrimSpace(w) == w && !strings.HasPrefix(w, "\ufeff") {
			if err := CheckSignature([]byte(w+"\n"), image); err != nil {
				t.Fatalf("signature %q rejected for image %q: %v", w, image, err)
			}
		}
	})
}
