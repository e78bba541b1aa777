package macaddr

import "testing"

func TestParse(t *testing.T) {
	good := []string{"52:54:00:ab:cd:ef", "52-54-00-AB-CD-EF", "5254.00ab.cdef", "525400ABCDEF", " 52:54:00:ab:cd:ef\t"}
	for _, s := range good {
		m, err := Parse(s)
		if err != nil {
			t.Errorf("Parse(%q): %v", s, err)
			continue
		}
		if m.String() != "52:54:00:ab:cd:ef" {
			t.Errorf("Parse(%q) = %s", s, m)
		}
	}
	bad := []string{"", "52:54:00:ab:cd", "52:54-00:ab:cd:ef", "zz:54:00:ab:cd:ef", "52:54:00:ab:cd:ef:01", "5254.00ab-cdef", "52545400abcdefgh"}
	for _, s := range bad {
		if m, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) = %s, want error", s, m)
		}
	}
	m, _ := Parse("52:54:00:ab:cd:ef")
	if Hyphen(m) != "52-54-00-ab-cd-ef" {
		t.Errorf("Hyphen = %s", Hyphen(m))
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"52:54:00:ab:cd:ef", "5254.00ab.cdef", "525400abcdef", "::::::", "-----"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := Parse(s)
		if err != nil {
			return
		}
		if len(m) != 6 {
			t.Fatalf("Parse(%q) returned %d bytes", s, len(m))
		}
		again, err := Parse(m.String())
		if err != nil || again.String() != m.String() {
			t.Fatalf("round trip of %q failed: %v", s, err)
		}
	})
}
