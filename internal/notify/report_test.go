package notify

import (
	"strings"
	"testing"
	"time"
)

func TestReportText(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	r := sampleReport()
	r.Loc = berlin
	r.Notes = []string{"missed fire 2026-11-21 02:00 (appliance off)"}
	r.Seats = append(r.Seats,
		SeatReport{Seat: "A-09", Room: "A", Outcome: OutcomeFailed, Reason: "window closed\r\nBcc: x", Attempts: 2},
		SeatReport{Seat: "B-03", Room: "B", Outcome: OutcomeSkipped, Reason: "already verified"},
	)
	text := r.Text()
	for _, want := range []string{
		"Run        42",
		"Schedule   room B Saturday",
		"Action     restore LAB-2026-img",
		"Started    2026-11-28 03:00:00 CET",
		"(took 1h12m0s)",
		"Seats      4: 2 failed, 1 skipped, 1 verified",
		"Data       80.0 GiB in total, 19.0 MiB/s over the whole run",
		"Note       missed fire",
		"host key changed",
		"window closed  Bcc: x", // line break neutralised
		"34.1 MiB/s",            // B-01: 40 GiB in 20 min
	} {
		if !strings.Contains(text, want) {
			t.Errorf("report lacks %q:\n%s", want, text)
		}
	}
	lines := strings.Split(strings.TrimSpace(text), "\n")
	var rows []string
	for i, l := range lines {
		if strings.HasPrefix(l, "SEAT") {
			rows = lines[i+1:]
		}
	}
	// Failed seats first (by room, seat), then skipped, then verified.
	order := []string{"A-09", "B-02", "B-03", "B-01"}
	if len(rows) != len(order) {
		t.Fatalf("rows %q", rows)
	}
	for i, seat := range order {
		if !strings.HasPrefix(rows[i], seat+" ") {
			t.Errorf("row %d = %q, want seat %s", i, rows[i], seat)
		}
	}
	if s := r.Subject(); s != "pumi: restore LAB-2026-img (room B Saturday): 1/4 verified (2 failed, 1 skipped, 1 verified)" {
		t.Errorf("Subject = %q", s)
	}
}

func TestReportEdgeCases(t *testing.T) {
	// No seats, zero times, negative bytes, a finish before the start: no
	// division by zero, no panic, dashes instead of numbers.
	r := Report{RunID: "x/y z", Seats: []SeatReport{{Seat: "s", Outcome: OutcomeVerified, Bytes: -5,
		Started: time.Unix(100, 0), Finished: time.Unix(50, 0)}}}
	text := r.Text()
	if !strings.Contains(text, "Seats      1: 1 verified") || !strings.Contains(text, "0 B in total, - over") {
		t.Errorf("text:\n%s", text)
	}
	if s := r.Subject(); s != "pumi: run: 1/1 verified" {
		t.Errorf("Subject = %q", s)
	}
	m := r.Message(nil)
	if m.ID != "run-x_y_z-report" || m.Attachments != nil {
		t.Errorf("message %+v", m)
	}
	if err := m.validate(); err != nil {
		t.Fatal(err)
	}
	if empty := (Report{}).Text(); !strings.Contains(empty, "Seats      0:") {
		t.Errorf("empty report:\n%s", empty)
	}
}

func TestBytesIEC(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 5 << 30: "5.0 GiB", 1 << 62: "4.0 EiB"} {
		if got := bytesIEC(n); got != want {
			t.Errorf("bytesIEC(%d) = %q, want %q", n, got, want)
		}
	}
}
