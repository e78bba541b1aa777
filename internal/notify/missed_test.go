package notify

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/schedule"
	"github.com/pumi-lab/pumi/internal/store"
)

// TestMissedFiresInTheNextMail: fires a schedule missed go into the next
// run report (in the mail's language and the zone read at that moment),
// once: the mail after that one does not repeat them.
func TestMissedFiresInTheNextMail(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	book := schedule.Book{St: st}
	sat := time.Date(2026, 11, 28, 2, 0, 0, 0, time.UTC)
	if err := book.RecordMissed(ctx, schedule.Missed{ScheduleID: "b2", Name: "Room B2", Count: 1, Kind: schedule.MissDown,
		Fires: []time.Time{sat}, Reason: "the appliance was not running when due"}, sat.Add(5*time.Hour)); err != nil {
		t.Fatal(err)
	}
	ob, err := OpenOutbox(dir+"/outbox", SenderFunc(func(context.Context, Message) error { return nil }), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	madrid, _ := time.LoadLocation("Europe/Madrid")
	lang := "es"
	rep := RunReporter{Outbox: ob, Log: slog.New(slog.DiscardHandler), Missed: book,
		MailOn: func(context.Context) (bool, error) { return true, nil },
		Locale: func(context.Context) (string, *time.Location, error) { return lang, madrid, nil }}
	run := Report{RunID: "r1", Action: "restore", Image: "LAB-A-img", Started: sat.Add(24 * time.Hour), Finished: sat.Add(25 * time.Hour),
		Seats: []SeatReport{{Seat: "pc-1", Outcome: OutcomeVerified}, {Seat: "pc-2", Outcome: OutcomeFailed, Reason: "window closed"}}}
	if err := rep.RunFinished(ctx, run, nil); err != nil {
		t.Fatal(err)
	}
	run.RunID, lang = "r2", "en"
	if err := rep.RunFinished(ctx, run, nil); err != nil {
		t.Fatal(err)
	}
	pending, err := ob.Pending()
	if err != nil || len(pending) != 2 {
		t.Fatalf("pending %d, %v", len(pending), err)
	}
	first, second := pending[0].Message, pending[1].Message
	if first.ID != "run-r1-report" {
		first, second = second, first
	}
	for _, want := range []string{"Omitida", `tarea programada "Room B2": 1 vez/veces omitida, la última 2026-11-28 03:00 CET`,
		"el equipo pumi no estaba en marcha", "Ejecución", "EQUIPO", "verificado", "1/2 verificados", "se cerró el margen de tiempo"} {
		if !strings.Contains(first.Text+first.Subject, want) {
			t.Errorf("first mail lacks %q:\n%s\n%s", want, first.Subject, first.Text)
		}
	}
	if strings.Contains(second.Text, "Room B2") || !strings.Contains(second.Text, "SEAT") {
		t.Errorf("second mail (English) repeats the missed fires or is not English:\n%s", second.Text)
	}
	if left, _ := book.Unmailed(ctx); len(left) != 0 {
		t.Fatalf("still unmailed: %+v", left)
	}
	// A new miss opens a new count.
	if err := book.RecordMissed(ctx, schedule.Missed{ScheduleID: "b2", Name: "Room B2", Count: 3, Kind: schedule.MissSuperseded,
		Fires: []time.Time{sat.Add(7 * 24 * time.Hour)}}, sat.Add(8*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if left, _ := book.Unmailed(ctx); len(left) != 1 || left[0].Count != 3 {
		t.Fatalf("after a new miss: %+v", left)
	}
}
