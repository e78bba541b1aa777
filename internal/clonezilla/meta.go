// Package clonezilla owns what pumi knows about Clonezilla: the image
// repository (finding, validating and describing image folders), the
// Clonezilla live files taken from the official zip, the kernel command lines
// that make Clonezilla live restore or capture a disk without a keyboard, and
// the status line Clonezilla sends to an ocs_server when a job is done.
//
// Every parser here is a pure function over bytes: it never panics, never
// touches the disk, and returns an error saying what is wrong with the input.
// The file formats are the ones ocs-sr writes (see
// /work/shared/notes/clonezilla.md §3); testdata/repo holds folders made by a
// real ocs-sr run (testdata/mkfixtures.sh).
package clonezilla

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// maxMetaFile bounds every metadata file the parsers accept. The real ones are
// a few KB (clonezilla-img holds the save log, tens of KB at most); anything
// far bigger is not a Clonezilla metadata file and is refused before parsing.
const maxMetaFile = 4 << 20

// ErrMalformed is wrapped by every parser error, so callers can tell "this
// file is damaged" from an I/O error.
var ErrMalformed = errors.New("malformed Clonezilla metadata")

func malformed(format string, a ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, a...), ErrMalformed)
}

// devNameRE is what ocs-sr writes into `disk` and `parts`: kernel names such
// as sda, nvme0n1p2, mmcblk0p1, cciss-c0d0 (ocs-sr turns "/" into "-"), or
// LVM names vg-lv. Nothing with shell or command-line meaning gets through.
var devNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$`)

// ParseNameList parses the one-line `disk` or `parts` file: space-separated
// device names, e.g. "nvme0n1p1 nvme0n1p2". An empty file is an error because
// ocs-sr never writes one for a finished save.
func ParseNameList(data []byte) ([]string, error) {
	if len(data) > 64<<10 {
		return nil, malformed("device list is %d bytes, far too long", len(data))
	}
	var names []string
	seen := map[string]bool{}
	for _, f := range strings.Fields(string(data)) {
		if !devNameRE.MatchString(f) {
			return nil, malformed("device name %q is not a kernel device name", f)
		}
		if seen[f] {
			return nil, malformed("device %q is listed twice", f)
		}
		seen[f] = true
		names = append(names, f)
	}
	if len(names) == 0 {
		return nil, malformed("device list is empty")
	}
	return names, nil
}

var imgIDRE = regexp.MustCompile(`^IMG_ID=([0-9a-fA-F]{128})$`)

// ParseImgID returns the IMG_ID from Info-img-id.txt: the lower-case hex
// sha512 of clonezilla-img at the end of the save. Comment lines are skipped.
func ParseImgID(data []byte) (string, error) {
	if len(data) > maxMetaFile {
		return "", malformed("Info-img-id.txt is %d bytes, far too long", len(data))
	}
	id := ""
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		m := imgIDRE.FindStringSubmatch(line)
		if m == nil {
			return "", malformed("Info-img-id.txt line %q is not IMG_ID=<sha512 hex>", clip(line))
		}
		if id != "" {
			return "", malformed("Info-img-id.txt has more than one IMG_ID line")
		}
		id = strings.ToLower(m[1])
	}
	if id == "" {
		return "", malformed("Info-img-id.txt has no IMG_ID line")
	}
	return id, nil
}

// CloneLog is what pumi reads from the clonezilla-img tag file.
type CloneLog struct {
	Created  time.Time // "### Image created time: 2026-1126-1346", minute precision, local time of the saving PC (taken as UTC)
	SavedAt  time.Time // "This image was saved by Clonezilla at 2026-11-26 13:46:45 UTC." when present
	Complete bool      // the created-time line is present: ocs-sr writes it last, after the log
}

var (
	createdRE = regexp.MustCompile(`(?m)^### Image created time: (\d{4}-\d{4}-\d{4})\s*$`)
	savedAtRE = regexp.MustCompile(`(?m)^This image was saved by Clonezilla at (\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})(?: ([A-Z]{2,5}))?\.`)
)

// ParseCloneLog reads clonezilla-img. A file without the "### Image created
// time:" line is not an error here (Complete=false): the validator turns it
// into a plain-language problem.
func ParseCloneLog(data []byte) (CloneLog, error) {
	var cl CloneLog
	if len(data) > maxMetaFile {
		return cl, malformed("clonezilla-img is %d bytes, far too long", len(data))
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return cl, malformed("clonezilla-img is empty")
	}
	if m := createdRE.FindAllSubmatch(data, -1); len(m) > 0 {
		t, err := time.Parse("2006-0102-1504", string(m[len(m)-1][1]))
		if err != nil {
			return cl, malformed("clonezilla-img created time %q: %v", m[len(m)-1][1], err)
		}
		cl.Created, cl.Complete = t, true
	}
	if m := savedAtRE.FindSubmatch(data); m != nil {
		if t, err := time.Parse("2006-01-02 15:04:05", string(m[1])); err == nil {
			cl.SavedAt = t
		}
	}
	return cl, nil
}

// PartedTable is `parted -s /dev/X unit s print` as saved in <disk>-pt.parted.
type PartedTable struct {
	Model          string
	Disk           string // device name without /dev/
	Sectors        int64
	LogicalSector  int64 // bytes
	PhysicalSector int64
	Table          string // gpt, msdos, loop, ...
	Parts          []PartedPart
}

// SizeBytes is the source disk size, the number restoredisk compares with
// the target disk (clonezilla.md §2.3).
func (p PartedTable) SizeBytes() int64 { return p.Sectors * p.LogicalSector }

// PartedPart is one row of the partition list.
type PartedPart struct {
	Number     int
	Start, End int64 // sectors
	Size       int64 // sectors
	FS         string
	Rest       string // name/type/flags columns as printed; parted aligns them by width, so they are not split further
}

var (
	partedDiskRE   = regexp.MustCompile(`^Disk /dev/(\S+): (\d+)s$`)
	partedSectorRE = regexp.MustCompile(`^Sector size \(logical/physical\): (\d+)B/(\d+)B$`)
	partedRowRE    = regexp.MustCompile(`^\s*(\d+)\s+(\d+)s\s+(\d+)s\s+(\d+)s(?:\s+(.*))?$`)
)

// ParsePartedTable parses <disk>-pt.parted. It needs the Disk line (in
// sectors) and the sector size; the partition rows are read when present.
func ParsePartedTable(data []byte) (PartedTable, error) {
	var t PartedTable
	if len(data) > maxMetaFile {
		return t, malformed("parted table is %d bytes, far too long", len(data))
	}
	inRows := false
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimRight(line, " \r")
		switch {
		case strings.HasPrefix(line, "Model: "):
			t.Model = strings.TrimPrefix(line, "Model: ")
		case partedDiskRE.MatchString(line):
			m := partedDiskRE.FindStringSubmatch(line)
			n, err := strconv.ParseInt(m[2], 10, 64)
			if err != nil || n <= 0 {
				return t, malformed("parted disk size %q is not a sector count", m[2])
			}
			t.Disk, t.Sectors = m[1], n
		case partedSectorRE.MatchString(line):
			m := partedSectorRE.FindStringSubmatch(line)
			l, err1 := strconv.ParseInt(m[1], 10, 64)
			p, err2 := strconv.ParseInt(m[2], 10, 64)
			if err1 != nil || err2 != nil || !validSectorSize(l) || !validSectorSize(p) {
				return t, malformed("parted sector size line %q has an impossible sector size", clip(line))
			}
			t.LogicalSector, t.PhysicalSector = l, p
		case strings.HasPrefix(line, "Partition Table: "):
			t.Table = strings.TrimSpace(strings.TrimPrefix(line, "Partition Table: "))
		case strings.HasPrefix(line, "Number "):
			inRows = true
		case inRows && strings.TrimSpace(line) != "":
			m := partedRowRE.FindStringSubmatch(line)
			if m == nil {
				return t, malformed("parted partition row %q is not in sectors", clip(line))
			}
			var p PartedPart
			var err error
			if p.Number, err = strconv.Atoi(m[1]); err != nil {
				return t, malformed("parted partition number %q", m[1])
			}
			nums := [3]*int64{&p.Start, &p.End, &p.Size}
			for i, s := range m[2:5] {
				if *nums[i], err = strconv.ParseInt(s, 10, 64); err != nil {
					return t, malformed("parted partition row %q: %v", clip(line), err)
				}
			}
			rest := strings.TrimSpace(m[5])
			// The first word after the size is the file system only when
			// parted detected one; a GPT name or msdos type may come first.
			if f := strings.Fields(rest); len(f) > 0 && knownFS(f[0]) {
				p.FS = f[0]
			}
			p.Rest = rest
			t.Parts = append(t.Parts, p)
		}
	}
	if t.Disk == "" {
		return t, malformed("parted table has no \"Disk /dev/X: Ns\" line (was it saved in sectors?)")
	}
	if t.LogicalSector == 0 {
		return t, malformed("parted table has no sector size line")
	}
	if t.Sectors > (1<<62)/t.LogicalSector {
		return t, malformed("parted disk size %d sectors is impossible", t.Sectors)
	}
	return t, nil
}

func validSectorSize(n int64) bool { return n >= 512 && n <= 65536 && n&(n-1) == 0 }

func knownFS(s string) bool {
	switch {
	case strings.HasPrefix(s, "linux-swap"), strings.HasPrefix(s, "fat"), strings.HasPrefix(s, "ext"):
		return true
	}
	switch s {
	case "ntfs", "xfs", "btrfs", "hfs", "hfs+", "jfs", "reiserfs", "f2fs", "exfat", "udf", "nilfs2", "zfs", "apfs", "bcachefs":
		return true
	}
	return false
}

// SfdiskTable is an `sfdisk -d` dump as saved in <disk>-pt.sf.
type SfdiskTable struct {
	Label      string // gpt, dos
	LabelID    string
	Device     string
	Unit       string
	FirstLBA   int64
	LastLBA    int64
	SectorSize int64
	Parts      []SfdiskPart
}

// SfdiskPart is one partition line: "/dev/sda1 : start= 2048, size= 16384, type=..., uuid=..., name=\"EFI\"".
type SfdiskPart struct {
	Device   string // without /dev/
	Start    int64
	Size     int64 // sectors
	Type     string
	UUID     string
	Name     string
	Bootable bool
}

// ParseSfdisk parses <disk>-pt.sf. Header keys other than the ones in
// SfdiskTable are ignored (sfdisk adds new ones over time).
func ParseSfdisk(data []byte) (SfdiskTable, error) {
	var t SfdiskTable
	if len(data) > maxMetaFile {
		return t, malformed("sfdisk dump is %d bytes, far too long", len(data))
	}
	for n, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if dev, spec, ok := strings.Cut(line, " : "); ok && strings.HasPrefix(dev, "/dev/") {
			p, err := parseSfdiskPart(strings.TrimPrefix(strings.TrimSpace(dev), "/dev/"), spec)
			if err != nil {
				return t, fmt.Errorf("sfdisk line %d: %w", n+1, err)
			}
			t.Parts = append(t.Parts, p)
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return t, malformed("sfdisk line %d %q is neither a header nor a partition", n+1, clip(line))
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		var err error
		switch k {
		case "label":
			t.Label = v
		case "label-id":
			t.LabelID = v
		case "device":
			t.Device = strings.TrimPrefix(v, "/dev/")
		case "unit":
			t.Unit = v
		case "first-lba":
			t.FirstLBA, err = strconv.ParseInt(v, 10, 64)
		case "last-lba":
			t.LastLBA, err = strconv.ParseInt(v, 10, 64)
		case "sector-size":
			t.SectorSize, err = strconv.ParseInt(v, 10, 64)
			if err == nil && !validSectorSize(t.SectorSize) {
				err = errors.New("impossible sector size")
			}
		}
		if err != nil {
			return t, malformed("sfdisk %s %q: %v", k, clip(v), err)
		}
	}
	if t.Label == "" {
		return t, malformed("sfdisk dump has no \"label:\" line")
	}
	if t.Unit != "" && t.Unit != "sectors" {
		return t, malformed("sfdisk unit %q, want sectors", clip(t.Unit))
	}
	return t, nil
}

func parseSfdiskPart(dev, spec string) (SfdiskPart, error) {
	p := SfdiskPart{Device: dev}
	if !devNameRE.MatchString(dev) {
		return p, malformed("sfdisk partition device %q is not a kernel device name", clip(dev))
	}
	for _, field := range splitSfdiskFields(spec) {
		field = strings.TrimSpace(field)
		if field == "bootable" {
			p.Bootable = true
			continue
		}
		k, v, ok := strings.Cut(field, "=")
		if !ok {
			continue // attrs we do not need
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		var err error
		switch k {
		case "start":
			p.Start, err = strconv.ParseInt(v, 10, 64)
		case "size":
			p.Size, err = strconv.ParseInt(v, 10, 64)
		case "type", "Id":
			p.Type = v
		case "uuid":
			p.UUID = v
		case "name":
			p.Name = strings.Trim(v, `"`)
		}
		if err != nil || p.Start < 0 || p.Size < 0 {
			return p, malformed("sfdisk %s=%q for %s is not a sector count", k, clip(v), dev)
		}
	}
	return p, nil
}

// splitSfdiskFields splits on commas outside double quotes (a GPT name may
// contain a comma).
func splitSfdiskFields(s string) []string {
	var out []string
	inQ := false
	start := 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '"':
			inQ = !inQ
		case ',':
			if !inQ {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	return append(out, s[start:])
}

// DevFS is one line of dev-fs.list: "/dev/nvme0n1p2 ext4 16M".
type DevFS struct {
	Device string // without /dev/
	FS     string
	Size   string // as ocs-get-dev-info printed it (human units)
}

// ParseDevFS parses dev-fs.list. Lines starting with # are comments.
func ParseDevFS(data []byte) ([]DevFS, error) {
	if len(data) > maxMetaFile {
		return nil, malformed("dev-fs.list is %d bytes, far too long", len(data))
	}
	var out []DevFS
	for n, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 || !strings.HasPrefix(f[0], "/dev/") {
			return nil, malformed("dev-fs.list line %d %q is not \"/dev/X fs size\"", n+1, clip(line))
		}
		d := DevFS{Device: strings.TrimPrefix(f[0], "/dev/"), FS: f[1]}
		if len(f) > 2 {
			d.Size = f[2]
		}
		out = append(out, d)
	}
	return out, nil
}

// BlkDev is one row of blkdev.list (lsblk -o KNAME,NAME,SIZE,TYPE,...).
type BlkDev struct {
	KName string
	Size  string
	Type  string // disk, part, loop, lvm, rom, ...
}

// ParseBlkdevList parses blkdev.list. Only KNAME, SIZE and TYPE are read:
// NAME has tree-drawing prefixes and the optional FSTYPE/MOUNTPOINT/MODEL
// columns are blank-padded, so positions after TYPE are not reliable.
func ParseBlkdevList(data []byte) ([]BlkDev, error) {
	if len(data) > maxMetaFile {
		return nil, malformed("blkdev.list is %d bytes, far too long", len(data))
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxMetaFile)
	var out []BlkDev
	header := true
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if header {
			if len(f) < 4 || f[0] != "KNAME" || f[2] != "SIZE" || f[3] != "TYPE" {
				return nil, malformed("blkdev.list header %q, want KNAME NAME SIZE TYPE ...", clip(sc.Text()))
			}
			header = false
			continue
		}
		if len(f) < 4 {
			return nil, malformed("blkdev.list row %q has fewer than 4 columns", clip(sc.Text()))
		}
		out = append(out, BlkDev{KName: f[0], Size: f[2], Type: f[3]})
	}
	if header {
		return nil, malformed("blkdev.list is empty")
	}
	return out, nil
}

// PartImage describes one partition image file name, e.g.
// "nvme0n1p2.ext4-ptcl-img.zst.ab".
type PartImage struct {
	Part   string // nvme0n1p2, or vg-lv for an LVM volume
	FS     string // ext4, vfat, ntfs, dd, ...
	Engine string // "partclone", "dd", "ntfsclone"
	Comp   string // gz, zst, uncomp, ... ("" for dd/ntfsclone, whose suffix does not say)
	Piece  string // "" for an unsplit file, else "aa", "ab", ... (3 letters for WebDAV saves)
}

var (
	ptclRE  = regexp.MustCompile(`^([A-Za-z0-9][A-Za-z0-9_.+-]*?)\.([a-z0-9+]+)-ptcl-img\.(uncomp|gz|bz2|lzo|lz4|lzma|xz|lzip|lrz|zst)(?:\.([a-z]{2,3}))?$`)
	ddRE    = regexp.MustCompile(`^([A-Za-z0-9][A-Za-z0-9_.+-]*?)\.dd-img(?:\.([a-z]{2,3}))?$`)
	ntfsRE  = regexp.MustCompile(`^([A-Za-z0-9][A-Za-z0-9_.+-]*?)\.ntfs-img(?:\.([a-z]{2,3}))?$`)
	fsNames = map[string]bool{}
)

func init() {
	// partclone_support_fs from drbl-ocs.conf (clonezilla.md §3).
	for _, f := range strings.Fields("apfs btrfs hfs+ hfsplus reiser4 reiserfs xfs jfs ext2 ext3 ext4 ext4dev fat12 fat16 fat32 vfat ntfs ufs exfat minix vmfs3 vmfs5 f2fs nilfs2 dd") {
		fsNames[f] = true
	}
}

// ParsePartImageName recognises the partition image file names ocs-sr writes
// (partclone, dd and ntfsclone). ok is false for any other file.
func ParsePartImageName(name string) (PartImage, bool) {
	if len(name) > 255 {
		return PartImage{}, false
	}
	if m := ptclRE.FindStringSubmatch(name); m != nil && fsNames[m[2]] {
		return PartImage{Part: m[1], FS: m[2], Engine: "partclone", Comp: m[3], Piece: m[4]}, true
	}
	if m := ddRE.FindStringSubmatch(name); m != nil {
		return PartImage{Part: m[1], FS: "dd", Engine: "dd", Piece: m[2]}, true
	}
	if m := ntfsRE.FindStringSubmatch(name); m != nil {
		return PartImage{Part: m[1], FS: "ntfs", Engine: "ntfsclone", Piece: m[2]}, true
	}
	return PartImage{}, false
}

// PartcloneHeader is the start of a partclone image stream (image_desc_v2,
// src/partclone.h): enough to know the file system, the partition size and
// how much of it is used without reading the rest.
type PartcloneHeader struct {
	Version    string // partclone version that wrote it, e.g. "0.3.23"
	Format     string // "0002"
	FS         string // partclone's own name, e.g. "EXTFS", "FAT12"
	DeviceSize uint64 // bytes
	TotalBlock uint64
	UsedBlocks uint64
	BlockSize  uint32
}

// PartcloneHeaderSize is how many decompressed bytes ParsePartcloneHeader needs.
const PartcloneHeaderSize = 16 + 14 + 4 + 2 + 16 + 8 + 8 + 8 + 8 + 4

// ParsePartcloneHeader parses the first PartcloneHeaderSize bytes of a
// decompressed partclone image.
func ParsePartcloneHeader(b []byte) (PartcloneHeader, error) {
	var h PartcloneHeader
	if len(b) < PartcloneHeaderSize {
		return h, malformed("partclone header needs %d bytes, got %d (file truncated?)", PartcloneHeaderSize, len(b))
	}
	if string(b[:16]) != "partclone-image\x00" {
		return h, malformed("no partclone-image magic: not a partclone image")
	}
	h.Version = cstr(b[16:30])
	h.Format = string(b[30:34])
	if h.Format != "0002" {
		return h, malformed("partclone image format %q, only 0002 is read", clip(h.Format))
	}
	if binary.LittleEndian.Uint16(b[34:36]) != 0xC0DE {
		return h, malformed("partclone image is big-endian or damaged (endianness mark %x)", b[34:36])
	}
	h.FS = cstr(b[36:52])
	h.DeviceSize = binary.LittleEndian.Uint64(b[52:60])
	h.TotalBlock = binary.LittleEndian.Uint64(b[60:68])
	h.UsedBlocks = binary.LittleEndian.Uint64(b[68:76])
	// b[76:84] is used_bitmap
	h.BlockSize = binary.LittleEndian.Uint32(b[84:88])
	if h.UsedBlocks > h.TotalBlock {
		return h, malformed("partclone header says %d used blocks of %d", h.UsedBlocks, h.TotalBlock)
	}
	return h, nil
}

func cstr(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, string(b))
}

// clip shortens untrusted text quoted in an error message.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// hexSHA512 is a helper for the validator, kept here next to ParseImgID.
func hexSHA512(sum [64]byte) string { return hex.EncodeToString(sum[:]) }
