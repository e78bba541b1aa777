package clonezilla

import (
	"archive/zip"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeKernel has the x86 boot header mark where a bzImage has it.
func fakeKernel(n int) []byte {
	b := bytes.Repeat([]byte{0x90}, n)
	copy(b, "MZ")
	copy(b[0x202:], "HdrS")
	return b
}

func fakeSquashfs(n int) []byte {
	b := bytes.Repeat([]byte{7}, n)
	copy(b, "hsqs")
	return b
}

type entry struct {
	name string
	data []byte
}

// officialEntries mirrors the top of the official zip (clonezilla.md §5).
func officialEntries() []entry {
	return []entry{
		{"Clonezilla-Live-Version", []byte("clonezilla-live-3.3.0-33-amd64\n")},
		{"GPL", []byte("GPL text\n")},
		{"EFI/boot/bootx64.efi", []byte("shim")},
		{"boot/grub/grub.cfg", []byte("menuentry ...\n")},
		{"live/vmlinuz", fakeKernel(8 << 10)},
		{"live/initrd.img", bytes.Repeat([]byte("070701"), 3000)},
		{"live/filesystem.squashfs", fakeSquashfs(300 << 10)},
		{"live/filesystem.packages", []byte("clonezilla 5.18.1\n")},
		{"syslinux/syslinux.cfg", []byte("x\n")},
	}
}

func writeZip(t *testing.T, dir, name string, ents []entry) string {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range ents {
		w, err := zw.Create(e.name)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(e.data)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestImportLiveZip(t *testing.T) {
	dir := t.TempDir()
	zp := writeZip(t, dir, "clonezilla-live-3.3.0-33-amd64.zip", officialEntries())
	live := filepath.Join(dir, "live")
	lf, err := ImportLiveZip(context.Background(), zp, live, LiveLimits{})
	if err != nil {
		t.Fatal(err)
	}
	if lf.Version != "3.3.0-33-amd64" || lf.Dir != filepath.Join(live, "3.3.0-33-amd64") {
		t.Errorf("imported %+v", lf)
	}
	for _, e := range officialEntries() {
		if !strings.HasPrefix(e.name, "live/") || e.name == "live/filesystem.packages" {
			continue
		}
		got, err := os.ReadFile(filepath.Join(lf.Dir, filepath.Base(e.name)))
		if err != nil || !bytes.Equal(got, e.data) {
			t.Errorf("%s: err=%v, %d bytes, want %d", e.name, err, len(got), len(e.data))
		}
		if lf.Sizes[filepath.Base(e.name)] != int64(len(e.data)) {
			t.Errorf("size of %s = %d", e.name, lf.Sizes[filepath.Base(e.name)])
		}
	}
	if v, _ := os.ReadFile(filepath.Join(lf.Dir, "VERSION")); string(v) != "3.3.0-33-amd64\n" {
		t.Errorf("VERSION %q", v)
	}
	// Only the version folder remains: no temp folder, nothing else extracted.
	ents, _ := os.ReadDir(live)
	if len(ents) != 1 {
		t.Errorf("live dir has %v", ents)
	}
	files, _ := os.ReadDir(lf.Dir)
	if len(files) != 4 {
		t.Errorf("version dir has %v", files)
	}
	// A second import of the same version is refused and changes nothing.
	if _, err := ImportLiveZip(context.Background(), zp, live, LiveLimits{}); err == nil || !strings.Contains(err.Error(), "already imported") {
		t.Errorf("re-import: %v", err)
	}
}

func TestImportLiveZipVersionFromName(t *testing.T) {
	dir := t.TempDir()
	ents := officialEntries()[1:] // no Clonezilla-Live-Version
	zp := writeZip(t, dir, "clonezilla-live-20250620-plucky-amd64.zip", ents)
	lf, err := ImportLiveZip(context.Background(), zp, filepath.Join(dir, "live"), LiveLimits{})
	if err != nil {
		t.Fatal(err)
	}
	if lf.Version != "20250620-plucky-amd64" {
		t.Errorf("version %q", lf.Version)
	}
}

func TestImportLiveZipRefuses(t *testing.T) {
	without := func(name string) []entry {
		var out []entry
		for _, e := range officialEntries() {
			if e.name != name {
				out = append(out, e)
			}
		}
		return out
	}
	with := func(extra ...entry) []entry { return append(officialEntries(), extra...) }
	replace := func(name string, data []byte) []entry {
		out := without(name)
		return append(out, entry{name, data})
	}
	cases := []struct {
		name, zipName string
		ents          []entry
		lim           LiveLimits
		want          string
	}{
		{"no kernel", "", without("live/vmlinuz"), LiveLimits{}, "no live/vmlinuz"},
		{"no initrd", "", without("live/initrd.img"), LiveLimits{}, "no live/initrd.img"},
		{"no squashfs", "", without("live/filesystem.squashfs"), LiveLimits{}, "no live/filesystem.squashfs"},
		{"zip slip", "", with(entry{"../../etc/cron.d/x", []byte("x")}), LiveLimits{}, "unsafe path"},
		{"zip slip inside", "", with(entry{"live/../../x", []byte("x")}), LiveLimits{}, "unsafe path"},
		{"absolute", "", with(entry{"/etc/x", []byte("x")}), LiveLimits{}, "unsafe path"},
		{"backslash", "", with(entry{`..\x`, []byte("x")}), LiveLimits{}, "unsafe path"},
		{"absurd squashfs", "", officialEntries(), LiveLimits{Kernel: 1 << 20, Initrd: 1 << 20, Squashfs: 100 << 10}, "live/filesystem.squashfs is"},
		{"empty kernel", "", replace("live/vmlinuz", nil), LiveLimits{}, "live/vmlinuz is 0 bytes"},
		{"not a kernel", "", replace("live/vmlinuz", bytes.Repeat([]byte("x"), 4096)), LiveLimits{}, "not an x86 Linux kernel"},
		{"not a squashfs", "", replace("live/filesystem.squashfs", []byte("this is text")), LiveLimits{}, "not a squashfs"},
		{"duplicate", "", with(entry{"live/vmlinuz", fakeKernel(4096)}), LiveLimits{}, "twice"},
		{"no version", "lab.zip", without("Clonezilla-Live-Version"), LiveLimits{}, "cannot tell the Clonezilla version"},
		{"bad version", "lab.zip", replace("Clonezilla-Live-Version", []byte("clonezilla-live-../../x\n")), LiveLimits{}, "cannot tell the Clonezilla version"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			name := c.zipName
			if name == "" {
				name = "clonezilla-live-3.3.0-33-amd64.zip"
			}
			zp := writeZip(t, dir, name, c.ents)
			live := filepath.Join(dir, "live")
			_, err := ImportLiveZip(context.Background(), zp, live, c.lim)
			if !errors.Is(err, ErrBadLiveZip) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want ErrBadLiveZip containing %q", err, c.want)
			}
			// Nothing is left behind: no version folder, no temp folder.
			ents, _ := os.ReadDir(live)
			if len(ents) != 0 {
				t.Errorf("refused import left %v", ents)
			}
		})
	}

	dir := t.TempDir()
	p := filepath.Join(dir, "clonezilla-live-3.3.0-33-amd64.zip")
	os.WriteFile(p, []byte("PK\x03\x04 truncated"), 0o644)
	if _, err := ImportLiveZip(context.Background(), p, filepath.Join(dir, "live"), LiveLimits{}); !errors.Is(err, ErrBadLiveZip) {
		t.Errorf("truncated zip: %v", err)
	}
}

// A crash mid-import leaves a .tmp- folder; the next import removes it and
// succeeds.
func TestImportLiveZipAfterCrash(t *testing.T) {
	dir := t.TempDir()
	live := filepath.Join(dir, "live")
	stale := filepath.Join(live, ".tmp-3.3.0-33-amd64-123")
	os.MkdirAll(stale, 0o755)
	os.WriteFile(filepath.Join(stale, "vmlinuz"), []byte("half"), 0o644)
	zp := writeZip(t, dir, "clonezilla-live-3.3.0-33-amd64.zip", officialEntries())
	if _, err := ImportLiveZip(context.Background(), zp, live, LiveLimits{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale temp folder still there: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	zp2 := writeZip(t, dir, "clonezilla-live-3.3.1-1-amd64.zip", replace(officialEntries(), "Clonezilla-Live-Version", []byte("clonezilla-live-3.3.1-1-amd64\n")))
	if _, err := ImportLiveZip(ctx, zp2, live, LiveLimits{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled import: %v", err)
	}
	if _, err := os.Stat(filepath.Join(live, "3.3.1-1-amd64")); !os.IsNotExist(err) {
		t.Errorf("cancelled import left a version folder")
	}
}

func replace(ents []entry, name string, data []byte) []entry {
	out := append([]entry{}, ents...)
	for i := range out {
		if out[i].name == name {
			out[i].data = data
		}
	}
	return out
}
