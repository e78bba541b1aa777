package clonezilla

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/testnet"
)

// TestCmdlineThroughClonezillaParser feeds the rendered restore line to
// Clonezilla's own code (Debian's drbl/clonezilla packages): drbl's
// parse_cmdline_option must read back exactly the ocs_live_run we meant,
// and ocs-run-boot-param must run ocs_prerun* and ocs_postrun* without
// stopping at "Press Enter", with the real wget reaching a report server on
// loopback carrying the token, the status and the log. Everything runs in a
// private mount namespace with tmpfs over /var/log and /var/lib/clonezilla,
// so the host's files are not touched; the NFS mount targets a loopback port
// nobody listens on and must fail quietly.
func TestCmdlineThroughClonezillaParser(t *testing.T) {
	testnet.Require(t, "unshare", "wget", "mount", "/usr/sbin/ocs-run-boot-param", "/usr/share/drbl/sbin/drbl-functions")

	type hit struct {
		method, token, status, body string
	}
	var mu sync.Mutex
	var hits []hit
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/clonezilla/report" {
			http.NotFound(w, r)
			return
		}
		b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		mu.Lock()
		hits = append(hits, hit{r.Method, r.URL.Query().Get("token"), r.URL.Query().Get("status"), string(b)})
		mu.Unlock()
		io.WriteString(w, "ok\n")
	}))
	defer srv.Close()

	// A loopback port with no listener: the NFS mount is refused at once.
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadPort := l.Addr().(*net.TCPAddr).Port
	l.Close()

	c := baseCommon()
	c.Server = netip.MustParseAddr("127.0.0.1")
	c.ReportBase = srv.URL
	c.SquashfsURL = srv.URL + "/live/filesystem.squashfs"
	c.NFSPort = deadPort
	c.ImagePath = "room-b/LAB-B-img"
	line, err := RestoreArgs(RestoreParams{c})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmdline := filepath.Join(dir, "cmdline")
	if err := os.WriteFile(cmdline, []byte(line+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	// 1. What Clonezilla's parser reads back.
	out, err := exec.Command("bash", "-c", `. /usr/share/drbl/sbin/drbl-conf-functions
. /usr/share/drbl/sbin/drbl-functions
for v in ocs_live_run ocs_live_batch ocs_live_extra_param ocs_prerun1 ocs_postrun1; do
  parse_cmdline_option -c "$1" $v
  eval echo "\"$v=[\$$v]\""
done`, "parse", cmdline).CombinedOutput()
	if err != nil {
		t.Fatalf("parse_cmdline_option: %v\n%s", err, out)
	}
	want := []string{
		"ocs_live_run=[ocs-sr -or /home/partimag/room-b -batch -nogui -e1 auto -e2 -r -j2 -k0 -scr -p reboot restoredisk LAB-B-img nvme0n1]",
		"ocs_live_batch=[yes]",
		"ocs_live_extra_param=[]",
		"ocs_prerun1=[mount -t nfs -o vers=3,proto=tcp,port=",
		"ocs_postrun1=[wget -q -T 20 -t 40 --waitretry=5 --retry-connrefused -O /dev/null --post-file=/var/log/clonezilla.log '" + srv.URL + "/api/v1/clonezilla/report?token=" + c.Token + "&status=finished'||true]",
	}
	for _, w := range want {
		if !strings.Contains(string(out), w) {
			t.Errorf("Clonezilla's parser read:\n%s\nwant a line containing %s", out, w)
		}
	}

	// 2. ocs-run-boot-param runs pre- and postruns as ocs-live-run-menu does
	//    (without -b, so any failure would print "Failed to run" and wait).
	const fakeLog = "Starting /usr/sbin/ocs-sr at ...\nPartclone successfully restored the image (-) to the device (/dev/nvme0n1p2)\n"
	script := `set -e
mount -t tmpfs pumi-test /var/log
mkdir -p /var/lib/clonezilla
mount -t tmpfs pumi-test /var/lib/clonezilla
printf '%s' "$2" > /var/log/clonezilla.log
ocs-run-boot-param -c "$1" ocs_prerun </dev/null
ocs-run-boot-param -c "$1" ocs_postrun </dev/null
`
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "-m", "--propagation", "private", "bash", "-c", script, "run", cmdline, fakeLog)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TERM=dumb")
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		t.Fatalf("ocs-run-boot-param failed: %v\n%s", err, buf.String())
	}
	if strings.Contains(buf.String(), "Failed to run") {
		t.Errorf("a pre/postrun failed, which would stop an unattended run at \"Press Enter\":\n%s", buf.String())
	}
	for _, w := range []string{`Now run "ocs_prerun1"`, `Now run "ocs_prerun2"`, `Now run "ocs_postrun1"`} {
		if !strings.Contains(buf.String(), w) {
			t.Errorf("output lacks %q:\n%s", w, buf.String())
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(hits) != 2 {
		t.Fatalf("report server got %d requests, want 2: %+v\n%s", len(hits), hits, buf.String())
	}
	if h := hits[0]; h.method != "GET" || h.token != c.Token || h.status != "started" {
		t.Errorf("first report %+v", h)
	}
	if h := hits[1]; h.method != "POST" || h.token != c.Token || h.status != "finished" || h.body != fakeLog {
		t.Errorf("second report %+v", h)
	}
}

// TestMulticastLineNeverWaitsForEnter: when a partition's stream fails,
// ocs-functions waits for Enter on stdin even in batch mode. The multicast
// line's ocs_live_run, read by Clonezilla's own parser and run the way
// ocs-live-run-menu runs it (a script with the value as its command), gives
// ocs-sr EOF on stdin, so a failed seat goes on, reports and reboots. A fake
// ocs-sr that reads stdin stands in, with the console's stdin kept open.
func TestMulticastLineNeverWaitsForEnter(t *testing.T) {
	testnet.Require(t, "/usr/share/drbl/sbin/drbl-functions")
	c := baseCommon()
	line, err := MulticastRestoreArgs(MulticastParams{Common: c})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmdline := filepath.Join(dir, "cmdline")
	if err := os.WriteFile(cmdline, []byte(line+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fake := filepath.Join(dir, "bin", "ocs-sr")
	os.MkdirAll(filepath.Dir(fake), 0o755)
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nread answer\necho \"read returned: $?\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", `. /usr/share/drbl/sbin/drbl-conf-functions
. /usr/share/drbl/sbin/drbl-functions
parse_cmdline_option -c "$1" ocs_live_run
s="$(mktemp)"
cat <<RUN_END > "$s"
#!/bin/bash
$ocs_live_run
RUN_END
PATH="$2:$PATH" bash "$s"`, "run", cmdline, filepath.Dir(fake))
	stdin, err := cmd.StdinPipe() // the console: open, nobody types
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "read returned: 1") {
		t.Fatalf("ocs-sr's stdin under Clonezilla's runner: %v\n%s", err, out)
	}
}
