// Package macaddr parses the many ways people and tools write a 48-bit MAC
// address (52:54:00:AB:CD:EF, 52-54-00-ab-cd-ef, 5254.00ab.cdef, 525400abcdef)
// into one canonical form, so that the inventory, DHCP, the boot endpoint and
// the NFS allow-list all agree on which seat a MAC belongs to.
package macaddr

import (
	"encoding/hex"
	"fmt"
	"net"
	"strings"
)

// Parse accepts a 48-bit MAC in colon, hyphen, Cisco-dot or bare-hex form,
// in any letter case, with surrounding blanks ignored.
func Parse(s string) (net.HardwareAddr, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return nil, fmt.Errorf("empty MAC address")
	}
	var hexdigits string
	switch {
	case len(t) == 17 && (strings.Count(t, ":") == 5 || strings.Count(t, "-") == 5):
		sep := t[2]
		for i := 2; i < 17; i += 3 {
			if t[i] != sep {
				return nil, fmt.Errorf("MAC %q: mixed or misplaced separators", s)
			}
		}
		hexdigits = strings.NewReplacer(":", "", "-", "").Replace(t)
	case len(t) == 14 && strings.Count(t, ".") == 2 && t[4] == '.' && t[9] == '.':
		hexdigits = strings.ReplaceAll(t, ".", "")
	case len(t) == 12:
		hexdigits = t
	default:
		return nil, fmt.Errorf("MAC %q: want 6 bytes like 52:54:00:ab:cd:ef", s)
	}
	b, err := hex.DecodeString(hexdigits)
	if err != nil || len(b) != 6 {
		return nil, fmt.Errorf("MAC %q: not hexadecimal", s)
	}
	return net.HardwareAddr(b), nil
}

// String is the canonical form: lower case, colon separated.
func String(m net.HardwareAddr) string { return m.String() }

// Hyphen is the form used in URLs and file names (52-54-00-ab-cd-ef), which
// iPXE also produces with ${net0/mac:hexhyp}.
func Hyphen(m net.HardwareAddr) string { return strings.ReplaceAll(m.String(), ":", "-") }

// Normalize parses s and returns its canonical form.
func Normalize(s string) (string, error) {
	m, err := Parse(s)
	if err != nil {
		return "", err
	}
	return m.String(), nil
}
