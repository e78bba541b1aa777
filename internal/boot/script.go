// Package boot owns what a network-booting seat is told to do: the per-MAC
// Decision (exit to the local disk, or load a Linux kernel + initrds), its
// rendering as an iPXE script, the HTTP endpoint iPXE fetches that script
// from (/boot/<mac>.ipxe), and the boot files (kernels, initrds, iPXE itself)
// served over HTTP with Range support.
//
// The script is the only thing iPXE executes, and iPXE has its own little
// shell language (comments, `||`, `&&`, `${setting}` expansion). Everything
// that goes into a script is therefore checked here, and a Decision that
// iPXE would mangle is refused rather than rendered.
package boot

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path"
	"strings"

	"github.com/pumi-lab/pumi/internal/macaddr"
)

// Action is what the seat should do on this boot.
type Action int

const (
	// Exit hands control back to the firmware, which boots the next entry in
	// its boot order (the local disk). It is the zero value on purpose: a
	// Decision nobody filled in must never start an installer.
	Exit Action = iota
	// Linux loads Decision.Kernel with Decision.Initrds and Decision.Cmdline.
	Linux
)

func (a Action) String() string {
	switch a {
	case Exit:
		return "exit"
	case Linux:
		return "linux"
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// Decision is the answer for one seat on one boot.
type Decision struct {
	Action  Action
	Kernel  string   // absolute URL (http, https or tftp) of the kernel, Linux only
	Initrds []string // absolute URLs of the initrds, Linux only; may be empty
	Cmdline string   // kernel command line, Linux only
	Reason  string   // why pumi decided this; shown on the seat's screen and in logs
}

// Machine is who asks for a boot decision: the MAC named in the request and
// the address the request arrived from (the transport's source address, which
// the kernel reports, not a field the client wrote into the request).
type Machine struct {
	MAC  net.HardwareAddr
	Addr netip.Addr // invalid when unknown (tests, non-IP callers)
}

// Decider decides per machine what a seat boots (like pixiecore's Booter).
// The boot script handler calls it once per script request, so it runs on
// every network boot of every PC on the lab network, known or not, and on
// every curl a visitor types: a Decider must answer an untrusted caller with
// a harmless decision (Exit) and must not change state for it. An error means
// "no decision now" (state unreadable); the handler then sends the seat to
// its local disk. The appliance implements it in internal/seatjob;
// StaticDecider implements it from a JSON file for pumi-netboot.
type Decider interface {
	Decide(ctx context.Context, m Machine) (Decision, error)
}

// ScriptURL is the URL iPXE is sent to (by DHCP) to fetch mac's script.
func ScriptURL(base string, mac net.HardwareAddr) string {
	return strings.TrimRight(base, "/") + "/boot/" + macaddr.Hyphen(mac) + ".ipxe"
}

// ErrUnsafe is wrapped by Script's errors for decisions iPXE would
// misinterpret; the caller should fix the decision's source (image metadata,
// static config), not retry.
var ErrUnsafe = errors.New("unsafe for an iPXE script")

// Script renders d as an iPXE script.
//
// Exit renders `exit 1`, never `exit 0`: with status 0 UEFI firmware treats
// the boot option as having succeeded and opens its boot menu, which hangs an
// unattended lab PC; any non-zero status makes it try the next boot option.
func Script(d Decision) (string, error) {
	var b strings.Builder
	b.WriteString("#!ipxe\n")
	switch d.Action {
	case Exit:
		fmt.Fprintf(&b, "echo pumi: ${net0/mac} boots its local disk: %s\n", echoText(d.Reason))
		b.WriteString("exit 1\n")
	case Linux:
		if err := checkURL("kernel", d.Kernel); err != nil {
			return "", err
		}
		words, err := cmdlineWords(d.Cmdline)
		if err != nil {
			return "", err
		}
		var initrdNames []string
		seen := map[string]bool{}
		for _, u := range d.Initrds {
			if err := checkURL("initrd", u); err != nil {
				return "", err
			}
			// iPXE names an image after its URL's last path element; two
			// initrds with one name would shadow each other in the kernel.
			n := baseName(u)
			if seen[n] {
				return "", fmt.Errorf("two initrds named %q: %w (rename one)", n, ErrUnsafe)
			}
			seen[n] = true
			initrdNames = append(initrdNames, "initrd="+n)
		}
		fmt.Fprintf(&b, "echo pumi: ${net0/mac} boots linux %s: %s\n", baseName(d.Kernel), echoText(d.Reason))
		// initrd=<name> is required by this (2019) iPXE: it hands initrds to
		// the kernel's EFI stub through its virtual file system, and the
		// stub only loads those named on the command line.
		kernel := append([]string{"kernel", d.Kernel}, initrdNames...)
		kernel = append(kernel, words...)
		b.WriteString(strings.Join(kernel, " ") + "\n")
		for _, u := range d.Initrds {
			fmt.Fprintf(&b, "initrd %s\n", u)
		}
		b.WriteString("boot\n")
		// If boot itself fails (corrupt kernel, out of memory) iPXE goes on
		// with the next line; falling back to the disk beats a stuck seat.
		b.WriteString("echo pumi: boot failed, falling back to the local disk\n")
		b.WriteString("exit 1\n")
	default:
		return "", fmt.Errorf("decision action %v: %w (want Exit or Linux)", d.Action, ErrUnsafe)
	}
	return b.String(), nil
}

// ErrorScript is served when no decision could be made: it says why on the
// seat's screen and exits to the local disk, the safe default.
func ErrorScript(msg string) string {
	return "#!ipxe\necho pumi: no boot decision: " + echoText(msg) + "\nexit 1\n"
}

// cmdlineWords splits a kernel command line into the words iPXE will see and
// refuses any it would treat as shell syntax instead of passing it on. iPXE
// rejoins the words with single spaces, so runs of blanks collapse (harmless
// for Linux, including inside quoted values).
func cmdlineWords(cmdline string) ([]string, error) {
	for _, r := range cmdline {
		if r == '\n' || r == '\r' {
			return nil, fmt.Errorf("kernel command line has a line break: %w (one line only)", ErrUnsafe)
		}
		if r != ' ' && r != '\t' && (r < 0x21 || r > 0x7e) {
			return nil, fmt.Errorf("kernel command line has non-printable or non-ASCII character %q: %w", r, ErrUnsafe)
		}
	}
	words := strings.Fields(cmdline)
	for _, w := range words {
		if err := checkWord(w); err != nil {
			return nil, fmt.Errorf("kernel command line word %q: %w", w, err)
		}
	}
	return words, nil
}

// checkWord refuses a word iPXE's parser would act on: `#` starts a comment,
// `;`, `&&` and `||` separate commands, `${` expands a setting, and `\`
// is an escape character in newer iPXE versions.
func checkWord(w string) error {
	for _, p := range []string{"#", ";", "&&", "||"} {
		if strings.HasPrefix(w, p) {
			return fmt.Errorf("starts with %q, which iPXE parses as script syntax: %w", p, ErrUnsafe)
		}
	}
	if strings.Contains(w, "${") {
		return fmt.Errorf("contains \"${\", which iPXE expands as a setting: %w", ErrUnsafe)
	}
	if strings.Contains(w, `\`) {
		return fmt.Errorf("contains a backslash, which iPXE may treat as an escape: %w", ErrUnsafe)
	}
	return nil
}

func checkURL(what, s string) error {
	if s == "" {
		return fmt.Errorf("%s URL is empty: %w (a Linux decision needs one)", what, ErrUnsafe)
	}
	for _, r := range s {
		if r < 0x21 || r > 0x7e {
			return fmt.Errorf("%s URL %q has a blank, control or non-ASCII character: %w (percent-encode it)", what, s, ErrUnsafe)
		}
	}
	if err := checkWord(s); err != nil {
		return fmt.Errorf("%s URL %q: %w", what, s, err)
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%s URL %q: %w: %v", what, s, ErrUnsafe, err)
	}
	switch u.Scheme {
	case "http", "https", "tftp":
	default:
		return fmt.Errorf("%s URL %q: scheme %q: %w (want http, https or tftp)", what, s, u.Scheme, ErrUnsafe)
	}
	if u.Host == "" {
		return fmt.Errorf("%s URL %q has no host: %w", what, s, ErrUnsafe)
	}
	if n := baseName(s); n == "" || n == "/" || n == "." {
		return fmt.Errorf("%s URL %q has no file name: %w", what, s, ErrUnsafe)
	}
	return nil
}

// baseName is the last path element of a URL, which iPXE uses as the
// image's name (and so as the name in initrd=<name>).
func baseName(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return ""
	}
	p := u.Path
	if strings.HasSuffix(p, "/") {
		return ""
	}
	return path.Base(p)
}

// echoText makes free text safe to print with iPXE's echo: no line breaks,
// no setting expansion, no command separators or comments.
func echoText(s string) string {
	if s == "" {
		s = "(no reason given)"
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '$' || r == '\\' || r == '#' || r == ';' || r == '&' || r == '|':
			b.WriteByte('_')
		case r < 0x20 || r > 0x7e:
			b.WriteByte(' ')
		default:
			b.WriteRune(r)
		}
	}
	return strings.Join(strings.Fields(b.String()), " ")
}
