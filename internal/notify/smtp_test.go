package notify

import (
	"bytes"
	"context"
	"errors"
	"mime"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/testsmtp"
)

// The real peer is internal/testsmtp: Debian's python3-aiosmtpd with STARTTLS and AUTH.

func testMailer(port int, caPEM string) Mailer {
	return Mailer{Host: "127.0.0.1", Port: port, Username: testsmtp.User, Password: testsmtp.Password,
		From: "pumi <pumi@lab.example>", To: []string{"admin@lab.example", "it@lab.example"},
		CACertPEM: caPEM, Timeout: 20 * time.Second}
}

func sampleReport() Report {
	start := time.Date(2026, 11, 28, 2, 0, 0, 0, time.UTC)
	return Report{RunID: "42", Schedule: "room B Saturday", Action: "restore", Image: "LAB-2026-img",
		Started: start, Finished: start.Add(72 * time.Minute),
		Seats: []SeatReport{
			{Seat: "B-01", Room: "B", MAC: "52:54:00:00:00:01", Outcome: OutcomeVerified, Attempts: 1, Started: start, Finished: start.Add(20 * time.Minute), Bytes: 40 << 30},
			{Seat: "B-02", Room: "B", MAC: "52:54:00:00:00:02", Outcome: OutcomeFailed, Reason: "host key changed", Attempts: 3, Started: start, Finished: start.Add(72 * time.Minute), Bytes: 40 << 30},
		}}
}

// TestSendReportSTARTTLS: the report reaches a real SMTP server over
// STARTTLS with AUTH (PLAIN), to both recipients, with its attachment intact.
func TestSendReportSTARTTLS(t *testing.T) {
	testsmtp.Require(t)
	certFile, keyFile, caPEM := testsmtp.Cert(t)
	port, outdir := testsmtp.FreePort(t), t.TempDir()
	testsmtp.Start(t, port, certFile, keyFile, outdir, testsmtp.Opts{OnlyMech: "PLAIN"})

	logData := append([]byte("02:00:01 B-01 pending -> powering (wol)\n"), 0, 0xff, 0xfe, '\n')
	msg := sampleReport().Message(logData)
	if err := testMailer(port, caPEM).Send(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	got := testsmtp.Inbox(t, outdir)
	if len(got) != 1 {
		t.Fatalf("server received %d messages, want 1", len(got))
	}
	r := got[0]
	if !r.Meta.TLS || r.Meta.Login != testsmtp.User || r.Meta.MailFrom != "pumi@lab.example" ||
		strings.Join(r.Meta.RcptTos, ",") != "admin@lab.example,it@lab.example" {
		t.Fatalf("envelope %+v", r.Meta)
	}
	dec := new(mime.WordDecoder)
	subj, _ := dec.DecodeHeader(r.Msg.Header.Get("Subject"))
	if subj != msg.Subject || !strings.Contains(subj, "1/2 verified") {
		t.Errorf("Subject %q, want %q", subj, msg.Subject)
	}
	if id := r.Msg.Header.Get("Message-Id"); id != "<run-42-report.pumi@lab.example>" {
		t.Errorf("Message-ID %q", id)
	}
	ps := testsmtp.Parts(t, r.Msg)
	var text, att *testsmtp.Part
	for i := range ps {
		switch {
		case ps[i].Filename != "":
			att = &ps[i]
		case ps[i].ContentType == "text/plain":
			text = &ps[i]
		}
	}
	if text == nil || !strings.Contains(string(text.Body), "host key changed") || !strings.Contains(string(text.Body), "B-02") {
		t.Fatalf("text part missing or wrong: %+v", ps)
	}
	if att == nil || att.Filename != "run-42.log" || !bytes.Equal(att.Body, logData) {
		t.Fatalf("attachment missing or changed: %+v", att)
	}
}

// TestSendLoginOnly: a server offering only AUTH LOGIN (like Exchange
// Online) still gets the login.
func TestSendLoginOnly(t *testing.T) {
	testsmtp.Require(t)
	certFile, keyFile, caPEM := testsmtp.Cert(t)
	port, outdir := testsmtp.FreePort(t), t.TempDir()
	testsmtp.Start(t, port, certFile, keyFile, outdir, testsmtp.Opts{OnlyMech: "LOGIN"})
	if err := testMailer(port, caPEM).Send(context.Background(), Message{Subject: "login only", Text: "x"}); err != nil {
		t.Fatal(err)
	}
	if got := testsmtp.Inbox(t, outdir); len(got) != 1 || got[0].Meta.Login != testsmtp.User {
		t.Fatalf("received %+v", got)
	}
}

// TestSendImplicitTLS: tls mode (port 465 style) against the same server
// speaking TLS from the first byte.
func TestSendImplicitTLS(t *testing.T) {
	testsmtp.Require(t)
	certFile, keyFile, caPEM := testsmtp.Cert(t)
	port, outdir := testsmtp.FreePort(t), t.TempDir()
	testsmtp.Start(t, port, certFile, keyFile, outdir, testsmtp.Opts{ImplicitTLS: true})
	m := testMailer(port, caPEM)
	m.TLS = ImplicitTLS
	if err := m.Send(context.Background(), Message{Subject: "implicit", Text: "x"}); err != nil {
		t.Fatal(err)
	}
	if got := testsmtp.Inbox(t, outdir); len(got) != 1 || !got[0].Meta.TLS {
		t.Fatalf("received %+v", got)
	}
}

func TestSendErrors(t *testing.T) {
	testsmtp.Require(t)
	certFile, keyFile, caPEM := testsmtp.Cert(t)
	port, outdir := testsmtp.FreePort(t), t.TempDir()
	testsmtp.Start(t, port, certFile, keyFile, outdir, testsmtp.Opts{})
	ctx := context.Background()

	m := testMailer(port, caPEM)
	m.Password = "wrong password"
	err := m.Send(ctx, Message{Subject: "x", Text: "x"})
	if !errors.Is(err, ErrLogin) || !strings.Contains(err.Error(), "app password") || strings.Contains(err.Error(), "wrong password") {
		t.Errorf("wrong password: %v", err)
	}

	m = testMailer(port, "") // the self-signed certificate is not trusted
	err = m.Send(ctx, Message{Subject: "x", Text: "x"})
	if !errors.Is(err, ErrTLS) || !strings.Contains(err.Error(), "not trusted") {
		t.Errorf("untrusted certificate: %v", err)
	}

	m = testMailer(testsmtp.FreePort(t), caPEM) // nobody listens there
	err = m.Send(ctx, Message{Subject: "x", Text: "x"})
	if !errors.Is(err, ErrUnreachable) {
		t.Errorf("server down: %v", err)
	}
	if n := len(testsmtp.Inbox(t, outdir)); n != 0 {
		t.Fatalf("server received %d messages from failed sends", n)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestOutboxServerDownThenUp: with the server down the report stays queued
// and is retried; once the server is up it is delivered exactly once, and
// queueing the same report again does not send it again.
func TestOutboxServerDownThenUp(t *testing.T) {
	testsmtp.Require(t)
	certFile, keyFile, caPEM := testsmtp.Cert(t)
	port, outdir, boxdir := testsmtp.FreePort(t), t.TempDir(), t.TempDir()
	ob, err := OpenOutbox(boxdir, testMailer(port, caPEM), nil)
	if err != nil {
		t.Fatal(err)
	}
	ob.MinBackoff, ob.MaxBackoff = 20*time.Millisecond, 200*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runDone := make(chan error, 1)
	go func() { runDone <- ob.Run(ctx) }()

	msg := sampleReport().Message([]byte("log\n"))
	id, err := ob.Enqueue(ctx, msg)
	if err != nil || id != "run-42-report" {
		t.Fatalf("Enqueue = %q, %v", id, err)
	}
	waitFor(t, "two failed attempts while the server is down", func() bool {
		p, _ := ob.Pending()
		return len(p) == 1 && p[0].Attempts >= 2 && strings.Contains(p[0].LastError, "cannot reach")
	})
	if _, err := os.Stat(filepath.Join(boxdir, "queue", id+".json")); err != nil {
		t.Fatalf("queued file gone while the server is down: %v", err)
	}

	testsmtp.Start(t, port, certFile, keyFile, outdir, testsmtp.Opts{})
	waitFor(t, "delivery after the server came back", func() bool {
		p, _ := ob.Pending()
		return len(p) == 0 && len(testsmtp.Inbox(t, outdir)) >= 1
	})
	if _, err := os.Stat(filepath.Join(boxdir, "sent", id)); err != nil {
		t.Fatalf("no sent marker: %v", err)
	}
	// The runs engine queues the same report again (e.g. after a power cut).
	if again, err := ob.Enqueue(ctx, msg); err != nil || again != id {
		t.Fatalf("re-Enqueue = %q, %v", again, err)
	}
	if n, err := ob.Flush(ctx); n != 0 || err != nil {
		t.Fatalf("Flush after delivery sent %d, %v", n, err)
	}
	cancel()
	<-runDone
	if got := testsmtp.Inbox(t, outdir); len(got) != 1 {
		t.Fatalf("server received %d copies, want exactly 1", len(got))
	}
}

// TestOutboxCrashAfterAcceptNoResend: a crash after the sent marker was
// written but before the queue file was removed must not resend.
func TestOutboxCrashAfterAcceptNoResend(t *testing.T) {
	testsmtp.Require(t)
	certFile, keyFile, caPEM := testsmtp.Cert(t)
	port, outdir, boxdir := testsmtp.FreePort(t), t.TempDir(), t.TempDir()
	testsmtp.Start(t, port, certFile, keyFile, outdir, testsmtp.Opts{})
	ctx := context.Background()
	ob, err := OpenOutbox(boxdir, testMailer(port, caPEM), nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := ob.Enqueue(ctx, Message{ID: "run-7-report", Subject: "r7", Text: "t"})
	if err != nil {
		t.Fatal(err)
	}
	qf := filepath.Join(boxdir, "queue", id+".json")
	saved, err := os.ReadFile(qf)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := ob.Flush(ctx); n != 1 || err != nil {
		t.Fatalf("Flush = %d, %v", n, err)
	}
	// Put the queue file back: the state a crash between the two steps leaves.
	if err := os.WriteFile(qf, saved, 0o600); err != nil {
		t.Fatal(err)
	}
	ob2, err := OpenOutbox(boxdir, testMailer(port, caPEM), nil) // "restart"
	if err != nil {
		t.Fatal(err)
	}
	if n, err := ob2.Flush(ctx); n != 0 || err != nil {
		t.Fatalf("Flush after crash = %d, %v", n, err)
	}
	if _, err := os.Stat(qf); !os.IsNotExist(err) {
		t.Fatalf("queue file still there: %v", err)
	}
	if got := testsmtp.Inbox(t, outdir); len(got) != 1 {
		t.Fatalf("server received %d copies, want 1", len(got))
	}
}
