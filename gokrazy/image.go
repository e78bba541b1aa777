package gokrazy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// GokVersion is the gok pinned in tools/gok (the proxy refuses @latest and
// `go install gok@version`, so it is built from that module).
const GokVersion = "github.com/gokrazy/tools v0.0.0-20260109180632-8ed49b4fafc7"

// DefaultSize is the image size: 100 MB boot, 2×500 MB root (A/B for
// updates), the rest /perm. It fits every USB stick sold today.
const DefaultSize = 2 << 30

// minSize is what gok's partition layout needs plus a usable /perm.
const minSize = 1300 << 20

// PasswordEnv is the environment variable holding the gokrazy web UI / update
// password, so it never shows in a process list or shell history.
const PasswordEnv = "PUMI_GOKRAZY_PASSWORD"

// Options configure Build and Update.
type Options struct {
	RepoDir  string // this repository (default: found from the working directory)
	Instance string // gokrazy instance folder (default <RepoDir>/gokrazy/pumi)

	// Password for gokrazy's web UI and `gok update` (user "gokrazy").
	// Empty: Build generates one and reports it in Result; Update refuses.
	Password string
	// Static, if set, gives the appliance a fixed address on eth0 instead
	// of gokrazy's DHCP client.
	Static *StaticNetwork
	// Edit, if set, changes the temporary copy of the config before the
	// build (tests bake test-only files and flags in here).
	Edit func(*Config) error

	Output    string // Build: the image file to write
	SizeBytes int64  // Build: image size (default DefaultSize)
	// NoPerm leaves /perm unformatted (only to test how the appliance copes
	// with a missing /perm; a real stick needs it).
	NoPerm bool

	Log    *slog.Logger
	GokLog io.Writer // gok's and mkfs's output (default: discarded, kept in errors)
}

// Result says what Build made.
type Result struct {
	Image             string
	Password          string // the gokrazy password baked in
	PasswordGenerated bool   // Build made it up: show it once to the admin
	BuildTimestamp    string // gok's build timestamp, shown by the device's UI
	PermOffset        int64  // byte offset of the /perm partition in the image
}

// Build writes a complete appliance image to o.Output: gok's full disk image
// plus an ext4 /perm (gok only prints the mkfs.ext4 command for files).
func Build(ctx context.Context, o Options) (Result, error) {
	o, err := o.defaults()
	if err != nil {
		return Result{}, err
	}
	if o.Output == "" {
		return Result{}, errors.New("no output image file given")
	}
	if o.SizeBytes == 0 {
		o.SizeBytes = DefaultSize
	}
	if o.SizeBytes%512 != 0 || o.SizeBytes < minSize {
		return Result{}, fmt.Errorf("image size %d: must be a multiple of 512 and at least %d MiB", o.SizeBytes, minSize>>20)
	}
	res := Result{Password: o.Password}
	if res.Password == "" {
		res.Password, err = randomPassword()
		if err != nil {
			return Result{}, err
		}
		res.PasswordGenerated = true
	}
	out, err := filepath.Abs(o.Output)
	if err != nil {
		return Result{}, err
	}
	if !o.NoPerm {
		if _, err := exec.LookPath("mkfs.ext4"); err != nil {
			return Result{}, errors.New("mkfs.ext4 not found: install e2fsprogs (it formats the image's /perm)")
		}
	}
	w, err := o.prepare(ctx, res.Password)
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(w.dir)

	// gok writes the image in place; build next to the target and rename,
	// so an interrupted build never leaves a half image under the real name.
	tmpImg := out + ".part"
	defer os.Remove(tmpImg)
	log, err := o.gok(ctx, w, "overwrite", "--full", tmpImg, "--target_storage_bytes="+strconv.FormatInt(o.SizeBytes, 10))
	if err != nil {
		return Result{}, err
	}
	res.BuildTimestamp = buildTimestamp(log)
	m := mkfsLine.FindStringSubmatch(log)
	if m == nil {
		return Result{}, fmt.Errorf("gok did not print the /perm mkfs.ext4 command (gok version changed?):\n%s", tail(log, 20))
	}
	res.PermOffset, _ = strconv.ParseInt(m[1], 10, 64)
	if !o.NoPerm {
		// -F: the target is a file, not a block device. The block count is
		// gok's, so the file system ends exactly at the partition's end.
		cmd := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", "perm", "-E", "offset="+m[1], tmpImg, m[2])
		if b, err := cmd.CombinedOutput(); err != nil {
			return Result{}, fmt.Errorf("formatting /perm in the image: %v\n%s", err, b)
		}
		o.Log.Info("formatted /perm", "offset", res.PermOffset, "blocks_1k", m[2])
	}
	if err := os.Rename(tmpImg, out); err != nil {
		return Result{}, err
	}
	res.Image = out
	return res, nil
}

// Update builds the image from the working tree and sends it to the running
// appliance with `gok update` (new root into the inactive A/B partition,
// new boot partition, reboot; /perm is kept). The target is Update.Hostname
// (else Hostname) on Update.HTTPPort; the password must be the device's.
func Update(ctx context.Context, o Options) (timestamp string, err error) {
	o, err = o.defaults()
	if err != nil {
		return "", err
	}
	if o.Password == "" {
		return "", fmt.Errorf("updating needs the appliance's gokrazy password (set %s)", PasswordEnv)
	}
	w, err := o.prepare(ctx, o.Password)
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(w.dir)
	log, err := o.gok(ctx, w, "update")
	if err != nil {
		return "", err
	}
	return buildTimestamp(log), nil
}

var (
	mkfsLine  = regexp.MustCompile(`mkfs\.ext4 -F -E offset=([0-9]+) \S+ ([0-9]+)`)
	buildTime = regexp.MustCompile(`Build timestamp: (\S+)`)
)

func buildTimestamp(log string) string {
	if m := buildTime.FindStringSubmatch(log); m != nil {
		return m[1]
	}
	return ""
}

func (o Options) defaults() (Options, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.RepoDir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return o, err
		}
		if o.RepoDir, err = FindRepo(wd); err != nil {
			return o, err
		}
	}
	if o.Instance == "" {
		o.Instance = filepath.Join(o.RepoDir, "gokrazy", "pumi")
	}
	var err error
	if o.RepoDir, err = filepath.Abs(o.RepoDir); err != nil {
		return o, err
	}
	if o.Instance, err = filepath.Abs(o.Instance); err != nil {
		return o, err
	}
	if strings.ContainsAny(o.Password, "\n\r") {
		return o, errors.New("the gokrazy password must be one line")
	}
	return o, nil
}

// FindRepo returns the folder at or above dir whose go.mod is pumi's.
func FindRepo(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil &&
			bytes.HasPrefix(b, []byte("module github.com/pumi-lab/pumi\n")) {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no pumi repository at or above %s: run this in the pumi checkout", dir)
		}
	}
}

// work is a temporary gokrazy parent folder holding the instance copy.
type work struct {
	dir, gok string
}

// prepare builds gok and copies the instance into a temporary parent
// folder with the password, static address and test edits applied, and
// the builddir's replace made absolute (the copy is elsewhere).
func (o Options) prepare(ctx context.Context, password string) (w work, err error) {
	cfg, err := LoadConfig(filepath.Join(o.Instance, "config.json"))
	if err != nil {
		return w, err
	}
	if err := cfg.Check(); err != nil {
		return w, err
	}
	if cfg.Update == nil {
		cfg.Update = &UpdateConfig{}
	}
	if cfg.Update.HTTPPassword != "" {
		return w, fmt.Errorf("%s/config.json holds an HTTPPassword: remove it (a committed password would be in every image); pass it in %s", o.Instance, PasswordEnv)
	}
	cfg.Update.HTTPPassword = password
	if o.Static != nil {
		cfg.SetStaticNetwork(*o.Static)
	}
	if o.Edit != nil {
		if err := o.Edit(cfg); err != nil {
			return w, err
		}
	}
	gomod, err := os.ReadFile(filepath.Join(o.Instance, "builddir", "go.mod"))
	if err != nil {
		return w, fmt.Errorf("instance builddir: %w", err)
	}
	gosum, err := os.ReadFile(filepath.Join(o.Instance, "builddir", "go.sum"))
	if err != nil {
		return w, fmt.Errorf("instance builddir: %w", err)
	}
	rel := regexp.MustCompile(`(?m)^replace github\.com/pumi-lab/pumi => (\S+)$`)
	m := rel.FindSubmatch(gomod)
	if m == nil {
		return w, fmt.Errorf("%s/builddir/go.mod has no `replace github.com/pumi-lab/pumi => <path>`; the image would not be built from this tree", o.Instance)
	}
	target := string(m[1])
	if !filepath.IsAbs(target) {
		target = filepath.Join(o.Instance, "builddir", target)
	}
	if _, err := FindRepo(target); err != nil || filepath.Clean(target) != o.RepoDir {
		return w, fmt.Errorf("%s/builddir/go.mod replaces pumi with %s, not with this repository %s", o.Instance, target, o.RepoDir)
	}
	gomod = rel.ReplaceAll(gomod, []byte("replace github.com/pumi-lab/pumi => "+o.RepoDir))

	if w.dir, err = os.MkdirTemp("", "pumi-image-"); err != nil {
		return w, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(w.dir)
		}
	}()
	inst := filepath.Join(w.dir, filepath.Base(o.Instance))
	if err := os.MkdirAll(filepath.Join(inst, "builddir"), 0o700); err != nil {
		return w, err
	}
	cj, err := cfg.Marshal()
	if err != nil {
		return w, err
	}
	for name, b := range map[string][]byte{"config.json": cj, "builddir/go.mod": gomod, "builddir/go.sum": gosum} {
		if err := os.WriteFile(filepath.Join(inst, name), b, 0o600); err != nil {
			return w, err
		}
	}
	w.gok = filepath.Join(w.dir, "gok")
	o.Log.Info("building gok", "version", GokVersion)
	cmd := exec.CommandContext(ctx, "go", "-C", filepath.Join(o.RepoDir, "tools", "gok"), "build", "-o", w.gok, "github.com/gokrazy/tools/cmd/gok")
	if b, err := cmd.CombinedOutput(); err != nil {
		return w, fmt.Errorf("building gok from tools/gok: %v\n%s", err, b)
	}
	return w, nil
}

// gok runs gok on the instance copy and returns its output.
func (o Options) gok(ctx context.Context, w work, args ...string) (string, error) {
	args = append([]string{"--parent_dir", w.dir, "-i", "pumi"}, args...)
	o.Log.Info("running gok", "args", strings.Join(args[4:], " "))
	cmd := exec.CommandContext(ctx, w.gok, args...)
	cmd.Dir = o.RepoDir
	// gok keeps passwords and certificates under $HOME/.config/gokrazy;
	// pointing HOME at the throw-away folder keeps it from reading or
	// writing the admin's own gokrazy settings.
	cmd.Env = append(os.Environ(), "HOME="+w.dir, "XDG_CONFIG_HOME="+filepath.Join(w.dir, "config"))
	// The Go settings and caches stay the admin's (a fresh HOME would
	// re-download every module and lose GOPROXY set with go env -w).
	if b, err := exec.CommandContext(ctx, "go", "env", "-json", "GOENV", "GOMODCACHE", "GOCACHE", "GOPATH").Output(); err == nil {
		var env map[string]string
		if json.Unmarshal(b, &env) == nil {
			for k, v := range env {
				if v != "" {
					cmd.Env = append(cmd.Env, k+"="+v)
				}
			}
		}
	}
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if o.GokLog != nil {
		cmd.Stdout = io.MultiWriter(&buf, o.GokLog)
		cmd.Stderr = cmd.Stdout
	}
	if err := cmd.Run(); err != nil {
		return buf.String(), fmt.Errorf("gok %s: %v\n%s", args[4], err, tail(buf.String(), 30))
	}
	return buf.String(), nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// randomPassword makes a 20-character password from 120 random bits.
func randomPassword() (string, error) {
	var b [15]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}
