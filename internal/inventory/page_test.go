package inventory

import (
	"fmt"
	"net/netip"
	"testing"
)

func TestFilterAndPage(t *testing.T) {
	var seats []Seat
	for i := range 250 {
		room := "A101"
		if i%2 == 1 {
			room = "B202"
		}
		seats = append(seats, Seat{MAC: fmt.Sprintf("52:54:00:00:%02x:%02x", i/256, i%256), IP: netip.AddrFrom4([4]byte{10, 20, byte(i / 250), byte(i%250 + 1)}),
			Hostname: fmt.Sprintf("pc-%03d", i), Room: room})
	}
	for _, tc := range []struct {
		name            string
		q, room         string
		page, size      int
		n, pages, from  int
		matched, number int
		first           string
	}{
		{"all, first page", "", "", 1, 100, 100, 3, 1, 250, 1, "pc-000"},
		{"last page is short", "", "", 3, 100, 50, 3, 201, 250, 3, "pc-200"},
		{"page past the end is clamped", "", "", 9, 100, 50, 3, 201, 250, 3, "pc-200"},
		{"page 0 is page 1", "", "", 0, 100, 100, 3, 1, 250, 1, "pc-000"},
		{"room filter", "", "B202", 1, 100, 100, 2, 1, 125, 1, "pc-001"},
		{"host name search", "PC-01", "", 1, 100, 10, 1, 1, 10, 1, "pc-010"},
		{"MAC in another spelling", "5254.0000.00F9", "", 1, 100, 1, 1, 1, 1, 1, "pc-249"},
		{"IP search", "10.20.0.42", "", 1, 100, 1, 1, 1, 1, 1, "pc-041"},
		{"two words narrow", "pc-1 B202", "", 1, 100, 50, 1, 1, 50, 1, "pc-101"},
		{"no match", "nothing-here", "", 1, 100, 0, 1, 0, 0, 1, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, p := Filter(seats, tc.q, tc.room, tc.page, tc.size)
			if len(got) != tc.n || p.Pages != tc.pages || p.From != tc.from || p.Matched != tc.matched || p.Number != tc.number {
				t.Fatalf("got %d seats, page %+v; want %d seats, pages %d from %d matched %d number %d", len(got), p, tc.n, tc.pages, tc.from, tc.matched, tc.number)
			}
			if tc.first != "" && got[0].Hostname != tc.first {
				t.Fatalf("first seat %s, want %s", got[0].Hostname, tc.first)
			}
		})
	}
}
