package schedule

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/pumi-lab/pumi/internal/history"
	"github.com/pumi-lab/pumi/internal/store"
)

// MissedRecord is what the admin is told about a schedule's missed fires:
// one record per schedule, added to while fires keep being missed, shown on
// the overview and schedules pages and put into the next report mail.
type MissedRecord struct {
	ScheduleID string      `json:"schedule_id"`
	Name       string      `json:"name"`
	Count      int         `json:"count"`           // missed fires since the record was opened
	Fires      []time.Time `json:"fires,omitempty"` // the most recent ones, oldest first (at most MaxListedMissed)
	Last       time.Time   `json:"last,omitzero"`   // the most recent missed fire (zero for a clock change)
	Kind       MissKind    `json:"kind"`
	Reason     string      `json:"reason"` // English detail
	Recorded   time.Time   `json:"recorded"`
	// Mailed is set once a report mail carried the record; a later miss
	// opens a new count.
	Mailed bool `json:"mailed,omitempty"`
}

var missedBucket = store.NewBucket[MissedRecord]("schedule-missed")

// RecordMissed adds m to its schedule's record (the Scheduler's missed
// callback), with an event line in the history.
func (b Book) RecordMissed(ctx context.Context, m Missed, now time.Time) error {
	return b.St.Update(ctx, func(tx *store.Tx) error {
		rec, ok, err := missedBucket.Get(tx, m.ScheduleID)
		if err != nil {
			return err
		}
		if !ok || rec.Mailed {
			rec = MissedRecord{ScheduleID: m.ScheduleID}
		}
		rec.Name, rec.Kind, rec.Reason, rec.Recorded = m.Name, m.Kind, m.Reason, now.UTC()
		rec.Count = min(rec.Count+max(m.Count, 1), MaxCountedMissed)
		rec.Fires = append(rec.Fires, m.Fires...)
		if n := len(rec.Fires); n > MaxListedMissed {
			rec.Fires = slices.Clone(rec.Fires[n-MaxListedMissed:])
		}
		if n := len(rec.Fires); n > 0 {
			rec.Last = rec.Fires[n-1]
		}
		if err := missedBucket.Put(tx, m.ScheduleID, rec); err != nil {
			return err
		}
		return history.Add(tx, history.Event{Kind: "schedule-missed",
			Message: fmt.Sprintf("schedule %q missed %d fire(s) (%s): %s", m.Name, max(m.Count, 1), m.Kind, m.Reason)})
	})
}

// Missed lists the records recorded since `since`, newest first.
func (b Book) Missed(ctx context.Context, since time.Time) ([]MissedRecord, error) {
	var out []MissedRecord
	err := b.St.View(ctx, func(tx *store.Tx) error {
		return missedBucket.ForEach(tx, func(_ string, r MissedRecord) error {
			if !r.Recorded.Before(since) {
				out = append(out, r)
			}
			return nil
		})
	})
	slices.SortFunc(out, func(a, b MissedRecord) int { return b.Recorded.Compare(a.Recorded) })
	return out, err
}

// Unmailed lists the records no mail has carried yet, oldest first.
func (b Book) Unmailed(ctx context.Context) ([]MissedRecord, error) {
	var out []MissedRecord
	err := b.St.View(ctx, func(tx *store.Tx) error {
		return missedBucket.ForEach(tx, func(_ string, r MissedRecord) error {
			if !r.Mailed {
				out = append(out, r)
			}
			return nil
		})
	})
	slices.SortFunc(out, func(a, b MissedRecord) int { return a.Recorded.Compare(b.Recorded) })
	return out, err
}

// MarkMailed notes that a queued mail carries these records; a record
// changed since (a newer miss) stays unmailed.
func (b Book) MarkMailed(ctx context.Context, recs []MissedRecord) error {
	return b.St.Update(ctx, func(tx *store.Tx) error {
		for _, r := range recs {
			cur, ok, err := missedBucket.Get(tx, r.ScheduleID)
			if err != nil {
				return err
			}
			if !ok || !cur.Recorded.Equal(r.Recorded) {
				continue
			}
			cur.Mailed = true
			if err := missedBucket.Put(tx, r.ScheduleID, cur); err != nil {
				return err
			}
		}
		return nil
	})
}
