package schedule

import (
	"testing"
	"time"
)

// FuzzParse: no input panics; an accepted spec re-parses from its String,
// its fires move strictly forward, and Prev inverts Next, in a DST zone.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"0 2 * * *", "TZ=0", "CRON_TZ=", "CRON_TZ=Europe/Berlin 0 2 * * *", "@every 1h", "@daily",
		"99999999999999999999 * * * *", "*/0 * * * *", "0 0 30 2 *", "5-3 * * * *", "０ 2 * * *", "ä ö ü * *", "0 2 * * 7",
		"1-59/7 0-23/5 1-31/3 JAN-DEC/2 MON-SUN", "0 2 * * SÁB", "0 0 1 ENE-DIC/2 lun-vie", "0 2 * * SABADO", "@", "", "0 2 * * SAT\n", "\xff", "*/1 */1 */1 */1 */1", "0 0 29 2 *"} {
		f.Add(s)
	}
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		f.Fatal(err)
	}
	from := time.Date(2026, 3, 29, 1, 0, 0, 0, berlin)
	f.Fuzz(func(t *testing.T, in string) {
		s, err := Parse(in)
		if err != nil {
			if !s.IsZero() {
				t.Fatalf("error with non-zero spec for %q", in)
			}
			return
		}
		again, err := Parse(s.String())
		if err != nil || again != s {
			t.Fatalf("%q: String %q does not re-parse to the same spec: %v", in, s, err)
		}
		prev := from
		for _, ft := range NextN(s, from, 5, berlin) {
			if !ft.After(prev) {
				t.Fatalf("%q: fire %v not after %v", in, ft, prev)
			}
			if p := s.Prev(ft, berlin); !p.Equal(ft) {
				t.Fatalf("%q: Prev(%v) = %v", in, ft, p)
			}
			prev = ft
		}
	})
}
