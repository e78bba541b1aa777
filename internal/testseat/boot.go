package testseat

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"time"
)

// client is an HTTP client whose connections are opened inside ns's
// namespace, as the seat's iPXE and Clonezilla would open them.
func (s *Seat) client() *http.Client {
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
			derr := s.Host.Do(func() error {
				var d net.Dialer
				conn, err = d.DialContext(ctx, network, addr)
				return nil
			})
			return conn, errors.Join(err, derr)
		},
	}}
}

// Get fetches url from the seat, as iPXE would; anything but 200 is an error.
func (s *Seat) Get(ctx context.Context, url string) (string, error) {
	return s.do(ctx, http.MethodGet, url, "")
}

// Post posts body (a Clonezilla log) from the seat, as Clonezilla's postrun
// does; anything but 2xx is an error.
func (s *Seat) Post(ctx context.Context, url, body string) error {
	_, err := s.do(ctx, http.MethodPost, url, body)
	return err
}

func (s *Seat) do(ctx context.Context, method, url, body string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return "", err
	}
	resp, err := s.client().Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return "", fmt.Errorf("%s %s: %s %s", method, url, resp.Status, b)
	}
	return string(b), err
}

// OCSStatus sends Clonezilla's job-done line (what ocs_server=<server> makes
// Clonezilla send to TCP 6461) from the seat's address, and waits until the
// server has read it (it closes the connection after).
func (s *Seat) OCSStatus(server, image string) error {
	var c net.Conn
	if err := s.Host.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", net.JoinHostPort(server, "6461"), 5*time.Second)
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "%s %s Unicast restored %s, sda1, success, 0.1 GB, 0.02 mins, 5.1 GB/min;\n", s.IP, s.MAC, image)
	c.(*net.TCPConn).CloseWrite()
	_, err := io.Copy(io.Discard, c)
	return err
}

var (
	reportRE      = regexp.MustCompile(`'(http://[^']*/api/v1/clonezilla/report\?token=[A-Za-z0-9_-]+&status=)started'`)
	restoreDiskRE = regexp.MustCompile(`restoredisk (\S+)`)
	ocsServerRE   = regexp.MustCompile(`ocs_server=(\S+)`)
)

// ApplianceBoot is Config.Netboot against the real appliance
// (internal/appliance): the seat fetches its iPXE script from the
// appliance's /boot/<mac>.ipxe. A local exit ("exit 1") boots the disk
// (Start). A restore script carries Clonezilla's command line with the
// report URL and token: the "Clonezilla" reports started, swaps the
// Signature to the image's, sends the ocs_server status line to TCP 6461
// (success only) and posts its log as finished, then reboots into the next
// script. Behaviour.FailReport makes the log say the restore failed;
// Behaviour.CutRestores cuts power after "started".
func ApplianceBoot(ctx context.Context, s *Seat) error {
	for round := 0; ; round++ {
		script, err := s.Get(ctx, s.Boot)
		if err != nil {
			return err
		}
		s.CountBoot()
		m := reportRE.FindStringSubmatch(script)
		if m == nil {
			if !strings.Contains(script, "exit 1") {
				return fmt.Errorf("seat %s: unexpected boot script %q", s.MAC, script)
			}
			_, err := s.Start(nil)
			return err
		}
		if round > 4 {
			return fmt.Errorf("seat %s: restore loop", s.MAC)
		}
		report, image, server := m[1], restoreDiskRE.FindStringSubmatch(script), ocsServerRE.FindStringSubmatch(script)
		if image == nil || server == nil {
			return fmt.Errorf("seat %s: no restoredisk or ocs_server in %q", s.MAC, script)
		}
		if _, err := s.Get(ctx, report+"started"); err != nil {
			return err
		}
		n := s.BeginRestore()
		if n <= s.B.CutRestores {
			continue // power cut mid-restore: no report, the PC boots again
		}
		logText := "ocs-sr -batch restoredisk " + image[1] + " sda\nPartclone successfully restored sda1\n"
		if n <= s.B.FailReport {
			logText += "Failed to restore partition image file /home/partimag/" + image[1] + "/sda1.ext4-ptcl-img.gz to /dev/sda1!\n"
		} else {
			if err := s.SetSignature(SignatureFor(image[1]) + "\n"); err != nil {
				return err
			}
			if err := s.OCSStatus(server[1], image[1]); err != nil {
				return err
			}
		}
		if err := s.Post(ctx, report+"finished", logText); err != nil {
			return err
		}
	}
}
