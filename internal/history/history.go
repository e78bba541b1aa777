// Package history owns the appliance's event log: one line per thing that
// happened to a seat, a job, the config or a schedule, written in the same
// transaction as the change it describes, and pruned so that nothing an
// outsider can trigger grows the state file without bound.
package history

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/pumi-lab/pumi/internal/store"
)

var bucket = store.NewBucket[Event]("events")

// Limits of the log: events older than MaxAge or beyond the newest MaxCount
// are dropped by Prune. A year of nightly runs on a 60-seat lab writes well
// under MaxCount events.
const (
	MaxCount = 20000
	MaxAge   = 180 * 24 * time.Hour
)

// Event is one line of the appliance's history: what happened to which seat.
type Event struct {
	Time    time.Time `json:"time"`
	MAC     string    `json:"mac,omitempty"`
	RunID   string    `json:"run_id,omitempty"`
	Kind    string    `json:"kind"`
	Message string    `json:"message"`
}

// Add appends e inside tx, so it commits with the change it describes.
func Add(tx *store.Tx, e Event) error {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	_, err := bucket.Append(tx, e)
	return err
}

// List returns the newest n events, oldest first.
func List(ctx context.Context, st *store.Store, n int) ([]Event, error) {
	var out []Event
	err := st.View(ctx, func(tx *store.Tx) error {
		var err error
		out, err = bucket.List(tx)
		return err
	})
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return out, err
}

// Prune drops events older than maxAge and all but the newest maxCount, in
// one transaction; it returns how many it dropped.
func Prune(ctx context.Context, st *store.Store, now time.Time, maxAge time.Duration, maxCount int) (int, error) {
	dropped := 0
	err := st.Update(ctx, func(tx *store.Tx) error {
		dropped = 0
		total, err := bucket.Count(tx)
		if err != nil {
			return err
		}
		var doomed []string
		// Keys are sequence numbers: oldest first.
		err = bucket.ForEach(tx, func(k string, e Event) error {
			if total-len(doomed) > maxCount || now.Sub(e.Time) > maxAge {
				doomed = append(doomed, k)
				return nil
			}
			return errStop
		})
		if err != nil && !errors.Is(err, errStop) {
			return err
		}
		for _, k := range doomed {
			if err := bucket.Delete(tx, k); err != nil {
				return err
			}
		}
		dropped = len(doomed)
		return nil
	})
	return dropped, err
}

// errStop ends a ForEach early: the rest of the log is young enough.
var errStop = errors.New("stop")

// PruneEvery prunes the log to MaxAge and MaxCount now and every interval
// until ctx ends.
func PruneEvery(ctx context.Context, st *store.Store, interval time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if n, err := Prune(ctx, st, time.Now(), MaxAge, MaxCount); err != nil && ctx.Err() == nil {
			log.Error("pruning the event log", "err", err)
		} else if n > 0 {
			log.Info("event log pruned", "dropped", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
