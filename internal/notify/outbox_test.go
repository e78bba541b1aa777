package notify

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// countingSender stands in for the mail server only where the server's
// behaviour is not the point (queue bookkeeping); delivery itself is proven
// against aiosmtpd in smtp_test.go.
type countingSender struct {
	calls int
	err   error
}

func (c *countingSender) Send(context.Context, Message) error {
	c.calls++
	return c.err
}

func TestOutboxEnqueueDurableAndDedup(t *testing.T) {
	dir := t.TempDir()
	snd := &countingSender{}
	ob, err := OpenOutbox(dir, snd, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	id, err := ob.Enqueue(ctx, Message{ID: "run-1-report", Subject: "s", Text: "t"})
	if err != nil || id != "run-1-report" {
		t.Fatalf("Enqueue = %q, %v", id, err)
	}
	// Persisted before any attempt.
	if snd.calls != 0 {
		t.Fatal("sent during Enqueue")
	}
	if _, err := os.Stat(filepath.Join(dir, "queue", "run-1-report.json")); err != nil {
		t.Fatal(err)
	}
	if _, err := ob.Enqueue(ctx, Message{ID: "run-1-report", Subject: "other"}); err != nil {
		t.Fatal(err)
	}
	p, err := ob.Pending()
	if err != nil || len(p) != 1 || p[0].Message.Subject != "s" || p[0].Message.Date.IsZero() {
		t.Fatalf("Pending = %+v, %v", p, err)
	}
	// A generated ID is usable as a file name and unique.
	a, _ := ob.Enqueue(ctx, Message{Subject: "a"})
	b, _ := ob.Enqueue(ctx, Message{Subject: "b"})
	if a == b || checkID(a) != nil {
		t.Fatalf("generated ids %q %q", a, b)
	}
	// Bad input: clear error, nothing written.
	if _, err := ob.Enqueue(ctx, Message{ID: "../escape", Subject: "x"}); err == nil {
		t.Fatal("bad id accepted")
	}
	if names, _ := filepath.Glob(filepath.Join(dir, "queue", "*")); len(names) != 3 {
		t.Fatalf("queue holds %v", names)
	}
}

func TestOutboxFailureKeepsMessageAndBacksOff(t *testing.T) {
	dir := t.TempDir()
	snd := &countingSender{err: errors.New("cannot reach the mail server")}
	ob, err := OpenOutbox(dir, snd, nil)
	if err != nil {
		t.Fatal(err)
	}
	ob.MinBackoff, ob.MaxBackoff = time.Hour, 4*time.Hour
	ctx := context.Background()
	if _, err := ob.Enqueue(ctx, Message{ID: "m", Subject: "s"}); err != nil {
		t.Fatal(err)
	}
	if n, err := ob.flush(ctx, false); n != 0 || err == nil || snd.calls != 1 {
		t.Fatalf("first attempt: %d %v calls=%d", n, err, snd.calls)
	}
	p, _ := ob.Pending()
	if len(p) != 1 || p[0].Attempts != 1 || !strings.Contains(p[0].LastError, "cannot reach") || time.Until(p[0].NextAttempt) < 50*time.Minute {
		t.Fatalf("after failure: %+v", p)
	}
	// Not due yet: the retry loop leaves it alone.
	if _, err := ob.flush(ctx, false); err != nil || snd.calls != 1 {
		t.Fatalf("retried before backoff: calls=%d %v", snd.calls, err)
	}
	// "Send now" ignores backoff; success removes it and marks it sent.
	snd.err = nil
	if n, err := ob.Flush(ctx); n != 1 || err != nil || snd.calls != 2 {
		t.Fatalf("forced: %d %v calls=%d", n, err, snd.calls)
	}
	if p, _ := ob.Pending(); len(p) != 0 {
		t.Fatalf("still queued: %+v", p)
	}
	if _, err := os.Stat(filepath.Join(dir, "sent", "m")); err != nil {
		t.Fatal(err)
	}
	for i, want := range []time.Duration{time.Hour, 2 * time.Hour, 4 * time.Hour, 4 * time.Hour} {
		if got := ob.backoff(i + 1); got != want {
			t.Errorf("backoff(%d) = %v, want %v", i+1, got, want)
		}
	}
}

func TestOutboxRecoversFromDamage(t *testing.T) {
	dir := t.TempDir()
	if _, err := OpenOutbox(dir, &countingSender{}, nil); err != nil {
		t.Fatal(err)
	}
	q := filepath.Join(dir, "queue")
	must := func(err error) {
		if err != nil {
			t.Helper()
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(q, ".x.json.tmp123"), []byte("half"), 0o600))                  // cut atomic write
	must(os.WriteFile(filepath.Join(q, "garbage.json"), []byte("{not json"), 0o600))               // damaged file
	must(os.WriteFile(filepath.Join(q, "liar.json"), []byte(`{"message":{"id":"other"}}`), 0o600)) // wrong name
	snd := &countingSender{}
	ob, err := OpenOutbox(dir, snd, nil)
	must(err)
	if _, err := os.Stat(filepath.Join(q, ".x.json.tmp123")); !os.IsNotExist(err) {
		t.Fatalf("temp file left: %v", err)
	}
	if n, err := ob.Flush(context.Background()); n != 0 || err != nil || snd.calls != 0 {
		t.Fatalf("Flush = %d %v calls=%d", n, err, snd.calls)
	}
	for _, n := range []string{"garbage.json", "liar.json"} {
		if _, err := os.Stat(filepath.Join(dir, "bad", n)); err != nil {
			t.Errorf("%s not moved aside: %v", n, err)
		}
	}
}

func TestOutboxUnwritableDir(t *testing.T) {
	if os.Geteuid() == 0 {
		// root ignores permissions; use a path below a regular file instead.
		f := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := OpenOutbox(filepath.Join(f, "outbox"), &countingSender{}, nil); err == nil || !strings.Contains(err.Error(), "writable") {
			t.Fatalf("err = %v", err)
		}
		return
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o500)
	defer os.Chmod(dir, 0o700)
	if _, err := OpenOutbox(filepath.Join(dir, "outbox"), &countingSender{}, nil); err == nil {
		t.Fatal("opened in a read-only directory")
	}
}

// FuzzDecodeEntry: a queue file's content never panics the decoder, and an
// accepted entry is valid.
func FuzzDecodeEntry(f *testing.F) {
	for _, s := range []string{`{"message":{"id":"m","subject":"s"}}`, `{`, `null`, `{"message":{"id":"m","subject":"a\r\nb"}}`,
		`{"message":{"id":"m","attachments":[{"name":"../x","data":"AA=="}]}}`, `{"message":{"id":"m","attachments":[{"name":"a","data":"!"}]}}`,
		`{"message":{"id":"m"},"attempts":-1,"next_attempt":"9999-12-31T23:59:59Z"}`, "\xff\xfe"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeEntry(b, "m")
		if err != nil {
			return
		}
		if e.Message.ID != "m" || e.Message.validate() != nil {
			t.Fatalf("accepted invalid entry %+v", e)
		}
	})
}

// TestOutboxMarkerFailureNeverResends: if the sent marker cannot be written
// (disk full, damaged directory) the accepted message is not sent again; the
// marker is retried and the queue entry dropped once it works.
func TestOutboxMarkerFailureNeverResends(t *testing.T) {
	dir := t.TempDir()
	snd := &countingSender{}
	ob, err := OpenOutbox(dir, snd, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := ob.Enqueue(ctx, Message{ID: "m", Subject: "s"}); err != nil {
		t.Fatal(err)
	}
	sentDir := filepath.Join(dir, "sent")
	if err := os.Remove(sentDir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sentDir, nil, 0o600); err != nil { // writes below it now fail
		t.Fatal(err)
	}
	if n, err := ob.Flush(ctx); n != 1 || err == nil || !strings.Contains(err.Error(), "could not be marked sent") {
		t.Fatalf("Flush = %d, %v", n, err)
	}
	if n, err := ob.Flush(ctx); n != 0 || err == nil || snd.calls != 1 {
		t.Fatalf("second Flush = %d, %v, calls=%d (must not resend)", n, err, snd.calls)
	}
	if err := os.Remove(sentDir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(sentDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if n, err := ob.Flush(ctx); n != 0 || err != nil || snd.calls != 1 {
		t.Fatalf("after repair: %d, %v, calls=%d", n, err, snd.calls)
	}
	if p, _ := ob.Pending(); len(p) != 0 {
		t.Fatalf("still queued: %+v", p)
	}
	if _, err := os.Stat(filepath.Join(sentDir, "m")); err != nil {
		t.Fatal(err)
	}
}
