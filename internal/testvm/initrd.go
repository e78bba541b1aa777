package testvm

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Serial-console markers printed by ProbeInit. They are searched as
// substrings (serial output carries \r and ANSI escapes around them).
const (
	MarkerInit        = "PUMI-VM-INIT"        // /init started
	MarkerUp          = "PUMI-VM-UP"          // "PUMI-VM-UP token=<t> addr=<ip/len>": network configured
	MarkerDHCPFailed  = "PUMI-VM-DHCP-FAILED" // udhcpc got no lease
	MarkerNFSOK       = "PUMI-VM-NFS-OK"      // pumi.nfs mounted; followed by `ls` of it
	MarkerNFSFailed   = "PUMI-VM-NFS-FAILED"  // pumi.nfs mount failed
	MarkerCallbackOK  = "PUMI-VM-CALLBACK-OK" // "PUMI-VM-CALLBACK-OK <response body>"
	MarkerCallbackBad = "PUMI-VM-CALLBACK-FAILED"
	MarkerPowerOff    = "PUMI-VM-POWEROFF" // about to power off (QEMU with -no-reboot exits)
)

// ProbeInit is the default /init: a busybox shell script driven by kernel
// command-line parameters, so that one initrd serves many tests:
//
//	pumi.ip=10.77.0.5/24   static address instead of DHCP (udhcpc)
//	pumi.token=<t>         echoed in MarkerUp and sent with the callback
//	pumi.callback=<url>    GET <url>?token=<t>&addr=<ip/len> with busybox wget
//	pumi.nfs=<srv:/path>   mount -t nfs on /mnt/nfs (needs NFSModules)
//	pumi.nfsopts=<opts>    mount options (default vers=3,nolock,tcp,port=2049,mountport=2049,mountproto=tcp)
//
// It loads the modules listed in /lib/modules/order, configures the first
// non-loopback interface, then sources /etc/pumi-test.sh if present (add it
// with InitrdOptions.Files; it runs with /mnt/nfs mounted and $TOKEN,
// $ADDR, $IF set), then calls back, then powers off.
const ProbeInit = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /mnt/nfs /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec >/dev/console 2>&1 </dev/console
echo "PUMI-VM-INIT uptime=$(cut -d' ' -f1 /proc/uptime)"
TOKEN=none; CALLBACK=; NFS=; NFSOPTS=vers=3,nolock,tcp,port=2049,mountport=2049,mountproto=tcp; STATIC=
for a in $(cat /proc/cmdline); do
  case "$a" in
    pumi.token=*) TOKEN=${a#pumi.token=} ;;
    pumi.callback=*) CALLBACK=${a#pumi.callback=} ;;
    pumi.nfs=*) NFS=${a#pumi.nfs=} ;;
    pumi.nfsopts=*) NFSOPTS=${a#pumi.nfsopts=} ;;
    pumi.ip=*) STATIC=${a#pumi.ip=} ;;
  esac
done
for m in $(cat /lib/modules/order 2>/dev/null); do
  insmod /lib/modules/$m || echo "pumi-init: insmod $m failed"
done
IF=
for i in 1 2 3 4 5 6 7 8 9 10; do
  IF=$(ls /sys/class/net | grep -v '^lo$' | head -n1)
  [ -n "$IF" ] && break
  sleep 0.2
done
echo "pumi-init: interface=$IF mac=$(cat /sys/class/net/$IF/address 2>/dev/null)"
ip link set lo up
ip link set "$IF" up
OK=
if [ -n "$STATIC" ]; then
  ip addr add "$STATIC" dev "$IF" && OK=1
elif udhcpc -i "$IF" -s /etc/udhcpc.script -q -n -t 10 -T 2; then
  OK=1
fi
if [ -n "$OK" ]; then
  ADDR=$(ip -4 -o addr show dev "$IF" | awk '{print $4}')
  echo "PUMI-VM-UP token=$TOKEN addr=$ADDR uptime=$(cut -d' ' -f1 /proc/uptime)"
  if [ -n "$NFS" ]; then
    SRV=${NFS%%:*}
    if mount -t nfs -o "addr=$SRV,mountaddr=$SRV,$NFSOPTS" "$NFS" /mnt/nfs; then
      echo "PUMI-VM-NFS-OK $(ls /mnt/nfs | head -n 20 | tr '\n' ' ')"
    else
      echo "PUMI-VM-NFS-FAILED"
    fi
  fi
  [ -f /etc/pumi-test.sh ] && . /etc/pumi-test.sh
  [ -n "$NFS" ] && umount /mnt/nfs 2>/dev/null
  if [ -n "$CALLBACK" ]; then
    if wget -q -O /tmp/cb "$CALLBACK?token=$TOKEN&addr=$ADDR"; then
      echo "PUMI-VM-CALLBACK-OK $(cat /tmp/cb)"
    else
      echo "PUMI-VM-CALLBACK-FAILED"
    fi
  fi
else
  echo "PUMI-VM-DHCP-FAILED"
fi
echo "PUMI-VM-POWEROFF"
sync
poweroff -f
`

const udhcpcScript = `#!/bin/sh
case "$1" in
  deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via ${router%% *} dev "$interface" 2>/dev/null
    echo "udhcpc: bound $ip/$mask router=$router server=$serverid" ;;
esac
exit 0
`

var baseDirs = []string{"bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "mnt", "lib", "lib/modules", "usr", "usr/bin", "usr/sbin"}

// InitrdOptions describe a busybox initrd.
type InitrdOptions struct {
	Kernel  *Kernel           // source of the modules; required when Modules is set
	Modules []string          // module names; dependencies are added (e.g. append(NetModules, NFSModules...))
	Init    string            // /init script; default ProbeInit
	Files   map[string]string // extra files by absolute path (e.g. "/etc/pumi-test.sh"), mode 0755
}

// BuildInitrd writes a gzipped newc cpio initrd to a file in t.TempDir() and
// returns its path. It holds /bin/busybox from busybox-static (statically
// linked, so no libraries), /init, the udhcpc hook, the modules in load
// order, and a /dev/console node so the kernel can give /init a console.
func BuildInitrd(t testing.TB, o InitrdOptions) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "initrd.gz")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteInitrd(f, o); err != nil {
		f.Close()
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// WriteInitrd writes the initrd BuildInitrd describes to w.
func WriteInitrd(w io.Writer, o InitrdOptions) error {
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("initrd: %w (install busybox-static)", err)
	}
	init := o.Init
	if init == "" {
		init = ProbeInit
	}
	var modules []string
	if len(o.Modules) > 0 {
		if o.Kernel == nil {
			return fmt.Errorf("initrd: modules %v need InitrdOptions.Kernel", o.Modules)
		}
		if modules, err = o.Kernel.ModuleFiles(o.Modules...); err != nil {
			return fmt.Errorf("initrd: %w", err)
		}
	}
	gz, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
	cw := &cpioWriter{w: gz}
	for _, d := range baseDirs {
		cw.dir(d)
	}
	cw.charDev("dev/console", 0o600, 5, 1)
	cw.file("bin/busybox", 0o755, busybox)
	cw.file("init", 0o755, []byte(init))
	cw.file("etc/udhcpc.script", 0o755, []byte(udhcpcScript))
	var order []string
	for _, m := range modules {
		b, err := os.ReadFile(m)
		if err != nil {
			return fmt.Errorf("initrd: %w", err)
		}
		cw.file("lib/modules/"+filepath.Base(m), 0o644, b)
		order = append(order, filepath.Base(m))
	}
	cw.file("lib/modules/order", 0o644, []byte(strings.Join(order, "\n")+"\n"))
	names := make([]string, 0, len(o.Files))
	for n := range o.Files {
		names = append(names, n)
	}
	slices.Sort(names)
	made := map[string]bool{}
	for _, n := range names {
		rel := strings.TrimPrefix(path.Clean("/"+n), "/")
		if rel == "" {
			return fmt.Errorf("initrd: bad extra file name %q", n)
		}
		// Parent directories first, each once; the base layout's are
		// already there.
		var parents []string
		for d := path.Dir(rel); d != "."; d = path.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			if !made[d] && !slices.Contains(baseDirs, d) {
				made[d] = true
				cw.dir(d)
			}
		}
		cw.file(rel, 0o755, []byte(o.Files[n]))
	}
	cw.trailer()
	if cw.err != nil {
		return fmt.Errorf("initrd: %w", cw.err)
	}
	return gz.Close()
}

// cpioWriter writes the "newc" (SVR4, no CRC) cpio format the kernel's
// initramfs unpacker reads. Written here rather than calling cpio(1) so the
// archive is built without a staging directory or device-node privileges.
type cpioWriter struct {
	w   io.Writer
	ino int
	err error
}

func (c *cpioWriter) entry(name string, mode uint32, rdevMajor, rdevMinor int, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := 1
	if mode&0o170000 == 0o040000 {
		nlink = 2
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	b.WriteString(name)
	b.WriteByte(0)
	pad(&b, b.Len())
	b.Write(data)
	pad(&b, len(data))
	_, c.err = c.w.Write(b.Bytes())
}

func pad(b *bytes.Buffer, n int) {
	for ; n%4 != 0; n++ {
		b.WriteByte(0)
	}
}

func (c *cpioWriter) dir(name string)                         { c.entry(name, 0o040755, 0, 0, nil) }
func (c *cpioWriter) file(name string, perm uint32, d []byte) { c.entry(name, 0o100000|perm, 0, 0, d) }
func (c *cpioWriter) charDev(name string, perm uint32, major, minor int) {
	c.entry(name, 0o020000|perm, major, minor, nil)
}
func (c *cpioWriter) trailer() { c.entry("TRAILER!!!", 0, 0, 0, nil) }
