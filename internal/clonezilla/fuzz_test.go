package clonezilla

import (
	"path"
	"strings"
	"testing"
)

// Seed corpora live in testdata/fuzz/<Target>/. The metadata seeds are the
// files of the real images in testdata/repo (and the first 110 decompressed
// bytes of their partition images); the status-line seed is what Debian's
// task_notify_job_is_done sent through ocs-socket on this machine.

func FuzzParseNameList(f *testing.F) {
	f.Add([]byte("nvme0n1p1 nvme0n1p2\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		names, err := ParseNameList(b)
		if err != nil {
			return
		}
		for _, n := range names {
			if !devNameRE.MatchString(n) {
				t.Fatalf("accepted unsafe device name %q", n)
			}
		}
	})
}

func FuzzParseImgID(f *testing.F) {
	f.Add([]byte("IMG_ID=" + strings.Repeat("ab", 64) + "\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := ParseImgID(b)
		if err == nil && len(id) != 128 {
			t.Fatalf("id %q", id)
		}
	})
}

func FuzzParseCloneLog(f *testing.F) {
	f.Add([]byte("### Image created time: 2026-1126-1346\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		cl, err := ParseCloneLog(b)
		if err == nil && cl.Complete && cl.Created.IsZero() {
			t.Fatal("complete without a time")
		}
	})
}

func FuzzParsePartedTable(f *testing.F) {
	f.Add([]byte("Disk /dev/sda: 100s\nSector size (logical/physical): 512B/512B\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		pt, err := ParsePartedTable(b)
		if err == nil && (pt.SizeBytes() <= 0 || pt.Disk == "") {
			t.Fatalf("accepted %+v", pt)
		}
	})
}

func FuzzParseSfdisk(f *testing.F) {
	f.Add([]byte("label: gpt\n/dev/sda1 : start=2048, size=100, name=\"a,b\"\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := ParseSfdisk(b)
		if err != nil {
			return
		}
		for _, p := range st.Parts {
			if p.Start < 0 || p.Size < 0 || !devNameRE.MatchString(p.Device) {
				t.Fatalf("accepted %+v", p)
			}
		}
	})
}

func FuzzParseDevFS(f *testing.F) {
	f.Add([]byte("# <Device name>   <File system>   <Size>\n/dev/sda1 ext4 16M\n"))
	f.Fuzz(func(t *testing.T, b []byte) { ParseDevFS(b) })
}

func FuzzParseBlkdevList(f *testing.F) {
	f.Add([]byte("KNAME NAME SIZE TYPE\nsda sda 1G disk\n"))
	f.Fuzz(func(t *testing.T, b []byte) { ParseBlkdevList(b) })
}

func FuzzParsePartImageName(f *testing.F) {
	for _, s := range []string{"nvme0n1p2.ext4-ptcl-img.zst", "sda1.ext4-ptcl-img.gz.ab", "cl-root.xfs-ptcl-img.zst", "sda2.dd-img.aa", "sda1.ntfs-img", "disk"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		pi, ok := ParsePartImageName(s)
		if ok && (pi.Part == "" || strings.ContainsAny(pi.Part, "/ \x00") || !strings.HasPrefix(s, pi.Part+".")) {
			t.Fatalf("%q -> %+v", s, pi)
		}
	})
}

func FuzzParsePartcloneHeader(f *testing.F) {
	f.Add([]byte("partclone-image\x000.3.23\x00\x00\x00\x00\x00\x00\x00\x00\x000002\xde\xc0EXTFS"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParsePartcloneHeader(b)
		if err == nil && h.UsedBlocks > h.TotalBlock {
			t.Fatalf("accepted %+v", h)
		}
	})
}

func FuzzParseStatusLine(f *testing.F) {
	f.Add("10.99.0.23 52:54:00:ab:cd:ef debian 1 \\EFI\\debian\\shimx64.efi Unicast restored LAB-A-img, nvme0n1p1, success, 0.1 GB, 0.02 mins, 5.1 GB/min;\n")
	f.Add("10.99.0.23,52:54:00:ab:cd:ef,,,,Saved NEW-img, sda1, success, 1 GB, 1 mins, 1 GB/min;")
	f.Fuzz(func(t *testing.T, s string) {
		st, err := ParseStatusLine(s)
		if err != nil {
			return
		}
		if !st.ClientIP.Is4() || len(st.MAC) != 6 || st.Image == "" || st.Action == "" {
			t.Fatalf("accepted %+v", st)
		}
		if st.Success() {
			for _, p := range st.Parts {
				if p.Status != "success" {
					t.Fatalf("success with %+v", p)
				}
			}
		}
	})
}

func FuzzLiveVersion(f *testing.F) {
	f.Add([]byte("clonezilla-live-3.3.0-33-amd64\n"), "clonezilla-live-3.3.0-33-amd64.zip")
	f.Fuzz(func(t *testing.T, vf []byte, name string) {
		v, err := LiveVersion(vf, name)
		if err == nil && (!versionRE.MatchString(v) || strings.Contains(v, "..")) {
			t.Fatalf("unsafe version %q", v)
		}
	})
}

// FuzzRestoreArgs: whatever image path and disk come in, the result is
// either a refusal or a line that passes CheckCmdline and names exactly
// that image and disk in ocs_live_run.
func FuzzRestoreArgs(f *testing.F) {
	f.Add("LAB-A-img", "nvme0n1", "tok_0123456789abcdef")
	f.Add("room-b/LAB-B-img", "", "tok_0123456789abcdef")
	f.Add("LAB A;reboot", "sda", "x")
	f.Fuzz(func(t *testing.T, img, disk, token string) {
		c := baseCommon()
		c.ImagePath, c.Disk, c.Token = img, disk, token
		line, err := RestoreArgs(RestoreParams{c})
		if err != nil {
			return
		}
		if err := CheckCmdline(line); err != nil {
			t.Fatalf("accepted line fails CheckCmdline: %v", err)
		}
		if disk == "" {
			disk = AutoDisk
		}
		if !strings.Contains(line, " restoredisk "+path.Base(img)+" "+disk+`"`) {
			t.Fatalf("line does not restore %q onto %q: %s", img, disk, line)
		}
		if strings.Count(line, `"`) != 10 {
			t.Fatalf("quotes were injected: %s", line)
		}
	})
}

func FuzzReportFromLog(f *testing.F) {
	f.Add([]byte("Sending info:   1 Unicast restored LAB-A-img, /dev/nvme0n1p1, success, 12.8 MB = 25067 Blocks, .044 mins; to 10.88.0.1:6461... done!\n"))
	f.Add([]byte("Sending info: Saved x, /dev/sda1, ***FAIL***; to 1.2.3.4:6461\nSending info: to "))
	f.Fuzz(func(t *testing.T, log []byte) {
		s, ok := ReportFromLog(log)
		if ok && (s.Image == "" || s.Action == "") {
			t.Fatalf("found a report without image or action: %+v", s)
		}
	})
}
