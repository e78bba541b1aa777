package power

import (
	"errors"
	"fmt"
	"log/slog"
	"regexp"
)

// Secret is a password. It prints and logs as "[redacted]" so that it cannot
// leak through fmt or slog by accident; convert it with string() where the
// actual value is needed.
type Secret string

const redacted = "[redacted]"

func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return redacted
}

// GoString covers %#v.
func (s Secret) GoString() string { return fmt.Sprintf("power.Secret(%q)", s.String()) }

// LogValue covers slog.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// Credential is how pumi logs into a seat. The caller picks it per room or
// per image. With UseKey, pumi's own key is offered first; a non-empty
// Password is tried after it (or alone).
type Credential struct {
	User     string
	Password Secret
	UseKey   bool
}

func (c Credential) method() string {
	switch {
	case c.UseKey && c.Password != "":
		return "key+password"
	case c.UseKey:
		return "key"
	case c.Password != "":
		return "password"
	}
	return "none"
}

// String never includes the password.
func (c Credential) String() string { return fmt.Sprintf("%s (%s)", c.User, c.method()) }

// GoString covers %#v, which would otherwise print the fields.
func (c Credential) GoString() string {
	return fmt.Sprintf("power.Credential{User:%q, Password:%s, UseKey:%t}", c.User, c.Password.GoString(), c.UseKey)
}

// LogValue never includes the password.
func (c Credential) LogValue() slog.Value {
	return slog.GroupValue(slog.String("user", c.User), slog.String("auth", c.method()))
}

// userRE is what pumi accepts as a login name: the user name also becomes
// part of the Signature path, so nothing that could climb out of /home/<user>
// or need shell quoting is allowed.
var userRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,31}$`)

// Validate reports a credential that cannot work.
func (c Credential) Validate() error {
	if !userRE.MatchString(c.User) {
		return fmt.Errorf("ssh user %q: use letters, digits, '.', '_' or '-' (at most 32, not starting with '.' or '-')", c.User)
	}
	if !c.UseKey && c.Password == "" {
		return errors.New("ssh credential for " + c.User + " has neither pumi's key nor a password; enable the key or set a password")
	}
	return nil
}
