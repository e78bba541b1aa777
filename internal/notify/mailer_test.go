package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestMailerValidate(t *testing.T) {
	good := Mailer{Host: "smtp.example.org", Username: "u@example.org", Password: "app pw", From: "pumi@example.org", To: []string{"a@example.org"}}
	tests := []struct {
		name string
		mod  func(*Mailer)
		want []string
	}{
		{"good starttls default", func(*Mailer) {}, nil},
		{"good implicit tls", func(m *Mailer) { m.TLS = ImplicitTLS }, nil},
		{"good none on loopback", func(m *Mailer) { m.TLS = NoTLS; m.Host = "127.0.0.1"; m.Port = 2525 }, nil},
		{"good no login", func(m *Mailer) { m.Username, m.Password = "", "" }, nil},
		{"none on a network host", func(m *Mailer) { m.TLS = NoTLS; m.Port = 25 }, []string{"only allowed for a mail server on this machine"}},
		{"none on 587", func(m *Mailer) { m.TLS = NoTLS; m.Host = "::1" }, []string{"STARTTLS is mandatory on port 587"}},
		{"implicit tls on 587", func(m *Mailer) { m.TLS = ImplicitTLS; m.Port = 587 }, []string{"port 587 is for STARTTLS"}},
		{"unknown tls", func(m *Mailer) { m.TLS = "ssl" }, []string{`tls mode "ssl" unknown`}},
		{"password without user", func(m *Mailer) { m.Username = "" }, []string{"both a user name"}},
		{"no host", func(m *Mailer) { m.Host = "" }, []string{"host"}},
		{"bad port", func(m *Mailer) { m.Port = 70000 }, []string{"port 70000"}},
		{"bad from", func(m *Mailer) { m.From = "pumi" }, []string{"from address"}},
		{"header injection in to", func(m *Mailer) { m.To = []string{"a@example.org\r\nBcc: x@evil.example"} }, []string{"recipient"}},
		{"no to", func(m *Mailer) { m.To = nil }, []string{"no recipient"}},
		{"bad CA", func(m *Mailer) { m.CACertPEM = "not pem" }, []string{"no PEM certificate"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := good
			m.To = append([]string(nil), good.To...)
			tc.mod(&m)
			err := m.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("err = %v, want ErrConfig", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q lacks %q", err, w)
				}
			}
			// Bad settings change nothing: Send refuses before connecting.
			if serr := m.Send(context.Background(), Message{Subject: "x"}); !errors.Is(serr, ErrConfig) {
				t.Errorf("Send with bad settings: %v", serr)
			}
		})
	}
}

func TestMailerRedactsPassword(t *testing.T) {
	m := Mailer{Host: "smtp.example.org", Username: "u", Password: "s3cret-app-pw", From: "p@example.org", To: []string{"a@example.org"}}
	var logbuf bytes.Buffer
	slog.New(slog.NewJSONHandler(&logbuf, nil)).Info("mail", "mailer", m)
	slog.New(slog.NewTextHandler(&logbuf, nil)).Info("mail", "mailer", m)
	outs := []string{m.String(), fmt.Sprint(m), fmt.Sprintf("%v %+v %#v %s", m, m, m, m), logbuf.String()}
	for _, o := range outs {
		if strings.Contains(o, "s3cret") {
			t.Fatalf("password leaked: %s", o)
		}
		if !strings.Contains(o, redacted) {
			t.Fatalf("no redaction marker in %s", o)
		}
	}
	// JSON is the stored configuration and keeps the password.
	b, _ := json.Marshal(m)
	if !strings.Contains(string(b), "s3cret-app-pw") {
		t.Fatalf("stored form lost the password: %s", b)
	}
}

func TestMessageValidate(t *testing.T) {
	bad := []Message{
		{Subject: "a\r\nBcc: x@evil.example"},
		{ID: "../x", Subject: "s"},
		{ID: ".hidden", Subject: "s"},
		{Subject: "s", Attachments: []Attachment{{Name: "../../etc/passwd", Data: []byte("x")}}},
		{Subject: "s", Attachments: []Attachment{{Name: "", Data: []byte("x")}}},
		{Subject: "s", Attachments: []Attachment{{Name: "big.log", Data: make([]byte, MaxMessageBytes+1)}}},
	}
	for _, m := range bad {
		if err := m.validate(); err == nil {
			t.Errorf("accepted %q / %q / %d attachments", m.Subject, m.ID, len(m.Attachments))
		}
	}
	if err := (Message{ID: "run-1-report", Subject: "ok", Attachments: []Attachment{{Name: "run.log"}}}).validate(); err != nil {
		t.Fatal(err)
	}
}
