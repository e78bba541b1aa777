package inventory

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

// FuzzParseCSV feeds arbitrary bytes to the importer's parser. It must never
// panic, and must either reject the input with an *ImportError (or a plain
// error for unreadable input) or return seats that are canonical, unique by
// MAC and IP, and survive an export and re-parse unchanged.
func FuzzParseCSV(f *testing.F) {
	// More seeds live in testdata/fuzz/FuzzParseCSV.
	f.Add([]byte("52:54:00:00:00:01, 10.0.0.1, tareas\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParseCSV(bytes.NewReader(data))
		if err != nil {
			var ie *ImportError
			if errors.As(err, &ie) && len(ie.Rows) == 0 {
				t.Fatal("ImportError without rows")
			}
			if p != nil {
				t.Fatal("both a result and an error")
			}
			return
		}
		if len(p.Seats) == 0 || len(p.Seats) != len(p.Lines) {
			t.Fatalf("%d seats, %d line numbers", len(p.Seats), len(p.Lines))
		}
		macs, ips := map[string]bool{}, map[string]bool{}
		for _, s := range p.Seats {
			n, errs := normalize(s)
			if len(errs) > 0 || n != s {
				t.Fatalf("accepted seat is not canonical: %+v -> %+v %v", s, n, errs)
			}
			if macs[s.MAC] {
				t.Fatalf("duplicate MAC %s accepted", s.MAC)
			}
			macs[s.MAC] = true
			if s.IP.IsValid() {
				if ips[s.IP.String()] {
					t.Fatalf("duplicate IP %s accepted", s.IP)
				}
				ips[s.IP.String()] = true
			}
		}
		var out bytes.Buffer
		if err := WriteCSV(&out, p.Seats); err != nil {
			t.Fatal(err)
		}
		q, err := ParseCSV(&out)
		if err != nil {
			t.Fatalf("export of accepted seats does not parse: %v\n%s", err, out.String())
		}
		if !reflect.DeepEqual(q.Seats, p.Seats) {
			t.Fatalf("round trip changed seats:\n%+v\n%+v", p.Seats, q.Seats)
		}
	})
}
