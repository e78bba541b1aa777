package power

import (
	"errors"
	"fmt"
)

// Failure kinds. Every *Error wraps exactly one of them, so callers can ask
// errors.Is(err, power.ErrWrongImage). Their texts are the short reasons a
// run report prints.
var (
	ErrUnreachable     = errors.New("unreachable")
	ErrAuthFailed      = errors.New("ssh auth")
	ErrHostKeyMismatch = errors.New("host key mismatch")
	ErrWrongImage      = errors.New("wrong image")
	ErrNoSignature     = errors.New("no signature")
	ErrCommandFailed   = errors.New("command failed")
)

// Error is a failed SSH operation on a seat.
type Error struct {
	Op     string // "reboot", "shutdown", "verify"
	Addr   string // host:port dialled
	Kind   error  // one of the Err* sentinels
	Detail string // short and printable, e.g. "found LAB-2025, want LAB-2026"
	Err    error  // underlying cause, may be nil
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%s %s: %s", e.Op, e.Addr, e.Reason())
	if e.Err != nil && (e.Detail == "" || e.Detail != e.Err.Error()) {
		s += ": " + e.Err.Error()
	}
	if h := e.hint(); h != "" {
		s += " (" + h + ")"
	}
	return s
}

// Unwrap exposes both the kind and the cause to errors.Is/As.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// Reason is the short text for a run report: the kind, plus the detail.
func (e *Error) Reason() string {
	if e.Detail == "" {
		return e.Kind.Error()
	}
	return e.Kind.Error() + ": " + e.Detail
}

// Reason returns a short, report-friendly reason for err: the kind and
// detail of a power *Error, or the plain error text otherwise.
func Reason(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Reason()
	}
	return err.Error()
}

func (e *Error) hint() string {
	switch e.Kind {
	case ErrUnreachable:
		return "is the seat powered on, booted into its OS and running sshd?"
	case ErrAuthFailed:
		return "check the room's or image's SSH credentials, and that pumi's public key is in the image's authorized_keys"
	case ErrHostKeyMismatch:
		return "if the image was rebuilt with new host keys, forget the pinned key for this image and seat"
	case ErrNoSignature:
		return "the image needs /home/<user>/Desktop/Signature containing its name without -img"
	case ErrCommandFailed:
		if e.Op == "reboot" || e.Op == "shutdown" {
			return "check the image's sudoers rule: <user> ALL=(ALL) NOPASSWD: /sbin/shutdown"
		}
	}
	return ""
}

// WrongImageError is the cause inside an ErrWrongImage *Error.
type WrongImageError struct {
	Found  string // trimmed Signature content
	Wanted string // image name minus -img
}

func (e *WrongImageError) Error() string {
	return fmt.Sprintf("found %q, want %q", e.Found, e.Wanted)
}

// HostKeyMismatchError is the cause inside an ErrHostKeyMismatch *Error.
type HostKeyMismatchError struct {
	Image, Seat string
	Pinned      string // SHA256 fingerprint recorded on first use
	Presented   string // SHA256 fingerprint the server presented now
}

func (e *HostKeyMismatchError) Error() string {
	return fmt.Sprintf("host key for image %q on seat %s changed: pinned %s, presented %s", e.Image, e.Seat, e.Pinned, e.Presented)
}
