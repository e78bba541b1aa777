package clonezilla

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/testnet"
)

func TestParseStatusLine(t *testing.T) {
	cases := []struct {
		name, line               string
		ip, mac, label, no, file string
		action, image            string
		parts                    int
		success                  bool
	}{
		{
			name: "debian 5.3 uefi",
			line: `10.99.0.23 52:54:00:ab:cd:ef debian 1 \EFI\debian\shimx64.efi Unicast restored LAB-A-img, nvme0n1p1, success, 0.1 GB, 0.02 mins, 5.1 GB/min; nvme0n1p2, success, 1.2 GB, 0.3 mins, 4.0 GB/min;` + "\n",
			ip:   "10.99.0.23", mac: "52:54:00:ab:cd:ef", label: "debian", no: "1", file: `\EFI\debian\shimx64.efi`,
			action: "Unicast restored", image: "LAB-A-img", parts: 2, success: true,
		},
		{
			name: "debian 5.3 bios, no efi fields",
			line: "10.99.0.23 52:54:00:AB:CD:EF Unicast restored LAB-B-img, sda1, success, 0.2 GB, 0.01 mins, 9.0 GB/min;\r\n",
			ip:   "10.99.0.23", mac: "52:54:00:ab:cd:ef", action: "Unicast restored", image: "LAB-B-img", parts: 1, success: true,
		},
		{
			name: "upstream comma form with a failure",
			line: `10.99.0.23,52:54:00:ab:cd:ef,Windows_Boot_Manager,1,\EFI\Microsoft\Boot\bootmgfw.efi,Unicast restored W11-img, nvme0n1p1, success, 0.1 GB, 0.02 mins, 5.1 GB/min; nvme0n1p3, ***FAIL***, 20 GB, 3 mins;`,
			ip:   "10.99.0.23", mac: "52:54:00:ab:cd:ef", label: "Windows_Boot_Manager", no: "1", file: `\EFI\Microsoft\Boot\bootmgfw.efi`,
			action: "Unicast restored", image: "W11-img", parts: 2, success: false,
		},
		{
			name: "upstream comma form, empty efi fields",
			line: "10.99.0.23,52-54-00-ab-cd-ef,,,,Saved NEW-img, sda1, success, 1 GB, 1 mins, 1 GB/min;",
			ip:   "10.99.0.23", mac: "52:54:00:ab:cd:ef", action: "Saved", image: "NEW-img", parts: 1, success: true,
		},
		{
			name: "multicast, no partitions yet",
			line: "10.99.0.23 52:54:00:ab:cd:ef Multicast restored LAB-A-img,",
			ip:   "10.99.0.23", mac: "52:54:00:ab:cd:ef", action: "Multicast restored", image: "LAB-A-img", parts: 0, success: false,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := ParseStatusLine(c.line)
			if err != nil {
				t.Fatal(err)
			}
			if s.ClientIP.String() != c.ip || s.MAC.String() != c.mac || s.EFIOSLabel != c.label || s.EFIPartNo != c.no || s.EFIBootFile != c.file {
				t.Errorf("header fields %+v", s)
			}
			if s.Action != c.action || s.Image != c.image || len(s.Parts) != c.parts || s.Success() != c.success {
				t.Errorf("report %+v success=%v", s, s.Success())
			}
		})
	}
	s, _ := ParseStatusLine(cases[0].line)
	want := PartStatus{Device: "nvme0n1p1", OK: true, Status: "success", Used: "0.1 GB", Elapsed: "0.02 mins", Speed: "5.1 GB/min"}
	if s.Parts[0] != want {
		t.Errorf("part 0 = %+v, want %+v", s.Parts[0], want)
	}
	// String gives the comma form, which parses back to the same thing.
	s2, err := ParseStatusLine(s.String())
	if err != nil || s2.String() != s.String() {
		t.Errorf("round trip %q -> %v %q", s.String(), err, s2.String())
	}
}

func TestParseStatusLineRefuses(t *testing.T) {
	for _, line := range []string{
		"",
		"hello",
		"10.99.0.23 52:54:00:ab:cd:ef",
		"10.99.0.23 52:54:00:ab:cd:ef nothing we know",
		"fd00::1 52:54:00:ab:cd:ef Unicast restored X, sda1, success;",
		"10.99.0.300 52:54:00:ab:cd:ef Unicast restored X, sda1, success;",
		"10.99.0.23 not-a-mac Unicast restored X, sda1, success;",
		"10.99.0.23 52:54:00:ab:cd:ef a b c d Unicast restored X, sda1, success;",
		"10.99.0.23 52:54:00:ab:cd:ef Unicast restored X sda1 success",
		"10.99.0.23 52:54:00:ab:cd:ef Unicast restored , sda1, success;",
		"10.99.0.23 52:54:00:ab:cd:ef Unicast restored X, sda1;",
		"10.99.0.23,52:54:00:ab:cd:ef,Unicast restored X, sda1, success;",
		"10.99.0.23 52:54:00:ab:cd:ef Unicast restored X, sda1, success;\x00",
		"10.99.0.23 52:54:00:ab:cd:ef Unicast restored X, sda1, success;\nsecond line",
		strings.Repeat("a", MaxStatusLine+1),
	} {
		if s, err := ParseStatusLine(line); err == nil {
			t.Errorf("ParseStatusLine(%.60q) accepted: %+v", line, s)
		} else if !errors.Is(err, ErrMalformed) {
			t.Errorf("error %v does not wrap ErrMalformed", err)
		}
	}
}

// TestStatusLineFromClonezilla has Clonezilla's own task_notify_job_is_done
// (Debian's clonezilla package, through its ocs-socket) send its line to a
// listener on loopback, and parses what arrives. ocs-sr fills report_msg
// while restoring; here it is set the way ocs-functions builds it. The
// client address and MAC are whatever Clonezilla reads from this machine's
// first NIC, so they are checked against the machine's interfaces.
func TestStatusLineFromClonezilla(t *testing.T) {
	testnet.Require(t, "/usr/share/drbl/sbin/ocs-functions", "ocs-socket")
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- "accept: " + err.Error()
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			line = "read: " + err.Error()
		}
		got <- line
	}()
	port := l.Addr().(*net.TCPAddr).Port
	script := fmt.Sprintf(`. /usr/share/drbl/sbin/drbl-conf-functions
. /etc/drbl/drbl-ocs.conf
. /usr/share/drbl/sbin/ocs-functions
OCSMGRD_PORT=%d NOTIFY_OCS_SERVER_TIME_LIMIT=1 ocs_server=127.0.0.1 OCS_LOGFILE=/dev/null
efi_os_label=debian efi_system_part_no=1 efi_sys_part_boot_file='\EFI\debian\shimx64.efi'
report_msg="Unicast restored LAB-A-img, nvme0n1p1, success, 0.1 GB, 0.02 mins, 5.1 GB/min; nvme0n1p2, ***FAIL***, 1.0 GB, 0.5 mins;"
task_notify_job_is_done -s`, port)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "bash", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("task_notify_job_is_done: %v\n%s", err, out)
	}
	var line string
	select {
	case line = <-got:
	case <-time.After(10 * time.Second):
		t.Fatalf("no line arrived; Clonezilla said:\n%s", out)
	}
	s, err := ParseStatusLine(line)
	if err != nil {
		t.Fatalf("parse %q: %v", line, err)
	}
	if s.EFIOSLabel != "debian" || s.EFIPartNo != "1" || s.EFIBootFile != `\EFI\debian\shimx64.efi` || s.Image != "LAB-A-img" || s.Action != "Unicast restored" {
		t.Errorf("parsed %+v from %q", s, line)
	}
	if len(s.Parts) != 2 || !s.Parts[0].OK || s.Parts[1].OK || s.Parts[1].Status != "***FAIL***" || s.Success() {
		t.Errorf("parts %+v", s.Parts)
	}
	// The address and MAC are this machine's: find the interface.
	ifs, _ := net.Interfaces()
	found := false
	for _, ifc := range ifs {
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.String() == s.ClientIP.String() && ifc.HardwareAddr.String() == s.MAC.String() {
				found = true
			}
		}
	}
	if !found {
		t.Errorf("client %v / %v is not an address+MAC of this machine", s.ClientIP, s.MAC)
	}
}

// TestReportFromLog: the lines are as Debian's ocs-sr 5.3.17 wrote them into
// clonezilla.log in the lab test, once from a live system without ifconfig
// (no address, no MAC: the line's start is blank) and once with it.
func TestReportFromLog(t *testing.T) {
	noAddr := "Notifying clonezilla server my job is done... 5 4 3 2 1 \n" +
		"Sending info:   1 Unicast restored LAB-A-img, /dev/nvme0n1p1, success, 12.8 MB = 25067 Blocks, .044 mins; /dev/nvme0n1p2, success, 82.2 MB = 80290 Blocks, .080 mins; to 10.88.0.1:6461... done!\n" +
		"Finished!\n"
	withAddr := "Sending info: 10.88.0.12 52:54:00:88:00:12  1 Unicast restored LAB-A-img, /dev/nvme0n1p1, success, 12.8 MB = 25067 Blocks, .044 mins; /dev/nvme0n1p2, ***FAIL***, 82.2 MB = 80290 Blocks, .080 mins; to 10.88.0.1:6461... done!\n"
	for _, c := range []struct {
		name, log string
		found, ok bool
	}{
		{"no address", noAddr, true, true},
		{"with address, a partition failed", withAddr, true, false},
		{"no report", "Finished!\nSending info: garbage to 10.0.0.1:6461\n", false, false},
		{"empty", "", false, false},
	} {
		s, found := ReportFromLog([]byte(c.log))
		if found != c.found || found && (s.Success() != c.ok || s.Image != "LAB-A-img" || len(s.Parts) != 2) {
			t.Errorf("%s: found %v, %+v; want found %v, success %v", c.name, found, s, c.found, c.ok)
		}
	}
}
