package notify

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
)

// Seat outcomes as the runs engine reports them; other words are printed
// as given and sorted between failed and verified.
const (
	OutcomeVerified = "verified"
	OutcomeFailed   = "failed"
	OutcomeSkipped  = "skipped"
)

// SeatReport is one seat's result in a run, filled by the runs engine.
type SeatReport struct {
	Seat     string
	Room     string
	MAC      string
	Outcome  string // verified | failed | skipped | ...
	Reason   string // why it failed or was skipped ("window closed", "host key changed", ...)
	Attempts int
	Started  time.Time // zero if the seat never started
	Finished time.Time
	Bytes    int64  // image bytes restored or captured
	Via      string // how the image reached the seat: multicast, unicast (why), or "" (not a restore)
}

// Report is the input of the run report mail, filled by the runs engine.
type Report struct {
	RunID    string
	Schedule string // schedule name; empty for a manual run
	Action   string // restore, capture, verify, wake, shutdown
	Image    string
	Started  time.Time
	Finished time.Time
	Seats    []SeatReport
	Notes    []string       // e.g. missed schedule fires, "cancelled by admin"
	Loc      *time.Location // zone to print times in; nil = UTC
}

func (r Report) loc() *time.Location {
	if r.Loc == nil {
		return time.UTC
	}
	return r.Loc
}

func outcomeRank(o string) int {
	switch o {
	case OutcomeFailed:
		return 0
	case OutcomeVerified:
		return 3
	case OutcomeSkipped:
		return 2
	}
	return 1
}

// counts returns "28 verified, 2 failed" style parts, problems first.
func (r Report) counts() []string {
	n := map[string]int{}
	for _, s := range r.Seats {
		n[clean(s.Outcome, "unknown")]++
	}
	keys := make([]string, 0, len(n))
	for k := range n {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		return cmp.Or(cmp.Compare(outcomeRank(a), outcomeRank(b)), cmp.Compare(a, b))
	})
	var out []string
	for _, k := range keys {
		out = append(out, fmt.Sprintf("%d %s", n[k], k))
	}
	return out
}

// Subject is one line: what ran and how it ended.
func (r Report) Subject() string {
	what := strings.TrimSpace(clean(r.Action, "run") + " " + clean(r.Image, ""))
	if r.Schedule != "" {
		what += " (" + clean(r.Schedule, "") + ")"
	}
	verified := 0
	for _, s := range r.Seats {
		if s.Outcome == OutcomeVerified {
			verified++
		}
	}
	status := fmt.Sprintf("%d/%d verified", verified, len(r.Seats))
	if c := r.counts(); len(c) > 0 && verified != len(r.Seats) {
		status += " (" + strings.Join(c, ", ") + ")"
	}
	return "pumi: " + what + ": " + status
}

// Text renders the report as plain text: summary, then every seat with its
// outcome, reason, duration, bytes and throughput, problems first.
func (r Report) Text() string {
	var b strings.Builder
	loc := r.loc()
	ts := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.In(loc).Format("2006-01-02 15:04:05 MST")
	}
	fmt.Fprintf(&b, "Run        %s\n", clean(r.RunID, "-"))
	if r.Schedule != "" {
		fmt.Fprintf(&b, "Schedule   %s\n", clean(r.Schedule, ""))
	}
	fmt.Fprintf(&b, "Action     %s\n", strings.TrimSpace(clean(r.Action, "-")+" "+clean(r.Image, "")))
	fmt.Fprintf(&b, "Started    %s\n", ts(r.Started))
	fmt.Fprintf(&b, "Finished   %s (took %s)\n", ts(r.Finished), dur(r.Started, r.Finished))
	fmt.Fprintf(&b, "Seats      %d: %s\n", len(r.Seats), strings.Join(r.counts(), ", "))
	var total int64
	for _, s := range r.Seats {
		total += max(s.Bytes, 0)
	}
	fmt.Fprintf(&b, "Data       %s in total, %s over the whole run\n", bytesIEC(total), rate(total, r.Started, r.Finished))
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "Note       %s\n", clean(n, ""))
	}

	seats := slices.Clone(r.Seats)
	slices.SortStableFunc(seats, func(a, b SeatReport) int {
		return cmp.Or(cmp.Compare(outcomeRank(a.Outcome), outcomeRank(b.Outcome)),
			cmp.Compare(a.Room, b.Room), cmp.Compare(a.Seat, b.Seat))
	})
	if len(seats) > 0 {
		b.WriteString("\n")
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SEAT\tROOM\tMAC\tOUTCOME\tTRIES\tSTARTED\tDURATION\tDATA\tRATE\tVIA\tREASON")
		for _, s := range seats {
			started := "-"
			if !s.Started.IsZero() {
				started = s.Started.In(loc).Format("15:04:05")
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n",
				clean(s.Seat, "-"), clean(s.Room, "-"), clean(s.MAC, "-"), clean(s.Outcome, "unknown"), s.Attempts,
				started, dur(s.Started, s.Finished), bytesIEC(max(s.Bytes, 0)), rate(s.Bytes, s.Started, s.Finished),
				clean(s.Via, "-"), clean(s.Reason, "-"))
		}
		tw.Flush()
	}
	return b.String()
}

// Message wraps the report as a mail with the run log attached. Its ID
// ("run-<RunID>-report") makes the Outbox drop a second copy of the same
// run's report.
func (r Report) Message(runLog []byte) Message {
	m := Message{ID: "run-" + safeID(r.RunID) + "-report", Subject: r.Subject(), Text: r.Text()}
	if runLog != nil {
		m.Attachments = []Attachment{{Name: "run-" + safeID(r.RunID) + ".log", Data: runLog}}
	}
	return m
}

func safeID(s string) string {
	out := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, s)
	if out == "" {
		out = "unknown"
	}
	if len(out) > 80 {
		out = out[:80]
	}
	return out
}

// clean makes a field safe for one line of a table: no control characters
// (they would break the layout or smuggle line breaks), bounded length.
func clean(s, empty string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if s == "" {
		return empty
	}
	if r := []rune(s); len(r) > 200 {
		s = string(r[:200]) + "…"
	}
	return s
}

func dur(from, to time.Time) string {
	if from.IsZero() || to.IsZero() || to.Before(from) {
		return "-"
	}
	return to.Sub(from).Round(time.Second).String()
}

func rate(n int64, from, to time.Time) string {
	if n <= 0 || from.IsZero() || to.IsZero() || !to.After(from) {
		return "-"
	}
	perSec := float64(n) / to.Sub(from).Seconds()
	return bytesIEC(int64(perSec)) + "/s"
}

func bytesIEC(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
