package inventory

import "strings"

// Match reports whether a seat matches a search: every word of q must
// appear (case-insensitively) in its MAC, IP, host name, room or SSH user,
// and room, when set, must be the seat's room. MACs match in any spelling
// (52-54-00-…, 5254.00…): separators are ignored on both sides.
func (s Seat) Match(q, room string) bool {
	if room != "" && s.Room != room {
		return false
	}
	if strings.TrimSpace(q) == "" {
		return true
	}
	ip := ""
	if s.IP.IsValid() {
		ip = s.IP.String()
	}
	hay := strings.ToLower(strings.Join([]string{s.MAC, ip, s.Hostname, s.Room, s.SSHUser}, " "))
	bare := macDigits(s.MAC)
	for _, w := range strings.Fields(strings.ToLower(q)) {
		if strings.Contains(hay, w) {
			continue
		}
		if d := macDigits(w); len(d) >= 4 && macLike(w) && strings.Contains(bare, d) {
			continue
		}
		return false
	}
	return true
}

// macLike reports a word made only of hex digits and MAC separators.
func macLike(w string) bool {
	for _, r := range w {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r == ':' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

// macDigits is the lower-case hex digits of s, separators dropped.
func macDigits(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if r >= '0' && r <= '9' || r >= 'a' && r <= 'f' {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// Page is one page of a filtered list.
type Page struct {
	Number, Pages int // 1-based; Pages ≥ 1
	From, To      int // 1-based positions of the first and last item shown; 0 when empty
	Matched       int // items after filtering
}

// Filter keeps the seats that match q and room (Seat.Match) and returns
// the n-th page (1-based, clamped to the valid range) of size items.
func Filter(seats []Seat, q, room string, n, size int) ([]Seat, Page) {
	if size <= 0 {
		size = 100
	}
	var matched []Seat
	if strings.TrimSpace(q) == "" && room == "" {
		matched = seats
	} else {
		for _, s := range seats {
			if s.Match(q, room) {
				matched = append(matched, s)
			}
		}
	}
	p := Page{Matched: len(matched), Pages: max(1, (len(matched)+size-1)/size)}
	p.Number = min(max(n, 1), p.Pages)
	start := (p.Number - 1) * size
	end := min(start+size, len(matched))
	if start >= end {
		return nil, p
	}
	p.From, p.To = start+1, end
	return matched[start:end], p
}
