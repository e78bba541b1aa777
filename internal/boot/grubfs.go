package boot

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"log/slog"
	"strings"
	"time"
)

// grubDecideTimeout bounds one decision made for a TFTP read: GRUB waits a
// few seconds per TFTP request, and a seat that gets no config boots its
// disk (GrubDispatcher's fallback), so a slow state store must not hold the
// transfer longer.
const grubDecideTimeout = 5 * time.Second

// GrubFiles is the signed chain's GRUB configuration as a read-only file
// tree for pumi's TFTP (stack it with netboot.Layers): "grub/grub.cfg" is
// GrubDispatcher, and "grub/<mac>.cfg" is rendered from the Decider's
// decision for that MAC on every read — the same Decider, and so the same
// decision, tokens and trust rules as the iPXE script at /boot/<mac>.ipxe.
// A read therefore counts as that seat's boot, exactly like a script fetch.
//
// Every other name is fs.ErrNotExist, so the next layer can serve it.
type GrubFiles struct {
	ctx   context.Context // the server's lifetime: decisions end with it
	d     Decider
	paths TFTPPaths
	log   *slog.Logger
}

// NewGrubFiles serves d's decisions rendered by GrubConfig with paths (nil:
// URLPath). ctx bounds every decision made for a read (pass the netboot
// server's context).
func NewGrubFiles(ctx context.Context, d Decider, paths TFTPPaths, log *slog.Logger) *GrubFiles {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &GrubFiles{ctx: ctx, d: d, paths: paths, log: log}
}

// Open implements fs.FS.
func (g *GrubFiles) Open(name string) (fs.File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	if name == GrubDispatcherPath {
		return memFile(name, GrubDispatcher()), nil
	}
	mac, ok := ParseGrubConfigPath(name)
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	ctx, cancel := context.WithTimeout(g.ctx, grubDecideTimeout)
	defer cancel()
	// An fs.FS does not know who asks: the Decider gets no address, so a
	// seat with a job (whose decision needs its address on record) is sent
	// to its disk until TFTP hands the client's address through.
	dec, err := g.d.Decide(ctx, Machine{MAC: mac})
	if err != nil {
		g.log.Error("boot decision failed; the seat will boot its local disk", "mac", mac.String(), "chain", "signed", "err", err)
		return memFile(name, GrubErrorConfig("decision failed: "+err.Error())), nil
	}
	cfg, err := GrubConfig(dec, g.paths)
	if err != nil {
		g.log.Error("boot decision cannot be rendered for GRUB; the seat will boot its local disk", "mac", mac.String(), "chain", "signed", "err", err)
		return memFile(name, GrubErrorConfig("decision cannot be rendered: "+err.Error())), nil
	}
	g.log.Info("grub config served", "mac", mac.String(), "action", dec.Action.String(), "kernel", dec.Kernel, "reason", dec.Reason)
	return memFile(name, cfg), nil
}

// file is an in-memory regular file (fs.File + io.Seeker).
type file struct {
	*bytes.Reader
	info fileInfo
}

func memFile(name, content string) *file {
	base := name[strings.LastIndexByte(name, '/')+1:]
	return &file{Reader: bytes.NewReader([]byte(content)), info: fileInfo{name: base, size: int64(len(content))}}
}

func (f *file) Stat() (fs.FileInfo, error) { return f.info, nil }
func (f *file) Close() error               { return nil }

var _ io.ReadSeeker = (*file)(nil)

type fileInfo struct {
	name string
	size int64
}

func (i fileInfo) Name() string       { return i.name }
func (i fileInfo) Size() int64        { return i.size }
func (i fileInfo) Mode() fs.FileMode  { return 0o444 }
func (i fileInfo) ModTime() time.Time { return time.Time{} }
func (i fileInfo) IsDir() bool        { return false }
func (i fileInfo) Sys() any           { return nil }
