package clonezilla

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The fixtures in testdata/repo were written by real ocs-sr savedisk runs
// (testdata/mkfixtures.sh); the expected values below were read from their
// files by hand (parted sector counts, sfdisk sizes, file sizes).
func TestScanRealImages(t *testing.T) {
	res, err := Scan(context.Background(), "testdata/repo", ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Warnings) != 0 {
		t.Errorf("warnings: %q", res.Warnings)
	}
	if len(res.Images) != 2 {
		t.Fatalf("found %d images, want 2: %+v", len(res.Images), res.Images)
	}
	a, b := res.Images[0], res.Images[1]
	if a.Path != "LAB-A-img" || b.Path != "room-b/LAB-B-img" {
		t.Fatalf("paths %q %q", a.Path, b.Path)
	}
	for _, img := range res.Images {
		if !img.Valid || len(img.Problems) > 0 {
			t.Errorf("%s: valid=%v problems=%q", img.Path, img.Valid, img.Problems)
		}
	}

	if a.Signature != "LAB-A" || a.Name != "LAB-A-img" {
		t.Errorf("A name/signature %q %q", a.Name, a.Signature)
	}
	if len(a.SourceDisks) != 1 || a.SourceDisks[0] != (Disk{Name: "nvme0n1", SizeBytes: 81920 * 512, SectorSize: 512, Table: "gpt"}) {
		t.Errorf("A disks %+v", a.SourceDisks)
	}
	if a.DiskSize != 40<<20 {
		t.Errorf("A disk size %d", a.DiskSize)
	}
	if a.Compression != "zst" {
		t.Errorf("A compression %q", a.Compression)
	}
	wantA := []struct {
		name, fs string
		size     int64
		file     string
		bytes    int64
	}{
		{"nvme0n1p1", "fat12", 16384 * 512, "nvme0n1p1.fat12-ptcl-img.zst", 330},
		{"nvme0n1p2", "ext4", 32768 * 512, "nvme0n1p2.ext4-ptcl-img.zst", 202118},
	}
	if len(a.Partitions) != len(wantA) {
		t.Fatalf("A partitions %+v", a.Partitions)
	}
	for i, w := range wantA {
		p := a.Partitions[i]
		if p.Name != w.name || p.FS != w.fs || p.Size != w.size || len(p.Files) != 1 || p.Files[0] != w.file || p.Bytes != w.bytes {
			t.Errorf("A partition %d = %+v, want %+v", i, p, w)
		}
	}
	if got := a.Created; !got.Equal(time.Date(2026, 11, 26, 13, 46, 0, 0, time.UTC)) {
		t.Errorf("A created %v", got)
	}
	if !strings.HasPrefix(a.ImageID, "f3a072ba988d8d4a") || len(a.ImageID) != 128 {
		t.Errorf("A image id %q", a.ImageID)
	}
	if !strings.Contains(a.SavedBy, "-z9p") || !strings.Contains(a.SavedBy, "savedisk LAB-A-img") {
		t.Errorf("A saved by %q", a.SavedBy)
	}
	var total int64
	ents, _ := os.ReadDir("testdata/repo/LAB-A-img")
	for _, e := range ents {
		fi, _ := e.Info()
		total += fi.Size()
	}
	if a.TotalBytes != total {
		t.Errorf("A total %d, want %d", a.TotalBytes, total)
	}

	if b.Signature != "LAB-B" || b.Compression != "gz" {
		t.Errorf("B signature/compression %q %q", b.Signature, b.Compression)
	}
	if len(b.SourceDisks) != 1 || b.SourceDisks[0] != (Disk{Name: "sda", SizeBytes: 49152 * 512, SectorSize: 512, Table: "msdos"}) {
		t.Errorf("B disks %+v", b.SourceDisks)
	}
	if len(b.Partitions) != 1 || b.Partitions[0].Name != "sda1" || b.Partitions[0].FS != "ext4" || b.Partitions[0].Size != 32768*512 {
		t.Fatalf("B partitions %+v", b.Partitions)
	}
	// gzip images get their partclone header read: a 16 MiB ext4 with 1 KiB blocks.
	h := b.Partitions[0].Header
	if h == nil || h.FS != "EXTFS" || h.DeviceSize != 16<<20 || h.BlockSize != 1024 || h.TotalBlock != 16384 || h.UsedBlocks == 0 || h.Version != "0.3.23" {
		t.Errorf("B header %+v", h)
	}
}

// copyTree copies src into a new temp dir and returns the copy's path.
func copyTree(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if info.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// Broken variants are made from the real images, one damage each, and each
// must be invalid with a reason that names the damage.
func TestScanBrokenVariants(t *testing.T) {
	A := "LAB-A-img"
	B := "room-b/LAB-B-img"
	cases := []struct {
		name   string
		img    string
		damage func(dir string) error
		want   string // substring of one problem
	}{
		{"missing disk file", A, rm("disk"), "missing disk file: this is a partition image"},
		{"missing parts file", A, rm("parts"), "missing parts file"},
		{"missing clonezilla-img", A, rm("clonezilla-img"), "missing clonezilla-img"},
		{"missing Info-img-id", A, rm("Info-img-id.txt"), "missing Info-img-id.txt"},
		{"missing pt.parted", A, rm("nvme0n1-pt.parted"), "missing nvme0n1-pt.parted"},
		{"missing partition image", A, rm("nvme0n1p2.ext4-ptcl-img.zst"), "partition nvme0n1p2 is listed in parts but has no image files"},
		{"empty chunk", A, trunc("nvme0n1p2.ext4-ptcl-img.zst", 0), "nvme0n1p2.ext4-ptcl-img.zst is empty"},
		{"truncated clonezilla-img", A, trunc("clonezilla-img", 300), "no \"### Image created time\" line"},
		{"clonezilla-img edited", A, appendTo("clonezilla-img", "x\n### Image created time: 2026-1126-1346\n"), "does not match the IMG_ID"},
		{"damaged Info-img-id", A, write("Info-img-id.txt", "IMG_ID=nothex\n"), "Info-img-id.txt is damaged"},
		{"damaged disk file", A, write("disk", "nvme0n1 ; rm -rf /\n"), "disk file is damaged"},
		{"zst overwritten", A, write("nvme0n1p1.fat12-ptcl-img.zst", "garbage garbage"), "does not start with zst data"},
		{"truncated gzip", B, trunc("sda1.ext4-ptcl-img.gz", 20), "truncated or damaged"},
		{"split piece missing", B, splitMissing("sda1.ext4-ptcl-img.gz"), "split piece .ab is missing"},
		{"whole and split", B, copyAs("sda1.ext4-ptcl-img.gz", "sda1.ext4-ptcl-img.gz.aa"), "both a whole image file and split pieces"},
		{"pseudo image", A, write("00-pseudo-img-note.txt", "pseudo\n"), "pseudo image"},
		{"encrypted", A, write("ecryptfs.info", "x\n"), "encrypted"},
		{"symlink", A, symlink("/etc/passwd", "Info-dmi.txt"), "symbolic link"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := copyTree(t, "testdata/repo")
			if err := c.damage(filepath.Join(root, filepath.FromSlash(c.img))); err != nil {
				t.Fatal(err)
			}
			img, err := Inspect(context.Background(), root, c.img)
			if err != nil {
				t.Fatal(err)
			}
			if img.Valid {
				t.Fatalf("damaged image is valid: %+v", img)
			}
			found := false
			for _, p := range img.Problems {
				if strings.Contains(p, c.want) {
					found = true
				}
			}
			if !found {
				t.Errorf("problems %q, want one containing %q", img.Problems, c.want)
			}
			// Scan sees the same verdict, and the other image stays valid.
			res, err := Scan(context.Background(), root, ScanOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for _, im := range res.Images {
				if (im.Path == c.img) == im.Valid {
					t.Errorf("scan: %s valid=%v problems=%q", im.Path, im.Valid, im.Problems)
				}
			}
		})
	}
}

func TestScanSplitPiecesValid(t *testing.T) {
	// ocs-sr -i N splits with `split -a 2 -b NM`; the same split of the real
	// gzip stream must be a valid image whose header is still readable.
	root := copyTree(t, "testdata/repo")
	dir := filepath.Join(root, "room-b", "LAB-B-img")
	if err := splitFile(filepath.Join(dir, "sda1.ext4-ptcl-img.gz"), 64<<10); err != nil {
		t.Fatal(err)
	}
	img, err := Inspect(context.Background(), root, "room-b/LAB-B-img")
	if err != nil {
		t.Fatal(err)
	}
	if !img.Valid {
		t.Fatalf("split image invalid: %q", img.Problems)
	}
	p := img.Partitions[0]
	if len(p.Files) != 3 || p.Files[0] != "sda1.ext4-ptcl-img.gz.aa" || p.Files[2] != "sda1.ext4-ptcl-img.gz.ac" || p.Bytes != 180520 || p.Header == nil {
		t.Errorf("pieces %+v", p)
	}
}

func TestScanNamingAndLimits(t *testing.T) {
	root := copyTree(t, "testdata/repo")
	// A folder not named *-img: found (it has clonezilla-img), no Signature, a warning.
	if err := os.Rename(filepath.Join(root, "LAB-A-img"), filepath.Join(root, "LAB-A")); err != nil {
		t.Fatal(err)
	}
	// An unsafe name: found, invalid.
	if err := os.Rename(filepath.Join(root, "room-b", "LAB-B-img"), filepath.Join(root, "room-b", "LAB B-img")); err != nil {
		t.Fatal(err)
	}
	// Junk: an empty *-img folder, a deep tree, a symlink loop and a link out of the root.
	os.MkdirAll(filepath.Join(root, "junk-img"), 0o755)
	deep := filepath.Join(root, "a", "b", "c", "d")
	os.MkdirAll(deep, 0o755)
	os.Symlink("..", filepath.Join(root, "a", "loop"))
	os.Symlink("/", filepath.Join(root, "a", "escape"))

	res, err := Scan(context.Background(), root, ScanOptions{MaxDepth: 3})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Image{}
	for _, im := range res.Images {
		got[im.Path] = im
	}
	if len(got) != 3 {
		t.Fatalf("images %v", res.Images)
	}
	a := got["LAB-A"]
	if !a.Valid || a.Signature != "" || len(a.Warnings) == 0 || !strings.Contains(a.Warnings[0], "does not end in -img") {
		t.Errorf("LAB-A: %+v", a)
	}
	if b := got["room-b/LAB B-img"]; b.Valid || !strings.Contains(strings.Join(b.Problems, "|"), "no spaces or quotes") {
		t.Errorf("LAB B-img: %+v", b)
	}
	if j := got["junk-img"]; j.Valid || !strings.Contains(strings.Join(j.Problems, "|"), "missing clonezilla-img") {
		t.Errorf("junk-img: %+v", j)
	}
	if !strings.Contains(strings.Join(res.Warnings, "|"), "deeper than 3") {
		t.Errorf("walk warnings %q", res.Warnings)
	}

	res, err = Scan(context.Background(), root, ScanOptions{MaxEntries: 3})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(res.Warnings, "|"), "stopped after 3 entries") {
		t.Errorf("entry limit warnings %q", res.Warnings)
	}

	if _, err := Scan(context.Background(), filepath.Join(root, "nope"), ScanOptions{}); err == nil {
		t.Error("scan of a missing root succeeded")
	}
	if _, err := Inspect(context.Background(), root, "../etc"); err == nil {
		t.Error("inspect outside the root succeeded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Scan(ctx, root, ScanOptions{}); err == nil {
		t.Error("cancelled scan succeeded")
	}
}

func rm(name string) func(string) error {
	return func(dir string) error { return os.Remove(filepath.Join(dir, name)) }
}

func trunc(name string, n int64) func(string) error {
	return func(dir string) error { return os.Truncate(filepath.Join(dir, name), n) }
}

func write(name, content string) func(string) error {
	return func(dir string) error { return os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644) }
}

func appendTo(name, content string) func(string) error {
	return func(dir string) error {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = f.WriteString(content)
		return err
	}
}

func copyAs(from, to string) func(string) error {
	return func(dir string) error {
		b, err := os.ReadFile(filepath.Join(dir, from))
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, to), b, 0o644)
	}
}

func symlink(target, name string) func(string) error {
	return func(dir string) error {
		os.Remove(filepath.Join(dir, name))
		return os.Symlink(target, filepath.Join(dir, name))
	}
}

// splitMissing splits the file into pieces and drops the middle one.
func splitMissing(name string) func(string) error {
	return func(dir string) error {
		if err := splitFile(filepath.Join(dir, name), 64<<10); err != nil {
			return err
		}
		return os.Remove(filepath.Join(dir, name+".ab"))
	}
}

// splitFile does what `split -a 2 -b SIZE f f.` does and removes f.
func splitFile(p string, size int) error {
	b, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	for i := 0; len(b) > 0; i++ {
		n := min(size, len(b))
		if err := os.WriteFile(p+"."+pieceName(i, 2), b[:n], 0o644); err != nil {
			return err
		}
		b = b[n:]
	}
	return os.Remove(p)
}
