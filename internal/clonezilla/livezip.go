package clonezilla

import (
	"archive/zip"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/pumi-lab/pumi/internal/atomicfile"
)

// The three files a netbooted Clonezilla live needs (clonezilla.md §5), and
// the names pumi serves them under.
const (
	LiveKernel   = "vmlinuz"
	LiveInitrd   = "initrd.img"
	LiveSquashfs = "filesystem.squashfs"
	liveVersion  = "VERSION"
)

// LiveLimits refuse absurd sizes before a byte is written. The real files
// are ~10 MB, tens of MB and ~0.4-0.5 GB.
type LiveLimits struct {
	Kernel, Initrd, Squashfs int64
}

// DefaultLiveLimits leaves room for several times today's sizes.
var DefaultLiveLimits = LiveLimits{Kernel: 64 << 20, Initrd: 512 << 20, Squashfs: 4 << 30}

// LiveFiles is an imported Clonezilla live file set.
type LiveFiles struct {
	Version  string // e.g. "3.3.0-33-amd64"
	Dir      string // <liveRoot>/<Version>
	Kernel   string // full paths
	Initrd   string
	Squashfs string
	Sizes    map[string]int64 // by LiveKernel/LiveInitrd/LiveSquashfs
}

// ErrBadLiveZip is wrapped by every refusal of a zip.
var ErrBadLiveZip = errors.New("not a usable Clonezilla live zip")

func badZip(format string, a ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, a...), ErrBadLiveZip)
}

var (
	zipNameRE = regexp.MustCompile(`^clonezilla-live-([0-9][A-Za-z0-9.+_-]*?)(?:-amd64)?\.zip$`)
	versionRE = regexp.MustCompile(`^[0-9][A-Za-z0-9.+_-]{0,63}$`)
)

// safeVersion: the version becomes a folder name and part of the URLs seats
// fetch, so plain characters only and no "..".
func safeVersion(v string) bool { return versionRE.MatchString(v) && !strings.Contains(v, "..") }

// LiveVersion reads the version from the zip's Clonezilla-Live-Version text
// ("clonezilla-live-3.3.0-33-amd64" -> "3.3.0-33-amd64") or, failing that,
// from the zip file name.
func LiveVersion(versionFile []byte, zipName string) (string, error) {
	if len(versionFile) > 0 {
		first, _, _ := strings.Cut(string(versionFile), "\n")
		first = strings.TrimSpace(first)
		v := strings.TrimPrefix(first, "clonezilla-live-")
		if v != first && safeVersion(v) {
			return v, nil
		}
	}
	if m := zipNameRE.FindStringSubmatch(filepath.Base(zipName)); m != nil && safeVersion(m[1]) {
		v := m[1]
		if strings.HasSuffix(filepath.Base(zipName), "-amd64.zip") {
			v += "-amd64"
		}
		return v, nil
	}
	return "", badZip("cannot tell the Clonezilla version: no Clonezilla-Live-Version file and the name %q is not clonezilla-live-<version>-amd64.zip", clip(filepath.Base(zipName)))
}

// ImportLiveZip extracts live/vmlinuz, live/initrd.img and
// live/filesystem.squashfs from the official clonezilla-live-*-amd64.zip
// into liveRoot/<version>/ crash-safely: everything goes into a temporary
// folder in liveRoot, every file and the folder are fsynced, and one rename
// makes the set appear. A crash leaves either no <version> folder or a
// complete one (plus a .tmp- folder that the next import removes).
// A version that is already imported is refused, not overwritten, because
// seats may be fetching from it.
func ImportLiveZip(ctx context.Context, zipPath, liveRoot string, lim LiveLimits) (LiveFiles, error) {
	var lf LiveFiles
	if lim == (LiveLimits{}) {
		lim = DefaultLiveLimits
	}
	zr, err := zip.OpenReader(zipPath)
	if err != nil {
		return lf, badZip("open %s: %v (is it the .zip download, complete?)", zipPath, err)
	}
	defer zr.Close()

	want := map[string]int64{"live/" + LiveKernel: lim.Kernel, "live/" + LiveInitrd: lim.Initrd, "live/" + LiveSquashfs: lim.Squashfs}
	found := map[string]*zip.File{}
	var versionFile []byte
	for _, f := range zr.File {
		name := f.Name
		// Refuse the whole zip if any entry could escape a folder when
		// extracted (zip slip), even though only three names are used:
		// such a zip was not made by Clonezilla.
		if name == "" || strings.Contains(name, `\`) || strings.HasPrefix(name, "/") || !validZipPath(name) {
			return lf, badZip("entry %q has an unsafe path (absolute, .., or backslash)", clip(name))
		}
		if lim, ok := want[name]; ok {
			if found[name] != nil {
				return lf, badZip("entry %s appears twice", name)
			}
			if f.Mode()&os.ModeType != 0 {
				return lf, badZip("entry %s is not a regular file", name)
			}
			if f.UncompressedSize64 == 0 || f.UncompressedSize64 > uint64(lim) {
				return lf, badZip("entry %s is %d bytes; expected 1..%d", name, f.UncompressedSize64, lim)
			}
			found[name] = f
		}
		if name == "Clonezilla-Live-Version" && f.UncompressedSize64 < 4096 {
			rc, err := f.Open()
			if err == nil {
				versionFile, _ = io.ReadAll(io.LimitReader(rc, 4096))
				rc.Close()
			}
		}
	}
	for name := range want {
		if found[name] == nil {
			return lf, badZip("%s has no %s (pumi needs live/vmlinuz, live/initrd.img and live/filesystem.squashfs)", filepath.Base(zipPath), name)
		}
	}
	version, err := LiveVersion(versionFile, zipPath)
	if err != nil {
		return lf, err
	}
	if err := os.MkdirAll(liveRoot, 0o755); err != nil {
		return lf, fmt.Errorf("create live-files folder %s: %w", liveRoot, err)
	}
	final := filepath.Join(liveRoot, version)
	if _, err := os.Lstat(final); err == nil {
		return lf, fmt.Errorf("Clonezilla live %s is already imported in %s: remove that folder first to import it again", version, final)
	}
	// Leftovers of an import cut by a crash.
	if old, _ := filepath.Glob(filepath.Join(liveRoot, ".tmp-"+version+"-*")); len(old) > 0 {
		for _, o := range old {
			os.RemoveAll(o)
		}
	}
	tmp, err := os.MkdirTemp(liveRoot, ".tmp-"+version+"-")
	if err != nil {
		return lf, fmt.Errorf("create temporary folder in %s: %w", liveRoot, err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	sizes := map[string]int64{}
	for name, f := range found {
		out := path.Base(name)
		n, err := extract(ctx, f, filepath.Join(tmp, out), want[name])
		if err != nil {
			return lf, err
		}
		sizes[out] = n
	}
	if err := checkLiveContent(tmp); err != nil {
		return lf, err
	}
	if err := atomicfile.Write(filepath.Join(tmp, liveVersion), []byte(version+"\n"), 0o644); err != nil {
		return lf, err
	}
	if err := atomicfile.SyncDir(tmp); err != nil {
		return lf, err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return lf, fmt.Errorf("live files: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return lf, fmt.Errorf("move imported live files into place: %w", err)
	}
	ok = true
	if err := atomicfile.SyncDir(liveRoot); err != nil {
		return lf, err
	}
	return LiveFiles{
		Version:  version,
		Dir:      final,
		Kernel:   filepath.Join(final, LiveKernel),
		Initrd:   filepath.Join(final, LiveInitrd),
		Squashfs: filepath.Join(final, LiveSquashfs),
		Sizes:    sizes,
	}, nil
}

func validZipPath(name string) bool {
	for _, el := range strings.Split(strings.TrimSuffix(name, "/"), "/") {
		if el == ".." || el == "." || el == "" {
			return false
		}
	}
	return true
}

// extract copies one entry, enforcing the limit on the bytes actually
// decompressed (the header size can lie) and fsyncing the result.
func extract(ctx context.Context, f *zip.File, dst string, limit int64) (int64, error) {
	rc, err := f.Open()
	if err != nil {
		return 0, badZip("open %s in the zip: %v", f.Name, err)
	}
	defer rc.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return 0, fmt.Errorf("create %s: %w", dst, err)
	}
	defer out.Close()
	w := bufio.NewWriterSize(out, 1<<20)
	n, err := io.Copy(w, &ctxReader{ctx: ctx, r: io.LimitReader(rc, limit+1)})
	if err != nil {
		if ctx.Err() != nil {
			return n, ctx.Err()
		}
		return n, badZip("extract %s: %v (the zip is damaged or truncated)", f.Name, err)
	}
	if n > limit || uint64(n) != f.UncompressedSize64 {
		return n, badZip("%s decompressed to %d bytes, header said %d (limit %d)", f.Name, n, f.UncompressedSize64, limit)
	}
	if err := w.Flush(); err != nil {
		return n, fmt.Errorf("write %s: %w", dst, err)
	}
	if err := out.Sync(); err != nil {
		return n, fmt.Errorf("fsync %s: %w", dst, err)
	}
	return n, out.Close()
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// checkLiveContent looks at the first bytes: a kernel must be an x86 bzImage
// ("HdrS" at 0x202) and the squashfs must start with "hsqs", so a zip of
// some other distribution with the same names is refused.
func checkLiveContent(dir string) error {
	head := func(name string, n int) ([]byte, error) {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			return nil, err
		}
		defer f.Close()
		b := make([]byte, n)
		m, _ := io.ReadFull(f, b)
		return b[:m], nil
	}
	k, err := head(LiveKernel, 0x206)
	if err != nil {
		return err
	}
	if len(k) < 0x206 || string(k[0x202:0x206]) != "HdrS" {
		return badZip("live/vmlinuz is not an x86 Linux kernel (no HdrS boot header)")
	}
	s, err := head(LiveSquashfs, 4)
	if err != nil {
		return err
	}
	if !bytes.Equal(s, []byte("hsqs")) {
		return badZip("live/filesystem.squashfs is not a squashfs image")
	}
	return nil
}
