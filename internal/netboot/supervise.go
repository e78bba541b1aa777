package netboot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"reflect"
	"sync"
	"time"
)

// Supervisor runs the DHCP/TFTP server with the config Want returns and
// restarts it only when that config changes (the admin's settings, or the
// inventory's addresses, which become full mode's reservations: rechecked
// every Recheck, so an imported CSV takes effect without a restart). A
// failure (interface missing, port in use) is reported and the same config
// is retried after a minute, not on every recheck.
type Supervisor struct {
	// Want returns the config to serve; off means the admin has not enabled
	// netboot (the server stays down). Called at start, after every change
	// and every Recheck.
	Want func(ctx context.Context) (cfg Config, off bool, err error)
	// Changed returns a channel that the next settings change closes; taken
	// before Want, so no change is missed.
	Changed func() <-chan struct{}
	// Report is told every state change, for the status page.
	Report     func(running bool, detail string, err error)
	Admission  Admission
	LeaseStore LeaseStore
	Files      fs.FS
	Log        *slog.Logger
	Recheck    time.Duration // default 10 s

	mu  sync.Mutex
	srv *Server // the server running now, nil if none
}

// Leases returns the running server's leases (nil when it is down).
func (s *Supervisor) Leases() []Lease {
	s.mu.Lock()
	srv := s.srv
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	return srv.Leases()
}

func (s *Supervisor) set(srv *Server) {
	s.mu.Lock()
	s.srv = srv
	s.mu.Unlock()
}

// Run supervises until ctx ends, then stops the server.
func (s *Supervisor) Run(ctx context.Context) {
	recheck := s.Recheck
	if recheck <= 0 {
		recheck = 10 * time.Second
	}
	tick := time.NewTicker(recheck)
	defer tick.Stop()
	var (
		running  *Config // what the server was started with; nil: not running
		stop     = func() {}
		done     chan error
		failed   *Config // the config that last failed, and when
		failedAt time.Time
	)
	halt := func() {
		stop()
		if done != nil {
			<-done
		}
		running, done = nil, nil
		s.set(nil)
	}
	defer halt()
	for {
		changed := s.Changed()
		want, off, err := s.Want(ctx)
		switch {
		case err != nil:
			halt()
			s.Report(false, "", err)
		case off:
			halt()
			s.Report(false, "(enable it in the configuration)", nil)
		case running != nil && reflect.DeepEqual(want, *running):
			// Serving exactly this already.
		case failed != nil && reflect.DeepEqual(want, *failed) && time.Since(failedAt) < time.Minute:
			// Retried after a minute, not on every tick.
		default:
			halt()
			runCtx, cancel := context.WithCancel(ctx)
			srv, err := New(want, s.Admission, s.LeaseStore, s.Files, s.Log)
			if err != nil {
				cancel()
				failed, failedAt = &want, time.Now()
				s.Report(false, "", err)
				s.Log.Error("netboot not started", "err", err)
				break
			}
			cfg := want
			running, stop, done = &cfg, cancel, make(chan error, 1)
			s.set(srv)
			go func(done chan<- error) { done <- srv.Run(runCtx) }(done)
			go func() {
				select {
				case <-srv.Ready():
					s.Report(true, fmt.Sprintf("(%s on %s)", cfg.Mode, cfg.Interface), nil)
				case <-runCtx.Done():
				}
			}()
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-tick.C:
		case err := <-done:
			if err == nil {
				err = errors.New("netboot server stopped")
			}
			failed, failedAt = running, time.Now()
			running, done = nil, nil
			stop()
			s.set(nil)
			s.Report(false, "", err)
			s.Log.Error("netboot stopped", "err", err)
		}
	}
}
