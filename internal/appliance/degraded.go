package appliance

import (
	"context"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/pumi-lab/pumi/internal/boot"
)

// ErrListen marks a failure to open the degraded-mode listener, after which
// there is nothing useful left to do (gokrazy should stop restarting pumi).
var ErrListen = errors.New("cannot listen")

var degradedPage = template.Must(template.New("degraded").Parse(`<!doctype html>
<html lang="en"><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>pumi cannot start</title>
<body style="font-family:system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem;line-height:1.5">
<h1>pumi cannot use its state</h1>
<p style="background:#fde8e8;padding:.75rem;border-radius:.4rem"><strong>{{.Err}}</strong></p>
<p>pumi keeps its configuration, inventory and run history in <code>{{.Dir}}</code>. Until that works, it does not
serve DHCP, TFTP or NFS, and every lab PC that network-boots is told to boot its own disk, so nothing is imaged.</p>
<h2>What to do</h2>
<ul>
<li>On the appliance (a USB stick or disk written with <code>pumi-image</code>), the state lives on the <code>/perm</code>
partition. If it was never formatted or is damaged, write the stick again with <code>pumi-image</code>, or format
partition 4 with <code>mkfs.ext4 -L perm /dev/sdX4</code> (this erases pumi's state).</li>
<li>If the message says the state file is damaged and a backup exists, run
<code>pumi-appliance -state {{.Dir}} -restore-backup</code>.</li>
<li>Elsewhere, point <code>-state</code> at a writable folder whose parent exists.</li>
</ul>
<p>pumi tries again when it is restarted.</p>
</body></html>
`))

// ServeDegraded is what pumi does when its state cannot be opened: instead of
// exiting (which on gokrazy means a restart loop), it serves a page that says
// what is wrong and how to fix it, answers every boot script with "boot your
// local disk", refuses the API, and waits for ctx. It returns an error
// wrapping ErrListen if even the listener cannot be opened.
func ServeDegraded(ctx context.Context, listen, stateDir string, cause error, log *slog.Logger) error {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", listen)
	if err != nil {
		return fmt.Errorf("%w %s: %v (and the state failed: %v)", ErrListen, listen, err, cause)
	}
	mux := http.NewServeMux()
	mux.Handle("/boot/", boot.Handler(unavailable{cause}, log))
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "pumi cannot use its state: " + cause.Error()})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Retry-After", "60")
		w.WriteHeader(http.StatusServiceUnavailable)
		degradedPage.Execute(w, struct{ Err, Dir string }{cause.Error(), stateDir})
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shut)
	}()
	log.Error("pumi is running in degraded mode: its state cannot be used", "state", stateDir, "err", cause, "http", l.Addr().String())
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// unavailable decides "boot the local disk" for every MAC: with no state
// pumi cannot know which seat should be imaged, so none is.
type unavailable struct{ cause error }

func (u unavailable) Decide(context.Context, boot.Machine) (boot.Decision, error) {
	return boot.Decision{Action: boot.Exit, Reason: "pumi cannot use its state; nothing is imaged"}, nil
}
