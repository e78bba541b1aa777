package clonezilla

import (
	"errors"
	"os"
	"testing"
	"time"
)

func read(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const repoA = "testdata/repo/LAB-A-img/"
const repoB = "testdata/repo/room-b/LAB-B-img/"

func TestParseRealMetadata(t *testing.T) {
	parts, err := ParseNameList(read(t, repoA+"parts"))
	if err != nil || len(parts) != 2 || parts[0] != "nvme0n1p1" || parts[1] != "nvme0n1p2" {
		t.Errorf("parts %q %v", parts, err)
	}
	pt, err := ParsePartedTable(read(t, repoA+"nvme0n1-pt.parted"))
	if err != nil {
		t.Fatal(err)
	}
	if pt.Disk != "nvme0n1" || pt.Sectors != 81920 || pt.LogicalSector != 512 || pt.Table != "gpt" || len(pt.Parts) != 3 {
		t.Errorf("parted %+v", pt)
	}
	if p := pt.Parts[1]; p.Number != 2 || p.Start != 18432 || p.End != 51199 || p.Size != 32768 || p.FS != "ext4" {
		t.Errorf("parted row 2 %+v", p)
	}
	if p := pt.Parts[0]; p.FS != "" || p.Rest != "EFI   boot, esp" {
		t.Errorf("parted row 1 %+v", p)
	}
	if _, err := ParsePartedTable(read(t, repoA+"nvme0n1-pt.parted.compact")); err == nil {
		t.Error("compact table (not in sectors) accepted as a sector table")
	}
	sf, err := ParseSfdisk(read(t, repoA+"nvme0n1-pt.sf"))
	if err != nil {
		t.Fatal(err)
	}
	// "nvme0n1p" is really in the file: cnvt-ocs-dev (loop0 -> nvme0n1)
	// rewrites "loop0" using the partition prefix. The scanner does not use
	// the device: line for that reason.
	if sf.Label != "gpt" || sf.Device != "nvme0n1p" || sf.FirstLBA != 2048 || sf.LastLBA != 81886 || sf.SectorSize != 512 || len(sf.Parts) != 3 {
		t.Errorf("sfdisk %+v", sf)
	}
	if p := sf.Parts[0]; p.Device != "nvme0n1p1" || p.Start != 2048 || p.Size != 16384 || p.Name != "EFI" || p.Type != "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" {
		t.Errorf("sfdisk part %+v", p)
	}
	sfb, err := ParseSfdisk(read(t, repoB+"sda-pt.sf"))
	if err != nil || sfb.Label != "dos" || len(sfb.Parts) != 2 || sfb.Parts[1].Type != "82" {
		t.Errorf("sfdisk B %+v %v", sfb, err)
	}
	dfs, err := ParseDevFS(read(t, repoA+"dev-fs.list"))
	if err != nil || len(dfs) != 3 || dfs[2] != (DevFS{Device: "nvme0n1p3", FS: "swap", Size: "14M"}) {
		t.Errorf("dev-fs %+v %v", dfs, err)
	}
	bl, err := ParseBlkdevList(read(t, repoA+"blkdev.list"))
	if err != nil || len(bl) < 4 || bl[0] != (BlkDev{KName: "nvme0n1p", Size: "40M", Type: "loop"}) || bl[2].Type != "part" {
		t.Errorf("blkdev %+v %v", bl, err)
	}
	cl, err := ParseCloneLog(read(t, repoB+"clonezilla-img"))
	if err != nil || !cl.Complete || !cl.Created.Equal(time.Date(2026, 11, 26, 13, 47, 0, 0, time.UTC)) || cl.SavedAt.IsZero() {
		t.Errorf("clone log %+v %v", cl, err)
	}
	id, err := ParseImgID(read(t, repoB+"Info-img-id.txt"))
	if err != nil || len(id) != 128 {
		t.Errorf("img id %q %v", id, err)
	}
}

func TestParsePartImageName(t *testing.T) {
	cases := []struct {
		in   string
		ok   bool
		want PartImage
	}{
		{"nvme0n1p2.ext4-ptcl-img.zst", true, PartImage{"nvme0n1p2", "ext4", "partclone", "zst", ""}},
		{"sda1.ext4-ptcl-img.gz.ab", true, PartImage{"sda1", "ext4", "partclone", "gz", "ab"}},
		{"sda1.vfat-ptcl-img.uncomp.aaa", true, PartImage{"sda1", "vfat", "partclone", "uncomp", "aaa"}},
		{"cl-root.xfs-ptcl-img.zst", true, PartImage{"cl-root", "xfs", "partclone", "zst", ""}},
		{"sda2.hfs+-ptcl-img.xz", true, PartImage{"sda2", "hfs+", "partclone", "xz", ""}},
		{"sda3.dd-img.aa", true, PartImage{"sda3", "dd", "dd", "", "aa"}},
		{"sda1.ntfs-img", true, PartImage{"sda1", "ntfs", "ntfsclone", "", ""}},
		{"sda1.foo-ptcl-img.gz", false, PartImage{}},
		{"sda1.ext4-ptcl-img.rar", false, PartImage{}},
		{"sda1.ext4-ptcl-img.gz.AB", false, PartImage{}},
		{"sda-pt.sf", false, PartImage{}},
		{"clonezilla-img", false, PartImage{}},
		{".ext4-ptcl-img.gz", false, PartImage{}},
	}
	for _, c := range cases {
		got, ok := ParsePartImageName(c.in)
		if ok != c.ok || got != c.want {
			t.Errorf("%s: %+v %v, want %+v %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

func TestParsersRefuse(t *testing.T) {
	bad := map[string]func([]byte) error{
		"names empty":     func(b []byte) error { _, err := ParseNameList(b); return err },
		"imgid":           func(b []byte) error { _, err := ParseImgID(b); return err },
		"clonelog":        func(b []byte) error { _, err := ParseCloneLog(b); return err },
		"parted":          func(b []byte) error { _, err := ParsePartedTable(b); return err },
		"sfdisk":          func(b []byte) error { _, err := ParseSfdisk(b); return err },
		"blkdev":          func(b []byte) error { _, err := ParseBlkdevList(b); return err },
		"partclone":       func(b []byte) error { _, err := ParsePartcloneHeader(b); return err },
		"devfs not /dev/": func(b []byte) error { _, err := ParseDevFS([]byte("sda1 ext4 1G\n")); return err },
	}
	inputs := map[string][][]byte{
		"names empty":     {nil, []byte("  \n"), []byte("sda sda"), []byte("sda;reboot"), []byte("-sda"), []byte("../sda")},
		"imgid":           {nil, []byte("# only a comment\n"), []byte("IMG_ID=abc\n"), []byte("IMG_ID=" + string(make([]byte, 128)) + "\n")},
		"clonelog":        {nil, []byte(" \n"), []byte("### Image created time: 2026-1399-2561\n")},
		"parted":          {nil, []byte("Disk /dev/sda: 41.9MB\n"), []byte("Disk /dev/sda: 100s\n"), []byte("Disk /dev/sda: 100s\nSector size (logical/physical): 500B/512B\n"), []byte("Disk /dev/sda: 9223372036854775807s\nSector size (logical/physical): 4096B/4096B\n"), []byte("Disk /dev/sda: 100s\nSector size (logical/physical): 512B/512B\nNumber Start\n 1 2048 4000 2000\n")},
		"sfdisk":          {nil, []byte("device: /dev/sda\n"), []byte("label: gpt\nunit: bytes\n"), []byte("label: gpt\n/dev/sda1 : start=-5, size=1\n"), []byte("label: gpt\nsector-size: 3\n"), []byte("label: gpt\n/dev/s;a1 : start=1\n"), []byte("label: gpt\ngarbage\n")},
		"blkdev":          {nil, []byte("NAME SIZE\n"), []byte("KNAME NAME SIZE TYPE\nsda\n")},
		"partclone":       {nil, []byte("partclone-image\x00short"), make([]byte, 200)},
		"devfs not /dev/": {nil},
	}
	for name, f := range bad {
		for _, in := range inputs[name] {
			err := f(in)
			if err == nil {
				t.Errorf("%s accepted %q", name, in)
			} else if !errors.Is(err, ErrMalformed) {
				t.Errorf("%s: %v does not wrap ErrMalformed", name, err)
			}
		}
	}
}
