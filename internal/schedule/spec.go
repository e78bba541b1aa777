// Package schedule owns cron schedules: parsing specs, computing fire times in
// the appliance's time zone (with an explicit DST policy), validating schedule
// values, and deciding which fires are due, late or missed after a restart.
//
// # Specs
//
// A spec is the standard five-field cron line "minute hour day-of-month month
// day-of-week" parsed by github.com/robfig/cron/v3's standard parser: `*`,
// lists (1,15), ranges (1-5), steps (*/15, 0-30/10), month and weekday names
// (JAN, MON-FRI; the Spanish LUN–DOM and ENE–DIC too, stored as the English
// names), and the descriptors @yearly, @annually, @monthly, @weekly,
// @daily, @midnight and @hourly. Day-of-month and day-of-week follow Vixie
// cron: when both are restricted (neither is `*`), a day matches if EITHER
// matches ("0 3 1-7 * SUN" fires on the 1st-7th and on every Sunday).
// Day-of-week is 0-6 (0 = Sunday); 7 is refused.
//
// Refused, with a plain-language error: `TZ=`/`CRON_TZ=` prefixes (robfig
// panics on some of them, and a schedule must follow the appliance's single
// time zone setting, not carry its own), `@every` (lab schedules are wall-clock
// times; an interval would drift with every restart), specs that can never
// fire (30 February), and anything longer than 200 bytes.
//
// # Time zone and DST
//
// Fire times are computed by this package from the parsed fields (not with
// robfig's SpecSchedule.Next), as wall-clock times in the *time.Location the
// caller passes (the appliance's IANA zone; time/tzdata is embedded so this
// works on gokrazy, which ships no zoneinfo). The policy:
//
//   - A wall-clock time that does not exist (spring-forward gap, e.g. 02:30 on
//     the last Sunday of March in Europe/Berlin) fires at the first instant
//     after the gap (03:00 CEST). Several gap times collapse into that single
//     fire. robfig's own Next silently skips that day instead (the 02:30 run
//     would not happen until the next day), which is why it is not used.
//   - A wall-clock time that occurs twice (fall-back, e.g. 02:30 on the last
//     Sunday of October in Berlin) fires once, at its first occurrence (CEST).
//     During the repeated hour nothing fires again; "*/15 * * * *" pauses for
//     that hour rather than running twice. robfig's Next would fire a second
//     time at 02:30 CET, i.e. re-image the room twice.
//
// The same holds for zones whose transition is at midnight (historically
// America/Argentina/Buenos_Aires): "0 0 * * *" on a day without a midnight
// fires at the first instant of that day.
package schedule

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/robfig/cron/v3"
)

// maxSpecLen bounds what we hand to the parser and store; real specs are short.
const maxSpecLen = 200

// searchDays bounds fire-time searches. Nine years covers 29 February across a
// skipped leap year (2096 -> 2104), so only specs that can truly never fire
// come back empty.
const searchDays = 9*366 + 2

// Spec is a parsed cron spec. The zero Spec is "no spec" and never fires.
type Spec struct {
	text                         string
	minute, hour, dom, month, dw uint64
}

var fieldNames = [5]string{"minute", "hour", "day-of-month", "month", "day-of-week"}

var fieldHelp = `expected 5 fields "minute hour day-of-month month day-of-week" (e.g. "0 2 * * SAT" = Saturdays at 02:00) or a descriptor such as @daily`

// Parse parses a standard 5-field cron spec or an @descriptor. It never
// panics: robfig/cron panics on some inputs, so any panic is recovered into an
// error.
func Parse(spec string) (s Spec, err error) {
	text := strings.TrimSpace(spec)
	if err := precheck(text); err != nil {
		return Spec{}, fmt.Errorf("cron spec %q: %w", clip(spec), err)
	}
	defer func() {
		if r := recover(); r != nil {
			s, err = Spec{}, fmt.Errorf("cron spec %q: not understood (%v); %s", clip(spec), r, fieldHelp)
		}
	}()
	if strings.HasPrefix(text, "@") {
		return parseDescriptor(text)
	}
	fields := strings.Fields(text)
	if len(fields) != 5 {
		return Spec{}, fmt.Errorf("cron spec %q has %d fields; %s", clip(spec), len(fields), fieldHelp)
	}
	// Spanish names (LUN–DOM, ENE–DIC) are stored as the standard English
	// ones, so the stored spec is what any cron reader understands.
	fields[3], fields[4] = englishNames(fields[3], esMonths), englishNames(fields[4], esDays)
	if err := unknownName(fields); err != nil {
		return Spec{}, fmt.Errorf("cron spec %q: %w", clip(spec), err)
	}
	text = strings.Join(fields, " ")
	sched, err := cron.ParseStandard(text)
	if err != nil {
		return Spec{}, fmt.Errorf("cron spec %q: %s; %s", clip(spec), explain(fields, err), fieldHelp)
	}
	return fromRobfig(text, sched)
}

// MustParse is Parse for specs written in code and tests; it panics on error.
func MustParse(spec string) Spec {
	s, err := Parse(spec)
	if err != nil {
		panic(err)
	}
	return s
}

func precheck(text string) error {
	switch {
	case text == "":
		return fmt.Errorf("empty; %s", fieldHelp)
	case len(text) > maxSpecLen:
		return fmt.Errorf("longer than %d bytes; %s", maxSpecLen, fieldHelp)
	case !utf8.ValidString(text):
		return fmt.Errorf("not valid UTF-8; %s", fieldHelp)
	}
	for _, r := range text {
		if unicode.IsControl(r) && r != '\t' {
			return fmt.Errorf("contains a control character; %s", fieldHelp)
		}
	}
	// robfig panics on "TZ=0" and "CRON_TZ=", and would open arbitrary
	// zoneinfo paths; the appliance's own zone setting applies instead.
	upper := strings.ToUpper(text)
	if strings.HasPrefix(upper, "TZ=") || strings.HasPrefix(upper, "CRON_TZ=") {
		return fmt.Errorf("time zone prefixes (TZ=, CRON_TZ=) are not allowed: schedules use the appliance's time zone setting; remove the prefix")
	}
	return nil
}

func parseDescriptor(text string) (Spec, error) {
	if strings.HasPrefix(strings.ToLower(text), "@every") {
		return Spec{}, fmt.Errorf("cron spec %q: @every is not supported: schedules are wall-clock times; use e.g. \"0 */2 * * *\" for every two hours", clip(text))
	}
	sched, err := cron.ParseStandard(text)
	if err != nil {
		return Spec{}, fmt.Errorf("cron spec %q: unknown descriptor; use one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly, or 5 fields \"minute hour day-of-month month day-of-week\"", clip(text))
	}
	return fromRobfig(text, sched)
}

func fromRobfig(text string, sched cron.Schedule) (Spec, error) {
	ss, ok := sched.(*cron.SpecSchedule)
	if !ok {
		return Spec{}, fmt.Errorf("cron spec %q: not a wall-clock schedule; %s", clip(text), fieldHelp)
	}
	s := Spec{text: text, minute: ss.Minute, hour: ss.Hour, dom: ss.Dom, month: ss.Month, dw: ss.Dow}
	// Refuse specs that match no day at all, e.g. "0 0 30 2 *".
	if s.Next(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), time.UTC).IsZero() {
		return Spec{}, fmt.Errorf("cron spec %q never fires (no such day, e.g. 30 February); check day-of-month and month", clip(text))
	}
	return s, nil
}

// explain finds which field robfig rejected by parsing each field alone, so
// the error can name it ("day-of-week: end of range (7) above maximum (6)").
func explain(fields []string, whole error) string {
	for i, f := range fields {
		probe := []string{"*", "*", "*", "*", "*"}
		probe[i] = f
		if _, err := parseQuiet(strings.Join(probe, " ")); err != nil {
			hint := ""
			if i == 4 && strings.Contains(f, "7") {
				hint = " (day-of-week is 0-6 with 0 = Sunday, or SUN-SAT)"
			}
			return fmt.Sprintf("%s field %q: %v%s", fieldNames[i], clip(f), err, hint)
		}
	}
	return whole.Error()
}

var (
	esDays   = map[string]string{"LUN": "MON", "MAR": "TUE", "MIE": "WED", "JUE": "THU", "VIE": "FRI", "SAB": "SAT", "DOM": "SUN"}
	esMonths = map[string]string{"ENE": "JAN", "ABR": "APR", "AGO": "AUG", "DIC": "DEC"}
	enDays   = map[string]bool{"SUN": true, "MON": true, "TUE": true, "WED": true, "THU": true, "FRI": true, "SAT": true}
	enMonths = map[string]bool{"JAN": true, "FEB": true, "MAR": true, "APR": true, "MAY": true, "JUN": true, "JUL": true,
		"AUG": true, "SEP": true, "OCT": true, "NOV": true, "DEC": true}
)

// englishNames replaces the Spanish names of a field (any case, with or
// without accents: SÁB, sab) by the English ones; the rest stays as it is.
func englishNames(field string, es map[string]string) string {
	var b strings.Builder
	word := []rune{}
	flush := func() {
		if len(word) == 0 {
			return
		}
		w := string(word)
		if en, ok := es[strings.ToUpper(strings.NewReplacer("á", "a", "é", "e", "Á", "A", "É", "E").Replace(w))]; ok {
			w = en
		}
		b.WriteString(w)
		word = word[:0]
	}
	for _, r := range field {
		if unicode.IsLetter(r) {
			word = append(word, r)
			continue
		}
		flush()
		b.WriteRune(r)
	}
	flush()
	return b.String()
}

// ErrUnknownName is wrapped when a month or day field has a word that is
// not a name in English or Spanish.
var ErrUnknownName = errors.New("unknown name")

// unknownName explains a word in the month or day field that is no name,
// instead of the parser's "strconv.Atoi: parsing" text.
func unknownName(fields []string) error {
	for i, known := range map[int]map[string]bool{3: enMonths, 4: enDays} {
		for _, w := range strings.FieldsFunc(fields[i], func(r rune) bool { return !unicode.IsLetter(r) }) {
			if !known[strings.ToUpper(w)] {
				what := "day-of-week field: %q is not a day name (SUN–SAT or LUN–DOM, or 0–6 with 0 = Sunday)"
				if i == 3 {
					what = "month field: %q is not a month name (JAN–DEC or ENE–DIC, or 1–12)"
				}
				return fmt.Errorf("%w: "+what, ErrUnknownName, clip(w))
			}
		}
	}
	return nil
}

func parseQuiet(spec string) (sched cron.Schedule, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("not understood (%v)", r)
		}
	}()
	return cron.ParseStandard(spec)
}

func clip(s string) string {
	if len(s) > 60 {
		// Cut on a rune boundary so the error text stays valid UTF-8.
		cut := 60
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		return s[:cut] + "…"
	}
	return s
}

// String returns the spec as parsed (whitespace normalised).
func (s Spec) String() string { return s.text }

// IsZero reports whether s is the zero Spec.
func (s Spec) IsZero() bool { return s.text == "" }

// MarshalText lets a Spec be stored as its text (JSON in the bbolt store).
func (s Spec) MarshalText() ([]byte, error) { return []byte(s.text), nil }

// UnmarshalText parses stored text; an empty text is the zero Spec.
func (s *Spec) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*s = Spec{}
		return nil
	}
	p, err := Parse(string(b))
	if err != nil {
		return err
	}
	*s = p
	return nil
}

// Next returns the first fire instant strictly after after, in loc, under the
// package's DST policy; the zero time if the spec is zero or never fires.
func (s Spec) Next(after time.Time, loc *time.Location) time.Time {
	if s.IsZero() {
		return time.Time{}
	}
	loc = orUTC(loc)
	a := after.In(loc)
	day := time.Date(a.Year(), a.Month(), a.Day(), 0, 0, 0, 0, time.UTC)
	lo := wallOf(a).Add(-wallSlack)
	// Start one civil day early: a gap that crosses midnight can move the
	// previous day's last fire past after.
	for i := -1; i < searchDays; i++ {
		d := day.AddDate(0, 0, i)
		if !s.dayMatches(d) {
			continue
		}
		var found time.Time
		s.eachFire(d, loc, false, lo, func(t time.Time) bool {
			if t.After(after) {
				found = t
				return false
			}
			return true
		})
		if !found.IsZero() {
			return found
		}
	}
	return time.Time{}
}

// Prev returns the latest fire instant at or before t, in loc; the zero time
// if there is none within the search horizon.
func (s Spec) Prev(t time.Time, loc *time.Location) time.Time {
	if s.IsZero() {
		return time.Time{}
	}
	loc = orUTC(loc)
	a := t.In(loc)
	day := time.Date(a.Year(), a.Month(), a.Day(), 0, 0, 0, 0, time.UTC)
	hi := wallOf(a).Add(wallSlack)
	for i := -1; i < searchDays; i++ {
		d := day.AddDate(0, 0, -i)
		if !s.dayMatches(d) {
			continue
		}
		var found time.Time
		s.eachFire(d, loc, true, hi, func(f time.Time) bool {
			if !f.After(t) {
				found = f
				return false
			}
			return true
		})
		if !found.IsZero() {
			return found
		}
	}
	return time.Time{}
}

// NextN returns up to n fire instants after from (for the UI's "next runs"
// list). n is capped at 1000.
func NextN(s Spec, from time.Time, n int, loc *time.Location) []time.Time {
	n = min(n, 1000)
	var out []time.Time
	for t := from; len(out) < n; {
		t = s.Next(t, loc)
		if t.IsZero() {
			break
		}
		out = append(out, t)
	}
	return out
}

func orUTC(loc *time.Location) *time.Location {
	if loc == nil {
		return time.UTC
	}
	return loc
}

// dayMatches applies month, day-of-month and day-of-week to a civil date
// (given as midnight UTC). Same rule as robfig/Vixie: if either day field is
// `*`, both must match (the `*` one always does); otherwise either may match.
func (s Spec) dayMatches(d time.Time) bool {
	if s.month&(1<<uint(d.Month())) == 0 {
		return false
	}
	const star = 1 << 63
	domOK := s.dom&(1<<uint(d.Day())) != 0
	dowOK := s.dw&(1<<uint(d.Weekday())) != 0
	if s.dom&star != 0 || s.dw&star != 0 {
		return domOK && dowOK
	}
	return domOK || dowOK
}

// wallSlack bounds how far a fire's instant can sit from its wall-clock
// reading (DST shifts and gaps are at most 2 hours in any zone), so candidate
// times further than that from the search start can be skipped unresolved.
const wallSlack = 3 * time.Hour

// wallOf returns t's wall-clock reading as a UTC time, for comparisons.
func wallOf(t time.Time) time.Time {
	y, mo, d := t.Date()
	return time.Date(y, mo, d, t.Hour(), t.Minute(), t.Second(), 0, time.UTC)
}

// eachFire calls fn with the fire instants of civil date d in ascending (or
// descending) order until fn returns false. Fire instants are monotonic in
// wall-clock order under the DST policy, so ordering by wall clock is
// ordering by instant; duplicates (collapsed gap times) are passed once.
// Candidates whose wall time is before bound (ascending) or after it
// (descending) are skipped without being resolved.
func (s Spec) eachFire(d time.Time, loc *time.Location, desc bool, bound time.Time, fn func(time.Time) bool) {
	// Most days lie well inside one zone period; then a wall time maps to an
	// instant by plain arithmetic and resolve's search is not needed.
	off, stable := stableOffset(d, loc)
	var last time.Time
	for hi := 0; hi < 24; hi++ {
		h := hi
		if desc {
			h = 23 - hi
		}
		if s.hour&(1<<uint(h)) == 0 {
			continue
		}
		// Skip hours wholly outside the bound without looking at minutes.
		hourStart := d.Add(time.Duration(h) * time.Hour)
		if !desc && !hourStart.Add(time.Hour).After(bound) || desc && hourStart.After(bound) {
			continue
		}
		for mi := 0; mi < 60; mi++ {
			m := mi
			if desc {
				m = 59 - mi
			}
			if s.minute&(1<<uint(m)) == 0 {
				continue
			}
			w := d.Add(time.Duration(h)*time.Hour + time.Duration(m)*time.Minute)
			if !desc && w.Before(bound) || desc && w.After(bound) {
				continue
			}
			var t time.Time
			if stable {
				t = time.Unix(w.Unix()-off, 0).In(loc)
			} else {
				t = resolve(d.Year(), d.Month(), d.Day(), h, m, loc)
			}
			if t.Equal(last) {
				continue
			}
			last = t
			if !fn(t) {
				return
			}
		}
	}
}

// stableOffset reports the UTC offset of civil date d (midnight UTC) in loc
// if no zone transition happens within a day either side of it.
func stableOffset(d time.Time, loc *time.Location) (int64, bool) {
	noon := time.Date(d.Year(), d.Month(), d.Day(), 12, 0, 0, 0, loc)
	_, off := noon.Zone()
	start, end := noon.ZoneBounds()
	first := d.Unix() - int64(off)
	if (start.IsZero() || start.Unix() <= first-86400) && (end.IsZero() || end.Unix() >= first+2*86400) {
		return int64(off), true
	}
	return 0, false
}

// resolve maps a wall-clock time in loc to one instant: the first occurrence
// if it occurs twice (fall-back), the end of the gap if it does not exist
// (spring-forward). time.Date leaves both cases unspecified, so we try every
// UTC offset in force around that time and check which ones round-trip.
func resolve(y int, mo time.Month, d, h, mi int, loc *time.Location) time.Time {
	wall := time.Date(y, mo, d, h, mi, 0, 0, time.UTC)
	u := wall.Unix()
	var offsets []int
	for _, delta := range []int64{-86400, -43200, 0, 43200, 86400} {
		_, off := time.Unix(u+delta, 0).In(loc).Zone()
		if !containsInt(offsets, off) {
			offsets = append(offsets, off)
		}
	}
	var best, after time.Time
	for _, off := range offsets {
		t := time.Unix(u-int64(off), 0).In(loc)
		if sameWall(t, wall) {
			if best.IsZero() || t.Before(best) {
				best = t
			}
			continue
		}
		if wallAfter(t, wall) && (after.IsZero() || t.Before(after)) {
			after = t
		}
	}
	if !best.IsZero() {
		return best
	}
	if !after.IsZero() {
		// In a gap: the instant read with the pre-gap offset lies after the
		// transition; the zone period containing it starts at the transition.
		if start, _ := after.ZoneBounds(); !start.IsZero() && start.Before(after) {
			return start.In(loc)
		}
		return after
	}
	return time.Date(y, mo, d, h, mi, 0, 0, loc) // unreachable for real zones
}

func containsInt(xs []int, x int) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

func sameWall(t, wall time.Time) bool {
	y, mo, d := t.Date()
	return y == wall.Year() && mo == wall.Month() && d == wall.Day() && t.Hour() == wall.Hour() && t.Minute() == wall.Minute() && t.Second() == 0
}

func wallAfter(t, wall time.Time) bool { return wallOf(t).After(wall) }
