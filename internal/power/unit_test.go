package power

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

func TestCredentialNeverPrintsPassword(t *testing.T) {
	const pw = "hunter2-s3cret"
	c := Credential{User: "tareas", Password: pw, UseKey: true}
	var buf bytes.Buffer
	for _, f := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
		fmt.Fprintf(&buf, f+"\n", c)
		fmt.Fprintf(&buf, f+"\n", c.Password)
		fmt.Fprintf(&buf, f+"\n", &c)
	}
	fmt.Fprintln(&buf, []Credential{c}, map[string]Credential{"a": c}, struct{ C Credential }{c})
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "cred", c, "pw", c.Password, "ptr", &c)
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "cred", c, "pw", c.Password, "ptr", &c)
	if strings.Contains(buf.String(), pw) || strings.Contains(buf.String(), fmt.Sprintf("%x", pw)) {
		t.Fatalf("password leaked:\n%s", buf.String())
	}
	if !strings.Contains(buf.String(), "tareas") || !strings.Contains(buf.String(), "key+password") {
		t.Fatalf("user or auth method missing:\n%s", buf.String())
	}
	if string(c.Password) != pw {
		t.Fatal("string() conversion must still give the password")
	}
}

func TestCredentialValidate(t *testing.T) {
	for _, c := range []Credential{
		{User: "", UseKey: true}, {User: "../root", UseKey: true}, {User: "a b", UseKey: true},
		{User: "x'y", UseKey: true}, {User: "-oProxy", UseKey: true}, {User: ".", UseKey: true},
		{User: "ok"}, {User: strings.Repeat("a", 33), UseKey: true},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%#v accepted", c)
		}
	}
	for _, c := range []Credential{{User: "tareas", UseKey: true}, {User: "lab.user_1", Password: "x"}} {
		if err := c.Validate(); err != nil {
			t.Errorf("%v: %v", c, err)
		}
	}
}

func TestCheckSignature(t *testing.T) {
	for _, tc := range []struct {
		content, image string
		want           error
	}{
		{"LAB-2026\n", "LAB-2026-img", nil},
		{"\ufeffLAB-2026\r\n", "LAB-2026-img", nil},
		{"  LAB-2026  ", "LAB-2026", nil},
		{"LAB-2026-img\n", "LAB-2026-img", ErrWrongImage},
		{"lab-2026\n", "LAB-2026-img", ErrWrongImage},
		{"LAB-2025\n", "LAB-2026-img", ErrWrongImage},
		{"", "LAB-2026-img", ErrNoSignature},
		{" \n\t", "LAB-2026-img", ErrNoSignature},
	} {
		err := CheckSignature([]byte(tc.content), tc.image)
		var wi *WrongImageError
		switch {
		case tc.want == nil && err != nil:
			t.Errorf("%q vs %q: %v", tc.content, tc.image, err)
		case tc.want == ErrWrongImage && !errors.As(err, &wi):
			t.Errorf("%q vs %q: got %v, want wrong image", tc.content, tc.image, err)
		case tc.want == ErrNoSignature && !errors.Is(err, ErrNoSignature):
			t.Errorf("%q vs %q: got %v, want no signature", tc.content, tc.image, err)
		}
	}
	if err := CheckSignature([]byte("x"), "-img"); err == nil {
		t.Error("empty wanted signature accepted")
	}
	err := CheckSignature([]byte("evil\x1b[2J"+strings.Repeat("A", 500)), "LAB-img")
	var wi *WrongImageError
	if !errors.As(err, &wi) || strings.ContainsRune(wi.Found, 0x1b) || len(wi.Found) > 90 {
		t.Errorf("found not sanitised: %q", wi.Found)
	}
}

func TestErrorKinds(t *testing.T) {
	e := &Error{Op: "verify", Addr: "10.0.0.5:22", Kind: ErrWrongImage, Detail: `found "A", want "B"`, Err: &WrongImageError{"A", "B"}}
	var wrapped error = fmt.Errorf("seat 3: %w", e)
	var wi *WrongImageError
	if !errors.Is(wrapped, ErrWrongImage) || errors.Is(wrapped, ErrUnreachable) || !errors.As(wrapped, &wi) {
		t.Fatal("kind not reachable through errors.Is/As")
	}
	if Reason(wrapped) != `wrong image: found "A", want "B"` {
		t.Fatalf("reason %q", Reason(wrapped))
	}
	if Reason(errors.New("plain")) != "plain" || Reason(nil) != "" {
		t.Fatal("Reason of non-power errors")
	}
	for _, k := range []error{ErrUnreachable, ErrAuthFailed, ErrHostKeyMismatch, ErrWrongImage, ErrNoSignature, ErrCommandFailed} {
		e := &Error{Op: "reboot", Addr: "a:22", Kind: k}
		if Reason(e) != k.Error() || !errors.Is(e, k) {
			t.Errorf("%v: reason %q", k, Reason(e))
		}
	}
}

func TestKeyCreatedOnceAndReloaded(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	k1, err := LoadOrCreateKey(dir, nil)
	must(t, err)
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	must(t, err)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	pub, comment, _, _, err := ssh.ParseAuthorizedKey([]byte(k1.PublicKey()))
	must(t, err)
	if pub.Type() != ssh.KeyAlgoED25519 || comment != "pumi" {
		t.Fatalf("public key %q", k1.PublicKey())
	}
	must(t, os.Chmod(filepath.Join(dir, KeyFile), 0o644))
	k2, err := LoadOrCreateKey(dir, nil)
	must(t, err)
	if k1.PublicKey() != k2.PublicKey() {
		t.Fatal("key regenerated on second start")
	}
	if fi, _ := os.Stat(filepath.Join(dir, KeyFile)); fi.Mode().Perm() != 0o600 {
		t.Fatalf("loose key permissions not fixed: %v", fi.Mode().Perm())
	}

	// A damaged key is an error and stays as it was.
	bad := []byte("-----BEGIN OPENSSH PRIVATE KEY-----\ngarbage\n-----END OPENSSH PRIVATE KEY-----\n")
	must(t, os.WriteFile(filepath.Join(dir, KeyFile), bad, 0o600))
	if _, err := LoadOrCreateKey(dir, nil); err == nil || !strings.Contains(err.Error(), "move it aside") {
		t.Fatalf("damaged key: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, KeyFile)); !bytes.Equal(got, bad) {
		t.Fatal("damaged key file was changed")
	}
}

func TestFileHostKeyStore(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "host_keys")
	s := NewFileHostKeyStore(path)
	k1, _ := ssh.NewPublicKey(newHostKey(t).Public())
	k2, _ := ssh.NewPublicKey(newHostKey(t).Public())
	if k, err := s.PinnedHostKey(ctx, "LAB-img", "52:54:00:00:00:01"); k != nil || err != nil {
		t.Fatalf("empty store: %v %v", k, err)
	}
	must(t, s.PinHostKey(ctx, "LAB-img", "52:54:00:00:00:01", k1))
	must(t, s.PinHostKey(ctx, "LAB-img", "52:54:00:00:00:01", k1)) // idempotent
	must(t, s.PinHostKey(ctx, "OTHER-img", "52:54:00:00:00:01", k2))
	if err := s.PinHostKey(ctx, "LAB-img", "52:54:00:00:00:01", k2); err == nil {
		t.Fatal("re-pin over an existing key accepted")
	}
	for _, bad := range [][2]string{{"", "s"}, {"a b", "s"}, {"a", "s\n"}, {"#x", "s"}} {
		if err := s.PinHostKey(ctx, bad[0], bad[1], k1); err == nil {
			t.Errorf("pin %q accepted", bad)
		}
	}
	s2 := NewFileHostKeyStore(path) // as after a restart
	if k, _ := s2.PinnedHostKey(ctx, "LAB-img", "52:54:00:00:00:01"); !keysEqual(k, k1) {
		t.Fatal("pin lost across reopen")
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("store mode %v", fi.Mode().Perm())
	}
	must(t, s2.Forget(ctx, "LAB-img", "52:54:00:00:00:01"))
	if k, _ := s2.PinnedHostKey(ctx, "LAB-img", "52:54:00:00:00:01"); k != nil {
		t.Fatal("forget did not remove the pin")
	}
	if k, _ := s2.PinnedHostKey(ctx, "OTHER-img", "52:54:00:00:00:01"); !keysEqual(k, k2) {
		t.Fatal("forget removed another pin")
	}

	must(t, os.WriteFile(path, []byte("LAB-img seat ssh-ed25519 notbase64\n"), 0o600))
	if _, err := s2.PinnedHostKey(ctx, "LAB-img", "seat"); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("corrupt file: %v", err)
	}
	if err := s2.PinHostKey(ctx, "X-img", "seat", k1); err == nil {
		t.Fatal("pin into a corrupt file accepted (would overwrite it)")
	}
}

func TestClientRefusesBadTargetsBeforeDialling(t *testing.T) {
	c := &Client{HostKeys: NewFileHostKeyStore(filepath.Join(t.TempDir(), "k"))}
	ctx := context.Background()
	for _, tg := range []Target{
		{Addr: "", Seat: "s", Cred: Credential{User: "u", Password: "p"}},
		{Addr: "192.0.2.1", Seat: "", Cred: Credential{User: "u", Password: "p"}},
		{Addr: "192.0.2.1", Seat: "s", Cred: Credential{User: "../u", Password: "p"}},
		{Addr: "192.0.2.1", Seat: "s", Cred: Credential{User: "u", UseKey: true}}, // no key loaded
	} {
		// 192.0.2.0/24 is TEST-NET-1; the checks must fail before any dial.
		err := c.Verify(ctx, tg, "LAB-img")
		if err == nil || errors.Is(err, ErrUnreachable) {
			t.Errorf("%+v: got %v, want a validation error", tg, err)
		}
	}
	if err := c.Verify(ctx, Target{Addr: "192.0.2.1", Seat: "s", Cred: Credential{User: "u", Password: "p"}}, "-img"); err == nil {
		t.Error("empty image accepted")
	}
}
