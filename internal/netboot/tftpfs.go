package netboot

import (
	"errors"
	"io/fs"
	"path"
	"strings"
)

// Layers stacks file trees for TFTP: a name is served by the first layer
// that has it; only "does not exist" falls through to the next layer, any
// other error is returned. For the signed chain pumi's TFTP serves
//
//	Layers(assets.IPXE(), assets.SecureBoot(), boot.NewGrubFiles(...),
//	       Mount("live", liveRoot.FS()))
//
// so that a Decision's http://pumi/live/... URLs exist over TFTP under the
// same paths (boot.URLPath).
func Layers(layers ...fs.FS) fs.FS { return layered(layers) }

type layered []fs.FS

func (l layered) Open(name string) (fs.File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	for _, f := range l {
		if f == nil {
			continue
		}
		file, err := f.Open(name)
		if err == nil {
			return file, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
}

// Mount serves f under the directory dir ("live": "live/x" is f's "x").
// Names outside dir do not exist.
func Mount(dir string, f fs.FS) fs.FS { return mounted{dir: path.Clean(dir), f: f} }

type mounted struct {
	dir string
	f   fs.FS
}

func (m mounted) Open(name string) (fs.File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	rest, ok := strings.CutPrefix(name, m.dir+"/")
	if !ok || rest == "" {
		// The directory itself is not served: TFTP has no listings.
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return m.f.Open(rest)
}
