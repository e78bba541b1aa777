package schedule

import (
	"testing"
	"time"
)

// TestNextMatchesBruteForce checks the DST policy with an independent
// definition, minute by minute around every transition of several zones
// (whole-hour, half-hour and midnight transitions): an instant fires if its
// wall time matches and is not a repeat (fall-back), or if it ends a gap
// (spring-forward) in which some wall time matches.
func TestNextMatchesBruteForce(t *testing.T) {
	zones := []struct {
		name string
		year int
	}{
		{"Europe/Berlin", 2026},
		{"America/Argentina/Buenos_Aires", 2008},
		{"America/Argentina/Buenos_Aires", 2009},
		{"Australia/Lord_Howe", 2026}, // 30-minute DST
		{"America/Sao_Paulo", 2018},   // midnight gap
		{"America/Havana", 2026},      // midnight transitions both ways
	}
	specs := []string{"30 2 * * *", "*/15 * * * *", "0 0 * * *", "45 23 * * *", "0,30 0-3 * * *", "* 2 * * *", "59 1 * * 0", "15 1,2 * * *"}
	for _, z := range zones {
		loc := mustLoc(t, z.name)
		trans := transitions(loc, z.year)
		if len(trans) == 0 {
			t.Fatalf("%s %d: no transitions found", z.name, z.year)
		}
		for _, tr := range trans {
			from, to := tr.Add(-27*time.Hour), tr.Add(27*time.Hour)
			for _, sp := range specs {
				s := MustParse(sp)
				want := bruteFires(s, loc, from, to)
				got := NextN(s, from, len(want)+1, loc)
				var gotIn []time.Time
				for _, g := range got {
					if g.Before(to) {
						gotIn = append(gotIn, g)
					}
				}
				if len(gotIn) != len(want) {
					t.Errorf("%s around %v, %q: %d fires, brute force %d\n got %v\nwant %v", z.name, tr.In(loc), sp, len(gotIn), len(want), gotIn, want)
					continue
				}
				for i := range want {
					if !gotIn[i].Equal(want[i]) {
						t.Errorf("%s around %v, %q: fire %d = %v, brute force %v", z.name, tr.In(loc), sp, i, gotIn[i].In(loc), want[i].In(loc))
					}
				}
			}
		}
	}
}

func transitions(loc *time.Location, year int) []time.Time {
	var out []time.Time
	t := time.Date(year, 1, 1, 0, 0, 0, 0, loc)
	endYear := time.Date(year+1, 1, 1, 0, 0, 0, 0, loc)
	for {
		_, end := t.ZoneBounds()
		if end.IsZero() || !end.Before(endYear) {
			return out
		}
		out = append(out, end)
		t = end
	}
}

func wallMatches(s Spec, w time.Time) bool {
	day := time.Date(w.Year(), w.Month(), w.Day(), 0, 0, 0, 0, time.UTC)
	return w.Second() == 0 && s.dayMatches(day) && s.hour&(1<<uint(w.Hour())) != 0 && s.minute&(1<<uint(w.Minute())) != 0
}

func bruteFires(s Spec, loc *time.Location, from, to time.Time) []time.Time {
	var out []time.Time
	for i := from.Truncate(time.Minute).Add(time.Minute); i.Before(to); i = i.Add(time.Minute) {
		w := i.In(loc)
		_, off := w.Zone()
		start, _ := w.ZoneBounds()
		shift := 0
		if !start.IsZero() {
			_, prev := start.Add(-time.Second).In(loc).Zone()
			shift = off - prev
		}
		fire := false
		if wallMatches(s, w) {
			repeat := shift < 0 && i.Before(start.Add(time.Duration(-shift)*time.Second))
			fire = !repeat
		}
		if !fire && shift > 0 && i.Equal(start) {
			gapEnd := wallOf(w)
			for g := gapEnd.Add(-time.Duration(shift) * time.Second); g.Before(gapEnd); g = g.Add(time.Minute) {
				if wallMatches(s, g) {
					fire = true
					break
				}
			}
		}
		if fire {
			out = append(out, i)
		}
	}
	return out
}
