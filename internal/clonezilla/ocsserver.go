package clonezilla

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/pumi-lab/pumi/internal/macaddr"
)

// OCSServerPort is where Clonezilla sends its job-done line when ocs_server=
// is on the command line (OCSMGRD_PORT).
const OCSServerPort = 6461

// MaxStatusLine bounds the line a listener should read before giving up.
const MaxStatusLine = 8192

// StatusLine is the one line Clonezilla's task_notify_job_is_done sends to
// ocs_server:6461 after a successful job. It carries no token: the listener
// must check that ClientIP and MAC belong to a seat in an active run, and
// treat the line as a hint that the postrun report (with token) and SSH
// verification confirm.
type StatusLine struct {
	ClientIP    netip.Addr
	MAC         net.HardwareAddr
	EFIOSLabel  string // e.g. "debian" (UEFI restores only)
	EFIPartNo   string // ESP partition number
	EFIBootFile string // e.g. \EFI\debian\shimx64.efi
	Action      string // "Unicast restored", "Multicast restored" or "Saved"
	Image       string
	Parts       []PartStatus
	Report      string // the report text as sent
}

// PartStatus is one "dev, status, used, time[, speed]" entry of the report.
type PartStatus struct {
	Device  string
	OK      bool   // status was "success" (the other value is "***FAIL***")
	Status  string // as sent
	Used    string // e.g. "0.1 GB"
	Elapsed string // e.g. "0.02 mins"
	Speed   string // e.g. "5.1 GB/min"
}

// Success is true when every partition reported success.
func (s StatusLine) Success() bool {
	if len(s.Parts) == 0 {
		return false
	}
	for _, p := range s.Parts {
		if !p.OK {
			return false
		}
	}
	return true
}

var reportStarts = []string{"Unicast restored ", "Multicast restored ", "Saved "}

// ParseStatusLine parses the ocs_server line in both spellings Clonezilla
// has used:
//
//	Debian's clonezilla 5.3 (ocs-socket -m "$ip $mac [efi...] $report_msg"):
//	  10.0.0.5 52:54:00:12:34:56 debian 1 \EFI\debian\shimx64.efi Unicast restored IMG, nvme0n1p1, success, ...;
//	upstream 5.18 (clonezilla.md §2.7):
//	  10.0.0.5,52:54:00:12:34:56,debian,1,\EFI\debian\shimx64.efi,Unicast restored IMG, nvme0n1p1, success, ...;
//
// The EFI fields are absent on BIOS machines in the space form.
func ParseStatusLine(line string) (StatusLine, error) {
	var s StatusLine
	if len(line) > MaxStatusLine {
		return s, malformed("ocs_server line is %d bytes, longer than %d", len(line), MaxStatusLine)
	}
	line = strings.TrimRight(line, "\r\n")
	for _, r := range line {
		if r < ' ' && r != '\t' || r == 0x7f {
			return s, malformed("ocs_server line has a control character %q", r)
		}
	}
	line = strings.TrimSpace(line)
	var ip, mac, report string
	var efi []string
	sp := strings.IndexAny(line, " \t")
	cm := strings.IndexByte(line, ',')
	if cm >= 0 && (sp < 0 || cm < sp) {
		f := strings.SplitN(line, ",", 6)
		if len(f) < 6 {
			return s, malformed("ocs_server line %q has %d comma-separated fields, want 6", clip(line), len(f))
		}
		ip, mac, efi, report = f[0], f[1], f[2:5], f[5]
	} else {
		f := strings.Fields(line)
		if len(f) < 3 {
			return s, malformed("ocs_server line %q is not \"ip mac report\"", clip(line))
		}
		ip, mac = f[0], f[1]
		// The report starts at the first known report phrase; what lies
		// between the MAC and it are the EFI fields.
		rest := strings.TrimSpace(skipFields(line, 2))
		at := -1
		for _, st := range reportStarts {
			if i := indexWordStart(rest, st); i >= 0 && (at < 0 || i < at) {
				at = i
			}
		}
		if at < 0 {
			return s, malformed("ocs_server line %q has no \"Unicast restored\", \"Multicast restored\" or \"Saved\" report", clip(line))
		}
		efi = strings.Fields(rest[:at])
		report = rest[at:]
		if len(efi) > 3 {
			return s, malformed("ocs_server line %q has %d fields before the report, at most 3 EFI fields expected", clip(line), len(efi))
		}
	}
	a, err := netip.ParseAddr(strings.TrimSpace(ip))
	if err != nil || !a.Is4() {
		return s, malformed("ocs_server line client address %q is not IPv4", clip(ip))
	}
	s.ClientIP = a
	if s.MAC, err = macaddr.Parse(mac); err != nil {
		return s, malformed("ocs_server line: %v", err)
	}
	for i, e := range efi {
		e = strings.TrimSpace(e)
		switch i {
		case 0:
			s.EFIOSLabel = e
		case 1:
			s.EFIPartNo = e
		case 2:
			s.EFIBootFile = e
		}
	}
	s.Report = strings.TrimSpace(report)
	if err := parseReport(&s); err != nil {
		return s, err
	}
	return s, nil
}

// skipFields drops the first n blank-separated fields of s.
func skipFields(s string, n int) string {
	for ; n > 0; n-- {
		s = strings.TrimLeft(s, " \t")
		if i := strings.IndexAny(s, " \t"); i >= 0 {
			s = s[i:]
		} else {
			return ""
		}
	}
	return s
}

// indexWordStart finds st at the start of s or after a blank.
func indexWordStart(s, st string) int {
	off := 0
	for {
		i := strings.Index(s[off:], st)
		if i < 0 {
			return -1
		}
		i += off
		if i == 0 || s[i-1] == ' ' || s[i-1] == '\t' {
			return i
		}
		off = i + 1
	}
}

func parseReport(s *StatusLine) error {
	r := s.Report
	for _, st := range reportStarts {
		if strings.HasPrefix(r, st) {
			s.Action = strings.TrimSpace(st)
			r = r[len(st):]
			break
		}
	}
	if s.Action == "" {
		return malformed("ocs_server report %q does not start with a known action", clip(s.Report))
	}
	img, rest, ok := strings.Cut(r, ",")
	if !ok {
		return malformed("ocs_server report %q has no image name followed by a comma", clip(s.Report))
	}
	s.Image = strings.TrimSpace(img)
	if s.Image == "" || strings.ContainsAny(s.Image, " \t") {
		return malformed("ocs_server report image name %q is empty or has blanks", clip(s.Image))
	}
	for _, ent := range strings.Split(rest, ";") {
		ent = strings.TrimSpace(ent)
		if ent == "" {
			continue
		}
		f := strings.Split(ent, ",")
		if len(f) < 2 {
			return malformed("ocs_server report entry %q is not \"device, status, ...\"", clip(ent))
		}
		p := PartStatus{Device: strings.TrimSpace(f[0]), Status: strings.TrimSpace(f[1])}
		if p.Device == "" || strings.ContainsAny(p.Device, " \t") {
			return malformed("ocs_server report device %q is empty or has blanks", clip(p.Device))
		}
		p.OK = p.Status == "success"
		for _, x := range f[2:] {
			x = strings.TrimSpace(x)
			switch {
			case strings.HasSuffix(x, "/min"):
				p.Speed = x
			case strings.HasSuffix(x, " mins"):
				p.Elapsed = x
			default:
				p.Used = x
			}
		}
		s.Parts = append(s.Parts, p)
		if len(s.Parts) > 256 {
			return malformed("ocs_server report lists more than 256 partitions")
		}
	}
	return nil
}

// String renders the line in the upstream comma form (for logs and tests).
func (s StatusLine) String() string {
	return fmt.Sprintf("%s,%s,%s,%s,%s,%s", s.ClientIP, s.MAC, s.EFIOSLabel, s.EFIPartNo, s.EFIBootFile, s.Report)
}

// sendingInfo is how ocs-sr logs the line it sends to ocs_server, into
// /var/log/clonezilla.log too: "Sending info: <line> to <server>:6461...".
const sendingInfo = "Sending info: "

// ReportFromLog finds, in a clonezilla.log as uploaded by pumi's postrun
// report, the last status report ocs-sr tried to send to ocs_server, for when
// the line itself never arrived: a firewall between VLANs, or a live system
// without ifconfig, whose drbl-get-ipadd then sends no address (the line
// starts with blanks and pumi cannot tell whose it is). The log came with the
// seat's report token, so the report is the seat's own. ClientIP and MAC
// stay empty.
func ReportFromLog(log []byte) (StatusLine, bool) {
	var s StatusLine
	found := false
	for line := range strings.SplitSeq(string(log), "\n") {
		_, info, ok := strings.Cut(line, sendingInfo)
		if !ok {
			continue
		}
		if i := strings.LastIndex(info, " to "); i >= 0 {
			info = info[:i]
		}
		at := -1
		for _, st := range reportStarts {
			if i := indexWordStart(info, st); i >= 0 && (at < 0 || i < at) {
				at = i
			}
		}
		if at < 0 {
			continue
		}
		cand := StatusLine{Report: strings.TrimSpace(info[at:])}
		if parseReport(&cand) == nil {
			s, found = cand, true
		}
	}
	return s, found
}
