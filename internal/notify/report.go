package notify

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/pumi-lab/pumi/internal/schedule"
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
	Notes    []string       // e.g. "cancelled by admin"
	Loc      *time.Location // zone to print times in; nil = UTC
	// Missed are schedule fires missed since the last report mail.
	Missed []schedule.MissedRecord
	// Lang is the mail's language: "en" (default) or "es".
	Lang string
}

// es is the Spanish of the report's fixed texts; English is the key.
var es = map[string]string{
	"Run": "Ejecución", "Schedule": "Tarea", "Action": "Acción", "Started": "Inicio", "Finished": "Fin",
	"took %s": "duró %s", "Seats": "Equipos", "Data": "Datos", "%s in total, %s over the whole run": "%s en total, %s en toda la ejecución",
	"Note": "Nota", "Missed": "Omitida", "SEAT": "EQUIPO", "ROOM": "AULA", "OUTCOME": "RESULTADO", "TRIES": "INTENTOS",
	"STARTED": "INICIO", "DURATION": "DURACIÓN", "DATA": "DATOS", "RATE": "VELOCIDAD", "VIA": "VÍA", "REASON": "MOTIVO",
	"verified": "verificado", "failed": "fallido", "skipped": "omitido", "done": "hecho", "unknown": "desconocido",
	"cancelled": "cancelado", "%d/%d verified": "%d/%d verificados", "run": "ejecución",
	"restore": "restaurar", "capture": "capturar", "verify": "verificar", "wake": "encender", "shutdown": "apagar",
	"schedule %q: %d time(s) missed, last %s (%s)":  "tarea programada %q: %d vez/veces omitida, la última %s (%s)",
	"schedule %q: %d time(s) missed (%s)":           "tarea programada %q: %d vez/veces omitida (%s)",
	string(schedule.MissDown):                       "el equipo pumi no estaba en marcha a la hora indicada",
	string(schedule.MissSuperseded):                 "sustituida por la única ejecución de recuperación",
	string(schedule.MissClock):                      "el reloj retrocedió; la tarea se reinició desde ahora",
	string(schedule.MissStartFailed):                "la ejecución no pudo iniciarse",
	"This is a test mail from your pumi appliance.": "Este es un correo de prueba de su equipo pumi.",
}

// esReasons are the fixed phrases of seat reasons (runs engine, power
// hints); a Spanish report replaces them and keeps the details.
var esReasons = [][2]string{
	{"cancelled by admin", "cancelado por el administrador"},
	{"window closed", "se cerró el margen de tiempo"},
	{"Clonezilla did not start within", "Clonezilla no arrancó en"},
	{"restore did not finish within", "la restauración no terminó en"},
	{"not restorable:", "no restaurable:"},
	{"reboot:", "reinicio:"},
	{"shutdown:", "apagado:"},
	{"is the seat powered on, booted into its OS and running sshd?", "¿está el equipo encendido, con su sistema arrancado y sshd en marcha?"},
	{"check the room's or image's SSH credentials, and that pumi's public key is in the image's authorized_keys",
		"revise las credenciales SSH del aula o de la imagen, y que la clave pública de pumi esté en el authorized_keys de la imagen"},
}

func (r Report) reason(s string) string {
	if r.Lang != "es" {
		return s
	}
	for _, p := range esReasons {
		s = strings.ReplaceAll(s, p[0], p[1])
	}
	return s
}

// kindText is the English of a missed-fire kind.
var kindText = map[schedule.MissKind]string{
	schedule.MissDown:        "the appliance was not running when due",
	schedule.MissSuperseded:  "superseded by the one catch-up run",
	schedule.MissClock:       "the clock went back; the schedule restarted from now",
	schedule.MissStartFailed: "the run could not be started",
}

// t translates a fixed text into the report's language.
func (r Report) t(key string, args ...any) string {
	if r.Lang == "es" {
		if v, ok := es[key]; ok {
			key = v
		}
	}
	if len(args) > 0 {
		return fmt.Sprintf(key, args...)
	}
	return key
}

// missedLines are the report's lines about missed schedule fires.
func (r Report) missedLines() []string {
	var out []string
	for _, m := range r.Missed {
		why := kindText[m.Kind]
		if r.Lang == "es" {
			why = r.t(string(m.Kind))
		}
		if why == "" || why == string(m.Kind) {
			why = clean(m.Reason, "-")
		}
		if m.Last.IsZero() {
			out = append(out, r.t("schedule %q: %d time(s) missed (%s)", clean(m.Name, m.ScheduleID), m.Count, why))
			continue
		}
		out = append(out, r.t("schedule %q: %d time(s) missed, last %s (%s)", clean(m.Name, m.ScheduleID), m.Count,
			m.Last.In(r.loc()).Format("2006-01-02 15:04 MST"), why))
	}
	return out
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
		out = append(out, fmt.Sprintf("%d %s", n[k], r.t(k)))
	}
	return out
}

// Subject is one line: what ran and how it ended.
func (r Report) Subject() string {
	what := strings.TrimSpace(r.t(clean(r.Action, "run")) + " " + clean(r.Image, ""))
	if r.Schedule != "" {
		what += " (" + clean(r.Schedule, "") + ")"
	}
	verified := 0
	for _, s := range r.Seats {
		if s.Outcome == OutcomeVerified {
			verified++
		}
	}
	status := r.t("%d/%d verified", verified, len(r.Seats))
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
	line := func(label, value string) { fmt.Fprintf(&b, "%-10s %s\n", r.t(label), value) }
	line("Run", clean(r.RunID, "-"))
	if r.Schedule != "" {
		line("Schedule", clean(r.Schedule, ""))
	}
	line("Action", strings.TrimSpace(r.t(clean(r.Action, "-"))+" "+clean(r.Image, "")))
	line("Started", ts(r.Started))
	line("Finished", ts(r.Finished)+" ("+r.t("took %s", dur(r.Started, r.Finished))+")")
	line("Seats", fmt.Sprintf("%d: %s", len(r.Seats), strings.Join(r.counts(), ", ")))
	var total int64
	for _, s := range r.Seats {
		total += max(s.Bytes, 0)
	}
	line("Data", r.t("%s in total, %s over the whole run", bytesIEC(total), rate(total, r.Started, r.Finished)))
	for _, n := range r.Notes {
		line("Note", clean(n, ""))
	}
	for _, m := range r.missedLines() {
		line("Missed", m)
	}

	seats := slices.Clone(r.Seats)
	slices.SortStableFunc(seats, func(a, b SeatReport) int {
		return cmp.Or(cmp.Compare(outcomeRank(a.Outcome), outcomeRank(b.Outcome)),
			cmp.Compare(a.Room, b.Room), cmp.Compare(a.Seat, b.Seat))
	})
	if len(seats) > 0 {
		b.WriteString("\n")
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		var head []string
		for _, h := range []string{"SEAT", "ROOM", "MAC", "OUTCOME", "TRIES", "STARTED", "DURATION", "DATA", "RATE", "VIA", "REASON"} {
			head = append(head, r.t(h))
		}
		fmt.Fprintln(tw, strings.Join(head, "\t"))
		for _, s := range seats {
			started := "-"
			if !s.Started.IsZero() {
				started = s.Started.In(loc).Format("15:04:05")
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n",
				clean(s.Seat, "-"), clean(s.Room, "-"), clean(s.MAC, "-"), r.t(clean(s.Outcome, "unknown")), s.Attempts,
				started, dur(s.Started, s.Finished), bytesIEC(max(s.Bytes, 0)), rate(s.Bytes, s.Started, s.Finished),
				clean(s.Via, "-"), clean(r.reason(s.Reason), "-"))
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
