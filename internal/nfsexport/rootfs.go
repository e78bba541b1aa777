package nfsexport

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/go-git/go-billy/v5"
)

// Every path operation on an export goes through an os.Root: the kernel
// resolves each name beneath the export's directory (openat2 with
// RESOLVE_BENEATH, or a component walk with O_NOFOLLOW), on an open
// descriptor of that directory. go-billy's BoundOS, which pumi used before,
// checked a path and then opened it by name, so a client renaming a
// directory and putting a symlink in its place between the two could make
// pumi (root on the appliance) write anywhere.

// exportRoot is one host directory an export is served from: the export's
// Dir, or for an Export with DirFor, the directory chosen for one client.
type exportRoot struct {
	exp  *export
	dir  string // absolute host path, for statfs and logs
	root *os.Root
	fs   *rootFS
}

func openExportRoot(exp *export, dir string) (*exportRoot, error) {
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	st, err := r.Stat(".")
	if err != nil {
		r.Close()
		return nil, err
	}
	if !st.IsDir() {
		r.Close()
		return nil, fmt.Errorf("%s is not a directory", dir)
	}
	er := &exportRoot{exp: exp, dir: dir, root: r}
	er.fs = &rootFS{er: er}
	return er, nil
}

// rootCache keeps the roots of per-client directories open. Evicted roots
// are not closed here: a call may still use one, and os.Root closes its
// descriptor when it is garbage collected.
type rootCache struct {
	mu  sync.Mutex
	max int
	m   map[string]*exportRoot // export path + "\x00" + dir
	age []string               // insertion order, oldest first
}

func (c *rootCache) get(exp *export, dir string) (*exportRoot, error) {
	k := exp.Path + "\x00" + dir
	c.mu.Lock()
	if r, ok := c.m[k]; ok {
		c.mu.Unlock()
		return r, nil
	}
	c.mu.Unlock()
	r, err := openExportRoot(exp, dir)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.m[k]; ok {
		r.root.Close()
		return old, nil
	}
	c.m[k] = r
	c.age = append(c.age, k)
	for len(c.age) > c.max {
		delete(c.m, c.age[0])
		c.age = c.age[1:]
	}
	return r, nil
}

// rootName turns a go-nfs or handle path into a name for os.Root: clean,
// relative, "." for the root. os.Root itself refuses ".." above the root,
// absolute paths and symlinks that lead out.
func rootName(name string) string {
	p := path.Clean("/" + filepath.ToSlash(name))
	if p == "/" {
		return "."
	}
	return strings.TrimPrefix(p, "/")
}

var errReadOnly = &fs.PathError{Op: "write", Path: "", Err: billy.ErrReadOnly}

// rootFS is billy.Filesystem (and billy.Change on writable exports) over an
// os.Root, for the embedded go-nfs server and pumi's own READ/WRITE paths.
type rootFS struct{ er *exportRoot }

func (f *rootFS) export() *export { return f.er.exp }
func (f *rootFS) writable() bool  { return f.er.exp.Writable }

func (f *rootFS) Capabilities() billy.Capability {
	if f.writable() {
		return billy.WriteCapability | billy.ReadCapability | billy.ReadAndWriteCapability |
			billy.SeekCapability | billy.TruncateCapability
	}
	return billy.ReadCapability | billy.SeekCapability
}

// rootFile is an *os.File opened through the root. Its Name is the path
// inside the export, as billy's own files report it (go-nfs stats it after
// CREATE); billy also wants locks, which NFSv3 without NLM never uses.
type rootFile struct {
	*os.File
	name string
}

func (f rootFile) Name() string { return f.name }

func (rootFile) Lock() error   { return billy.ErrNotSupported }
func (rootFile) Unlock() error { return billy.ErrNotSupported }

func (f *rootFS) Create(name string) (billy.File, error) {
	fl, err := f.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o666)
	if err != nil {
		return nil, err
	}
	if err := f.syncParent(name); err != nil {
		fl.Close()
		return nil, err
	}
	return fl, nil
}

// syncParent fsyncs the directory holding name: NFSv3 wants CREATE,
// MKDIR, REMOVE and RENAME on stable storage before they are answered (go-nfs
// does them through this file system and syncs nothing), so a capture's
// names survive a power cut as its COMMITted data does.
func (f *rootFS) syncParent(name string) error {
	d, err := f.er.root.Open(path.Dir(rootName(name)))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (f *rootFS) Open(name string) (billy.File, error) {
	return f.OpenFile(name, os.O_RDONLY, 0)
}

func (f *rootFS) OpenFile(name string, flag int, perm os.FileMode) (billy.File, error) {
	if flag&(os.O_WRONLY|os.O_RDWR|os.O_CREATE|os.O_TRUNC|os.O_APPEND) != 0 && !f.writable() {
		return nil, errReadOnly
	}
	fl, err := f.er.root.OpenFile(rootName(name), flag, perm)
	if err != nil {
		return nil, err
	}
	return rootFile{fl, rootName(name)}, nil
}

func (f *rootFS) Stat(name string) (os.FileInfo, error)  { return f.er.root.Stat(rootName(name)) }
func (f *rootFS) Lstat(name string) (os.FileInfo, error) { return f.er.root.Lstat(rootName(name)) }

func (f *rootFS) Rename(from, to string) error {
	if !f.writable() {
		return errReadOnly
	}
	if err := f.er.root.Rename(rootName(from), rootName(to)); err != nil {
		return err
	}
	if err := f.syncParent(to); err != nil {
		return err
	}
	return f.syncParent(from)
}

func (f *rootFS) Remove(name string) error {
	if !f.writable() {
		return errReadOnly
	}
	if err := f.er.root.Remove(rootName(name)); err != nil {
		return err
	}
	return f.syncParent(name)
}

func (f *rootFS) Join(elem ...string) string { return path.Join(elem...) }

func (f *rootFS) TempFile(string, string) (billy.File, error) { return nil, billy.ErrNotSupported }

// ReadDir lists a directory through a descriptor opened beneath the root;
// each entry's attributes come from fstatat on that descriptor, so no entry
// is looked up by a path that could have changed.
func (f *rootFS) ReadDir(name string) ([]os.FileInfo, error) {
	d, err := f.er.root.Open(rootName(name))
	if err != nil {
		return nil, err
	}
	defer d.Close()
	ents, err := d.ReadDir(-1)
	if err != nil {
		return nil, err
	}
	out := make([]os.FileInfo, 0, len(ents))
	for _, e := range ents {
		info, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		out = append(out, info)
	}
	return out, nil
}

func (f *rootFS) MkdirAll(name string, perm os.FileMode) error {
	if !f.writable() {
		return errReadOnly
	}
	// go-nfs's default mode for a MKDIR without one is the decimal 755
	// (sticky, -wxrw--wx), which os.Root rightly refuses; that one means
	// 0o755, and only permission bits are ever passed on.
	if perm == 755 {
		perm = 0o755
	}
	if err := f.er.root.MkdirAll(rootName(name), perm&os.ModePerm); err != nil {
		return err
	}
	return f.syncParent(name)
}

var errNoSymlinks = errors.New("symlinks cannot be created on pumi's exports")

// Symlink is refused: a capture never needs one, and a symlink is what the
// escapes this file guards against are built from. dispatch answers
// NFS3ERR_NOTSUPP before go-nfs gets here.
func (f *rootFS) Symlink(string, string) error {
	return &fs.PathError{Op: "symlink", Err: errNoSymlinks}
}

func (f *rootFS) Readlink(name string) (string, error) { return f.er.root.Readlink(rootName(name)) }

func (f *rootFS) Chroot(string) (billy.Filesystem, error) { return nil, billy.ErrNotSupported }
func (f *rootFS) Root() string                            { return f.er.dir }

func (f *rootFS) Chmod(name string, mode os.FileMode) error {
	if !f.writable() {
		return errReadOnly
	}
	return f.er.root.Chmod(rootName(name), mode)
}

func (f *rootFS) Lchown(name string, uid, gid int) error {
	if !f.writable() {
		return errReadOnly
	}
	return f.er.root.Lchown(rootName(name), uid, gid)
}

func (f *rootFS) Chown(name string, uid, gid int) error {
	if !f.writable() {
		return errReadOnly
	}
	return f.er.root.Chown(rootName(name), uid, gid)
}

func (f *rootFS) Chtimes(name string, atime, mtime time.Time) error {
	if !f.writable() {
		return errReadOnly
	}
	return f.er.root.Chtimes(rootName(name), atime, mtime)
}
