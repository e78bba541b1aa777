package testvm

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Programs are the programs and files the kit needs; pass them to
// testnet.Require. Debian packages: qemu-system-x86 ovmf busybox-static
// grub-efi-amd64-bin grub-common mtools dosfstools fdisk (and apt, dpkg).
func Programs() []string {
	return []string{"qemu-system-x86_64", OVMFCode, OVMFVars, "/bin/busybox", "apt-get", "dpkg",
		"grub-mkstandalone", "sfdisk", "mkfs.vfat", "mmd", "mcopy"}
}

// CacheDir is where large fixtures are kept between runs.
func CacheDir() string {
	if d := os.Getenv("PUMI_TEST_CACHE"); d != "" {
		return d
	}
	return "/var/cache/pumi-test"
}

// lockCache serializes fixture builds across test processes (several
// packages' tests run in parallel and share the cache); the returned
// function releases the lock.
func lockCache(t testing.TB, name string) func() {
	t.Helper()
	if err := os.MkdirAll(CacheDir(), 0o755); err != nil {
		t.Fatalf("test cache %s: %v (set PUMI_TEST_CACHE to a writable directory)", CacheDir(), err)
	}
	f, err := os.OpenFile(filepath.Join(CacheDir(), name+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatalf("test cache lock: %v", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		t.Fatalf("test cache lock: %v", err)
	}
	return func() { f.Close() } // closing releases the flock
}

// Kernel is an unpacked Debian kernel package.
type Kernel struct {
	Package string // e.g. linux-image-6.1.0-56-amd64
	Version string // Debian version, e.g. 6.1.192-2
	Release string // uname -r, e.g. 6.1.0-56-amd64
	Vmlinuz string // path of the bzImage (EFI stub capable)
	Dir     string // root of the unpacked package

	modules map[string]string // module name (underscores) -> .ko path
}

// DebianKernel returns the kernel that Debian's linux-image-amd64 currently
// depends on, downloaded with apt-get download and unpacked with dpkg -x (it
// is never installed), cached as <cache>/kernel/<package>_<version>.
func DebianKernel(t testing.TB) *Kernel {
	t.Helper()
	pkg, err := kernelPackage()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("apt-cache", "show", "--no-all-versions", pkg).Output()
	if err != nil {
		t.Fatalf("apt-cache show %s: %v (run apt-get update)", pkg, err)
	}
	m := regexp.MustCompile(`(?m)^Version: (\S+)$`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("apt-cache show %s: no Version field", pkg)
	}
	version := string(m[1])
	dir := filepath.Join(CacheDir(), "kernel", pkg+"_"+version)

	unlock := lockCache(t, "kernel")
	defer unlock()
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err != nil {
		if err := fetchKernel(t, pkg, version, dir); err != nil {
			t.Fatal(err)
		}
	}
	k, err := openKernel(dir, pkg, version)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func kernelPackage() (string, error) {
	out, err := exec.Command("apt-cache", "depends", "linux-image-amd64").Output()
	if err != nil {
		return "", fmt.Errorf("apt-cache depends linux-image-amd64: %w (is this Debian with apt lists? run apt-get update)", err)
	}
	m := regexp.MustCompile(`Depends: (linux-image-[0-9]\S*-amd64)`).FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("apt-cache depends linux-image-amd64 names no kernel package (run apt-get update):\n%s", out)
	}
	return string(m[1]), nil
}

func fetchKernel(t testing.TB, pkg, version, dir string) error {
	t.Logf("fetching %s %s from the Debian archive into %s (about 70 MB, once)", pkg, version, dir)
	// Unpack beside the final directory and rename, so that an interrupted
	// fetch never leaves a directory that looks complete.
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("test cache: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".fetch-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	dl := exec.Command("apt-get", "download", pkg+"="+version)
	dl.Dir = tmp
	if out, err := dl.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get download %s=%s: %w (needs the Debian archive; run apt-get update)\n%s", pkg, version, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("apt-get download %s: want one .deb, got %v", pkg, debs)
	}
	root := filepath.Join(tmp, "root")
	if out, err := exec.Command("dpkg", "-x", debs[0], root).CombinedOutput(); err != nil {
		return fmt.Errorf("dpkg -x %s: %w\n%s", debs[0], err, out)
	}
	if err := os.WriteFile(filepath.Join(root, ".complete"), []byte(version+"\n"), 0o644); err != nil {
		return err
	}
	os.RemoveAll(dir) // a half-built leftover from an interrupted run
	return os.Rename(root, dir)
}

func openKernel(dir, pkg, version string) (*Kernel, error) {
	vmlinuz, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(vmlinuz) != 1 {
		return nil, fmt.Errorf("kernel cache %s: want one boot/vmlinuz-*, got %v (delete the directory to refetch)", dir, vmlinuz)
	}
	release := strings.TrimPrefix(filepath.Base(vmlinuz[0]), "vmlinuz-")
	k := &Kernel{Package: pkg, Version: version, Release: release, Vmlinuz: vmlinuz[0], Dir: dir, modules: map[string]string{}}
	modRoot := filepath.Join(dir, "lib", "modules", release, "kernel")
	err := filepath.WalkDir(modRoot, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if name, ok := strings.CutSuffix(d.Name(), ".ko"); ok {
			k.modules[strings.ReplaceAll(name, "-", "_")] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("kernel modules in %s: %w", modRoot, err)
	}
	return k, nil
}

// NetModules load the NICs QEMU offers (virtio-net, e1000); Debian builds
// them as modules, so an initrd must carry them.
var NetModules = []string{"virtio_pci", "virtio_net", "e1000"}

// NFSModules are the kernel NFS client (v3 and v4); add them to NetModules
// for a guest that mounts NFS.
var NFSModules = []string{"sunrpc", "grace", "lockd", "nfs_acl", "netfs", "fscache", "nfs", "nfsv3", "dns_resolver", "nfsv4"}

// ModuleFiles resolves module names and their dependencies (read from each
// .ko's .modinfo "depends=" field, so no depmod is needed) into .ko paths in
// load order: every module after the modules it depends on.
func (k *Kernel) ModuleFiles(names ...string) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(n string, from string) error
	visit = func(n, from string) error {
		n = strings.ReplaceAll(n, "-", "_")
		switch state[n] {
		case 1:
			return fmt.Errorf("module dependency cycle at %s", n)
		case 2:
			return nil
		}
		p, ok := k.modules[n]
		if !ok {
			if from != "" {
				return fmt.Errorf("module %s (needed by %s) is not in %s", n, from, k.Package)
			}
			return fmt.Errorf("module %s is not in %s (built in, or misspelt?)", n, k.Package)
		}
		state[n] = 1
		deps, err := moduleDepends(p)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, n); err != nil {
				return err
			}
		}
		state[n] = 2
		order = append(order, p)
		return nil
	}
	for _, n := range names {
		if err := visit(n, ""); err != nil {
			return nil, err
		}
	}
	return order, nil
}

func moduleDepends(ko string) ([]string, error) {
	f, err := elf.Open(ko)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w (compressed modules are not supported)", ko, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s has no .modinfo section", ko)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", ko, err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			var deps []string
			sc := bufio.NewScanner(bytes.NewReader(bytes.ReplaceAll(v, []byte(","), []byte("\n"))))
			for sc.Scan() {
				if s := strings.TrimSpace(sc.Text()); s != "" {
					deps = append(deps, s)
				}
			}
			return deps, nil
		}
	}
	return nil, nil
}
