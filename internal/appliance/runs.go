package appliance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"time"

	"github.com/pumi-lab/pumi/internal/history"
	"github.com/pumi-lab/pumi/internal/inventory"
	"github.com/pumi-lab/pumi/internal/macaddr"
	"github.com/pumi-lab/pumi/internal/notify"
	"github.com/pumi-lab/pumi/internal/power"
	"github.com/pumi-lab/pumi/internal/reimage"
	"github.com/pumi-lab/pumi/internal/schedule"
	"github.com/pumi-lab/pumi/internal/seatjob"
	"github.com/pumi-lab/pumi/internal/store"
)

// Buckets for runs' inputs: secrets (0600 like the whole state file, never
// returned by any API), schedules and their persisted fire times.
var (
	secretBucket   = store.NewBucket[string]("secrets")
	scheduleBucket = store.NewBucket[schedule.Schedule]("schedules")
	fireBucket     = store.NewBucket[time.Time]("schedule-fires")
)

// Secret names.
const SecretMail = "mail"

// SSHSecretName names the SSH password of a room or an image.
func SSHSecretName(scope, name string) string { return "ssh:" + scope + ":" + name }

// SetSecret stores (value != "") or clears (value == "") a secret.
func (a *App) SetSecret(ctx context.Context, name, value string) error {
	if name == "" || len(name) > 200 {
		return fmt.Errorf("%w: bad secret name", errConfig)
	}
	return a.st.Update(ctx, func(tx *store.Tx) error {
		if value == "" {
			return secretBucket.Delete(tx, name)
		}
		return secretBucket.Put(tx, name, value)
	})
}

// HasSecret reports whether a secret is set, for "set"/"not set" displays.
func (a *App) HasSecret(ctx context.Context, name string) (bool, error) {
	var ok bool
	err := a.st.View(ctx, func(tx *store.Tx) error {
		var err error
		ok, err = secretBucket.Has(tx, name)
		return err
	})
	return ok, err
}

func (a *App) secret(ctx context.Context, name string) (string, error) {
	var v string
	err := a.st.View(ctx, func(tx *store.Tx) error {
		var err error
		v, _, err = secretBucket.Get(tx, name)
		return err
	})
	return v, err
}

// location is the appliance's time zone.
func (c Config) location() *time.Location {
	if c.TimeZone == "" {
		return time.UTC
	}
	if loc, err := time.LoadLocation(c.TimeZone); err == nil {
		return loc
	}
	return time.UTC
}

// Schedules lists the stored schedules.
func (a *App) Schedules(ctx context.Context) ([]schedule.Schedule, error) {
	var out []schedule.Schedule
	err := a.st.View(ctx, func(tx *store.Tx) error {
		var err error
		out, err = scheduleBucket.List(tx)
		return err
	})
	return out, err
}

// PutSchedule creates or replaces a schedule. An edited spec restarts the
// schedule's fire accounting at now, so the new spec never fires for the
// past (see schedule.Scheduler).
func (a *App) PutSchedule(ctx context.Context, s schedule.Schedule) error {
	if err := s.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errConfig, err)
	}
	err := a.st.Update(ctx, func(tx *store.Tx) error {
		old, ok, err := scheduleBucket.Get(tx, s.ID)
		if err != nil {
			return err
		}
		if ok && old.Spec.String() != s.Spec.String() {
			if err := fireBucket.Put(tx, s.ID, time.Now().UTC()); err != nil {
				return err
			}
		}
		if err := scheduleBucket.Put(tx, s.ID, s); err != nil {
			return err
		}
		return history.Add(tx, history.Event{Kind: "schedule", Message: fmt.Sprintf("schedule %q saved (%s)", s.Name, s.Spec.String())})
	})
	if err == nil {
		a.changes.Notify()
	}
	return err
}

// DeleteSchedule removes a schedule; runs it started are kept.
func (a *App) DeleteSchedule(ctx context.Context, id string) error {
	err := a.st.Update(ctx, func(tx *store.Tx) error {
		if ok, err := scheduleBucket.Has(tx, id); err != nil || !ok {
			if err == nil {
				err = fmt.Errorf("schedule %s: %w", id, inventory.ErrNotFound)
			}
			return err
		}
		if err := scheduleBucket.Delete(tx, id); err != nil {
			return err
		}
		return fireBucket.Delete(tx, id)
	})
	if err == nil {
		a.changes.Notify()
	}
	return err
}

// RunNow starts a schedule's action at once (a manual run).
func (a *App) RunNow(ctx context.Context, scheduleID string) (string, error) {
	var s schedule.Schedule
	err := a.st.View(ctx, func(tx *store.Tx) error {
		var ok bool
		var err error
		s, ok, err = scheduleBucket.Get(tx, scheduleID)
		if err == nil && !ok {
			err = fmt.Errorf("schedule %s: %w", scheduleID, inventory.ErrNotFound)
		}
		return err
	})
	if err != nil {
		return "", err
	}
	r, err := a.engine.Start(ctx, reimage.Request{ScheduleID: s.ID, Name: s.Name, Action: s.Action, Target: s.Target, Window: s.Window,
		OnlyUnverified: s.OnlyUnverified})
	if err != nil {
		return "", err
	}
	return r.ID, nil
}

// Engine is the runs engine (for the web page and tests).
func (a *App) Engine() *reimage.Engine { return a.engine }

// fireStore keeps schedules' fire accounting in the state file.
type fireStore struct{ st *store.Store }

func (f fireStore) LastFire(ctx context.Context, id string) (time.Time, error) {
	var t time.Time
	err := f.st.View(ctx, func(tx *store.Tx) error {
		var err error
		t, _, err = fireBucket.Get(tx, id)
		return err
	})
	return t, err
}

func (f fireStore) SetLastFire(ctx context.Context, id string, t time.Time) error {
	return f.st.Update(ctx, func(tx *store.Tx) error { return fireBucket.Put(tx, id, t) })
}

// lab is reimage.Lab on the inventory and internal/seatjob.
type lab struct{ a *App }

func seatID(s inventory.Seat) string {
	if s.Hostname != "" {
		return s.Hostname
	}
	return s.MAC
}

// Seats resolves the target and each seat's SSH login once, for the run:
// the login of the run's image, else of the seat's room, else the
// inventory's user with pumi's key.
func (l lab) Seats(ctx context.Context, t schedule.Target, image string) ([]reimage.Seat, error) {
	seats, err := l.a.inv.Seats(ctx)
	if err != nil {
		return nil, err
	}
	cfg, err := l.a.Config(ctx)
	if err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, s := range t.Seats {
		want[s] = true
		if m, err := macaddr.Normalize(s); err == nil {
			want[m] = true
		}
	}
	var out []reimage.Seat
	found := map[string]bool{}
	for _, s := range seats {
		if !slices.Contains(t.Rooms, s.Room) && !want[s.Hostname] && !want[s.MAC] {
			continue
		}
		found[s.Hostname], found[s.MAC] = true, true
		addr := ""
		if s.IP.IsValid() {
			addr = s.IP.String()
		}
		out = append(out, reimage.Seat{ID: seatID(s), Room: s.Room, MAC: s.MAC, Addr: addr, Login: cfg.login(s, image)})
	}
	for _, s := range t.Seats {
		m, _ := macaddr.Normalize(s)
		if !found[s] && !found[m] {
			return nil, fmt.Errorf("seat %q: %w", s, inventory.ErrNotFound)
		}
	}
	return out, nil
}

// login picks the SSH login of image, else of the seat's room, else the
// inventory's user with pumi's key.
func (c Config) login(s inventory.Seat, image string) reimage.Login {
	for _, scope := range []struct{ kind, name string }{{"image", image}, {"room", s.Room}} {
		if scope.name == "" {
			continue
		}
		if i := slices.IndexFunc(c.SSH, func(l SSHLogin) bool { return l.Scope == scope.kind && l.Name == scope.name }); i >= 0 {
			return reimage.Login{User: c.SSH[i].User, Secret: SSHSecretName(scope.kind, scope.name)}
		}
	}
	return reimage.Login{User: s.SSHUser}
}

func (l lab) StartJob(ctx context.Context, j reimage.Job) error {
	var disk string
	if cfg, err := l.a.Config(ctx); err == nil {
		disk = cfg.TargetDisk
	}
	_, err := l.a.jobs.Start(ctx, seatjob.Request{Key: j.Key, MAC: j.Seat.MAC, Action: seatjob.Action(j.Action), Image: j.Image, Disk: disk})
	return err
}

func (l lab) JobState(ctx context.Context, mac, key string) (reimage.JobState, error) {
	j, err := l.a.jobs.Get(ctx, mac, key)
	if err != nil {
		return reimage.JobState{}, err
	}
	return reimage.JobState{State: j.State, Reason: j.Reason, Boots: j.Boots, Bytes: j.Bytes, Updated: j.Updated}, nil
}

func (l lab) CancelJob(ctx context.Context, mac, key string) error {
	_, err := l.a.jobs.Cancel(ctx, mac, key, "ended by its run")
	return err
}

// powerAdapter is reimage.Power on internal/power with the seat's login.
type powerAdapter struct{ a *App }

func (p powerAdapter) target(ctx context.Context, s reimage.Seat, image string) (power.Target, error) {
	cred := power.Credential{User: s.Login.User, UseKey: true}
	if s.Login.Secret != "" {
		pw, err := p.a.secret(ctx, s.Login.Secret)
		if err != nil {
			return power.Target{}, err
		}
		cred = power.Credential{User: s.Login.User, Password: power.Secret(pw), UseKey: pw == ""}
	}
	if cred.User == "" {
		return power.Target{}, fmt.Errorf("seat %s has no SSH user (set one in the inventory or an SSH login for its room)", s.MAC)
	}
	if s.Addr == "" {
		return power.Target{}, fmt.Errorf("seat %s has no IP address in the inventory", s.MAC)
	}
	if image == "" {
		// Host keys are pinned per (image, seat); a seat never verified yet
		// is pinned under a placeholder until it runs a known image.
		image = "unverified"
	}
	return power.Target{Addr: s.Addr, Seat: s.MAC, Image: image, Cred: cred}, nil
}

func (p powerAdapter) Reboot(ctx context.Context, s reimage.Seat, running string) error {
	t, err := p.target(ctx, s, running)
	if err != nil {
		return err
	}
	return p.a.ssh.Reboot(ctx, t)
}

func (p powerAdapter) Shutdown(ctx context.Context, s reimage.Seat, running string) error {
	t, err := p.target(ctx, s, running)
	if err != nil {
		return err
	}
	return p.a.ssh.Shutdown(ctx, t)
}

func (p powerAdapter) Verify(ctx context.Context, s reimage.Seat, image string) error {
	t, err := p.target(ctx, s, image)
	if err != nil {
		return err
	}
	return p.a.ssh.Verify(ctx, t, image)
}

func (p powerAdapter) Wake(ctx context.Context, seats []reimage.Seat) error {
	cfg, err := p.a.Config(ctx)
	if err != nil {
		return err
	}
	if cfg.Netboot.Interface == "" {
		return errors.New("Wake-on-LAN needs the lab interface (netboot.interface)")
	}
	var macs []net.HardwareAddr
	for _, s := range seats {
		m, err := macaddr.Parse(s.MAC)
		if err != nil {
			return err
		}
		macs = append(macs, m)
	}
	gap := time.Duration(cfg.WoLGap)
	if gap == 0 {
		gap = 2 * time.Second
	}
	w := power.WoL{Interface: cfg.Netboot.Interface, Gap: gap, Raw: true, Log: p.a.log}
	return w.Wake(ctx, macs)
}

// reporter queues a finished run's report in the durable outbox.
type reporter struct{ a *App }

func (r reporter) RunFinished(ctx context.Context, rep notify.Report, runLog []byte) error {
	cfg, err := r.a.Config(ctx)
	if err != nil {
		return err
	}
	if cfg.Mail.Host == "" || len(cfg.Mail.To) == 0 {
		r.a.log.Info("run finished; no mail configured, report not sent", "run", rep.RunID)
		return nil
	}
	_, err = r.a.outbox.Enqueue(ctx, rep.Message(runLog))
	return err
}

// mailer builds the SMTP client from the config and the mail secret.
func (a *App) mailer(ctx context.Context) (notify.Mailer, error) {
	cfg, err := a.Config(ctx)
	if err != nil {
		return notify.Mailer{}, err
	}
	if cfg.Mail.Host == "" {
		return notify.Mailer{}, fmt.Errorf("%w: no mail server configured", errConfig)
	}
	pw, err := a.secret(ctx, SecretMail)
	if err != nil {
		return notify.Mailer{}, err
	}
	m := cfg.Mail
	return notify.Mailer{Host: m.Host, Port: m.Port, Username: m.Username, Password: pw, From: m.From, To: m.To,
		TLS: notify.TLSMode(m.TLS), CACertPEM: m.CACertPEM}, nil
}

// SendTestMail sends a short mail with the stored settings, now.
func (a *App) SendTestMail(ctx context.Context) error {
	m, err := a.mailer(ctx)
	if err != nil {
		return err
	}
	return m.Send(ctx, notify.Message{Subject: "pumi: test mail", Text: "This is a test mail from your pumi appliance.\n"})
}

// startRuns prepares pumi's SSH key, the host key store, the outbox and the
// runs engine (called by Open).
func (a *App) startRuns() error {
	key, err := power.LoadOrCreateKey(a.st.Dir(), a.log)
	if err != nil {
		return err
	}
	a.sshKey = key
	a.ssh = &power.Client{Key: key, HostKeys: power.NewFileHostKeyStore(filepath.Join(a.st.Dir(), "host_keys")), Log: a.log}
	a.outbox, err = notify.OpenOutbox(filepath.Join(a.st.Dir(), "outbox"), notify.SenderFunc(func(ctx context.Context, m notify.Message) error {
		ml, err := a.mailer(ctx)
		if err != nil {
			return err
		}
		return ml.Send(ctx, m)
	}), a.log)
	if err != nil {
		return err
	}
	a.engine = reimage.New(a.st, lab{a}, powerAdapter{a}, reporter{a}, a.opts.Runs, nil, a.log)
	a.jobs, err = seatjob.New(context.Background(), seatjob.Config{Store: a.st, Log: a.log, Addr: seatAddr, Env: a.jobEnv,
		LogDir: filepath.Join(a.st.Dir(), "logs"), Changed: a.engine.Poke})
	if err != nil {
		return err
	}
	return nil
}

// serveRuns runs the engine, the scheduler and the outbox until ctx ends.
func (a *App) serveRuns(ctx context.Context) {
	cfg, _ := a.Config(ctx)
	a.engine.Loc = cfg.location()
	go func() {
		if err := a.engine.Run(ctx); err != nil && ctx.Err() == nil {
			a.log.Error("runs engine stopped", "err", err)
		}
	}()
	go func() {
		if err := a.outbox.Run(ctx); err != nil && ctx.Err() == nil {
			a.log.Error("mail outbox stopped", "err", err)
		}
	}()
	// The scheduler is restarted on config changes, to pick up the zone.
	for {
		changed := a.changes.Wait()
		cfg, _ := a.Config(ctx)
		sctx, stop := context.WithCancel(ctx)
		sch := &schedule.Scheduler{Store: fireStore{a.st}, Clock: schedule.SystemClock{}, Loc: cfg.location(), Log: a.log}
		done := make(chan struct{})
		go func() {
			defer close(done)
			err := sch.Run(sctx, a.Schedules, a.engine.StartFire, func(ctx context.Context, m schedule.Missed) {
				a.st.Update(ctx, func(tx *store.Tx) error {
					return history.Add(tx, history.Event{Kind: "schedule-missed", Message: fmt.Sprintf("%+v", m)})
				})
			})
			if err != nil && sctx.Err() == nil {
				a.log.Error("scheduler stopped", "err", err)
			}
		}()
		select {
		case <-ctx.Done():
			stop()
			<-done
			return
		case <-changed:
		}
		stop()
		<-done
	}
}
