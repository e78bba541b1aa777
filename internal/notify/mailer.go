// Package notify sends the appliance's mail: SMTP with go-mail (STARTTLS
// required by default, AUTH PLAIN/LOGIN chosen automatically), a durable
// outbox that survives power cuts and mail-server outages without sending a
// message twice, and the plain-text run report.
package notify

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net"
	"net/mail"
	"net/textproto"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode"

	gomail "github.com/wneessen/go-mail"
)

// TLSMode is how the connection to the mail server is protected.
type TLSMode string

const (
	// StartTLS (the default) upgrades a plain connection (port 587) and
	// refuses to continue, and so to send the password, without TLS.
	StartTLS TLSMode = "starttls"
	// ImplicitTLS speaks TLS from the first byte (port 465).
	ImplicitTLS TLSMode = "tls"
	// NoTLS is for tests against a local server only: refused unless Host
	// is a loopback address, so a password never crosses a network in clear.
	NoTLS TLSMode = "none"
)

// Mailer is the SMTP configuration. The zero Port means 587 for StartTLS
// and 465 for ImplicitTLS.
type Mailer struct {
	Host string `json:"host"`
	Port int    `json:"port,omitempty"`
	// Username and Password log in (AUTH PLAIN, or LOGIN if the server only
	// offers that, as Exchange does). Empty Username: no login. The
	// Password (an app password) is redacted by String, GoString and
	// LogValue; whoever serves the configuration must not echo it either.
	Username string   `json:"username,omitempty"`
	Password string   `json:"password,omitempty"`
	From     string   `json:"from"`
	To       []string `json:"to"`
	TLS      TLSMode  `json:"tls,omitempty"`
	// CACertPEM adds trusted roots (an institution's internal CA, or a
	// test's self-signed certificate) to the system's; verification is
	// never switched off.
	CACertPEM string `json:"ca_cert_pem,omitempty"`
	// Timeout bounds connecting and each SMTP command; default 30 s.
	Timeout time.Duration `json:"timeout,omitempty"`
}

// Errors a caller (and the web page) can tell apart with errors.Is.
var (
	ErrConfig      = errors.New("mail settings are incomplete or wrong")
	ErrUnreachable = errors.New("cannot reach the mail server")
	ErrTLS         = errors.New("TLS with the mail server failed")
	ErrLogin       = errors.New("the mail server refused the login")
	ErrRejected    = errors.New("the mail server refused the message")
)

const redacted = "[redacted]"

func (m Mailer) tlsMode() TLSMode {
	if m.TLS == "" {
		return StartTLS
	}
	return m.TLS
}

func (m Mailer) port() int {
	switch {
	case m.Port != 0:
		return m.Port
	case m.tlsMode() == ImplicitTLS:
		return 465
	default:
		return 587
	}
}

func (m Mailer) timeout() time.Duration {
	if m.Timeout <= 0 {
		return 30 * time.Second
	}
	return m.Timeout
}

// String describes the configuration without the password.
func (m Mailer) String() string {
	pw := ""
	if m.Password != "" {
		pw = " password=" + redacted
	}
	user := ""
	if m.Username != "" {
		user = m.Username + "@"
	}
	return fmt.Sprintf("smtp://%s%s (%s) from %s to %s%s", user, net.JoinHostPort(m.Host, strconv.Itoa(m.port())),
		m.tlsMode(), m.From, strings.Join(m.To, ","), pw)
}

// GoString keeps %#v from printing the password.
func (m Mailer) GoString() string { return "notify.Mailer{" + m.String() + "}" }

// LogValue keeps slog from printing the password.
func (m Mailer) LogValue() slog.Value {
	pw := ""
	if m.Password != "" {
		pw = redacted
	}
	return slog.GroupValue(
		slog.String("host", m.Host), slog.Int("port", m.port()), slog.String("tls", string(m.tlsMode())),
		slog.String("username", m.Username), slog.String("password", pw),
		slog.String("from", m.From), slog.Any("to", m.To))
}

// Validate reports every problem with the configuration at once.
func (m Mailer) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if m.Host == "" || strings.ContainsAny(m.Host, " /\\\t\r\n") {
		bad("host %q: give the mail server's name, e.g. smtp.example.org", m.Host)
	}
	if m.Port < 0 || m.Port > 65535 {
		bad("port %d: must be 1-65535", m.Port)
	}
	switch m.tlsMode() {
	case StartTLS:
	case ImplicitTLS:
		if m.port() == 587 {
			bad("port 587 is for STARTTLS; use tls mode starttls, or port 465 for implicit TLS")
		}
	case NoTLS:
		if !isLoopback(m.Host) {
			bad("tls mode none is only allowed for a mail server on this machine (127.0.0.1, ::1, localhost); use starttls")
		}
		if m.port() == 587 {
			bad("STARTTLS is mandatory on port 587; use tls mode starttls")
		}
	default:
		bad("tls mode %q unknown; use starttls, tls or none", m.TLS)
	}
	if (m.Username == "") != (m.Password == "") {
		bad("give both a user name and an (app) password, or neither")
	}
	if _, err := mail.ParseAddress(m.From); err != nil || strings.ContainsAny(m.From, "\r\n") {
		bad("from address %q is not a mail address", m.From)
	}
	if len(m.To) == 0 {
		bad("no recipient: add at least one To address")
	}
	for _, to := range m.To {
		if _, err := mail.ParseAddress(to); err != nil || strings.ContainsAny(to, "\r\n") {
			bad("recipient %q is not a mail address", to)
		}
	}
	if m.CACertPEM != "" {
		if !x509.NewCertPool().AppendCertsFromPEM([]byte(m.CACertPEM)) {
			bad("CA certificate: no PEM certificate found")
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrConfig, errors.Join(errs...))
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Attachment is a file attached to a message (the run log).
type Attachment struct {
	Name string `json:"name"`
	Data []byte `json:"data"`
}

// Message is one mail. ID, if set, is its idempotency key in the Outbox and
// becomes its Message-ID, so a receiving system can also drop duplicates.
type Message struct {
	ID          string       `json:"id,omitempty"`
	Subject     string       `json:"subject"`
	Text        string       `json:"text"`
	Attachments []Attachment `json:"attachments,omitempty"`
	// Date is when the mail was written; zero means the sending time. The
	// Outbox sets it at Enqueue so a retried mail keeps its date.
	Date time.Time `json:"date,omitzero"`
}

// MaxMessageBytes bounds a message's attachments plus text: typical mail
// servers refuse 25 MB and more, and base64 adds a third.
const MaxMessageBytes = 15 << 20

func (msg Message) validate() error {
	var errs []error
	if strings.ContainsAny(msg.Subject, "\r\n") {
		errs = append(errs, fmt.Errorf("subject contains a line break"))
	}
	if msg.ID != "" {
		if err := checkID(msg.ID); err != nil {
			errs = append(errs, err)
		}
	}
	size := len(msg.Text)
	for i, a := range msg.Attachments {
		size += len(a.Data)
		if a.Name == "" || a.Name != filepath.Base(a.Name) || strings.IndexFunc(a.Name, unicode.IsControl) >= 0 {
			errs = append(errs, fmt.Errorf("attachment %d: name %q must be a plain file name", i+1, a.Name))
		}
	}
	if size > MaxMessageBytes {
		errs = append(errs, fmt.Errorf("message is %d bytes, more than the %d a mail may carry; attach a shorter log", size, MaxMessageBytes))
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("bad message %q: %w", msg.Subject, errors.Join(errs...))
}

// Send delivers msg to every recipient. It returns nil once the server has
// accepted the message (250 after DATA), even if closing the session fails
// afterwards: reporting that as an error would make a caller send it again.
func (m Mailer) Send(ctx context.Context, msg Message) error {
	if err := m.Validate(); err != nil {
		return err
	}
	if err := msg.validate(); err != nil {
		return err
	}
	gm, err := m.build(msg)
	if err != nil {
		return err
	}
	client, err := m.client()
	if err != nil {
		return err
	}
	where := net.JoinHostPort(m.Host, strconv.Itoa(m.port()))
	sc, err := client.DialToSMTPClientWithContext(ctx)
	if err != nil {
		return classifyDial(where, m.Username, err)
	}
	// go-mail only honours ctx while dialing; closing the connection when
	// ctx ends aborts a session stuck mid-command instead of waiting for the
	// per-command timeout.
	stop := context.AfterFunc(ctx, func() { sc.Close() })
	defer stop()
	sendErr := client.SendWithSMTPClient(sc, gm)
	closeErr := client.CloseWithSMTPClient(sc)
	if gm.IsDelivered() {
		// Accepted; a failing RSET/QUIT afterwards changes nothing.
		return nil
	}
	if sendErr == nil {
		sendErr = closeErr
	}
	if ctx.Err() != nil {
		return fmt.Errorf("mail to %s not sent: %w", where, context.Cause(ctx))
	}
	return fmt.Errorf("%w (%s): %w", ErrRejected, where, sendErr)
}

func (m Mailer) build(msg Message) (*gomail.Msg, error) {
	gm := gomail.NewMsg()
	if err := gm.From(m.From); err != nil {
		return nil, fmt.Errorf("%w: from %q: %w", ErrConfig, m.From, err)
	}
	if err := gm.To(m.To...); err != nil {
		return nil, fmt.Errorf("%w: to %q: %w", ErrConfig, m.To, err)
	}
	gm.Subject(msg.Subject)
	date := msg.Date
	if date.IsZero() {
		date = time.Now()
	}
	gm.SetDateWithValue(date)
	if msg.ID != "" {
		domain := "pumi.invalid"
		if a, err := mail.ParseAddress(m.From); err == nil {
			if i := strings.LastIndexByte(a.Address, '@'); i >= 0 {
				domain = a.Address[i+1:]
			}
		}
		gm.SetMessageIDWithValue(msg.ID + ".pumi@" + domain)
	} else {
		gm.SetMessageID()
	}
	gm.SetBodyString(gomail.TypeTextPlain, msg.Text)
	for _, a := range msg.Attachments {
		ct := mime.TypeByExtension(filepath.Ext(a.Name))
		if ct == "" {
			ct = "application/octet-stream"
		}
		if err := gm.AttachReader(a.Name, strings.NewReader(string(a.Data)), gomail.WithFileContentType(gomail.ContentType(ct))); err != nil {
			return nil, fmt.Errorf("attach %s: %w", a.Name, err)
		}
	}
	return gm, nil
}

func (m Mailer) client() (*gomail.Client, error) {
	tc := &tls.Config{ServerName: m.Host, MinVersion: tls.VersionTLS12}
	if m.CACertPEM != "" {
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		pool.AppendCertsFromPEM([]byte(m.CACertPEM))
		tc.RootCAs = pool
	}
	opts := []gomail.Option{gomail.WithPort(m.port()), gomail.WithTimeout(m.timeout()), gomail.WithTLSConfig(tc)}
	switch m.tlsMode() {
	case StartTLS:
		opts = append(opts, gomail.WithTLSPolicy(gomail.TLSMandatory))
	case ImplicitTLS:
		opts = append(opts, gomail.WithSSL())
	case NoTLS:
		opts = append(opts, gomail.WithTLSPolicy(gomail.NoTLS))
	}
	if m.Username != "" {
		// PLAIN first, LOGIN for servers that offer only that (Exchange);
		// anything else falls back to go-mail's strongest-first discovery.
		opts = append(opts, gomail.WithOpportunisticSMTPAuth(gomail.SMTPAuthPlain, gomail.SMTPAuthLogin),
			gomail.WithUsername(m.Username), gomail.WithPassword(m.Password))
	}
	c, err := gomail.NewClient(m.Host, opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return c, nil
}

// classifyDial turns go-mail's connect/TLS/AUTH errors into ones that say
// what to fix.
func classifyDial(where, user string, err error) error {
	var certErr *tls.CertificateVerificationError
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var tpErr *textproto.Error
	var netErr net.Error
	var opErr *net.OpError
	msg := err.Error()
	switch {
	case strings.Contains(msg, "SMTP AUTH failed") || errors.As(err, &tpErr) && (tpErr.Code == 535 || tpErr.Code == 534 || tpErr.Code == 530):
		return fmt.Errorf("%w (%s, user %q): check the user name and the app password: %w", ErrLogin, where, user, err)
	case strings.Contains(msg, "does not support SMTP AUTH") || strings.Contains(msg, "AUTH") && strings.Contains(msg, "not supported"):
		return fmt.Errorf("%w (%s): the server offers no login method pumi can use over this connection: %w", ErrLogin, where, err)
	case errors.As(err, &certErr) || errors.As(err, &unknownCA) || errors.As(err, &hostErr):
		return fmt.Errorf("%w (%s): the server's certificate is not trusted; check the host name or add its CA certificate: %w", ErrTLS, where, err)
	case strings.Contains(msg, "STARTTLS") || strings.Contains(msg, "tls:"):
		return fmt.Errorf("%w (%s): check the TLS mode (starttls on 587, tls on 465): %w", ErrTLS, where, err)
	case errors.As(err, &opErr) || errors.As(err, &netErr):
		return fmt.Errorf("%w (%s): is it running and is the port right? %w", ErrUnreachable, where, err)
	default:
		return fmt.Errorf("%w (%s): %w", ErrUnreachable, where, err)
	}
}
