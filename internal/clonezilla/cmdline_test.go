package clonezilla

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pumi-lab/pumi/internal/macaddr"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", "golden", name)
	if *update {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(got+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update once)", err, t.Name())
	}
	if got+"\n" != string(want) {
		t.Errorf("%s differs:\n got: %s\nwant: %s", name, got, want)
	}
}

func baseCommon() Common {
	return Common{
		Server:      netip.MustParseAddr("10.99.0.1"),
		SquashfsURL: "http://10.99.0.1:8080/live/3.3.0-33-amd64/filesystem.squashfs",
		ReportBase:  "http://10.99.0.1:8080",
		NFSExport:   "/images",
		ImagePath:   "LAB-A-img",
		Disk:        "nvme0n1",
		MAC:         must(macaddr.Parse("52:54:00:AB:CD:EF")),
		Token:       "tok_0123456789abcdefABCDEF",
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestRestoreArgsGolden(t *testing.T) {
	line, err := RestoreArgs(RestoreParams{baseCommon()})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "restore.cmdline", line)

	// The words the notes require, each checked on its own so a golden
	// update cannot silently drop one.
	for _, w := range []string{
		"boot=live", "union=overlay", "username=user", "config", "components", "noswap", "edd=on",
		"nomodeset", "enforcing=0", "noeject", "noprompt", "locales=en_US.UTF-8", "keyboard-layouts=us",
		"net.ifnames=0", "fetch=http://10.99.0.1:8080/live/3.3.0-33-amd64/filesystem.squashfs",
		"ocs_live_batch=yes", "BOOTIF=01-52-54-00-ab-cd-ef", "ocs_server=10.99.0.1",
		"pumi_token=tok_0123456789abcdefABCDEF",
	} {
		if !hasWord(line, w) {
			t.Errorf("restore line lacks word %q", w)
		}
	}
	for _, s := range []string{
		`ocs_prerun1="mount -t nfs -o vers=3,proto=tcp,port=2049,mountport=2049,mountproto=tcp,nolock,ro 10.99.0.1:/images /home/partimag||true"`,
		`ocs_live_run="ocs-sr -batch -nogui -e1 auto -e2 -r -j2 -k0 -scr -p reboot restoredisk LAB-A-img nvme0n1"`,
		`'http://10.99.0.1:8080/api/v1/clonezilla/report?token=tok_0123456789abcdefABCDEF&status=finished'||true"`,
	} {
		if !strings.Contains(line, s) {
			t.Errorf("restore line lacks %s", s)
		}
	}
	if hasWord(line, "ip=") || strings.Contains(line, "ocs_live_run_tty") || strings.Contains(line, " -b ") || strings.Contains(line, " -c ") {
		t.Error("restore line has a word that makes Clonezilla interactive")
	}
}

func TestRestoreArgsVariantsGolden(t *testing.T) {
	c := baseCommon()
	c.ImagePath = "room-b/LAB-B-img"
	c.Disk = ""
	c.NFSPort = 20490
	c.Console = "ttyS0,115200"
	c.PowerOff = true
	line, err := RestoreArgs(RestoreParams{c})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "restore-nested-auto-poweroff.cmdline", line)
	for _, s := range []string{
		`ocs_live_run="ocs-sr -or /home/partimag/room-b -batch -nogui -e1 auto -e2 -r -j2 -k0 -scr -p poweroff restoredisk LAB-B-img 1st-disk"`,
		"port=20490,mountport=20490",
		" live-getty console=ttyS0,115200 ",
	} {
		if !strings.Contains(line, s) {
			t.Errorf("line lacks %s", s)
		}
	}
}

func TestCaptureArgsGolden(t *testing.T) {
	c := baseCommon()
	c.ImagePath = "LAB-NEW-img"
	line, err := CaptureArgs(CaptureParams{c})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "capture.cmdline", line)
	for _, s := range []string{
		`ocs_prerun1="mount -t nfs -o vers=3,proto=tcp,port=2049,mountport=2049,mountproto=tcp,nolock,rw 10.99.0.1:/images /home/partimag||true"`,
		`ocs_live_run="ocs-sr -batch -nogui -q2 -j2 -z9p -i 0 -sfsck -scs -senc -p reboot savedisk LAB-NEW-img nvme0n1"`,
	} {
		if !strings.Contains(line, s) {
			t.Errorf("capture line lacks %s", s)
		}
	}
	for _, d := range []string{"", AutoDisk} {
		c.Disk = d
		if _, err := CaptureArgs(CaptureParams{c}); !errors.Is(err, ErrUnsafe) {
			t.Errorf("capture with disk %q: %v", d, err)
		}
	}
}

func hasWord(line, w string) bool {
	for _, f := range strings.Fields(line) {
		if f == w {
			return true
		}
	}
	return false
}

func TestArgsRefuseUnsafe(t *testing.T) {
	cases := []struct {
		name string
		mod  func(*Common)
	}{
		{"image with space", func(c *Common) { c.ImagePath = "LAB A-img" }},
		{"image with quote", func(c *Common) { c.ImagePath = `LAB"-img` }},
		{"image with single quote", func(c *Common) { c.ImagePath = `LAB'-img` }},
		{"image with semicolon", func(c *Common) { c.ImagePath = "LAB;reboot" }},
		{"image with dollar brace", func(c *Common) { c.ImagePath = "LAB${x}" }},
		{"image with hash", func(c *Common) { c.ImagePath = "#LAB-img" }},
		{"image starting with dash", func(c *Common) { c.ImagePath = "-LAB-img" }},
		{"image hidden", func(c *Common) { c.ImagePath = ".LAB-img" }},
		{"image dotdot", func(c *Common) { c.ImagePath = "../LAB-img" }},
		{"image absolute", func(c *Common) { c.ImagePath = "/LAB-img" }},
		{"image not clean", func(c *Common) { c.ImagePath = "a//LAB-img" }},
		{"image reserved", func(c *Common) { c.ImagePath = "ask_user" }},
		{"image empty", func(c *Common) { c.ImagePath = "" }},
		{"image non-ascii", func(c *Common) { c.ImagePath = "LÄB-img" }},
		{"image backslash", func(c *Common) { c.ImagePath = `LAB\-img` }},
		{"disk partition", func(c *Common) { c.Disk = "nvme0n1p1" }},
		{"disk ask_user", func(c *Common) { c.Disk = "ask_user" }},
		{"disk all", func(c *Common) { c.Disk = "all" }},
		{"disk with /dev", func(c *Common) { c.Disk = "/dev/sda" }},
		{"disk injection", func(c *Common) { c.Disk = "sda||reboot" }},
		{"token short", func(c *Common) { c.Token = "abc" }},
		{"token with amp", func(c *Common) { c.Token = "abcdefghijklmnop&status=ok" }},
		{"token with quote", func(c *Common) { c.Token = "abcdefghijklmnop'" }},
		{"no mac", func(c *Common) { c.MAC = nil }},
		{"ipv6 server", func(c *Common) { c.Server = netip.MustParseAddr("fd00::1") }},
		{"zero server", func(c *Common) { c.Server = netip.Addr{} }},
		{"squashfs https", func(c *Common) { c.SquashfsURL = "https://10.99.0.1/filesystem.squashfs" }},
		{"squashfs hostname", func(c *Common) { c.SquashfsURL = "http://pumi.lab/filesystem.squashfs" }},
		{"squashfs query", func(c *Common) { c.SquashfsURL = "http://10.99.0.1/x.squashfs?a=1" }},
		{"squashfs wrong ext", func(c *Common) { c.SquashfsURL = "http://10.99.0.1/filesystem.img" }},
		{"squashfs space", func(c *Common) { c.SquashfsURL = "http://10.99.0.1/a b.squashfs" }},
		{"squashfs setting", func(c *Common) { c.SquashfsURL = "http://10.99.0.1/${x}.squashfs" }},
		{"report tftp", func(c *Common) { c.ReportBase = "tftp://10.99.0.1" }},
		{"report quote", func(c *Common) { c.ReportBase = "http://10.99.0.1/a'b" }},
		{"report user", func(c *Common) { c.ReportBase = "http://u@10.99.0.1" }},
		{"report fragment", func(c *Common) { c.ReportBase = "http://10.99.0.1/#x" }},
		{"nfs relative", func(c *Common) { c.NFSExport = "images" }},
		{"nfs space", func(c *Common) { c.NFSExport = "/my images" }},
		{"nfs port", func(c *Common) { c.NFSPort = 70000 }},
		{"console junk", func(c *Common) { c.Console = "ttyS0 init=/bin/sh" }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := baseCommon()
			tc.mod(&c)
			if line, err := RestoreArgs(RestoreParams{c}); !errors.Is(err, ErrUnsafe) {
				t.Errorf("restore: err=%v line=%q", err, line)
			}
			if c.Disk == "" || c.Disk == AutoDisk {
				return
			}
			if line, err := CaptureArgs(CaptureParams{c}); !errors.Is(err, ErrUnsafe) {
				t.Errorf("capture: err=%v line=%q", err, line)
			}
		})
	}
}

func TestArgsAcceptedNames(t *testing.T) {
	for _, d := range []string{"sda", "sdab", "nvme0n1", "nvme1n2", "mmcblk0", "vda", "ocs-nd01", "ocs-sd02", "1st-disk"} {
		c := baseCommon()
		c.Disk = d
		if _, err := RestoreArgs(RestoreParams{c}); err != nil {
			t.Errorf("disk %s: %v", d, err)
		}
	}
	for _, p := range []string{"LAB-2026.09_w11+office-img", "a/b/c/LAB-img", "2026/LAB-img"} {
		c := baseCommon()
		c.ImagePath = p
		if _, err := RestoreArgs(RestoreParams{c}); err != nil {
			t.Errorf("image %s: %v", p, err)
		}
	}
}

func TestCheckCmdline(t *testing.T) {
	cases := []struct {
		line string
		ok   bool
	}{
		{`boot=live ocs_live_run="ocs-sr -batch x" fetch=http://1.2.3.4/a.squashfs`, true},
		{`a="" b=c`, true},
		{`a=b||true`, true},
		{`#comment`, false},
		{`a=b #c`, false},
		{`a="x ; y"`, false},
		{`a="x;y"`, false},
		{`a="x && y"`, false},
		{`a=x&&y`, false},
		{`a="x || y"`, false},
		{`a=${net0/mac}`, false},
		{`a=\x`, false},
		{`a="x`, false},
		{`a="x"y"`, false},
		{`"a=x"`, false},
		{"a=x\nb=y", false},
		{"a=x\tb", false},
		{"a=\u00e9", false},
		{strings.Repeat("a", MaxCmdline+1), false},
		{strings.Repeat("a", MaxCmdline), true},
	}
	for _, c := range cases {
		err := CheckCmdline(c.line)
		if (err == nil) != c.ok {
			t.Errorf("CheckCmdline(%.40q) = %v, want ok=%v", c.line, err, c.ok)
		}
		if err != nil && !errors.Is(err, ErrUnsafe) {
			t.Errorf("error %v does not wrap ErrUnsafe", err)
		}
	}
}

func TestInitEnvCount(t *testing.T) {
	line, err := RestoreArgs(RestoreParams{baseCommon()})
	if err != nil {
		t.Fatal(err)
	}
	// boot union username enforcing edd locales keyboard-layouts fetch BOOTIF
	// ocs_server ocs_live_batch ocs_live_extra_param pumi_token ocs_prerun1
	// ocs_prerun2 ocs_live_run ocs_postrun1 (net.ifnames has a dot).
	if n := initEnvCount(line); n != 17 {
		t.Errorf("initEnvCount = %d, want 17", n)
	}
	if n := initEnvCount(`a=1 b="x=y z=w" c.d=2 e`); n != 2 {
		t.Errorf("initEnvCount quoted = %d, want 2", n)
	}
}

func TestMulticastRestoreArgs(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    func(*MulticastParams)
		run  string // ocs_live_run's value
		err  bool
	}{
		{"defaults", func(*MulticastParams) {},
			"ocs-sr -batch -nogui -e1 auto -e2 -r -j2 -k0 -scr --mcast-port 2232 -p reboot multicast_restoredisk LAB-A-img nvme0n1 </dev/null", false},
		{"port and max wait", func(p *MulticastParams) { p.Port = 2400; p.MaxWait = 20 },
			"ocs-sr -batch -nogui -e1 auto -e2 -r -j2 -k0 -scr --max-time-to-wait 20 --mcast-port 2400 -p reboot multicast_restoredisk LAB-A-img nvme0n1 </dev/null", false},
		{"nested image, first disk", func(p *MulticastParams) { p.ImagePath = "room-b/LAB-B-img"; p.Disk = "" },
			"ocs-sr -or /home/partimag/room-b -batch -nogui -e1 auto -e2 -r -j2 -k0 -scr --mcast-port 2232 -p reboot multicast_restoredisk LAB-B-img 1st-disk </dev/null", false},
		{"privileged port", func(p *MulticastParams) { p.Port = 80 }, "", true},
		{"port past the top", func(p *MulticastParams) { p.Port = 65400 }, "", true},
		{"negative wait", func(p *MulticastParams) { p.MaxWait = -1 }, "", true},
		{"unsafe disk", func(p *MulticastParams) { p.Disk = "sda;reboot" }, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := MulticastParams{Common: baseCommon()}
			tc.p(&p)
			line, err := MulticastRestoreArgs(p)
			if tc.err {
				if !errors.Is(err, ErrUnsafe) {
					t.Fatalf("err %v, want ErrUnsafe; line %s", err, line)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := `ocs_live_run="` + tc.run + `"`; !strings.Contains(line, want) {
				t.Errorf("line lacks %s\n%s", want, line)
			}
			// Everything else is the unicast restore's line: the metadata
			// still comes over NFS, the reports are the same.
			u, err := RestoreArgs(RestoreParams{p.Common})
			if err != nil {
				t.Fatal(err)
			}
			port := p.Port
			if port == 0 {
				port = DefaultMcastPort
			}
			stripped := strings.Replace(line, fmt.Sprintf(" --mcast-port %d", port), "", 1)
			stripped = strings.Replace(stripped, fmt.Sprintf(" --max-time-to-wait %d", p.MaxWait), "", 1)
			stripped = strings.Replace(stripped, "multicast_restoredisk", "restoredisk", 1)
			stripped = strings.Replace(stripped, ` </dev/null"`, `"`, 1)
			if stripped != u {
				t.Errorf("multicast line differs from the unicast one beyond the verb and options:\n%s\n%s", line, u)
			}
			if err := CheckCmdline(line); err != nil {
				t.Error(err)
			}
		})
	}
	if got := fmt.Sprint(MulticastPorts(2232, 3)); got != "[2232 2234 2236]" {
		t.Errorf("ports %s", got)
	}
}
