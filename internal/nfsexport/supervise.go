package nfsexport

import (
	"context"
	"fmt"
	"log/slog"
	"net"
)

// sameExports compares what two export lists serve; a DirFor counts by its
// presence (functions cannot be compared, and the caller's DirFor answers
// from its own current state anyway).
func sameExports(a, b []Export) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Path != b[i].Path || a[i].Dir != b[i].Dir || a[i].Writable != b[i].Writable || (a[i].DirFor == nil) != (b[i].DirFor == nil) {
			return false
		}
	}
	return true
}

// Supervisor serves the exports Want returns and restarts the server only
// when they change (other settings leave open connections alone), on the same
// address, so the command lines already handed to seats stay right. Clients
// reconnect by themselves and keep their file handles (stable across
// restarts).
type Supervisor struct {
	// Want returns the exports to serve; none means "serve nothing" (no
	// repository yet). Called at start and after every change.
	Want func(ctx context.Context) ([]Export, error)
	// Changed returns a channel that the next settings change closes.
	Changed func() <-chan struct{}
	// Report is told every state change, for the status page.
	Report func(running bool, detail string, err error)
	Allow  Allow
	Log    *slog.Logger
}

// Run serves on l (and on addr again after l was given up) until ctx ends.
func (s *Supervisor) Run(ctx context.Context, l net.Listener, addr string) {
	var (
		serving []Export // what is served now
		up      bool
		stop    = func() {}
		served  = make(chan struct{})
	)
	close(served)
	halt := func() {
		stop()
		<-served
		up = false
	}
	defer halt()
	for {
		changed := s.Changed()
		want, err := s.Want(ctx)
		switch {
		case err != nil:
			s.Report(false, "", err)
		case up && sameExports(want, serving):
			// Nothing NFS serves changed.
		case len(want) == 0:
			halt()
			serving = nil
			s.Report(false, "(no image repository configured)", nil)
		default:
			halt()
			srv, err := New(Config{Exports: want}, s.Allow, s.Log)
			if err != nil {
				s.Report(false, "", err)
				break
			}
			if l == nil {
				var lc net.ListenConfig
				if l, err = lc.Listen(ctx, "tcp", addr); err != nil {
					s.Report(false, "", fmt.Errorf("listen %s: %w", addr, err))
					l = nil
					break
				}
			}
			genCtx, cancel := context.WithCancel(ctx)
			stop, served, serving, up = cancel, make(chan struct{}), want, true
			s.Report(true, "", nil)
			go func(l net.Listener, served chan struct{}) {
				defer close(served)
				// Serve closes l when genCtx ends.
				if err := srv.Serve(genCtx, l); err != nil && genCtx.Err() == nil {
					s.Log.Error("nfs", "err", err)
					s.Report(false, "", err)
				}
			}(l, served)
			l = nil
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}
