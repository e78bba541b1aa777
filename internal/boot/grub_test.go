package boot

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestGrubConfigGolden(t *testing.T) {
	cases := []struct {
		name  string
		d     Decision
		paths TFTPPaths
	}{
		{"local", Decision{Action: Exit, Reason: "no job for this seat"}, nil},
		{"local-zero", Decision{}, nil},
		{"linux", Decision{Action: Linux, Kernel: "http://10.0.0.1:8080/files/vmlinuz", Initrds: []string{"http://10.0.0.1:8080/files/initrd.gz"},
			Cmdline: "console=ttyS0,115200 quiet", Reason: "restore LAB-A"}, nil},
		{"linux-clonezilla", Decision{Action: Linux,
			Kernel:  "http://10.0.0.1:8080/live/3.2.1-9/vmlinuz",
			Initrds: []string{"http://10.0.0.1:8080/live/3.2.1-9/initrd.img", "tftp://10.0.0.2/extra.cpio"},
			Cmdline: `boot=live fetch=http://10.0.0.1:8080/live/3.2.1-9/filesystem.squashfs ocs_live_run="ocs-sr -batch -g auto restoredisk img sda" ocs_live_extra_param="" ocs_live_batch=yes`,
			Reason:  "run 7: it's $HOME; rm -rf / # injected?\nline"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := GrubConfig(c.d, c.paths)
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", c.name+".grub.cfg")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update once to create it)", err)
			}
			if got != string(want) {
				t.Errorf("GrubConfig() =\n%s\nwant (%s)\n%s", got, golden, want)
			}
		})
	}
}

func TestGrubConfigRefuses(t *testing.T) {
	k := "http://10.0.0.1/vmlinuz"
	cases := map[string]Decision{
		"action":         {Action: Action(9)},
		"no kernel":      {Action: Linux},
		"ftp kernel":     {Action: Linux, Kernel: "ftp://h/vmlinuz"},
		"query":          {Action: Linux, Kernel: "http://h/vmlinuz?x=1"},
		"space in path":  {Action: Linux, Kernel: "http://h/a%20b/vmlinuz"},
		"dotdot":         {Action: Linux, Kernel: "http://h/a/../vmlinuz"},
		"tftp port":      {Action: Linux, Kernel: "tftp://h:69/vmlinuz"},
		"single quote":   {Action: Linux, Kernel: k, Cmdline: `ocs_prerun="wget 'http://x/?a&b'"`},
		"backslash":      {Action: Linux, Kernel: k, Cmdline: `a=b\c`},
		"inner quote":    {Action: Linux, Kernel: k, Cmdline: `a=b"c d"`},
		"whole quoted":   {Action: Linux, Kernel: k, Cmdline: `"a=b c"`},
		"unbalanced":     {Action: Linux, Kernel: k, Cmdline: `a="b c`},
		"tab in quotes":  {Action: Linux, Kernel: k, Cmdline: "a=\"b\tc\""},
		"newline":        {Action: Linux, Kernel: k, Cmdline: "a\nb"},
		"non-ascii":      {Action: Linux, Kernel: k, Cmdline: "a=é"},
		"nameless":       {Action: Linux, Kernel: k, Cmdline: `="x y"`},
		"bad initrd":     {Action: Linux, Kernel: k, Initrds: []string{"file:///etc/passwd"}},
		"initrd no name": {Action: Linux, Kernel: k, Initrds: []string{"http://h/dir/"}},
		"kernel no host": {Action: Linux, Kernel: "http:///vmlinuz"},
		"kernel setting": {Action: Linux, Kernel: "http://h/${x}"},
	}
	for name, d := range cases {
		t.Run(name, func(t *testing.T) {
			if s, err := GrubConfig(d, nil); !errors.Is(err, ErrUnsafe) {
				t.Errorf("GrubConfig = %q, %v; want ErrUnsafe", s, err)
			}
		})
	}
}

func TestGrubTFTPPaths(t *testing.T) {
	for in, want := range map[string]string{
		"http://10.0.0.1:8080/live/v/vmlinuz": "/live/v/vmlinuz",
		"https://pumi.lab/files/initrd.img":   "/files/initrd.img",
		"tftp://10.0.0.2/extra.cpio":          "(tftp,10.0.0.2)/extra.cpio",
	} {
		if got, err := URLPath(in); err != nil || got != want {
			t.Errorf("URLPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	// A caller's own mapping is used as given, and its errors are passed on.
	d := Decision{Action: Linux, Kernel: "http://h/k", Initrds: []string{"http://h/i"}}
	s, err := GrubConfig(d, func(u string) (string, error) { return "/mapped/" + baseName(u), nil })
	if err != nil || !strings.Contains(s, "\nlinux /mapped/k\ninitrd /mapped/i\n") {
		t.Errorf("custom paths: %v\n%s", err, s)
	}
	boom := errors.New("not served over TFTP")
	if _, err := GrubConfig(d, func(string) (string, error) { return "", boom }); !errors.Is(err, boom) {
		t.Errorf("mapping error lost: %v", err)
	}
}

// TestGrubKernelArgsReachKernel: for accepted command lines, what the
// kernel parses from GRUB's rebuilt command line equals what it parses
// from the original (the models are checked against real GRUB and Linux in
// the Secure Boot QEMU test in internal/netboot).
func TestGrubKernelArgsReachKernel(t *testing.T) {
	for _, c := range []string{
		`boot=live quiet`,
		`ocs_live_run="ocs-sr -batch -g auto restoredisk img sda" ocs_live_extra_param="" x="y"`,
		"  a=b\t\tc  ",
	} {
		args, err := GrubKernelArgs(c)
		if err != nil {
			t.Fatalf("%q: %v", c, err)
		}
		if got, want := kernelParams(grubLoaderCmdline(args)), kernelParams(c); !slices.Equal(got, want) {
			t.Errorf("%q: kernel sees %q through GRUB, %q directly", c, got, want)
		}
	}
}

func TestGrubConfigPath(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0, 0xab, 0xcd, 0xef}
	if p := GrubConfigPath(mac); p != "grub/52-54-00-ab-cd-ef.cfg" {
		t.Errorf("GrubConfigPath = %q", p)
	}
	for in, ok := range map[string]bool{
		"grub/52-54-00-ab-cd-ef.cfg": true, "/grub/52:54:00:AB:CD:EF.cfg": true, "grub/5254.00ab.cdef.cfg": true,
		"grub/grub.cfg": false, "grub/52-54-00-ab-cd.cfg": false, "grub/x/52-54-00-ab-cd-ef.cfg": false,
		"52-54-00-ab-cd-ef.cfg": false, "grub/52-54-00-ab-cd-ef.cfg.bak": false,
	} {
		m, got := ParseGrubConfigPath(in)
		if got != ok || (ok && m.String() != mac.String()) {
			t.Errorf("ParseGrubConfigPath(%q) = %v, %v; want ok=%v", in, m, got, ok)
		}
	}
}

type errDecider struct{ err error }

func (e errDecider) Decide(context.Context, Machine) (Decision, error) {
	return Decision{}, e.err
}

func TestGrubFiles(t *testing.T) {
	dec, err := ParseStatic([]byte(`{"52:54:00:00:00:01": {"kernel": "http://10.0.0.1:8080/files/vmlinuz", "cmdline": "quiet", "reason": "r1"},
		"52:54:00:00:00:02": {"kernel": "http://10.0.0.1:8080/files/vmlinuz", "cmdline": "a='b'"}}`))
	if err != nil {
		t.Fatal(err)
	}
	g := NewGrubFiles(t.Context(), dec, nil, quietLog())
	read := func(name string) string {
		t.Helper()
		f, err := g.Open(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		st, err := f.Stat()
		if err != nil || !st.Mode().IsRegular() {
			t.Fatalf("%s: stat %v, %v", name, st, err)
		}
		b, err := fs.ReadFile(g, name)
		if err != nil || int64(len(b)) != st.Size() {
			t.Fatalf("%s: %d bytes, stat says %d: %v", name, len(b), st.Size(), err)
		}
		return string(b)
	}
	if got := read("grub/grub.cfg"); got != GrubDispatcher() {
		t.Errorf("grub/grub.cfg is not the dispatcher:\n%s", got)
	}
	if got := read("grub/52-54-00-00-00-01.cfg"); !strings.Contains(got, "\nlinux /files/vmlinuz quiet\n") {
		t.Errorf("seat 1:\n%s", got)
	}
	// Accepted by the iPXE rendering, refused by GRUB's: the seat boots
	// its disk and the config says why.
	if got := read("grub/52-54-00-00-00-02.cfg"); !strings.Contains(got, "pumi: no boot decision:") || !strings.Contains(got, "chainloader") {
		t.Errorf("seat 2:\n%s", got)
	}
	if got := read("grub/52-54-00-00-00-03.cfg"); !strings.Contains(got, "boots its local disk:' 'unknown MAC'") && !strings.Contains(got, "'unknown MAC'") {
		t.Errorf("unknown seat:\n%s", got)
	}
	for _, name := range []string{"grub", "grub/x.cfg", "shimx64.efi", "grub/../grub/grub.cfg", "/grub/grub.cfg"} {
		if _, err := g.Open(name); err == nil {
			t.Errorf("%s: opened", name)
		}
	}
	if _, err := g.Open("shimx64.efi"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("foreign name: %v, want fs.ErrNotExist so the next layer serves it", err)
	}
	ge := NewGrubFiles(t.Context(), errDecider{errors.New("state store down")}, nil, quietLog())
	b, err := fs.ReadFile(ge, "grub/52-54-00-00-00-01.cfg")
	if err != nil || !strings.Contains(string(b), "decision failed: state store down") {
		t.Errorf("failed decision: %v\n%s", err, b)
	}
}

// --- models of GRUB 2.06 and Linux, for the fuzz test ---------------------

// grubWords lexes a line the way GRUB's lexer does for what GrubConfig
// writes: bare characters and '...' strings, concatenated into words,
// separated by blanks. ok is false for anything else GRUB would treat
// specially (so the fuzz test fails if the renderer ever emits it).
func grubWords(line string) (words []string, ok bool) {
	var cur strings.Builder
	have := false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == ' ':
			if have {
				words = append(words, cur.String())
				cur.Reset()
				have = false
			}
		case c == '\'':
			j := strings.IndexByte(line[i+1:], '\'')
			if j < 0 {
				return nil, false
			}
			cur.WriteString(line[i+1 : i+1+j])
			i += j + 1
			have = true
		case strings.IndexByte("\"$\\;|&<>{}#\t", c) >= 0:
			return nil, false
		default:
			cur.WriteByte(c)
			have = true
		}
	}
	if have {
		words = append(words, cur.String())
	}
	return words, true
}

// grubLoaderCmdline is GRUB 2.06's grub_create_loader_cmdline: arguments
// joined by spaces; \ ' " escaped with a backslash; an argument with a
// space wrapped in double quotes.
func grubLoaderCmdline(args []string) string {
	var out []string
	for _, a := range args {
		var b strings.Builder
		for i := 0; i < len(a); i++ {
			if a[i] == '\\' || a[i] == '\'' || a[i] == '"' {
				b.WriteByte('\\')
			}
			b.WriteByte(a[i])
		}
		s := b.String()
		if strings.Contains(a, " ") {
			s = `"` + s + `"`
		}
		out = append(out, s)
	}
	return strings.Join(out, " ")
}

// kernelParams is Linux's next_arg (lib/cmdline.c, kernel/params.c) over a
// whole command line: "param\x00value" (or "param" with no '='), quotes
// removed as the kernel removes them.
func kernelParams(s string) []string {
	var out []string
	b := []byte(s)
	for {
		for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
			b = b[1:]
		}
		if len(b) == 0 {
			return out
		}
		inQ, quoted := false, false
		if b[0] == '"' {
			b = b[1:]
			inQ, quoted = true, true
		}
		equals, i := 0, 0
		for ; i < len(b); i++ {
			if (b[i] == ' ' || b[i] == '\t') && !inQ {
				break
			}
			if equals == 0 && b[i] == '=' {
				equals = i
			}
			if b[i] == '"' {
				inQ = !inQ
			}
		}
		arg := slices.Clone(b[:i])
		end := len(arg)
		var param, val string
		hasVal := equals != 0
		if hasVal {
			param = string(arg[:equals])
			v := arg[equals+1 : end]
			if len(v) > 0 && v[0] == '"' {
				v = v[1:]
				if len(v) > 0 && v[len(v)-1] == '"' {
					v = v[:len(v)-1]
				}
			} else if quoted && len(v) > 0 && v[len(v)-1] == '"' {
				v = v[:len(v)-1]
			}
			val = string(v)
		} else {
			p := arg
			if quoted && len(p) > 0 && p[len(p)-1] == '"' {
				p = p[:len(p)-1]
			}
			param = string(p)
		}
		if hasVal {
			out = append(out, param+"\x00"+val)
		} else {
			out = append(out, param)
		}
		b = b[i:]
	}
}

// FuzzGrubConfig renders decisions with arbitrary text: never a panic;
// every line of an accepted config lexes as plain GRUB words (no
// variable, command separator or unbalanced quote from the input), the
// kernel line's arguments reach the kernel as the same parameters the
// original command line gives it, and the config is exactly the lines
// GrubConfig writes (nothing injected).
func FuzzGrubConfig(f *testing.F) {
	f.Add("http://10.0.0.1/vmlinuz", "http://10.0.0.1/initrd.gz", "console=ttyS0 quiet", "reason")
	f.Add("http://h/k", "tftp://h/i", `a="b c" d=""`, "x\ny")
	f.Add("https://h/k?x=${y}", "", "#", "$")
	f.Add("http://h/k", "", `a="b' c"`, "'")
	f.Add("tftp://h/k", "", `x="" "y"`, "")
	fixed := map[string]bool{}
	for _, l := range strings.Split(grubLocal(), "\n") {
		fixed[l] = true
	}
	f.Fuzz(func(t *testing.T, kernel, initrd, cmdline, reason string) {
		var initrds []string
		if initrd != "" {
			initrds = []string{initrd}
		}
		for _, d := range []Decision{{Action: Exit, Reason: reason}, {Action: Linux, Kernel: kernel, Initrds: initrds, Cmdline: cmdline, Reason: reason}} {
			s, err := GrubConfig(d, nil)
			if err != nil {
				if !errors.Is(err, ErrUnsafe) {
					t.Fatalf("error without ErrUnsafe: %v", err)
				}
				continue
			}
			var linux []string
			for _, l := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
				if fixed[l] || strings.HasPrefix(l, "# pumi:") || l == "boot" ||
					l == "echo 'pumi: loading or booting the kernel failed, falling back to the local disk'" {
					continue
				}
				var rest string
				var ok bool
				switch {
				case strings.HasPrefix(l, `echo "pumi: $net_default_mac boots `):
					_, rest, ok = strings.Cut(l, `:" `)
					if !ok {
						_, rest, ok = strings.Cut(l, `linux" `)
					}
				case strings.HasPrefix(l, "linux "), strings.HasPrefix(l, "initrd "):
					rest, ok = l, true
				}
				if !ok {
					t.Fatalf("unexpected line %q in\n%s", l, s)
				}
				w, ok := grubWords(rest)
				if !ok {
					t.Fatalf("line %q does not lex as plain GRUB words", l)
				}
				if strings.HasPrefix(l, "linux ") {
					linux = w
				}
			}
			if d.Action == Linux {
				if len(linux) < 2 {
					t.Fatalf("no linux line in\n%s", s)
				}
				if got, want := kernelParams(grubLoaderCmdline(linux[2:])), kernelParams(cmdline); !slices.Equal(got, want) {
					t.Fatalf("cmdline %q: kernel sees %q through GRUB, %q directly", cmdline, got, want)
				}
			}
		}
	})
}

// FuzzGrubFiles opens arbitrary names: never a panic; only the dispatcher
// and per-MAC names exist.
func FuzzGrubFiles(f *testing.F) {
	for _, s := range []string{"grub/grub.cfg", "grub/52-54-00-ab-cd-ef.cfg", "grub/.cfg", "grub/../x", "", "grub/52:54:00:ab:cd:ef:00.cfg"} {
		f.Add(s)
	}
	g := NewGrubFiles(context.Background(), &StaticDecider{}, nil, quietLog())
	f.Fuzz(func(t *testing.T, name string) {
		fl, err := g.Open(name)
		if err != nil {
			return
		}
		defer fl.Close()
		if _, ok := ParseGrubConfigPath(name); !ok && name != GrubDispatcherPath {
			t.Fatalf("%q opened", name)
		}
	})
}
