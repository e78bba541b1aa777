package appliance

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/pumi-lab/pumi/internal/inventory"
	"github.com/pumi-lab/pumi/internal/macaddr"
	"github.com/pumi-lab/pumi/internal/notify"
	"github.com/pumi-lab/pumi/internal/power"
	"github.com/pumi-lab/pumi/internal/reimage"
	"github.com/pumi-lab/pumi/internal/roomcast"
	"github.com/pumi-lab/pumi/internal/schedule"
	"github.com/pumi-lab/pumi/internal/seatjob"
	"github.com/pumi-lab/pumi/internal/settings"
)

// Schedules lists the stored schedules.
func (a *App) Schedules(ctx context.Context) ([]schedule.Schedule, error) { return a.book.List(ctx) }

// PutSchedule creates or replaces a schedule (schedule.Book.Put).
func (a *App) PutSchedule(ctx context.Context, s schedule.Schedule) error {
	err := a.book.Put(ctx, s, time.Now())
	if err == nil {
		a.changes.Notify()
	}
	return err
}

// DeleteSchedule removes a schedule; runs it started are kept.
func (a *App) DeleteSchedule(ctx context.Context, id string) error {
	err := a.book.Delete(ctx, id)
	if err == nil {
		a.changes.Notify()
	}
	return err
}

// RunNow starts a schedule's action at once (a manual run).
func (a *App) RunNow(ctx context.Context, scheduleID string) (string, error) {
	s, err := a.book.Get(ctx, scheduleID)
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

// lab is reimage.Lab on the inventory and internal/seatjob.
type lab struct{ a *App }

// Seats resolves the target and each seat's SSH login once, for the run:
// the login of the run's image, else of the seat's room, else the
// inventory's user with pumi's key.
func (l lab) Seats(ctx context.Context, t schedule.Target, image string) ([]reimage.Seat, error) {
	seats, err := l.a.inv.Resolve(ctx, t.Rooms, t.Seats)
	if err != nil {
		return nil, err
	}
	cfg, err := l.a.Config(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]reimage.Seat, len(seats))
	for i, s := range seats {
		out[i] = reimage.Seat{ID: cmp.Or(s.Hostname, s.MAC), Room: s.Room, MAC: s.MAC, Login: login(cfg, s, image)}
		if s.IP.IsValid() {
			out[i].Addr = s.IP.String()
		}
	}
	return out, nil
}

// login is the seat's SSH login for a run of image (settings.Config.Login),
// else the inventory's user with pumi's key.
func login(cfg settings.Config, s inventory.Seat, image string) reimage.Login {
	if user, secret, ok := cfg.Login(s.Room, image); ok {
		return reimage.Login{User: user, Secret: secret}
	}
	return reimage.Login{User: s.SSHUser}
}

func (l lab) StartJob(ctx context.Context, j reimage.Job) error {
	var disk string
	if cfg, err := l.a.Config(ctx); err == nil {
		disk = cfg.TargetDisk
	}
	_, err := l.a.jobs.Start(ctx, seatjob.Request{Key: j.Key, MAC: j.Seat.MAC, Action: seatjob.Action(j.Action), Image: j.Image, Disk: disk, Group: j.Group})
	return err
}

func (l lab) JobState(ctx context.Context, mac, key string) (reimage.JobState, error) {
	j, err := l.a.jobs.Get(ctx, mac, key)
	if err != nil {
		return reimage.JobState{}, err
	}
	return reimage.JobState{State: j.State, Reason: j.Reason, Boots: j.Boots, Bytes: j.Bytes, Updated: j.Updated, Transport: j.Transport()}, nil
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
		pw, err := settings.Secret(ctx, p.a.st, s.Login.Secret)
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

// SendTestMail sends a short mail with the stored settings, now.
func (a *App) SendTestMail(ctx context.Context) error {
	m, err := settings.Mailer(ctx, a.st)
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
		ml, err := settings.Mailer(ctx, a.st)
		if err != nil {
			return err
		}
		return ml.Send(ctx, m)
	}), a.log)
	if err != nil {
		return err
	}
	a.engine = reimage.New(a.st, lab{a}, powerAdapter{a}, notify.RunReporter{Outbox: a.outbox, Log: a.log, Missed: a.book,
		MailOn: func(ctx context.Context) (bool, error) {
			cfg, err := a.Config(ctx)
			return cfg.Mail.Host != "" && len(cfg.Mail.To) > 0, err
		}, Locale: func(ctx context.Context) (string, *time.Location, error) {
			cfg, err := a.Config(ctx)
			return cfg.Mail.Language, cfg.Location(), err
		}}, a.opts.Runs, nil, a.log)
	a.rooms = &roomcast.Manager{Log: a.log, Settings: a.roomcastSettings}
	a.jobs, err = seatjob.New(context.Background(), seatjob.Config{Store: a.st, Log: a.log, Addr: seatjob.SeatAddr, Env: a.jobEnv,
		LogDir: filepath.Join(a.st.Dir(), "logs"), Multicast: a.rooms.Port,
		Changed: func() { a.engine.Poke(); a.rooms.Poke() }})
	a.rooms.Jobs = a.jobs
	return err
}

// roomcastSettings are the multicast sessions' settings (roomcast.Settings).
func (a *App) roomcastSettings(ctx context.Context) (roomcast.Settings, error) {
	env, err := a.jobEnv(ctx)
	if err != nil {
		return roomcast.Settings{}, err
	}
	cfg, err := a.Config(ctx)
	m := cfg.Multicast
	return roomcast.Settings{Interface: cfg.Netboot.Interface, LocalAddr: env.Server, Repository: cfg.Repository,
		PortBase: m.Ports(), MaxWait: m.Wait(), MaxBitrate: int64(m.MaxBitrateMbit) * 125_000}, err
}

// serveRuns runs the engine, the scheduler and the outbox until ctx ends.
func (a *App) serveRuns(ctx context.Context) {
	cfg, _ := a.Config(ctx)
	a.engine.Loc = cfg.Location()
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
		sch := &schedule.Scheduler{Store: a.book, Clock: schedule.SystemClock{}, Loc: cfg.Location(), Log: a.log}
		done := make(chan struct{})
		go func() {
			defer close(done)
			err := sch.Run(sctx, a.Schedules, a.engine.StartFire, func(ctx context.Context, m schedule.Missed) {
				if err := a.book.RecordMissed(ctx, m, time.Now()); err != nil {
					a.log.Error("recording missed schedule fires", "schedule", m.ScheduleID, "err", err)
				}
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
