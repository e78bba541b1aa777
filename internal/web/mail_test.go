package web

import (
	"context"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/testnet"
)

// TestSendTestMail presses "send a test mail" against a real SMTP server
// (Debian's python3-aiosmtpd, printing what it receives) on loopback, then
// against a port where nothing listens: the page says so in plain words.
func TestSendTestMail(t *testing.T) {
	const python = "/usr/bin/python3"
	testnet.Require(t, python)
	if out, err := exec.Command(python, "-c", "import aiosmtpd").CombinedOutput(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("python3-aiosmtpd missing (CI must install it): %v %s", err, out)
		}
		t.Skipf("python3-aiosmtpd missing: %v %s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	var out testnet.LockedBuffer
	cmd := exec.Command(python, "-m", "aiosmtpd", "-n", "-l", "127.0.0.1:"+strconv.Itoa(port), "-c", "aiosmtpd.handlers.Debugging")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		cmd.Process.Kill()
		<-exited
		exited <- nil // later waits see it has ended
	}
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	})
	// wait polls until cond holds, or fails when the server is gone.
	wait := func(what string, cond func() bool) {
		t.Helper()
		for !cond() {
			select {
			case err := <-exited:
				exited <- err
				t.Fatalf("smtp server ended before %s: %v\n%s", what, err, out.String())
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	wait("listening", func() bool {
		c, err := net.Dial("tcp", l.Addr().String())
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	e := newEnv(t, Options{})
	c, csrf := e.login()
	ctx := context.Background()
	set := func(port int) {
		st, _ := e.b.Settings(ctx)
		// No TLS: notify allows that only to a loopback server, as here.
		st.Mail = Mail{Host: "127.0.0.1", Port: port, From: "pumi@lab.example", To: []string{"admin@lab.example"}, TLS: "none"}
		if err := e.b.SetSettings(ctx, st); err != nil {
			t.Fatal(err)
		}
	}
	set(port)
	r, _ := e.post(c, "/settings/mail-test", url.Values{"csrf": {csrf}})
	if r.StatusCode != http.StatusSeeOther || !strings.Contains(r.Header.Get("Location"), "msg=mailsent") {
		t.Fatalf("test mail: %d %s", r.StatusCode, r.Header.Get("Location"))
	}
	wait("printing the mail", func() bool { return strings.Contains(out.String(), "pumi test mail") })
	if !strings.Contains(out.String(), "admin@lab.example") {
		t.Fatalf("recipient not seen by the server:\n%s", out.String())
	}

	stop()
	set(port) // the same port, now closed
	r, body := e.post(c, "/settings/mail-test", url.Values{"csrf": {csrf}})
	if r.StatusCode != http.StatusBadGateway || !strings.Contains(body, "the test mail was not sent") {
		t.Fatalf("test mail to a closed port: %d\n%.600s", r.StatusCode, body)
	}
}
