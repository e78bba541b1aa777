package notify

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pumi-lab/pumi/internal/atomicfile"

	"github.com/pumi-lab/pumi/internal/schedule"
)

// Sender delivers one message; Mailer implements it. The appliance can pass
// a SenderFunc that reads the current mail settings on every attempt, so a
// corrected password is used by the next retry.
type Sender interface {
	Send(ctx context.Context, m Message) error
}

// SenderFunc adapts a function to Sender.
type SenderFunc func(ctx context.Context, m Message) error

func (f SenderFunc) Send(ctx context.Context, m Message) error { return f(ctx, m) }

// Outbox is a durable mail queue in a directory, one file per message:
//
//	queue/<id>.json  a message not yet accepted by the server (with attempts,
//	                 next attempt time and last error), written with
//	                 internal/atomicfile before the first attempt
//	sent/<id>        written (durably) once the server accepted the message,
//	                 before queue/<id>.json is deleted; kept for SentRetention
//	bad/             queue files that could not be read, moved aside
//
// A message is deleted only after the server accepted it, and a message whose
// sent/<id> exists is never sent again: not after a crash between the two
// steps, and not when the same ID is enqueued again (the runs engine enqueues
// a run's report with the ID "run-<id>" and may do so twice after a power
// cut). SMTP itself has one unavoidable window: a crash after the server's
// 250 and before sent/<id> reaches the disk resends the mail once; it then
// carries the same Message-ID, which mail clients use to drop duplicates.
//
// Files were chosen over the bbolt store so mail keeps working (and can
// report a broken store) even when the state file is damaged.
type Outbox struct {
	dir    string
	sender Sender
	log    *slog.Logger

	// MinBackoff and MaxBackoff bound the retry delay, which doubles per
	// failed attempt: 30 s, 1 min, 2 min ... 1 h by default.
	MinBackoff, MaxBackoff time.Duration
	// SentRetention is how long sent/<id> markers are kept (dedup window).
	SentRetention time.Duration

	mu   sync.Mutex // serialises Flush: two concurrent attempts could send twice
	wake chan struct{}
	// unmarked holds IDs the server accepted whose sent marker could not be
	// written (disk full): they are never sent again by this process, and
	// the marker is retried on every flush.
	unmarked map[string]bool
}

// Entry is a queued message with its delivery state (for the UI).
type Entry struct {
	Message     Message   `json:"message"`
	Created     time.Time `json:"created"`
	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
}

// OpenOutbox opens (creating if needed) the outbox under dir.
func OpenOutbox(dir string, sender Sender, log *slog.Logger) (*Outbox, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	o := &Outbox{dir: dir, sender: sender, log: log, MinBackoff: 30 * time.Second, MaxBackoff: time.Hour,
		SentRetention: 30 * 24 * time.Hour, wake: make(chan struct{}, 1), unmarked: map[string]bool{}}
	for _, d := range []string{"queue", "sent", "bad"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("mail outbox %s: %w (is the state directory writable?)", dir, err)
		}
	}
	// Leftovers of an atomic write cut by a crash: the real file is intact.
	tmps, _ := filepath.Glob(filepath.Join(dir, "*", ".*.tmp*"))
	for _, t := range tmps {
		os.Remove(t)
	}
	return o, nil
}

// checkID keeps IDs safe as file names and Message-ID local parts.
func checkID(id string) error {
	if id == "" || len(id) > 100 || id[0] == '.' {
		return fmt.Errorf("message id %q: must be 1-100 characters, not starting with '.'", id)
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("message id %q may contain only letters, digits, '-', '_' and '.'", id)
		}
	}
	return nil
}

func (o *Outbox) queuePath(id string) string { return filepath.Join(o.dir, "queue", id+".json") }
func (o *Outbox) sentPath(id string) string  { return filepath.Join(o.dir, "sent", id) }

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Enqueue stores m durably and returns its ID; delivery happens in Flush or
// Run. An empty m.ID gets a fresh one. Enqueueing an ID that is already
// queued or was already sent does nothing and returns that ID.
func (o *Outbox) Enqueue(ctx context.Context, m Message) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if m.ID == "" {
		var b [8]byte
		rand.Read(b[:])
		m.ID = time.Now().UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b[:])
	}
	if err := m.validate(); err != nil {
		return "", err
	}
	if exists(o.sentPath(m.ID)) || exists(o.queuePath(m.ID)) {
		o.log.Info("mail already queued or sent; not queued again", "id", m.ID)
		return m.ID, nil
	}
	now := time.Now()
	if m.Date.IsZero() {
		m.Date = now
	}
	if err := o.write(Entry{Message: m, Created: now}); err != nil {
		return "", err
	}
	o.log.Info("mail queued", "id", m.ID, "subject", m.Subject)
	select {
	case o.wake <- struct{}{}:
	default:
	}
	return m.ID, nil
}

func (o *Outbox) write(e Entry) error {
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode mail %s: %w", e.Message.ID, err)
	}
	if err := atomicfile.Write(o.queuePath(e.Message.ID), b, 0o600); err != nil {
		return fmt.Errorf("queue mail %s: %w (is the state directory full or read-only?)", e.Message.ID, err)
	}
	return nil
}

// decodeEntry parses a queue file and checks that it names itself.
func decodeEntry(b []byte, id string) (Entry, error) {
	var e Entry
	if err := json.Unmarshal(b, &e); err != nil {
		return Entry{}, fmt.Errorf("queued mail %s is not readable: %w", id, err)
	}
	if e.Message.ID != id {
		return Entry{}, fmt.Errorf("queued mail %s names itself %q", id, e.Message.ID)
	}
	if err := e.Message.validate(); err != nil {
		return Entry{}, fmt.Errorf("queued mail %s: %w", id, err)
	}
	return e, nil
}

// Pending lists the queued messages, oldest first.
func (o *Outbox) Pending() ([]Entry, error) {
	names, err := filepath.Glob(filepath.Join(o.dir, "queue", "*.json"))
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, n := range names {
		id := strings.TrimSuffix(filepath.Base(n), ".json")
		if strings.HasPrefix(id, ".") {
			continue
		}
		b, err := os.ReadFile(n)
		if errors.Is(err, fs.ErrNotExist) {
			continue // sent meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("read queued mail %s: %w", id, err)
		}
		e, err := decodeEntry(b, id)
		if err != nil {
			o.log.Error("moving unreadable queued mail aside", "file", n, "err", err)
			os.Rename(n, filepath.Join(o.dir, "bad", filepath.Base(n)))
			continue
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b Entry) int { return a.Created.Compare(b.Created) })
	return out, nil
}

func (o *Outbox) backoff(attempts int) time.Duration {
	d := o.MinBackoff
	for i := 1; i < attempts && d < o.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, o.MaxBackoff)
}

// Flush tries every queued message once, now, ignoring backoff (the UI's
// "send now"). It returns how many were accepted and the errors of the rest.
func (o *Outbox) Flush(ctx context.Context) (int, error) { return o.flush(ctx, true) }

func (o *Outbox) flush(ctx context.Context, force bool) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	entries, err := o.Pending()
	if err != nil {
		return 0, err
	}
	sent := 0
	var errs []error
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return sent, err
		}
		id := e.Message.ID
		if exists(o.sentPath(id)) {
			// Accepted before a crash cut the cleanup: finish it, never resend.
			o.log.Info("mail was already accepted; removing it from the queue", "id", id)
			if err := o.remove(id); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if o.unmarked[id] {
			if err := o.markSent(id); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if !force && time.Now().Before(e.NextAttempt) {
			continue
		}
		err := o.sender.Send(ctx, e.Message)
		if err == nil {
			sent++
			o.log.Info("mail sent", "id", id, "subject", e.Message.Subject, "attempts", e.Attempts+1)
			o.unmarked[id] = true
			if err := o.markSent(id); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		e.Attempts++
		e.LastError = err.Error()
		e.NextAttempt = time.Now().Add(o.backoff(e.Attempts))
		o.log.Warn("mail not sent; will retry", "id", id, "attempt", e.Attempts, "next", e.NextAttempt, "err", err)
		errs = append(errs, fmt.Errorf("mail %s: %w", id, err))
		if werr := o.write(e); werr != nil {
			errs = append(errs, werr)
		}
	}
	o.pruneSent()
	return sent, errors.Join(errs...)
}

// markSent records that the server accepted id, then drops it from the queue.
func (o *Outbox) markSent(id string) error {
	if err := atomicfile.Write(o.sentPath(id), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o600); err != nil {
		return fmt.Errorf("mail %s was sent but could not be marked sent (it will not be sent again while pumi runs; free space in the state directory): %w", id, err)
	}
	delete(o.unmarked, id)
	return o.remove(id)
}

func (o *Outbox) remove(id string) error {
	if err := os.Remove(o.queuePath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove sent mail %s from the queue: %w", id, err)
	}
	return atomicfile.SyncDir(filepath.Join(o.dir, "queue"))
}

func (o *Outbox) pruneSent() {
	ents, err := os.ReadDir(filepath.Join(o.dir, "sent"))
	if err != nil {
		return
	}
	cutoff := time.Now().Add(-o.SentRetention)
	for _, de := range ents {
		if info, err := de.Info(); err == nil && info.ModTime().Before(cutoff) {
			os.Remove(filepath.Join(o.dir, "sent", de.Name()))
		}
	}
}

// Run delivers queued mail until ctx ends: at start (mail queued before a
// restart), whenever Enqueue adds one, and when the earliest retry is due.
func (o *Outbox) Run(ctx context.Context) error {
	for {
		if _, err := o.flush(ctx, false); err != nil && ctx.Err() == nil {
			o.log.Warn("mail outbox", "err", err)
		}
		wait := o.MaxBackoff
		if entries, err := o.Pending(); err == nil {
			o.mu.Lock()
			for _, e := range entries {
				if o.unmarked[e.Message.ID] {
					wait = min(wait, o.MinBackoff) // only the marker is retried
					continue
				}
				wait = min(wait, time.Until(e.NextAttempt))
			}
			o.mu.Unlock()
		}
		wait = max(wait, 10*time.Millisecond)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-o.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// RunReporter hands finished runs' reports to an Outbox (the runs engine's
// Reporter): Message ID "run-<ID>-report" makes a repeated call a no-op.
// Without mail settings a report is only logged.
type RunReporter struct {
	Outbox *Outbox
	MailOn func(ctx context.Context) (bool, error) // mail settings complete?
	Log    *slog.Logger
	// Locale is the report mails' language ("en" or "es") and time zone,
	// read when each report is queued so a changed setting applies at
	// once; nil = the report's own (English, the engine's zone).
	Locale func(ctx context.Context) (lang string, loc *time.Location, err error)
	// Missed, when set, adds the schedule fires missed since the last mail
	// to each report, and is told once a queued mail carries them.
	Missed MissedSource
}

// MissedSource keeps the missed schedule fires no mail has carried yet
// (schedule.Book).
type MissedSource interface {
	Unmailed(ctx context.Context) ([]schedule.MissedRecord, error)
	MarkMailed(ctx context.Context, recs []schedule.MissedRecord) error
}

// RunFinished queues the report of a finished run.
func (r RunReporter) RunFinished(ctx context.Context, rep Report, runLog []byte) error {
	on, err := r.MailOn(ctx)
	if err != nil || !on {
		if err == nil {
			r.Log.Info("run finished; no mail configured, report not sent", "run", rep.RunID)
		}
		return err
	}
	if r.Locale != nil {
		if rep.Lang, rep.Loc, err = r.Locale(ctx); err != nil {
			return err
		}
	}
	if r.Missed != nil {
		if rep.Missed, err = r.Missed.Unmailed(ctx); err != nil {
			return err
		}
	}
	if _, err = r.Outbox.Enqueue(ctx, rep.Message(runLog)); err != nil || r.Missed == nil || len(rep.Missed) == 0 {
		return err
	}
	// The mail is durable in the outbox now; a crash before this line
	// only repeats the missed fires in the next mail.
	return r.Missed.MarkMailed(ctx, rep.Missed)
}
