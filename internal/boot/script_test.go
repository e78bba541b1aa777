package boot

import (
	"errors"
	"flag"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func TestScriptGolden(t *testing.T) {
	cases := []struct {
		name string
		d    Decision
	}{
		{"local", Decision{Action: Exit, Reason: "image verified"}},
		{"local-zero", Decision{}},
		{"linux", Decision{
			Action:  Linux,
			Kernel:  "http://10.99.0.1:8080/files/vmlinuz",
			Initrds: []string{"http://10.99.0.1:8080/files/initrd.gz"},
			Cmdline: "console=ttyS0,115200  quiet probe.token=abc",
			Reason:  "restore LAB-2026 (desired != verified)",
		}},
		{"linux-clonezilla", Decision{
			Action:  Linux,
			Kernel:  "http://10.0.0.1/files/live/vmlinuz",
			Initrds: []string{"http://10.0.0.1/files/live/initrd.img", "tftp://10.0.0.1/extra.cpio"},
			Cmdline: `boot=live fetch=http://10.0.0.1/files/live/filesystem.squashfs ocs_live_run="ocs-sr -batch -g auto restoredisk img sda" ocs_live_batch=yes`,
			Reason:  "run 7: $HOME; rm -rf # | && \n injected?",
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Script(c.d)
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", c.name+".ipxe")
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
				t.Errorf("Script() =\n%s\nwant (%s)\n%s", got, golden, want)
			}
			if strings.Contains(got, "exit 0") {
				t.Errorf("script contains exit 0: the firmware would open its menu")
			}
		})
	}
}

func TestScriptRefusesUnsafe(t *testing.T) {
	linux := func(kernel, cmdline string, initrds ...string) Decision {
		return Decision{Action: Linux, Kernel: kernel, Cmdline: cmdline, Initrds: initrds}
	}
	const k = "http://10.0.0.1/vmlinuz"
	cases := []struct {
		name string
		d    Decision
	}{
		{"comment word", linux(k, "quiet #rest")},
		{"semicolon word", linux(k, "quiet ;reboot")},
		{"and", linux(k, "quiet && shell")},
		{"or", linux(k, "quiet ||shell")},
		{"setting expansion", linux(k, "ip=${net0/ip}")},
		{"newline", linux(k, "quiet\nshell")},
		{"carriage return", linux(k, "quiet\rshell")},
		{"nul", linux(k, "quiet\x00")},
		{"escape char", linux(k, "quiet\x1b[2J")},
		{"non-ascii", linux(k, "hostname=smörgås")},
		{"backslash", linux(k, `a=b\c`)},
		{"empty kernel", linux("", "quiet")},
		{"kernel with space", linux("http://10.0.0.1/vm linuz", "")},
		{"kernel expansion", linux("http://${next-server}/vmlinuz", "")},
		{"kernel scheme", linux("file:///vmlinuz", "")},
		{"kernel relative", linux("/files/vmlinuz", "")},
		{"kernel no file", linux("http://10.0.0.1/", "")},
		{"kernel no path", linux("http://10.0.0.1", "")},
		{"initrd newline", linux(k, "", "http://10.0.0.1/a\n")},
		{"initrd dup names", linux(k, "", "http://10.0.0.1/a/initrd", "http://10.0.0.1/b/initrd")},
		{"bad action", Decision{Action: Action(7)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := Script(c.d)
			if err == nil {
				t.Fatalf("Script accepted it:\n%s", s)
			}
			if !errors.Is(err, ErrUnsafe) {
				t.Errorf("error %v does not wrap ErrUnsafe", err)
			}
		})
	}
}

func TestScriptAccepts(t *testing.T) {
	// Characters that look special but are not iPXE syntax mid-word.
	for _, cmd := range []string{"", "a=b#c", "x=1;2", "q=a&&b", "p=$HOME", "ocs_live_run=\"ocs-sr -b\"", "vga=791 splash=silent"} {
		d := Decision{Action: Linux, Kernel: "https://pumi.example/k/vmlinuz?x=1", Cmdline: cmd}
		if _, err := Script(d); err != nil {
			t.Errorf("Script(cmdline %q): %v", cmd, err)
		}
	}
}

func TestEchoText(t *testing.T) {
	for in, want := range map[string]string{
		"":                 "(no reason given)",
		"plain reason":     "plain reason",
		"a\nb\r\tc":        "a b c",
		"${net0/mac} #x;y": "_{net0/mac} _x_y",
		"a || b && c \\ d": "a __ b __ c _ d",
		"smörgås\x00\x7f":  "sm rg s",
	} {
		if got := echoText(in); got != want {
			t.Errorf("echoText(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestScriptURL(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0x00, 0xab, 0xcd, 0xef}
	for _, base := range []string{"http://10.99.0.1:8080", "http://10.99.0.1:8080/"} {
		if got, want := ScriptURL(base, mac), "http://10.99.0.1:8080/boot/52-54-00-ab-cd-ef.ipxe"; got != want {
			t.Errorf("ScriptURL(%q) = %q, want %q", base, got, want)
		}
	}
	// The URL must round-trip through the handler's parser.
	m, ok, err := ParseScriptPath("/boot/52-54-00-ab-cd-ef.ipxe")
	if !ok || err != nil || m.String() != mac.String() {
		t.Errorf("ParseScriptPath = %v %v %v", m, ok, err)
	}
}
