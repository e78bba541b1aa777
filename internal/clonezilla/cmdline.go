package clonezilla

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path"
	"regexp"
	"strconv"
	"strings"

	"github.com/pumi-lab/pumi/internal/macaddr"
)

// ErrUnsafe is wrapped by every refusal of RestoreArgs/CaptureArgs: the
// input would put something on the kernel command line that iPXE, the
// kernel, Clonezilla's parser or the shell that evals ocs_* values would act
// on.
var ErrUnsafe = errors.New("unsafe for a Clonezilla kernel command line")

func unsafe(format string, a ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, a...), ErrUnsafe)
}

// MaxCmdline is the x86 kernel's COMMAND_LINE_SIZE less the terminating NUL;
// a longer line is cut by the kernel, which would silently drop the
// ocs_postrun report.
const MaxCmdline = 2047

// imageNameRE: ocs-sr takes IMAGE as a folder name and the value ends up in
// `eval`ed shell text, so only plain characters. No leading dot or dash
// (hidden folder, ocs-sr option).
var imageNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$`)

// reservedImage are names ocs-sr gives a meaning (clonezilla.md §2.8).
var reservedImage = map[string]bool{"ask_user": true, "autoname": true, "autohostname": true, "autoproductname": true}

// CheckImagePath accepts an image path relative to the repository root
// ("LAB-A-img", "room-b/LAB-B-img") whose every element is a safe name.
func CheckImagePath(p string) error {
	if p == "" {
		return unsafe("image path is empty")
	}
	if len(p) > 512 {
		return unsafe("image path is longer than 512 characters")
	}
	if path.Clean(p) != p || strings.HasPrefix(p, "/") {
		return unsafe("image path %q must be a clean relative path such as room/LAB-A-img", clip(p))
	}
	for _, el := range strings.Split(p, "/") {
		if !imageNameRE.MatchString(el) {
			return unsafe("image path element %q may contain only letters, digits and . _ + - (no spaces or quotes), and must not start with . or -; rename the folder", clip(el))
		}
	}
	if reservedImage[path.Base(p)] {
		return unsafe("image name %q is reserved by ocs-sr", path.Base(p))
	}
	return nil
}

// diskRE lists the target names ocs-sr takes without a dialog
// (clonezilla.md §2.4): kernel names, the ocs-ndNN/ocs-sdNN aliases of recent
// Clonezilla and 1st-disk. "ask_user" and "all" are refused on purpose: both
// can stop at a prompt.
var diskRE = regexp.MustCompile(`^(sd[a-z]{1,2}|hd[a-z]|vd[a-z]{1,2}|xvd[a-z]{1,2}|nvme[0-9]{1,2}n[0-9]{1,2}|mmcblk[0-9]{1,2}|ocs-(nd|sd)[0-9]{2}|1st-disk)$`)

// AutoDisk is the target used when no disk is named: the first unmounted disk
// in `sort -V` order of /proc/partitions (mmcblk0 < nvme0n1 < sda), ocs-sr's
// reserved word for restoredisk. It exists in every Clonezilla in use and
// picks the internal disk on a single-disk lab PC; on PCs with a USB stick
// and no NVMe/eMMC name the disk per seat instead (clonezilla.md §2.4).
const AutoDisk = "1st-disk"

// CheckDisk accepts a target disk name for ocs-sr.
func CheckDisk(d string) error {
	if !diskRE.MatchString(d) {
		return unsafe("target disk %q is not a disk name ocs-sr takes unattended (sda, nvme0n1, mmcblk0, ocs-nd01, ocs-sd01 or 1st-disk; not a partition)", clip(d))
	}
	return nil
}

var tokenRE = regexp.MustCompile(`^[A-Za-z0-9_-]{16,128}$`)

// CheckToken accepts a per-run, per-seat report token: URL-safe base64 or
// hex, 16 to 128 characters, so it can go into a URL and a shell word as is.
func CheckToken(t string) error {
	if !tokenRE.MatchString(t) {
		return unsafe("report token must be 16-128 characters of A-Z a-z 0-9 _ - (generate it with crypto/rand, base64.RawURLEncoding)")
	}
	return nil
}

// Live holds the words every pumi Clonezilla line shares. They are the
// official live-default entry less its interactive parts, as proven in
// clonezilla-e2e.md: locales and keyboard-layouts must be set or a dialog
// appears; ip= must NOT be there (it would disable the network live-boot set
// up for fetch=); noeject/noprompt avoid "remove the medium" at shutdown.
var liveWords = []string{
	"boot=live", "union=overlay", "username=user", "config", "components",
	"noswap", "edd=on", "nomodeset", "enforcing=0", "noeject", "noprompt",
	"locales=en_US.UTF-8", "keyboard-layouts=us", "net.ifnames=0",
}

// Common are the parameters restore and capture share.
type Common struct {
	// Server is pumi's IPv4 address on the lab network: NFS server and
	// ocs_server (TCP 6461 report, and UEFI boot order put back to network).
	Server netip.Addr
	// SquashfsURL is where the seat fetches filesystem.squashfs: http with
	// an IP host (live-boot's BusyBox wget has no DNS guarantees and no TLS),
	// ending in .squashfs with no query (live-boot takes the extension after
	// the last dot).
	SquashfsURL string
	// ReportBase is pumi's HTTP base, e.g. "http://10.99.0.1:8080"; the
	// postrun calls ReportBase + "/api/v1/clonezilla/report".
	ReportBase string
	// NFSExport is the export path of the repository root, e.g. "/images".
	NFSExport string
	// NFSPort is the single NFS+MOUNT port (go-nfs has no portmapper); 0 means 2049.
	NFSPort int
	// ImagePath is the image folder relative to the repository root.
	ImagePath string
	// Disk is the target (restore) or source (capture) disk.
	Disk string
	// MAC is the seat's boot NIC (BOOTIF= makes live-boot DHCP on it).
	MAC net.HardwareAddr
	// Token is this run's token for this seat; only the report carrying it
	// may change the seat's state.
	Token string
	// Console, e.g. "ttyS0,115200", adds live-getty console=...; "" for none.
	Console string
	// PowerOff ends the job with -p poweroff instead of -p reboot.
	PowerOff bool
}

// RestoreParams describe an unattended restoredisk. An empty Disk means AutoDisk.
type RestoreParams struct{ Common }

// CaptureParams describe an unattended savedisk into ImagePath (a new
// folder; its parent must exist). Disk must be named: 1st-disk is a
// restoredisk-only word in ocs-sr.
type CaptureParams struct{ Common }

// RestoreArgs renders the kernel command line (everything after the kernel
// URL) that restores p.ImagePath onto the seat's disk and reboots, with no
// keyboard: the line proven in clonezilla-e2e.md plus BOOTIF, ocs_server, a
// "started" report after the NFS mount and a "finished" report with the
// Clonezilla log.
func RestoreArgs(p RestoreParams) (string, error) {
	if p.Disk == "" {
		p.Disk = AutoDisk
	}
	// -e1 auto -e2: NTFS boot geometry fixes (harmless on UEFI); -r: grow
	// file systems; -j2: hidden data after the MBR; -k0: table as saved;
	// -scr: skip the whole-image pre-read (pumi validated the image).
	return render(p.Common, "ro", "-e1 auto -e2 -r -j2 -k0 -scr", "restoredisk")
}

// DefaultMcastPort is Clonezilla SE's first multicast port
// (MULTICAST_PORT in drbl-ocs.conf).
const DefaultMcastPort = 2232

// MulticastParams describe an unattended multicast_restoredisk: the
// partition data arrives from pumi's udpcast sender (internal/udpcast), the
// image's metadata (partition table, parts, dev-fs.list...) still comes from
// the NFS mount like a unicast restore.
type MulticastParams struct {
	Common
	// Port is the first partition's port base (--mcast-port); 0 means
	// DefaultMcastPort.
	//
	// Clonezilla's client (do_multicast_udpcast_restore in ocs-functions)
	// runs, for each partition in turn,
	//	udp-receiver --nokbd --mcast-all-addr 224.0.0.1 --portbase $port --ttl 1 | <decompress> | partclone -r
	// and then port += 2. The order is the image's `parts` file, skipping
	// partitions that are LVM PVs (and LUKS), then one port per logical
	// volume in lvm_logv.list order (swap LVs skipped). So the sender runs
	// one session per partition on MulticastPorts(Port, n)[k], each carrying
	// that partition's image file(s) as saved (still compressed). Between
	// partitions the client sleeps 3 s plus a random 0..15 s (0..MaxWait-2
	// s with MaxWait set) before its next udp-receiver starts.
	Port int
	// MaxWait, if > 0, is passed as --max-time-to-wait (seconds): Clonezilla
	// then caps the random sleep between partitions at MaxWait-2 s, so a
	// sender waiting MaxWait for the room sees every seat of the next
	// partition.
	MaxWait int
}

// MulticastPorts returns the port base of each of n partition sessions:
// base, base+2, ... (the receivers use the port, the sender port+1).
func MulticastPorts(base, n int) []int {
	ports := make([]int, n)
	for i := range ports {
		ports[i] = base + 2*i
	}
	return ports
}

// MulticastRestoreArgs renders the line that restores p.ImagePath by
// multicast, the way Clonezilla SE (drbl-ocs ... startdisk multicast_restore)
// writes ocs_live_run for a Clonezilla-live client:
//
//	ocs-sr ... --mcast-port 2232 multicast_restoredisk IMG DEV
//
// with pumi's unattended options and reports as in RestoreArgs. The session
// can carry at most 100 partitions (ports up to Port+199).
func MulticastRestoreArgs(p MulticastParams) (string, error) {
	if p.Disk == "" {
		p.Disk = AutoDisk
	}
	port := p.Port
	if port == 0 {
		port = DefaultMcastPort
	}
	if port < 1024 || port+199 > 65535 {
		return "", unsafe("multicast port %d is out of 1024..65336", port)
	}
	if p.MaxWait < 0 || p.MaxWait > 3600 {
		return "", unsafe("multicast max wait %d s is out of 0..3600", p.MaxWait)
	}
	opts := "-e1 auto -e2 -r -j2 -k0 -scr"
	if p.MaxWait > 0 {
		opts += fmt.Sprintf(" --max-time-to-wait %d", p.MaxWait)
	}
	opts += fmt.Sprintf(" --mcast-port %d", port)
	return render(p.Common, "ro", opts, "multicast_restoredisk")
}

// CaptureArgs renders the line that saves the seat's disk into p.ImagePath
// and reboots. The NFS mount is read-write.
func CaptureArgs(p CaptureParams) (string, error) {
	if p.Disk == "" {
		return "", unsafe("capture needs the source disk named (1st-disk works only for restore)")
	}
	if p.Disk == AutoDisk {
		return "", unsafe("capture cannot use %s: ocs-sr savedisk does not know it; name the disk", AutoDisk)
	}
	// -q2 partclone; -z9p zstdmt; -i 0 no split; -sfsck no interactive
	// fsck; -scs no read-back check; -senc no encryption prompt.
	return render(p.Common, "rw", "-q2 -j2 -z9p -i 0 -sfsck -scs -senc", "savedisk")
}

func render(c Common, mode, ocsOpts, verb string) (string, error) {
	if !c.Server.Is4() {
		return "", unsafe("server address %v must be an IPv4 address (Clonezilla's NFS mount and ocs_server use IPv4)", c.Server)
	}
	if err := checkHTTPURL("squashfs", c.SquashfsURL); err != nil {
		return "", err
	}
	if !strings.HasSuffix(c.SquashfsURL, ".squashfs") {
		return "", unsafe("squashfs URL %q must end in .squashfs (live-boot picks the method from the extension)", clip(c.SquashfsURL))
	}
	if err := checkHTTPURL("report", c.ReportBase); err != nil {
		return "", err
	}
	if strings.Contains(c.ReportBase, "'") {
		return "", unsafe("report URL must not contain a single quote")
	}
	if !strings.HasPrefix(c.NFSExport, "/") || path.Clean(c.NFSExport) != c.NFSExport {
		return "", unsafe("NFS export %q must be a clean absolute path such as /images", clip(c.NFSExport))
	}
	if c.NFSExport != "/" {
		if err := CheckImagePath(strings.TrimPrefix(c.NFSExport, "/")); err != nil {
			return "", fmt.Errorf("NFS export: %w", err)
		}
	}
	port := c.NFSPort
	if port == 0 {
		port = 2049
	}
	if port < 1 || port > 65535 {
		return "", unsafe("NFS port %d is out of range", port)
	}
	if err := CheckImagePath(c.ImagePath); err != nil {
		return "", err
	}
	if err := CheckDisk(c.Disk); err != nil {
		return "", err
	}
	if len(c.MAC) != 6 {
		return "", unsafe("seat MAC must be 6 bytes")
	}
	if err := CheckToken(c.Token); err != nil {
		return "", err
	}
	if c.Console != "" && !regexp.MustCompile(`^tty[A-Za-z]{0,4}[0-9]{1,2}(,[0-9]{3,7}[noe]?[5-8]?)?$`).MatchString(c.Console) {
		return "", unsafe("console %q is not like ttyS0,115200", clip(c.Console))
	}

	words := append([]string{}, liveWords...)
	if c.Console != "" {
		// live-getty gives the serial console an autologin shell; no
		// ocs_live_run_tty, which would add a "Press Enter" (clonezilla.md §7).
		words = append(words, "live-getty", "console="+c.Console)
	}
	words = append(words,
		"fetch="+c.SquashfsURL,
		"BOOTIF=01-"+macaddr.Hyphen(c.MAC),
		"ocs_server="+c.Server.String(),
		"ocs_live_batch=yes",
		`ocs_live_extra_param=""`,
		"pumi_token="+c.Token,
	)

	// Every pre/postrun must exit 0, or ocs-run-boot-param stops at "Press
	// Enter" (clonezilla.md §7). "||true" is glued to the last word: iPXE
	// only treats a whole word "||" as syntax, and `;`/`&&` are avoided
	// entirely. A failed mount then shows up as ocs-sr's "image dir does
	// not exist", the failure path, which still runs the postrun report.
	mount := fmt.Sprintf("mount -t nfs -o vers=3,proto=tcp,port=%d,mountport=%d,mountproto=tcp,nolock,%s %s:%s /home/partimag||true",
		port, port, mode, c.Server, c.NFSExport)
	report := strings.TrimSuffix(c.ReportBase, "/") + "/api/v1/clonezilla/report?token=" + c.Token + "&status="
	// Single quotes keep & and ? away from the shell that evals the value.
	started := fmt.Sprintf("wget -q -T 10 -t 2 -O /dev/null '%sstarted'||true", report)
	// The log is what pumi shows when a restore fails; ocs-live-run-menu does
	// not pass ocs-sr's exit status to postruns, so the verdict comes from
	// the log, the ocs_server line (success only) and SSH verification.
	// The report is retried for about three minutes while pumi does not
	// answer (it may be restarting: `gok update` takes 25-51 s), so a restore
	// that ended while pumi was down is not lost and redone: the seat waits
	// before its reboot. A refusal (4xx) is final at once.
	finished := fmt.Sprintf("wget -q -T 20 -t 40 --waitretry=5 --retry-connrefused -O /dev/null --post-file=/var/log/clonezilla.log '%sfinished'||true", report)

	post := "reboot"
	if c.PowerOff {
		post = "poweroff"
	}
	run := "ocs-sr"
	dir, name := path.Split(c.ImagePath)
	if dir != "" {
		// ocs-sr takes IMAGE as a folder name under its ocsroot; for a
		// nested image, point ocsroot at the parent (tested with ocs-sr
		// restoredisk -or on this machine).
		run += " -or /home/partimag/" + strings.TrimSuffix(dir, "/")
	}
	run += " -batch -nogui " + ocsOpts + " -p " + post + " " + verb + " " + name + " " + c.Disk
	if verb == "multicast_restoredisk" {
		// When a partition's stream fails (a seat refused, dropped or
		// late), ocs-functions prints "Failed to use partclone program"
		// and waits for Enter on stdin, even in batch mode: the seat would
		// hang there. With stdin at EOF ocs-sr goes on, reports failure and
		// reboots, and pumi restores the seat by unicast. ocs-live-run-menu
		// runs ocs_live_run through a shell (eval or a script), so the
		// redirection works.
		run += " </dev/null"
	}

	words = append(words,
		quoted("ocs_prerun1", mount),
		quoted("ocs_prerun2", started),
		quoted("ocs_live_run", run),
		quoted("ocs_postrun1", finished),
	)
	line := strings.Join(words, " ")
	if err := CheckCmdline(line); err != nil {
		return "", err
	}
	// The kernel hands every name=value it does not know to init as an
	// environment variable and panics ("Too many boot env vars") past
	// MAX_INIT_ENVS (32, two taken by HOME and TERM). Names with a dot are
	// module parameters and do not count.
	if n := initEnvCount(line); n > maxInitEnvs {
		return "", unsafe("command line has %d name=value parameters; the kernel allows %d before it panics", n, maxInitEnvs)
	}
	return line, nil
}

const maxInitEnvs = 30

// initEnvCount splits line the way the kernel's next_arg does (blanks
// outside double quotes) and counts name=value parameters without a dot in
// the name. It over-counts the few the kernel itself knows (console=,
// edd=, enforcing=), which only makes the check stricter.
func initEnvCount(line string) int {
	n := 0
	inQ := false
	start := 0
	for i := 0; i <= len(line); i++ {
		if i < len(line) && line[i] == '"' {
			inQ = !inQ
		}
		if i == len(line) || line[i] == ' ' && !inQ {
			w := line[start:i]
			start = i + 1
			if name, _, ok := strings.Cut(w, "="); ok && !strings.Contains(name, ".") {
				n++
			}
		}
	}
	return n
}

func quoted(k, v string) string { return k + `="` + v + `"` }

func checkHTTPURL(what, s string) error {
	for _, r := range s {
		if r <= ' ' || r > '~' || r == '"' || r == '\\' {
			return unsafe("%s URL %q has a space, quote, backslash or non-ASCII character", what, clip(s))
		}
	}
	u, err := url.Parse(s)
	if err != nil {
		return unsafe("%s URL %q: %v", what, clip(s), err)
	}
	if u.Scheme != "http" {
		return unsafe("%s URL %q must be http:// (Clonezilla's initramfs wget has no TLS)", what, clip(s))
	}
	host := u.Hostname()
	if a, err := netip.ParseAddr(host); err != nil || !a.Is4() {
		return unsafe("%s URL %q must name the server by IPv4 address, not a host name", what, clip(s))
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return unsafe("%s URL %q has a bad port", what, clip(s))
		}
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil || strings.ContainsAny(s, "?#@") {
		return unsafe("%s URL %q must not have a query, fragment or user", what, clip(s))
	}
	return nil
}

// CheckCmdline enforces the rules that make a line safe on an iPXE `kernel`
// line and in Clonezilla's parser: printable ASCII on one line; no word
// starting with '#' (iPXE comment); no ";" or "&&" anywhere and no word that
// is exactly "||" (iPXE command separators); no "${" (iPXE settings); no
// backslash (escape in newer iPXE); balanced double quotes with no quote
// inside a value (Clonezilla takes name="[^"]*"); at most MaxCmdline bytes.
func CheckCmdline(line string) error {
	if len(line) > MaxCmdline {
		return unsafe("command line is %d bytes; the kernel keeps only %d (shorten the URLs or paths)", len(line), MaxCmdline)
	}
	for _, r := range line {
		if r < ' ' || r > '~' {
			return unsafe("command line has a control or non-ASCII character %q", r)
		}
	}
	for _, bad := range []string{";", "&&", "${", `\`} {
		if strings.Contains(line, bad) {
			return unsafe("command line contains %q, which iPXE or the shell would act on", bad)
		}
	}
	if strings.Count(line, `"`)%2 != 0 {
		return unsafe("command line has an unbalanced double quote")
	}
	for _, w := range strings.Fields(line) {
		if strings.HasPrefix(w, "#") {
			return unsafe("word %q starts with #, which begins an iPXE comment", clip(w))
		}
		if w == "||" {
			return unsafe("a separate word || ends an iPXE command")
		}
	}
	// Each quote must open right after "name=" and close at a word end, so
	// no value carries a quote of its own.
	inQ := false
	for i := 0; i < len(line); i++ {
		if line[i] != '"' {
			continue
		}
		if !inQ {
			if i == 0 || line[i-1] != '=' {
				return unsafe("a double quote at byte %d does not open a name=\"value\"", i)
			}
		} else if i+1 < len(line) && line[i+1] != ' ' {
			return unsafe("a double quote at byte %d closes a value in the middle of a word", i)
		}
		inQ = !inQ
	}
	return nil
}
