package power

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pumi-lab/pumi/internal/testnet"
	"github.com/pumi-lab/pumi/internal/testseat"
)

const (
	seatUser     = testseat.User       // has the seed's NOPASSWD rule
	seatNoSudo   = testseat.NoSudoUser // has no sudo rule at all
	seatPassword = testseat.Password
)

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func newHostKey(t testing.TB) ed25519.PrivateKey { return testseat.NewHostKey(t) }

// newSeat builds lab (10.78.N.1/24 on br0) and one seat simulator
// (internal/testseat) at 10.78.N.2 with sshd on port 22, a fresh host key,
// authorizedKey for both users and the Signature LAB-2026.
func newSeat(t *testing.T, subnet int, authorizedKey string) *testseat.Seat {
	t.Helper()
	testnet.Require(t, testseat.Programs...)
	lab := testnet.New(t)
	lab.Bridge("br0", fmt.Sprintf("10.78.%d.1/24", subnet))
	return testseat.New(context.Background(), t, testseat.Config{Lab: lab, IP: fmt.Sprintf("10.78.%d.2", subnet),
		AuthorizedKey: authorizedKey, Signature: "LAB-2026\n"})
}

// restart starts the seat's sshd again with hostKey.
func restart(t *testing.T, seat *testseat.Seat, hostKey ed25519.PrivateKey) ssh.PublicKey {
	t.Helper()
	pub, err := seat.Start(hostKey)
	must(t, err)
	return pub
}

// TestSSHAgainstOpenSSH drives a real OpenSSH server (internal/testseat)
// through every outcome the run report distinguishes.
func TestSSHAgainstOpenSSH(t *testing.T) {
	key, err := LoadOrCreateKey(t.TempDir(), nil)
	must(t, err)
	seat := newSeat(t, 1, key.PublicKey())
	store := NewFileHostKeyStore(filepath.Join(t.TempDir(), "host_keys"))
	c := &Client{Key: key, HostKeys: store, ConnectTimeout: 2 * time.Second, HandshakeTimeout: 5 * time.Second,
		Log: slog.New(slog.NewTextHandler(testWriter{t}, nil))}
	ctx := context.Background()
	const image = "LAB-2026-img"
	keyCred := Credential{User: seatUser, UseKey: true}
	pwCred := Credential{User: seatUser, Password: seatPassword}
	target := func(cred Credential) Target {
		return Target{Addr: seat.IP, Seat: "52:54:00:00:01:02", Image: image, Cred: cred}
	}

	pinned := func(image string) ssh.PublicKey {
		k, err := store.PinnedHostKey(ctx, image, "52:54:00:00:01:02")
		must(t, err)
		return k
	}

	t.Run("WrongImageDoesNotPin", func(t *testing.T) {
		must(t, seat.SetSignature("LAB-2025\n"))
		err := seat.In(func() error { return c.Verify(ctx, target(keyCred), image) })
		var wi *WrongImageError
		if !errors.Is(err, ErrWrongImage) || !errors.As(err, &wi) {
			t.Fatalf("got %v, want wrong image", err)
		}
		if wi.Found != "LAB-2025" || wi.Wanted != "LAB-2026" {
			t.Errorf("found %q wanted %q", wi.Found, wi.Wanted)
		}
		if got := Reason(err); got != `wrong image: found "LAB-2025", want "LAB-2026"` {
			t.Errorf("reason %q", got)
		}
		if k := pinned(image); k != nil {
			t.Errorf("a seat running the wrong image pinned its key under %s", image)
		}
	})

	var firstKey ssh.PublicKey
	t.Run("KeyAuthVerified", func(t *testing.T) {
		must(t, seat.SetSignature("LAB-2026\r\n"))
		if err := seat.In(func() error { return c.Verify(ctx, target(keyCred), image) }); err != nil {
			t.Fatal(err)
		}
		firstKey = pinned(image)
		if firstKey == nil {
			t.Fatal("host key not pinned on first successful use")
		}
	})

	t.Run("PasswordAuthVerified", func(t *testing.T) {
		pc := *c
		pc.Key = nil // password only: pumi's key is not even loaded
		if err := seat.In(func() error { return pc.Verify(ctx, target(pwCred), image) }); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("WrongPassword", func(t *testing.T) {
		bad := pwCred
		bad.Password = "wrong"
		err := seat.In(func() error { return c.Verify(ctx, target(bad), image) })
		if !errors.Is(err, ErrAuthFailed) || Reason(err) != "ssh auth: credentials rejected" {
			t.Fatalf("got %v (reason %q), want ssh auth", err, Reason(err))
		}
		if strings.Contains(err.Error(), "wrong") {
			t.Errorf("error leaks the password: %v", err)
		}
	})

	t.Run("KeyNotAuthorized", func(t *testing.T) {
		other, err := LoadOrCreateKey(t.TempDir(), nil)
		must(t, err)
		oc := *c
		oc.Key = other
		err = seat.In(func() error { return oc.Verify(ctx, target(keyCred), image) })
		if !errors.Is(err, ErrAuthFailed) {
			t.Fatalf("got %v, want ssh auth", err)
		}
	})

	t.Run("NoSignature", func(t *testing.T) {
		must(t, seat.SetSignature(""))
		defer seat.SetSignature("LAB-2026\n")
		err := seat.In(func() error { return c.Verify(ctx, target(keyCred), image) })
		if !errors.Is(err, ErrNoSignature) || !strings.Contains(Reason(err), "No such file") {
			t.Fatalf("got %v (reason %q), want no signature", err, Reason(err))
		}
	})

	t.Run("NothingListening", func(t *testing.T) {
		tg := target(keyCred)
		tg.Addr = seat.IP + ":2222"
		err := seat.In(func() error { return c.Verify(ctx, tg, image) })
		if !errors.Is(err, ErrUnreachable) || Reason(err) != "unreachable: connection refused" {
			t.Fatalf("got %v (reason %q), want unreachable", err, Reason(err))
		}
		// No machine at all on that address: ARP gets no answer and only the
		// connect timeout ends the attempt.
		qc := *c
		qc.ConnectTimeout = 500 * time.Millisecond
		tg.Addr = strings.TrimSuffix(seat.IP, ".2") + ".99"
		err = seat.In(func() error { return qc.Reboot(ctx, tg) })
		if !errors.Is(err, ErrUnreachable) || Reason(err) != "unreachable: connect timed out" {
			t.Fatalf("got %v (reason %q), want connect timeout", err, Reason(err))
		}
	})

	t.Run("SilentServerHitsHandshakeDeadline", func(t *testing.T) {
		// Accepts TCP and never speaks: only the handshake deadline ends it.
		var ln net.Listener
		must(t, seat.Lab.Do(func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:0"); return }))
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
			}
		}()
		hc := *c
		hc.HandshakeTimeout = 300 * time.Millisecond
		tg := target(keyCred)
		tg.Addr = ln.Addr().String()
		err := seat.In(func() error { return hc.Verify(ctx, tg, image) })
		if !errors.Is(err, ErrUnreachable) || Reason(err) != "unreachable: ssh handshake timed out" {
			t.Fatalf("got %v (reason %q), want handshake timeout", err, Reason(err))
		}
	})

	t.Run("NoSudoRule", func(t *testing.T) {
		tg := target(Credential{User: seatNoSudo, Password: seatPassword})
		tg.Image = "other-img" // its own pin, so this test does not depend on the others
		err := seat.In(func() error { return c.Reboot(ctx, tg) })
		if !errors.Is(err, ErrCommandFailed) || !strings.Contains(Reason(err), "password is required") {
			t.Fatalf("got %v (reason %q), want command failed from sudo", err, Reason(err))
		}
		if _, statErr := os.Stat(seat.Path("shutdown.log")); statErr == nil {
			t.Fatal("shutdown ran without the sudo rule")
		}
	})

	t.Run("ChangedHostKey", func(t *testing.T) {
		if firstKey == nil {
			t.Skip("needs KeyAuthVerified")
		}
		seat.Stop()
		newKey := restart(t, seat, newHostKey(t))
		err := seat.In(func() error { return c.Verify(ctx, target(keyCred), image) })
		var hk *HostKeyMismatchError
		if !errors.Is(err, ErrHostKeyMismatch) || !errors.As(err, &hk) {
			t.Fatalf("got %v, want host key mismatch", err)
		}
		want1, want2 := ssh.FingerprintSHA256(firstKey), ssh.FingerprintSHA256(newKey)
		if hk.Pinned != want1 || hk.Presented != want2 || !strings.Contains(err.Error(), want1) || !strings.Contains(err.Error(), want2) {
			t.Errorf("error %q lacks pinned %s / presented %s", err, want1, want2)
		}
		// The pin is not overwritten by a mismatch; the same key for another
		// image is a separate first use.
		if !keysEqual(pinned(image), firstKey) {
			t.Error("pin changed after a mismatch")
		}
		if err := seat.In(func() error { return c.Verify(ctx, target(keyCred), "LAB-2026") }); err != nil {
			t.Errorf("other image name: %v", err)
		}
	})

	t.Run("RebootDropsConnection", func(t *testing.T) {
		tg := target(keyCred)
		tg.Image = "LAB-2026" // pinned with the current key by ChangedHostKey
		if err := seat.In(func() error { return c.Reboot(ctx, tg) }); err != nil {
			t.Fatalf("reboot: %v", err)
		}
		log, err := os.ReadFile(seat.Path("shutdown.log"))
		must(t, err)
		if got := strings.TrimSpace(string(log)); got != "0 -r now" {
			t.Errorf("seat's shutdown ran as %q, want root with -r now", got)
		}
		if !seat.Exited() {
			t.Fatal("seat sshd still running after reboot")
		}
		err = seat.In(func() error { return c.Verify(ctx, tg, "LAB-2026") })
		if !errors.Is(err, ErrUnreachable) {
			t.Fatalf("after reboot got %v, want unreachable (port closed)", err)
		}
	})

	t.Run("RebootSilentDrop", func(t *testing.T) {
		// The seat vanishes without closing TCP: only CommandTimeout ends
		// the wait, and that still counts as the seat going down.
		os.Remove(seat.Path("shutdown.log"))
		must(t, os.WriteFile(seat.Path("shutdown.silent"), nil, 0o644))
		defer os.Remove(seat.Path("shutdown.silent"))
		restart(t, seat, newHostKey(t))
		sc := *c
		sc.CommandTimeout = time.Second
		tg := target(keyCred)
		tg.Image = "silent-img"
		if err := seat.In(func() error { return sc.Reboot(ctx, tg) }); err != nil {
			t.Fatalf("reboot: %v", err)
		}
		log, err := os.ReadFile(seat.Path("shutdown.log"))
		must(t, err)
		if got := strings.TrimSpace(string(log)); got != "0 -r now" {
			t.Errorf("seat's shutdown ran as %q, want root with -r now", got)
		}
		seat.Stop()
		seat.Host.MustIP("link", "set", "eth0", "up")
	})

	t.Run("ShutdownDropsConnection", func(t *testing.T) {
		os.Remove(seat.Path("shutdown.log"))
		restart(t, seat, newHostKey(t))
		tg := target(pwCred)
		tg.Image = "fresh-img"
		if err := seat.In(func() error { return c.Shutdown(ctx, tg) }); err != nil {
			t.Fatalf("shutdown: %v", err)
		}
		log, err := os.ReadFile(seat.Path("shutdown.log"))
		must(t, err)
		if got := strings.TrimSpace(string(log)); got != "0 -h now" {
			t.Errorf("seat's shutdown ran as %q, want root with -h now", got)
		}
		if !seat.Exited() {
			t.Fatal("seat sshd still running after shutdown")
		}
		if k, _ := store.PinnedHostKey(ctx, "fresh-img", tg.Seat); k == nil {
			t.Error("host key of a successful shutdown not pinned")
		}
	})
}

func keysEqual(a, b ssh.PublicKey) bool {
	return a != nil && b != nil && string(a.Marshal()) == string(b.Marshal())
}

// testWriter sends slog output to t.Log so it shows with -v or on failure.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
