package nfsexport

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// startExports serves exports on 127.0.0.1 until the test ends.
func startExports(t testing.TB, cfg Config, allow Allow) string {
	t.Helper()
	s, err := New(cfg, allow, testLogger(t))
	must(t, err)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return l.Addr().String()
}

// captureLab is an appliance-like layout: the published images, a capture
// area with one folder per job, and pumi's own state directory beside
// them, which must never be reachable.
type captureLab struct {
	images, area, state string
	jobs                map[netip.Addr]string // client -> its job folder
}

// newCaptureLab builds the layout in a new temporary directory under base
// ("" for the test's own).
func newCaptureLab(t testing.TB, base string) *captureLab {
	root := t.TempDir()
	if base != "" {
		var err error
		root, err = os.MkdirTemp(base, "pumi-nfs-race-")
		must(t, err)
		t.Cleanup(func() { os.RemoveAll(root) })
	}
	l := &captureLab{
		images: filepath.Join(root, "images"),
		area:   filepath.Join(root, "capture-area"),
		state:  filepath.Join(root, "state"),
		jobs:   map[netip.Addr]string{},
	}
	must(t, os.MkdirAll(filepath.Join(l.images, "LAB-2026-img"), 0o755))
	must(t, os.WriteFile(filepath.Join(l.images, "LAB-2026-img", "disk"), []byte("sda\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(l.images, "LAB-2026-img", "sda1.ext4-ptcl-img.zst.aa"), []byte("partition"), 0o644))
	must(t, os.MkdirAll(l.state, 0o700))
	must(t, os.WriteFile(filepath.Join(l.state, "pumi.db"), []byte("state"), 0o600))
	// A file with the name the race test's client writes: what an escaped
	// WRITE or SETATTR would change.
	must(t, os.WriteFile(filepath.Join(l.state, "f"), []byte("pumi's"), 0o600))
	for i, ip := range []string{"127.0.0.1", "127.0.0.2"} {
		dir := filepath.Join(l.area, fmt.Sprintf("job-%d", i+1))
		must(t, os.MkdirAll(dir, 0o755))
		l.jobs[netip.MustParseAddr(ip)] = dir
	}
	return l
}

func (l *captureLab) dirFor(ip netip.Addr) (string, bool) {
	d, ok := l.jobs[ip]
	return d, ok
}

func (l *captureLab) config() Config {
	return Config{Exports: []Export{
		{Path: "/images", Dir: l.images},
		{Path: "/capture", Writable: true, DirFor: l.dirFor},
	}}
}

// snapshot lists every path under dir with its mode and content, to show
// that nothing in it changed.
func snapshot(t testing.TB, dir string) string {
	t.Helper()
	var lines []string
	must(t, filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		line := fmt.Sprintf("%s %v", p, info.Mode())
		if info.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += " " + shaHex(b)
		}
		lines = append(lines, line)
		return nil
	}))
	sort.Strings(lines)
	return fmt.Sprint(lines)
}

// TestRenameSymlinkRace reproduces the escape: one connection
// writes, chmods and creates in dK while a second renames dK away and a
// symlink dK -> pumi's state directory appears in its place (made on the
// host: pumi refuses SYMLINK itself, which is checked first). With go-billy's
// BoundOS (check the path, then open it by name) this wrote outside the
// export within 26-66 tries; resolved beneath the export by the kernel it
// never may.
func TestRenameSymlinkRace(t *testing.T) {
	tries := 10000
	if testing.Short() {
		tries = 500
	}
	// On tmpfs when there is one: the race is about path resolution, and
	// the fsyncs pumi does for every MKDIR, CREATE and RENAME would make
	// 10,000 tries take minutes on a busy disk.
	base := ""
	var sf unix.Statfs_t
	if unix.Statfs("/dev/shm", &sf) == nil && sf.Type == unix.TMPFS_MAGIC {
		base = "/dev/shm"
	}
	lab := newCaptureLab(t, base)
	allow := newAllow()
	allow.set("127.0.0.1", "/capture", true, true)
	addr := startExports(t, lab.config(), allow)
	job := lab.jobs[netip.MustParseAddr("127.0.0.1")]
	stateBefore, imagesBefore := snapshot(t, lab.state), snapshot(t, lab.images)

	tab := newHandleTable("/capture")
	writer, renamer := dialRaw(t, addr, ""), dialRaw(t, addr, "")
	root := tab.encode("")

	// SYMLINK over NFS is refused outright.
	st, _, err := renamer.nfs(procSymlink, argsSymlink(root, "ln", lab.state))
	must(t, err)
	if st != nfs3ErrNotSupp {
		t.Fatalf("SYMLINK: status %d, want NFS3ERR_NOTSUPP (%d)", st, nfs3ErrNotSupp)
	}
	if _, err := os.Lstat(filepath.Join(job, "ln")); err == nil {
		t.Fatal("SYMLINK created a link")
	}

	targets := []string{lab.state, "../../state"} // absolute and relative
	var okWrites, refused int
	payload := bytes.Repeat([]byte("x"), 4096)
	for i := range tries {
		name := fmt.Sprintf("d%d", i%8)
		dK, f := tab.encode(name), tab.encode(name+"/f")
		// A fresh dK with a file f in it.
		if st, _, err := writer.nfs(procMkdir, argsMkdir(root, name)); err != nil || st != nfs3OK {
			t.Fatalf("try %d: MKDIR %s: status %d, %v", i, name, st, err)
		}
		if st, _, err := writer.nfs(8, argsCreate(dK, "f")); err != nil || st != nfs3OK {
			t.Fatalf("try %d: CREATE %s/f: status %d, %v", i, name, st, err)
		}
		// The writer hammers dK/f until the swap is done; the swap is a
		// RENAME over NFS on even tries and, on odd ones, a rename on the
		// host right before the symlink (the narrowest gap, the hardest
		// case for a check-then-open server).
		var wg sync.WaitGroup
		swapped := make(chan struct{})
		wg.Go(func() {
			for n := 0; ; n++ {
				var st uint32
				switch n % 4 {
				case 0, 3:
					st, _, _ = writer.nfs(procWrite, argsWrite(f, uint64(n%4)*4096, uint32(n%3), payload))
				case 1:
					st, _, _ = writer.nfs(2, argsChmod(f, 0o777))
				case 2:
					st, _, _ = writer.nfs(8, argsCreate(dK, "g"))
				}
				if st == nfs3OK {
					okWrites++
				} else {
					refused++
				}
				select {
				case <-swapped:
					if n > 8 {
						return
					}
				default:
				}
			}
		})
		wg.Go(func() {
			defer close(swapped)
			time.Sleep(time.Duration(i%7) * 50 * time.Microsecond)
			if i%2 == 0 {
				if st, _, err := renamer.nfs(procRename, argsRename(root, name, root, name+".old")); err != nil || st != nfs3OK {
					t.Errorf("try %d: RENAME: status %d, %v", i, st, err)
					return
				}
			} else if err := os.Rename(filepath.Join(job, name), filepath.Join(job, name+".old")); err != nil {
				t.Errorf("try %d: %v", i, err)
				return
			}
			if err := os.Symlink(targets[(i/2)%2], filepath.Join(job, name)); err != nil {
				t.Errorf("try %d: %v", i, err)
			}
		})
		wg.Wait()
		if i%500 == 499 || i == tries-1 {
			if got := snapshot(t, lab.state); got != stateBefore {
				t.Fatalf("after %d tries pumi's state directory changed:\nbefore %s\nafter  %s", i+1, stateBefore, got)
			}
		}
		must(t, os.Remove(filepath.Join(job, name)))
		must(t, os.RemoveAll(filepath.Join(job, name+".old")))
		if t.Failed() {
			return
		}
	}
	if got := snapshot(t, lab.images); got != imagesBefore {
		t.Errorf("the image repository changed:\nbefore %s\nafter  %s", imagesBefore, got)
	}
	t.Logf("FIGURE rename/symlink race: %d tries, %d calls on dK landed (inside the export), %d refused, 0 outside", tries, okWrites, refused)
	if okWrites == 0 || refused == 0 {
		t.Errorf("the race was not exercised: %d calls succeeded, %d refused", okWrites, refused)
	}
}

// TestCaptureDirPerClient: each capture client's /capture is its own job
// folder, outside the published images: it cannot see, change or remove an
// existing image, nor another job's files; a client without a job folder
// cannot mount /capture.
func TestCaptureDirPerClient(t *testing.T) {
	lab := newCaptureLab(t, "")
	allow := newAllow()
	for _, ip := range []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"} {
		allow.set(ip, "/capture", true, true)
		allow.set(ip, "/images", true, true)
	}
	addr := startExports(t, lab.config(), allow)
	imagesBefore := snapshot(t, lab.images)
	tab := newHandleTable("/capture")
	a, b, c := dialRaw(t, addr, "127.0.0.1"), dialRaw(t, addr, "127.0.0.2"), dialRaw(t, addr, "127.0.0.3")

	// A writes a new image into its own folder.
	if st, _, err := a.nfs(procMkdir, argsMkdir(tab.encode(""), "NEW-img")); err != nil || st != nfs3OK {
		t.Fatalf("MKDIR: status %d, %v", st, err)
	}
	if st, _, err := a.nfs(8, argsCreate(tab.encode("NEW-img"), "disk")); err != nil || st != nfs3OK {
		t.Fatalf("CREATE: status %d, %v", st, err)
	}
	if st, _, err := a.nfs(procWrite, argsWrite(tab.encode("NEW-img/disk"), 0, stableFileSync, []byte("sdb\n"))); err != nil || st != nfs3OK {
		t.Fatalf("WRITE: status %d, %v", st, err)
	}
	if got, err := os.ReadFile(filepath.Join(lab.jobs[netip.MustParseAddr("127.0.0.1")], "NEW-img", "disk")); err != nil || string(got) != "sdb\n" {
		t.Fatalf("A's capture in its job folder: %q, %v", got, err)
	}

	// B does not see A's files: the same handle names B's own folder.
	if st, _, err := b.nfs(procRead, argsRead(tab.encode("NEW-img/disk"), 0, 100)); err != nil || st != nfs3ErrStale {
		t.Errorf("B reading A's capture: status %d, %v; want NFS3ERR_STALE", st, err)
	}
	// Nothing in /capture names an existing image; every way of reaching
	// LAB-2026-img fails.
	imgTab := newHandleTable("/images")
	calls := []struct {
		name string
		proc uint32
		args []byte
		want uint32
	}{
		{"REMOVE image file through /capture", 12, argsDirName(tab.encode("LAB-2026-img"), "disk").b, nfs3ErrStale},
		{"WRITE image file through /capture", procWrite, argsWrite(tab.encode("LAB-2026-img/disk"), 0, stableFileSync, []byte("x")), nfs3ErrStale},
		{"REMOVE in /images", 12, argsDirName(imgTab.encode("LAB-2026-img"), "disk").b, nfs3ErrROFS},
		{"WRITE in /images", procWrite, argsWrite(imgTab.encode("LAB-2026-img/sda1.ext4-ptcl-img.zst.aa"), 0, stableFileSync, []byte("x")), nfs3ErrROFS},
		{"RENAME from /capture into /images", procRename, argsRename(tab.encode("NEW-img"), "disk", imgTab.encode("LAB-2026-img"), "disk"), nfs3ErrXDev},
	}
	for _, tc := range calls {
		t.Run(tc.name, func(t *testing.T) {
			if st, _, err := a.nfs(tc.proc, tc.args); err != nil || st != tc.want {
				t.Errorf("status %d, %v; want %d", st, err, tc.want)
			}
		})
	}
	// No job folder: no /capture, even with Allow saying yes.
	x, err := c.call(progMount, mountProcMnt, argsMount("/capture"))
	if st := x.u32(); err != nil || st != mnt3ErrAcces {
		t.Errorf("MOUNT /capture without a job folder: status %d, %v; want MNT3ERR_ACCES", st, err)
	}
	if st, _, err := c.nfs(8, argsCreate(tab.encode(""), "x")); err != nil || st != nfs3ErrAcces {
		t.Errorf("CREATE without a job folder: status %d, %v; want NFS3ERR_ACCES", st, err)
	}
	if got := snapshot(t, lab.images); got != imagesBefore {
		t.Errorf("the image repository changed:\nbefore %s\nafter  %s", imagesBefore, got)
	}
}

// TestWriteStability: a WRITE asked to be stable is answered FILE_SYNC, an
// unstable one UNSTABLE; COMMIT answers with the same verifier, and a new
// Server (a restart) has another, so clients resend what was not committed.
func TestWriteStability(t *testing.T) {
	lab := newCaptureLab(t, "")
	allow := newAllow()
	allow.set("127.0.0.1", "/capture", true, true)
	tab := newHandleTable("/capture")
	verfs := map[string]bool{}
	for run := range 2 {
		addr := startExports(t, lab.config(), allow)
		c := dialRaw(t, addr, "")
		name := fmt.Sprintf("f%d", run)
		if st, _, err := c.nfs(8, argsCreate(tab.encode(""), name)); err != nil || st != nfs3OK {
			t.Fatalf("CREATE: status %d, %v", st, err)
		}
		var verf string
		for _, stable := range []uint32{stableUnstable, 1, stableFileSync} {
			st, x, err := c.nfs(procWrite, argsWrite(tab.encode(name), 0, stable, []byte("data")))
			if err != nil || st != nfs3OK {
				t.Fatalf("WRITE stable=%d: status %d, %v", stable, st, err)
			}
			x.u32() // pre_op_attr: none
			if x.u32() == 1 {
				x.off += 84 // fattr3
			}
			count, committed := x.u32(), x.u32()
			v := string(x.b[x.off : x.off+8])
			want := uint32(stableFileSync)
			if stable == stableUnstable {
				want = stableUnstable
			}
			if count != 4 || committed != want {
				t.Errorf("WRITE stable=%d: count %d committed %d, want 4 and %d", stable, count, committed, want)
			}
			if verf != "" && v != verf {
				t.Errorf("verifier changed within one server")
			}
			verf = v
		}
		st, x, err := c.nfs(procCommit, argsCommit(tab.encode(name)))
		if err != nil || st != nfs3OK {
			t.Fatalf("COMMIT: status %d, %v", st, err)
		}
		x.u32()
		if x.u32() == 1 {
			x.off += 84
		}
		if v := string(x.b[x.off : x.off+8]); v != verf {
			t.Errorf("COMMIT verifier %x, WRITE's %x", v, verf)
		}
		verfs[verf] = true
	}
	if len(verfs) != 2 {
		t.Errorf("two servers gave the same write verifier: a restart would not make clients resend")
	}
}

// TestConnectionCaps: connections beyond MaxConnsPerAddr from one address,
// or beyond MaxConns in total, are closed at accept; a slot frees when a
// connection ends.
func TestConnectionCaps(t *testing.T) {
	lab := newCaptureLab(t, "")
	allow := newAllow()
	for _, ip := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.5"} {
		allow.set(ip, "/images", true, false)
	}
	cfg := lab.config()
	cfg.MaxConnsPerAddr, cfg.MaxConns = 3, 5
	addr := startExports(t, cfg, allow)
	null := func(c *rawClient) error { _, err := c.call(progNFS, procNull, nil); return err }
	var held []*rawClient
	for i, from := range []string{"127.0.0.2", "127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3"} {
		c := dialRaw(t, addr, from)
		if err := null(c); err != nil {
			t.Fatalf("connection %d from %s: %v", i+1, from, err)
		}
		held = append(held, c)
	}
	for _, tc := range []struct{ name, from string }{
		{"fourth from one address", "127.0.0.2"},
		{"sixth in total", "127.0.0.5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := null(dialRaw(t, addr, tc.from)); err == nil {
				t.Errorf("answered beyond the cap")
			}
		})
	}
	held[0].c.Close()
	var err error
	for range 50 { // the server notices the close asynchronously
		if err = null(dialRaw(t, addr, "127.0.0.5")); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Errorf("no slot after a connection ended: %v", err)
	}
}
