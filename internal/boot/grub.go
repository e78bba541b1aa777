package boot

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strings"

	"github.com/pumi-lab/pumi/internal/macaddr"
)

// The signed chain (Secure Boot on) renders the same Decision for GRUB
// instead of iPXE: shim -> Debian's signed network GRUB, which reads
// grub/grub.cfg from the TFTP server it booted from (its embedded prefix is
// /grub; it looks for no per-MAC file by itself). pumi's grub/grub.cfg is
// GrubDispatcher, which sources grub/<mac>.cfg, the rendering of that
// seat's Decision by GrubConfig.
//
// Debian's signed GRUB has no HTTP and cannot load modules under Secure
// Boot, so kernels and initrds come over TFTP from the same server: every
// URL of the Decision is mapped to a TFTP path (TFTPPaths), which pumi's
// TFTP must serve.

// GrubConfigPath is the TFTP path of mac's GRUB config, as GrubDispatcher
// asks for it: "grub/52-54-00-ab-cd-ef.cfg".
func GrubConfigPath(mac net.HardwareAddr) string {
	return "grub/" + macaddr.Hyphen(mac) + ".cfg"
}

// ParseGrubConfigPath extracts the MAC from a TFTP path "grub/<mac>.cfg"
// (leading slashes allowed, any MAC spelling). ok is false when the path is
// not a per-MAC config path at all.
func ParseGrubConfigPath(p string) (mac net.HardwareAddr, ok bool) {
	rest, found := strings.CutPrefix(strings.TrimLeft(p, "/"), "grub/")
	if !found {
		return nil, false
	}
	name, found := strings.CutSuffix(rest, ".cfg")
	if !found || strings.Contains(name, "/") || name == "grub" {
		return nil, false
	}
	m, err := macaddr.Parse(name)
	if err != nil {
		return nil, false
	}
	return m, true
}

// GrubDispatcherPath is where Debian's signed network GRUB looks for its
// configuration: $prefix/grub.cfg with prefix (tftp,<next-server>)/grub.
const GrubDispatcherPath = "grub/grub.cfg"

// localLoaders are tried in order to boot the seat's own disk. GRUB's `exit`
// cannot be used: it returns "success" to the firmware, which then opens
// its boot manager menu and waits forever (measured with OVMF, see
// docs/secureboot.md). \EFI\BOOT\BOOTX64.EFI is the removable-media path
// every bootable ESP has (Windows copies bootmgfw.efi there); the others
// are the installed loaders of the systems labs run.
var localLoaders = []string{
	"/EFI/BOOT/BOOTX64.EFI",
	"/EFI/debian/shimx64.efi",
	"/EFI/ubuntu/shimx64.efi",
	"/EFI/Microsoft/Boot/bootmgfw.efi",
}

// grubLocal boots the first ESP loader found. `set root` before
// `chainloader` matters: chainloading "($esp)/path" with the network as
// root hands the loader the NIC's device path, and the local shim then
// cannot find its own GRUB ("Failed to load image \EFI\BOOT\grubx64.efi").
func grubLocal() string {
	var b strings.Builder
	for _, l := range localLoaders {
		fmt.Fprintf(&b, `set pumi_esp=
search --no-floppy --file --set=pumi_esp %[1]s
if [ -n "$pumi_esp" ]; then
  echo "pumi: chainloading ($pumi_esp)%[1]s"
  set root=$pumi_esp
  chainloader %[1]s
  boot
fi
`, l)
	}
	b.WriteString(`echo "pumi: no boot loader found on a local disk (tried ` + strings.Join(localLoaders, " ") + `)"
echo "pumi: handing back to the firmware; it may stop in its boot menu"
sleep 10
exit
`)
	return b.String()
}

// GrubDispatcher is pumi's grub/grub.cfg: it takes the seat's MAC from
// GRUB's $net_default_mac (the NIC GRUB was booted through), sources that
// seat's grub/<mac>.cfg from the same TFTP server, and boots the local disk
// if that file cannot be had (a missing file is skipped by `source`).
func GrubDispatcher() string {
	return `# pumi: read by Debian's signed network GRUB as $prefix/grub.cfg (prefix (tftp,<pumi>)/grub).
set timeout=0
set pumi_mac=
regexp --set=1:m1 --set=2:m2 --set=3:m3 --set=4:m4 --set=5:m5 --set=6:m6 '^([0-9a-fA-F][0-9a-fA-F]):([0-9a-fA-F][0-9a-fA-F]):([0-9a-fA-F][0-9a-fA-F]):([0-9a-fA-F][0-9a-fA-F]):([0-9a-fA-F][0-9a-fA-F]):([0-9a-fA-F][0-9a-fA-F])$' "$net_default_mac"
if [ -n "$m6" ]; then
  set pumi_mac="$m1-$m2-$m3-$m4-$m5-$m6"
  echo "pumi: GRUB on $net_default_mac ($net_default_ip) asks pumi what to do"
  source "$prefix/$pumi_mac.cfg"
fi
echo "pumi: no boot configuration for '$net_default_mac' from $prefix; booting the local disk"
` + grubLocal()
}

// TFTPPaths maps a kernel or initrd URL of a Decision to the path GRUB
// fetches over TFTP. nil means URLPath.
type TFTPPaths func(rawURL string) (string, error)

// URLPath is the default TFTPPaths: a tftp:// URL keeps its server
// ("(tftp,10.0.0.5)/path"); an http(s) URL becomes its path on the TFTP
// server GRUB booted from ("/live/v/vmlinuz"). That is pumi itself, whose
// TFTP serves the same trees as its HTTP (netboot.Mount), so one Decision
// works for both chains.
func URLPath(rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("URL %q: %w: %v", rawURL, ErrUnsafe, err)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("URL %q has a query or fragment, which TFTP cannot carry: %w", rawURL, ErrUnsafe)
	}
	p := u.Path
	if !strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("URL %q has no absolute path: %w", rawURL, ErrUnsafe)
	}
	switch u.Scheme {
	case "http", "https":
		return p, nil
	case "tftp":
		if !grubHost.MatchString(u.Hostname()) || u.Port() != "" {
			return "", fmt.Errorf("TFTP URL %q: host must be a plain IPv4 address or name without port for GRUB's (tftp,host): %w", rawURL, ErrUnsafe)
		}
		return "(tftp," + u.Hostname() + ")" + p, nil
	}
	return "", fmt.Errorf("URL %q: scheme %q: %w (want http, https or tftp)", rawURL, u.Scheme, ErrUnsafe)
}

var grubHost = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$`)

// grubPath: what GRUB gets as a file name. TFTP paths are plain: no blank,
// quote, control or non-ASCII character, no "." or ".." element (pumi's
// TFTP refuses those anyway).
var grubPath = regexp.MustCompile(`^(\(tftp,[A-Za-z0-9][A-Za-z0-9.-]*\))?(/[A-Za-z0-9_+~@%=,:-][A-Za-z0-9._+~@%=,:-]*)+$`)

func checkGrubPath(what, p string) error {
	if !grubPath.MatchString(p) {
		return fmt.Errorf("%s TFTP path %q: %w (letters, digits and . _ + ~ @ %% = , : - only, absolute, no empty, . or .. elements)", what, p, ErrUnsafe)
	}
	for _, el := range strings.Split(p, "/") {
		if el == "." || el == ".." {
			return fmt.Errorf("%s TFTP path %q has a . or .. element: %w", what, p, ErrUnsafe)
		}
	}
	return nil
}

// GrubConfig renders d as a GRUB script for the signed chain, the
// counterpart of Script: Linux loads the kernel and initrds over TFTP
// (paths from paths, nil: URLPath) and boots, falling back to the local
// disk if that fails; Exit chainloads the local disk's boot loader.
//
// The kernel command line must reach the kernel as iPXE would pass it.
// GRUB rebuilds it from its parsed arguments (grub_create_loader_cmdline):
// it backslash-escapes every ' " and \ and wraps an argument holding a
// blank in double quotes. So a word name="a b" is passed as the argument
// name=a b and reaches the kernel as "name=a b", which the kernel parses
// as the same parameter and value; a ' or \ anywhere, or a " anywhere
// else, cannot be passed through and is refused with ErrUnsafe.
func GrubConfig(d Decision, paths TFTPPaths) (string, error) {
	if paths == nil {
		paths = URLPath
	}
	var b strings.Builder
	b.WriteString("# pumi: this seat's boot decision, rendered for GRUB\n")
	switch d.Action {
	case Exit:
		fmt.Fprintf(&b, "echo \"pumi: $net_default_mac boots its local disk:\" %s\n", grubQuote(grubText(d.Reason)))
		b.WriteString(grubLocal())
	case Linux:
		if err := checkURL("kernel", d.Kernel); err != nil {
			return "", err
		}
		kernel, err := paths(d.Kernel)
		if err != nil {
			return "", fmt.Errorf("kernel: %w", err)
		}
		if err := checkGrubPath("kernel", kernel); err != nil {
			return "", err
		}
		args, err := GrubKernelArgs(d.Cmdline)
		if err != nil {
			return "", err
		}
		var initrds []string
		for _, u := range d.Initrds {
			if err := checkURL("initrd", u); err != nil {
				return "", err
			}
			p, err := paths(u)
			if err != nil {
				return "", fmt.Errorf("initrd: %w", err)
			}
			if err := checkGrubPath("initrd", p); err != nil {
				return "", err
			}
			initrds = append(initrds, p)
		}
		fmt.Fprintf(&b, "echo \"pumi: $net_default_mac boots linux\" %s\n", grubQuote(grubText(baseName(d.Kernel)+": "+reasonOr(d.Reason))))
		line := []string{"linux", grubQuote(kernel)}
		for _, a := range args {
			line = append(line, grubQuote(a))
		}
		b.WriteString(strings.Join(line, " ") + "\n")
		if len(initrds) > 0 {
			line = []string{"initrd"}
			for _, p := range initrds {
				line = append(line, grubQuote(p))
			}
			b.WriteString(strings.Join(line, " ") + "\n")
		}
		b.WriteString("boot\n")
		// GRUB goes on with the next command when one fails (a missing
		// file, "bad shim signature"): the disk beats a stuck seat.
		b.WriteString("echo 'pumi: loading or booting the kernel failed, falling back to the local disk'\n")
		b.WriteString(grubLocal())
	default:
		return "", fmt.Errorf("decision action %v: %w (want Exit or Linux)", d.Action, ErrUnsafe)
	}
	return b.String(), nil
}

// GrubErrorConfig is served for a seat whose decision failed or cannot be
// rendered for GRUB: it says why and boots the local disk, the safe default.
func GrubErrorConfig(msg string) string {
	return "# pumi: no boot decision\necho 'pumi: no boot decision:' " + grubQuote(grubText(msg)) + "\n" + grubLocal()
}

func reasonOr(s string) string {
	if s == "" {
		return "(no reason given)"
	}
	return s
}

// GrubKernelArgs splits an iPXE-style kernel command line into the
// arguments GRUB's `linux` command must be given so that the kernel parses
// the same parameters (see GrubConfig). Words are split like the kernel
// does: at blanks outside double quotes.
func GrubKernelArgs(cmdline string) ([]string, error) {
	for _, r := range cmdline {
		if r == '\n' || r == '\r' {
			return nil, fmt.Errorf("kernel command line has a line break: %w (one line only)", ErrUnsafe)
		}
		if r != ' ' && r != '\t' && (r < 0x21 || r > 0x7e) {
			return nil, fmt.Errorf("kernel command line has non-printable or non-ASCII character %q: %w", r, ErrUnsafe)
		}
	}
	words, err := splitKernelWords(cmdline)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(words))
	for _, w := range words {
		if strings.ContainsRune(w, '\t') {
			// GRUB quotes an argument only for a space; the kernel would
			// split this one at the tab.
			return nil, fmt.Errorf("kernel command line word %q has a tab inside quotes: %w (use a space)", w, ErrUnsafe)
		}
		if strings.ContainsAny(w, `'\`) {
			return nil, fmt.Errorf("kernel command line word %q: GRUB would pass its ' or \\ to the kernel backslash-escaped: %w", w, ErrUnsafe)
		}
		n := strings.Count(w, `"`)
		switch {
		case n == 0:
			out = append(out, w)
		case n == 2:
			name, val, ok := strings.Cut(w, "=")
			if !ok || strings.Contains(name, `"`) || len(val) < 2 || val[0] != '"' || val[len(val)-1] != '"' {
				return nil, fmt.Errorf("kernel command line word %q: GRUB can only pass double quotes around a whole value (name=\"value\"): %w", w, ErrUnsafe)
			}
			arg := name + "=" + val[1:len(val)-1]
			if strings.HasPrefix(arg, "=") {
				return nil, fmt.Errorf("kernel command line word %q has no name: %w", w, ErrUnsafe)
			}
			out = append(out, arg)
		default:
			return nil, fmt.Errorf("kernel command line word %q: GRUB can only pass double quotes around a whole value (name=\"value\"): %w", w, ErrUnsafe)
		}
	}
	return out, nil
}

// splitKernelWords splits at blanks outside double quotes, like the
// kernel's next_arg. An unbalanced quote is refused.
func splitKernelWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inQ, have := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			inQ = !inQ
			cur.WriteByte(c)
			have = true
		case (c == ' ' || c == '\t') && !inQ:
			if have {
				words = append(words, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(c)
			have = true
		}
	}
	if inQ {
		return nil, fmt.Errorf("kernel command line has an unbalanced double quote: %w", ErrUnsafe)
	}
	if have {
		words = append(words, cur.String())
	}
	return words, nil
}

// grubBare are the characters a word may hold without quotes: none of them
// means anything to GRUB's lexer (no blank, quote, $, \, ;, |, &, <, >, {,
// }, #, and = only matters in a command's first word, which we never
// quote-free from user data).
var grubBare = regexp.MustCompile(`^[A-Za-z0-9_./,:=+@%~-]+$`)

// grubQuote makes s one GRUB word: bare when that is safe, else in single
// quotes, inside which GRUB takes every character literally. s never holds
// a single quote or control character (callers check), so there is
// nothing to escape.
func grubQuote(s string) string {
	if grubBare.MatchString(s) {
		return s
	}
	return "'" + s + "'"
}

// grubText makes free text safe inside single quotes: printable ASCII
// without ' (replaced by `), blanks collapsed.
func grubText(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\'':
			b.WriteByte('`')
		case r < 0x20 || r > 0x7e:
			b.WriteByte(' ')
		default:
			b.WriteRune(r)
		}
	}
	t := strings.Join(strings.Fields(b.String()), " ")
	if t == "" {
		t = "(no reason given)"
	}
	return t
}
