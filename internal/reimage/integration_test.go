package reimage

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pumi-lab/pumi/internal/notify"
	"github.com/pumi-lab/pumi/internal/power"
	"github.com/pumi-lab/pumi/internal/schedule"
	"github.com/pumi-lab/pumi/internal/store"
	"github.com/pumi-lab/pumi/internal/testnet"
	"github.com/pumi-lab/pumi/internal/testseat"
)

// TestScheduledRunOverOpenSSHSeats runs one scheduled restore over 16 seat
// simulators (real sshd each, internal/testseat) with the real power package
// (SSH reboot and verification, WoL) and a real notify.Outbox, and checks
// every seat's outcome, reason and attempts.
func TestScheduledRunOverOpenSSHSeats(t *testing.T) {
	testnet.Require(t, testseat.Programs...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lab := testnet.New(t)
	lab.Bridge("br0", "10.81.0.1/24")

	hl := newHTTPLab(nil)
	var ln net.Listener
	must(t, lab.Do(func() (err error) {
		ln, err = net.Listen("tcp", "10.81.0.1:8080")
		return err
	}))
	srv := &http.Server{Handler: hl}
	go srv.Serve(ln)
	defer srv.Close()

	const image = "LAB-2026-img"
	type spec struct {
		b      testseat.Behaviour
		want   SeatState
		reason string // substring of the final reason
		tries  int
	}
	var specs []spec
	for range 10 {
		specs = append(specs, spec{want: Verified, tries: 1})
	}
	specs = append(specs,
		spec{b: testseat.Behaviour{StartOff: true}, want: Verified, tries: 1},                                         // 10: woken by WoL
		spec{b: testseat.Behaviour{FailReport: 1}, want: Verified, tries: 2},                                          // 11: retried, then fine
		spec{b: testseat.Behaviour{Password: "wrong"}, want: Failed, reason: "reboot: ssh auth", tries: 2},            // 12
		spec{want: Failed, reason: "host key mismatch", tries: 2},                                                     // 13: pinned key differs
		spec{b: testseat.Behaviour{NeverBack: true}, want: Failed, reason: "did not network-boot", tries: 2},          // 14
		spec{b: testseat.Behaviour{FailReport: 99}, want: Failed, reason: "Clonezilla: ocs-sr exit code 1", tries: 2}, // 15
	)
	var sims []*testseat.Seat
	for i, sp := range specs {
		s := newSimSeat(ctx, t, lab, i, fmt.Sprintf("10.81.0.%d", 10+i), "http://10.81.0.1:8080", sp.b)
		sims = append(sims, s)
		hl.seats = append(hl.seats, Seat{ID: fmt.Sprintf("pc%02d", i), Room: "B", MAC: s.MAC, Addr: s.Addr()})
	}

	keys := power.NewFileHostKeyStore(filepath.Join(t.TempDir(), "host_keys"))
	other, _, _ := ed25519.GenerateKey(rand.Reader)
	otherPub, err := ssh.NewPublicKey(other)
	must(t, err)
	must(t, keys.PinHostKey(ctx, image, sims[13].MAC, otherPub))

	var logBuf testnet.LockedBuffer
	log := slog.New(slog.NewTextHandler(&logBuf, nil))
	defer func() {
		if t.Failed() {
			t.Logf("engine log:\n%s", logBuf.String())
		}
	}()
	pw := &sshPower{lab: lab,
		c: &power.Client{HostKeys: keys, ConnectTimeout: time.Second, HandshakeTimeout: 5 * time.Second,
			CommandTimeout: 5 * time.Second, Log: log},
		wol:  power.WoL{Interface: "br0", Ports: []int{9}, Repeat: 2, Gap: 20 * time.Millisecond, Log: log},
		cred: power.Credential{User: testseat.User, Password: testseat.Password}}

	var sentMu sync.Mutex
	var sent []notify.Message
	ob, err := notify.OpenOutbox(t.TempDir(), notify.SenderFunc(func(_ context.Context, m notify.Message) error {
		sentMu.Lock()
		defer sentMu.Unlock()
		sent = append(sent, m)
		return nil
	}), log)
	must(t, err)

	st, err := store.Open(ctx, t.TempDir(), log)
	must(t, err)
	defer st.Close()
	cfg := Config{Tick: 200 * time.Millisecond, WakeGap: 100 * time.Millisecond, RebootDelay: 200 * time.Millisecond,
		VerifyInterval: 300 * time.Millisecond, VerifyTimeout: 15 * time.Second, PowerTimeout: 8 * time.Second,
		NetbootTimeout: 10 * time.Second, RestoreTimeout: 10 * time.Second, RetryDelay: 300 * time.Millisecond,
		MaxAttempts: 2, MaxRestoring: 6, ActionTimeout: 20 * time.Second}
	e := New(st, hl, pw, outboxReporter{ob}, cfg, nil, log)
	engDone := make(chan struct{})
	go func() { e.Run(ctx); close(engDone) }()
	defer func() { cancel(); <-engDone }()

	now := time.Now()
	sch := schedule.Schedule{ID: "room-b", Name: "room B weekly", Spec: schedule.MustParse("0 2 * * SAT"),
		Target: schedule.Target{Rooms: []string{"B"}}, Action: schedule.Action{Kind: schedule.Restore, Image: image},
		Window: 3 * time.Minute, Enabled: true}
	fire := schedule.Fire{Schedule: sch, At: now, Deadline: now.Add(sch.Window)}
	must(t, e.StartFire(ctx, fire))

	began := time.Now()
	var run Run
	for {
		r, ok, err := e.Get(ctx, fire.Key())
		must(t, err)
		if ok && r.Reported {
			run = r
			break
		}
		if time.Since(began) > 150*time.Second {
			t.Fatalf("run not finished after 150s: %+v", r.Seats)
		}
		time.Sleep(200 * time.Millisecond)
	}
	took := time.Since(began)
	if _, err := ob.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	for i, sp := range specs {
		s := run.Seats[i]
		if s.State != sp.want || !strings.Contains(s.Reason, sp.reason) || s.Attempts != sp.tries {
			t.Errorf("seat %d (%+v): got %s %q after %d attempts, want %s %q after %d",
				i, sp.b, s.State, s.Reason, s.Attempts, sp.want, sp.reason, sp.tries)
		}
		if sp.want == Verified {
			if sig := sims[i].Signature(); sig != "LAB-2026\n" {
				t.Errorf("seat %d verified but its Signature is %q", i, sig)
			}
			if v, _ := e.LastVerified(ctx, s.Seat.MAC); v.Image != image {
				t.Errorf("seat %d: no verified record: %+v", i, v)
			}
		}
		if errs := sims[i].Stats().Errs; len(errs) > 0 {
			t.Errorf("seat %d simulator: %v", i, errs)
		}
	}
	if sims[10].Stats().Wakes == 0 {
		t.Error("the powered-off seat received no magic packet")
	}
	if sims[14].Stats().Wakes == 0 {
		t.Error("the seat that never came back was not tried with WoL on its retry")
	}

	sentMu.Lock()
	defer sentMu.Unlock()
	// The outbox turns the run ID into a file-name-safe message ID.
	if len(sent) != 1 || !strings.HasPrefix(sent[0].ID, "run-room-b") || !strings.HasSuffix(sent[0].ID, "-report") {
		t.Fatalf("sent %d mails: %+v", len(sent), sent)
	}
	if len(sent[0].Attachments) != 1 || !bytes.Contains(sent[0].Attachments[0].Data, []byte("network-boot")) {
		t.Errorf("report attachment: %+v", sent[0].Attachments)
	}
	for _, want := range []string{"12 verified", "4 failed"} {
		if !strings.Contains(sent[0].Subject+sent[0].Text, want) {
			t.Logf("report lacks %q (wording is notify's):\nsubject: %s\n%s", want, sent[0].Subject, sent[0].Text)
		}
	}
	t.Logf("run over %d seats finished in %s; report:\n%s", len(specs), took.Round(time.Millisecond), sent[0].Text)
}
