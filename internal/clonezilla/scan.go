package clonezilla

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha512"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"time"
)

// Image is one Clonezilla image folder in the repository, as pumi shows it
// and decides whether it may be restored.
type Image struct {
	Name      string // folder name, e.g. "LAB-A-img"; what ocs-sr calls IMAGE
	Path      string // slash-separated, relative to the repository root, e.g. "room-b/LAB-B-img"
	Signature string // Name minus "-img" (the seed convention); "" when the name does not end in -img

	Valid    bool     // restorable with restoredisk; false means Problems says why
	Problems []string // plain-language reasons the folder cannot be restored
	Warnings []string // things worth knowing that do not stop a restore

	SourceDisks []Disk      // from `disk` + <disk>-pt.parted
	DiskSize    int64       // bytes, sum over SourceDisks
	Partitions  []Partition // from `parts`, in ocs-sr's order
	Compression string      // of the partition images: zst, gz, ...; "mixed" if they differ
	TotalBytes  int64       // all regular files in the folder
	Created     time.Time   // "### Image created time" in clonezilla-img (minute precision)
	ImageID     string      // IMG_ID from Info-img-id.txt (sha512 of clonezilla-img)
	SavedBy     string      // Info-saved-by-cmd.txt, the ocs-sr command that made it
}

// Disk is a source disk of a disk image.
type Disk struct {
	Name       string // kernel name at save time, e.g. nvme0n1
	SizeBytes  int64
	SectorSize int64
	Table      string // gpt or msdos
}

// Partition is one entry of `parts` and the files that hold its data.
type Partition struct {
	Name   string   // nvme0n1p2
	FS     string   // from the image file name (partclone's), or dev-fs.list
	Size   int64    // bytes, from <disk>-pt.sf when the partition is there (0 if unknown)
	Files  []string // image files in restore order (.aa, .ab, ...)
	Bytes  int64    // their total size
	Header *PartcloneHeader
}

// ScanOptions bounds a scan so that a huge or hostile tree cannot make the
// appliance walk forever.
type ScanOptions struct {
	MaxDepth   int // folders below the root; 0 means 8
	MaxEntries int // directory entries looked at; 0 means 200000
}

// ScanResult is the outcome of a repository scan.
type ScanResult struct {
	Images   []Image  // sorted by Path
	Warnings []string // about the walk itself (limits hit, unreadable folders)
}

// Scan walks the repository root at any depth (bounded by opt) and returns
// every Clonezilla image folder it finds, valid or not. Symbolic links are
// never followed out of the root: all reads go through an os.Root, and the
// walk does not descend into symlinked folders. Scan only reads.
func Scan(ctx context.Context, root string, opt ScanOptions) (ScanResult, error) {
	var res ScanResult
	if opt.MaxDepth <= 0 {
		opt.MaxDepth = 8
	}
	if opt.MaxEntries <= 0 {
		opt.MaxEntries = 200000
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		return res, fmt.Errorf("open image repository %s: %w (check the repository path in the settings)", root, err)
	}
	defer r.Close()
	fsys := r.FS()
	entries := 0
	errStop := errors.New("stop")
	err = fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if err != nil {
			res.Warnings = append(res.Warnings, fmt.Sprintf("could not read %s: %v", p, err))
			if d != nil && d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		entries++
		if entries > opt.MaxEntries {
			res.Warnings = append(res.Warnings, fmt.Sprintf("stopped after %d entries; images further on were not listed (move unrelated files out of the repository)", opt.MaxEntries))
			return errStop
		}
		if !d.IsDir() {
			return nil
		}
		if p != "." && strings.HasPrefix(d.Name(), ".") {
			return fs.SkipDir // pumi's own temporary folders, .snapshot and the like
		}
		depth := 0
		if p != "." {
			depth = strings.Count(p, "/") + 1
		}
		if p != "." && looksLikeImage(fsys, p, d.Name()) {
			img := inspect(ctx, fsys, p)
			res.Images = append(res.Images, img)
			return fs.SkipDir // an image folder holds no further images
		}
		if depth >= opt.MaxDepth {
			res.Warnings = append(res.Warnings, fmt.Sprintf("did not look inside %s: deeper than %d folders", p, opt.MaxDepth))
			return fs.SkipDir
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return res, fmt.Errorf("scan image repository %s: %w", root, err)
	}
	sort.Slice(res.Images, func(i, j int) bool { return res.Images[i].Path < res.Images[j].Path })
	return res, nil
}

// Inspect reads one image folder (rel is relative to root) and validates it.
func Inspect(ctx context.Context, root, rel string) (Image, error) {
	r, err := os.OpenRoot(root)
	if err != nil {
		return Image{}, fmt.Errorf("open image repository %s: %w", root, err)
	}
	defer r.Close()
	rel = path.Clean(strings.TrimPrefix(rel, "/"))
	if !fs.ValidPath(rel) || rel == "." {
		return Image{}, fmt.Errorf("image path %q is not a folder inside the repository", rel)
	}
	st, err := fs.Stat(r.FS(), rel)
	if err != nil {
		return Image{}, fmt.Errorf("image %s: %w", rel, err)
	}
	if !st.IsDir() {
		return Image{}, fmt.Errorf("image %s is not a folder", rel)
	}
	return inspect(ctx, r.FS(), rel), nil
}

// looksLikeImage is Clonezilla's own test (check_if_any_image_exists:
// clonezilla-img, or disk/parts for old images) plus "the folder is named
// *-img", so that a half-copied image with no metadata still shows up with a
// reason instead of silently missing.
func looksLikeImage(fsys fs.FS, p, name string) bool {
	if strings.HasSuffix(name, "-img") {
		return true
	}
	for _, f := range []string{"clonezilla-img", "disk", "parts"} {
		if st, err := fs.Stat(fsys, path.Join(p, f)); err == nil && st.Mode().IsRegular() {
			return true
		}
	}
	return false
}

// imageReader reads files of one image folder with a size bound.
type imageReader struct {
	fsys  fs.FS
	dir   string
	files map[string]fs.FileInfo
}

func (ir imageReader) read(name string) ([]byte, bool, error) {
	if _, ok := ir.files[name]; !ok {
		return nil, false, nil
	}
	f, err := ir.fsys.Open(path.Join(ir.dir, name))
	if err != nil {
		return nil, true, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxMetaFile+1))
	return b, true, err
}

func inspect(ctx context.Context, fsys fs.FS, p string) (img Image) {
	img = Image{Name: path.Base(p), Path: p}
	problem := func(format string, a ...any) { img.Problems = append(img.Problems, fmt.Sprintf(format, a...)) }
	warn := func(format string, a ...any) { img.Warnings = append(img.Warnings, fmt.Sprintf(format, a...)) }
	defer func() { img.Valid = len(img.Problems) == 0 }()

	if s, ok := strings.CutSuffix(img.Name, "-img"); ok && s != "" {
		img.Signature = s
	} else {
		warn("the folder name does not end in -img, so pumi cannot tell which Signature a restored PC shows; rename it to <Signature>-img")
	}
	if err := CheckImagePath(p); err != nil {
		problem("%v", err)
	}

	ents, err := fs.ReadDir(fsys, p)
	if err != nil {
		problem("cannot read the folder: %v", err)
		return img
	}
	ir := imageReader{fsys: fsys, dir: p, files: map[string]fs.FileInfo{}}
	var partFiles []string
	for _, e := range ents {
		if ctx.Err() != nil {
			problem("scan cancelled")
			return img
		}
		info, err := e.Info()
		if err != nil {
			problem("cannot read %s: %v", e.Name(), err)
			continue
		}
		if info.Mode()&fs.ModeSymlink != 0 {
			// os.Root refuses links out of the repository; a link inside it
			// is unusual in an image and NFS clients would see it as a link.
			problem("%s is a symbolic link; Clonezilla images contain only plain files (copy the real file here)", e.Name())
			continue
		}
		if info.IsDir() {
			warn("unexpected sub-folder %s (ignored)", e.Name())
			continue
		}
		if !info.Mode().IsRegular() {
			problem("%s is not a regular file", e.Name())
			continue
		}
		ir.files[e.Name()] = info
		img.TotalBytes += info.Size()
		if _, ok := ParsePartImageName(e.Name()); ok {
			partFiles = append(partFiles, e.Name())
		}
	}

	for _, f := range []string{"00-pseudo-img-note.txt"} {
		if _, ok := ir.files[f]; ok {
			problem("this is a pseudo image made by a Clonezilla lite/BitTorrent server (%s); it holds no partition data", f)
		}
	}
	for _, f := range []string{"ecryptfs.info", "gocryptfs.info"} {
		if _, ok := ir.files[f]; ok {
			problem("the image is encrypted (%s); pumi cannot restore encrypted images unattended (save it again with -senc)", f)
		}
	}

	// clonezilla-img and Info-img-id.txt are written last by ocs-sr, so
	// they are the "this save finished" markers.
	var clogRaw []byte
	if b, ok, err := ir.read("clonezilla-img"); !ok {
		problem("missing clonezilla-img: the save did not finish (Clonezilla writes this file last)")
	} else if err != nil {
		problem("cannot read clonezilla-img: %v", err)
	} else if cl, err := ParseCloneLog(b); err != nil {
		problem("clonezilla-img is damaged: %v", err)
	} else {
		clogRaw = b
		if !cl.Complete {
			problem("clonezilla-img has no \"### Image created time\" line: the save did not finish or the file was cut short")
		}
		img.Created = cl.Created
		if img.Created.IsZero() {
			img.Created = cl.SavedAt
		}
	}
	if b, ok, err := ir.read("Info-img-id.txt"); !ok {
		problem("missing Info-img-id.txt: the save did not finish, or the image was made by a Clonezilla older than 2017 (save it again)")
	} else if err != nil {
		problem("cannot read Info-img-id.txt: %v", err)
	} else if id, err := ParseImgID(b); err != nil {
		problem("Info-img-id.txt is damaged: %v", err)
	} else {
		img.ImageID = id
		if clogRaw != nil && hexSHA512(sha512.Sum512(clogRaw)) != id {
			problem("clonezilla-img does not match the IMG_ID in Info-img-id.txt: one of them was changed or damaged after the save")
		}
	}
	if b, ok, _ := ir.read("Info-saved-by-cmd.txt"); ok {
		sb := strings.TrimSpace(strings.ReplaceAll(string(b), "\n", " "))
		if len(sb) > 1024 {
			sb = sb[:1024]
		}
		img.SavedBy = sb
	}

	var disks, parts []string
	if b, ok, err := ir.read("disk"); !ok {
		if _, pok := ir.files["parts"]; pok {
			problem("missing disk file: this is a partition image (saveparts), and pumi restores whole disks (save it again with savedisk)")
		} else {
			problem("missing disk file: not a complete Clonezilla disk image")
		}
	} else if err != nil {
		problem("cannot read disk: %v", err)
	} else if disks, err = ParseNameList(b); err != nil {
		problem("disk file is damaged: %v", err)
	}
	if b, ok, err := ir.read("parts"); !ok {
		problem("missing parts file: the list of saved partitions is gone")
	} else if err != nil {
		problem("cannot read parts: %v", err)
	} else if parts, err = ParseNameList(b); err != nil {
		problem("parts file is damaged: %v", err)
	}

	sizes := map[string]int64{} // partition -> bytes, from the sfdisk dumps
	for _, d := range disks {
		disk := Disk{Name: d}
		if b, ok, err := ir.read(d + "-pt.parted"); !ok {
			problem("missing %s-pt.parted: the partition table of disk %s was not saved", d, d)
		} else if err != nil {
			problem("cannot read %s-pt.parted: %v", d, err)
		} else if t, err := ParsePartedTable(b); err != nil {
			problem("%s-pt.parted is damaged: %v", d, err)
		} else {
			disk.SizeBytes, disk.SectorSize, disk.Table = t.SizeBytes(), t.LogicalSector, t.Table
		}
		if b, ok, err := ir.read(d + "-pt.sf"); !ok {
			if _, mbr := ir.files[d+"-mbr"]; !mbr {
				problem("missing %s-pt.sf: Clonezilla cannot recreate the partition table of disk %s", d, d)
			}
		} else if err != nil {
			problem("cannot read %s-pt.sf: %v", d, err)
		} else if t, err := ParseSfdisk(b); err != nil {
			problem("%s-pt.sf is damaged: %v", d, err)
		} else {
			ss := t.SectorSize
			if ss == 0 {
				ss = 512
			}
			for _, sp := range t.Parts {
				sizes[sp.Device] = sp.Size * ss
			}
		}
		img.SourceDisks = append(img.SourceDisks, disk)
		img.DiskSize += disk.SizeBytes
	}

	fsOf := map[string]string{}
	if b, ok, _ := ir.read("dev-fs.list"); ok {
		if l, err := ParseDevFS(b); err == nil {
			for _, d := range l {
				fsOf[d.Device] = d.FS
			}
		} else {
			warn("dev-fs.list is damaged: %v", err)
		}
	}
	pvs := lvmPVs(ir)

	byPart := map[string][]string{}
	for _, f := range partFiles {
		pi, _ := ParsePartImageName(f)
		byPart[pi.Part] = append(byPart[pi.Part], f)
	}
	comps := map[string]bool{}
	used := map[string]bool{}
	for _, name := range parts {
		pt := Partition{Name: name, FS: fsOf[name], Size: sizes[name]}
		files := byPart[name]
		used[name] = true
		switch {
		case len(files) > 0:
			checkPieces(name, files, ir, &pt, comps, problem)
			pt.Header = readHeader(ir, pt.Files, problem)
		case pvs[name]:
			pt.FS = "LVM2_member"
		case ir.files["swappt-"+name+".info"] != nil:
			pt.FS = "swap"
		default:
			problem("partition %s is listed in parts but has no image files (%s.<fs>-ptcl-img.<comp>)", name, name)
		}
		img.Partitions = append(img.Partitions, pt)
	}
	// LVM logical volumes are saved as <vg>-<lv>.<fs>-ptcl-img.* and are not
	// in parts; list them so their files are checked too.
	if len(pvs) > 0 {
		for part, files := range byPart {
			if used[part] {
				continue
			}
			pt := Partition{Name: part}
			used[part] = true
			checkPieces(part, files, ir, &pt, comps, problem)
			img.Partitions = append(img.Partitions, pt)
		}
	}
	for part := range byPart {
		if !used[part] {
			warn("image files for %s are not listed in parts and will not be restored", part)
		}
	}
	switch len(comps) {
	case 0:
	case 1:
		for c := range comps {
			img.Compression = c
		}
	default:
		img.Compression = "mixed"
	}
	sort.Strings(img.Warnings)
	return img
}

// checkPieces orders the files of one partition and checks that the split
// pieces are contiguous (aa, ab, ...) and non-empty, and of one kind.
func checkPieces(part string, files []string, ir imageReader, pt *Partition, comps map[string]bool, problem func(string, ...any)) {
	sort.Strings(files) // lexical order is the restore order (split -a 2)
	first, _ := ParsePartImageName(files[0])
	pt.FS = first.FS
	if first.Comp != "" {
		comps[first.Comp] = true
	}
	kind := func(pi PartImage) string { return pi.Engine + "/" + pi.FS + "/" + pi.Comp }
	unsplit := 0
	var pieces []string
	for _, f := range files {
		pi, _ := ParsePartImageName(f)
		if kind(pi) != kind(first) {
			problem("partition %s has image files of different kinds (%s and %s): remove the stale one", part, files[0], f)
			return
		}
		if pi.Piece == "" {
			unsplit++
		} else {
			pieces = append(pieces, pi.Piece)
		}
	}
	if unsplit > 0 && len(pieces) > 0 || unsplit > 1 {
		problem("partition %s has both a whole image file and split pieces: remove the stale one", part)
		return
	}
	for i, pc := range pieces {
		if want := pieceName(i, len(pc)); pc != want {
			problem("partition %s: split piece .%s is missing (found .%s next): the image was not copied completely", part, want, pc)
			return
		}
	}
	for _, f := range files {
		size := ir.files[f].Size()
		if size == 0 {
			problem("image file %s is empty: the save or the copy was cut short", f)
		}
		pt.Bytes += size
	}
	pt.Files = files
}

// pieceName is split(1)'s suffix number i with width letters: aa, ab, ... zz.
func pieceName(i, width int) string {
	b := make([]byte, width)
	for k := width - 1; k >= 0; k-- {
		b[k] = byte('a' + i%26)
		i /= 26
	}
	return string(b)
}

// readHeader checks that the first piece starts with the stream its name
// promises, and for gzip and uncompressed images also reads the partclone
// header (the standard library has no zstd; the magic check still catches
// a file that was overwritten or is not what its name says).
func readHeader(ir imageReader, files []string, problem func(string, ...any)) *PartcloneHeader {
	if len(files) == 0 {
		return nil
	}
	pi, _ := ParsePartImageName(files[0])
	f, err := ir.fsys.Open(path.Join(ir.dir, files[0]))
	if err != nil {
		problem("cannot read %s: %v", files[0], err)
		return nil
	}
	defer f.Close()
	head := make([]byte, 4096)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	if n == 0 {
		return nil // reported as empty already
	}
	magic := map[string][]byte{
		"gz":   {0x1f, 0x8b},
		"zst":  {0x28, 0xb5, 0x2f, 0xfd},
		"xz":   {0xfd, '7', 'z', 'X', 'Z', 0},
		"bz2":  []byte("BZh"),
		"lz4":  {0x04, 0x22, 0x4d, 0x18},
		"lzo":  {0x89, 'L', 'Z', 'O'},
		"lzip": []byte("LZIP"),
	}
	if m, ok := magic[pi.Comp]; ok && !bytes.HasPrefix(head, m) {
		problem("image file %s does not start with %s data: it is damaged or not what its name says", files[0], pi.Comp)
		return nil
	}
	if pi.Engine != "partclone" {
		return nil
	}
	var stream []byte
	switch pi.Comp {
	case "uncomp":
		stream = head
	case "gz":
		// Read through all pieces: the first piece may be shorter than the header.
		zr, err := gzip.NewReader(io.MultiReader(bytes.NewReader(head), f))
		if err != nil {
			problem("image file %s: gzip header is damaged: %v", files[0], err)
			return nil
		}
		stream = make([]byte, PartcloneHeaderSize)
		if _, err := io.ReadFull(zr, stream); err != nil {
			problem("image file %s is truncated or damaged: cannot decompress the partclone header (%v)", files[0], err)
			return nil
		}
	default:
		return nil
	}
	h, err := ParsePartcloneHeader(stream)
	if err != nil {
		problem("image file %s: %v", files[0], err)
		return nil
	}
	return &h
}

// lvmPVs lists the partitions that are LVM physical volumes
// (lvm_vg_dev.list: "<vg> /dev/<pv> <uuid>").
func lvmPVs(ir imageReader) map[string]bool {
	pvs := map[string]bool{}
	b, ok, err := ir.read("lvm_vg_dev.list")
	if !ok || err != nil {
		return pvs
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && strings.HasPrefix(f[1], "/dev/") {
			pvs[strings.TrimPrefix(f[1], "/dev/")] = true
		}
	}
	return pvs
}
