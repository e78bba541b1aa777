package web

import (
	"context"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/testnet"
	"github.com/pumi-lab/pumi/internal/testsmtp"
)

// TestSendTestMail presses "send a test mail" against a real SMTP server
// (Debian's python3-aiosmtpd, printing what it receives) on loopback, then
// against a port where nothing listens: the page says so in plain words.
func TestSendTestMail(t *testing.T) {
	testsmtp.Require(t)
	port := testsmtp.FreePort(t)
	var out testnet.LockedBuffer
	cmd := exec.Command(testsmtp.Python, "-m", "aiosmtpd", "-n", "-l", "127.0.0.1:"+strconv.Itoa(port), "-c", "aiosmtpd.handlers.Debugging")
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
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
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
