package appliance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"time"

	"github.com/pumi-lab/pumi/internal/clonezilla"
	"github.com/pumi-lab/pumi/internal/hostnet"
	"github.com/pumi-lab/pumi/internal/inventory"
	"github.com/pumi-lab/pumi/internal/reimage"
	"github.com/pumi-lab/pumi/internal/schedule"
	"github.com/pumi-lab/pumi/internal/settings"
	"github.com/pumi-lab/pumi/internal/web"
)

// webBackend is web.Backend on the appliance: the pages see exactly what the
// JSON API sees, and every change goes through the same validated methods.
type webBackend struct{ a *App }

var _ web.Backend = webBackend{}

// invalid maps the appliance's bad-input errors to web.ErrInvalid so the
// page shows them beside the form.
func invalid(err error) error {
	var he *httpError
	if err != nil && (errors.Is(err, settings.ErrInvalid) || errors.Is(err, schedule.ErrInvalid) || errors.As(err, &he) && he.code < 500) {
		return fmt.Errorf("%w: %v", web.ErrInvalid, err)
	}
	return err
}

func (b webBackend) Settings(ctx context.Context) (web.Settings, error) {
	cfg, err := b.a.Config(ctx)
	if err != nil {
		return web.Settings{}, err
	}
	mailSet, err := settings.HasSecret(ctx, b.a.st, settings.SecretMail)
	if err != nil {
		return web.Settings{}, err
	}
	s := web.Settings{
		Network: web.Network{Mode: cfg.Network.Mode, Address: cfg.Network.Address, Gateway: cfg.Network.Gateway, DNS: cfg.Network.DNS},
		Netboot: web.Netboot{Mode: cfg.Netboot.Mode, Interface: cfg.Netboot.Interface, Subnet: cfg.Netboot.Subnet,
			RangeStart: cfg.Netboot.RangeStart, RangeEnd: cfg.Netboot.RangeEnd, Router: cfg.Netboot.Router},
		Repository: cfg.Repository,
		Live:       cfg.LiveVersion,
		Mail: web.Mail{Host: cfg.Mail.Host, Port: cfg.Mail.Port, Username: cfg.Mail.Username, From: cfg.Mail.From,
			To: cfg.Mail.To, TLS: cfg.Mail.TLS, Language: cfg.Mail.Language, PasswordSet: mailSet},
		TimeZone: cfg.TimeZone,
	}
	if s.Network.Mode == "" {
		s.Network.Mode = "dhcp"
	}
	for _, l := range cfg.SSH {
		set, err := settings.HasSecret(ctx, b.a.st, settings.SSHSecretName(l.Scope, l.Name))
		if err != nil {
			return web.Settings{}, err
		}
		s.SSH = append(s.SSH, web.SSHLogin{Scope: l.Scope, Name: l.Name, User: l.User, PasswordSet: set})
	}
	return s, nil
}

func (b webBackend) SetSettings(ctx context.Context, s web.Settings) error {
	cfg, err := b.a.Config(ctx)
	if err != nil {
		return err
	}
	cfg.Network = hostnet.NetworkSettings{Mode: s.Network.Mode, Address: s.Network.Address, Gateway: s.Network.Gateway, DNS: s.Network.DNS}
	cfg.Netboot.Mode, cfg.Netboot.Interface, cfg.Netboot.Subnet = s.Netboot.Mode, s.Netboot.Interface, s.Netboot.Subnet
	cfg.Netboot.RangeStart, cfg.Netboot.RangeEnd, cfg.Netboot.Router = s.Netboot.RangeStart, s.Netboot.RangeEnd, s.Netboot.Router
	cfg.Repository = s.Repository
	cfg.LiveVersion = s.Live
	cfg.Mail = settings.MailSettings{Host: s.Mail.Host, Port: s.Mail.Port, Username: s.Mail.Username, From: s.Mail.From,
		To: s.Mail.To, TLS: s.Mail.TLS, Language: s.Mail.Language, CACertPEM: cfg.Mail.CACertPEM}
	cfg.SSH = nil
	for _, l := range s.SSH {
		cfg.SSH = append(cfg.SSH, settings.SSHLogin{Scope: l.Scope, Name: l.Name, User: l.User})
	}
	cfg.TimeZone = s.TimeZone
	return invalid(b.a.SetConfig(ctx, cfg))
}

func (b webBackend) SetSecret(ctx context.Context, name, value string) error {
	return invalid(settings.SetSecret(ctx, b.a.st, name, value))
}

func (b webBackend) SendTestMail(ctx context.Context) error { return invalid(b.a.SendTestMail(ctx)) }

func (b webBackend) PublicKey(ctx context.Context) (string, error) {
	return b.a.sshKey.PublicKey(), nil
}

func (b webBackend) Seats(ctx context.Context) ([]inventory.Seat, error) { return b.a.inv.Seats(ctx) }

func (b webBackend) AddSeat(ctx context.Context, s inventory.Seat) (inventory.Seat, error) {
	return b.a.inv.AddSeat(ctx, s)
}

func (b webBackend) DeleteSeat(ctx context.Context, mac string) error {
	return b.a.inv.DeleteSeat(ctx, mac)
}

func (b webBackend) ImportSeats(ctx context.Context, r io.Reader, mode inventory.ImportMode) (inventory.ImportResult, error) {
	return b.a.inv.Import(ctx, r, mode)
}

func (b webBackend) Rooms(ctx context.Context) ([]inventory.Room, error) { return b.a.inv.Rooms(ctx) }

func (b webBackend) AddRoom(ctx context.Context, r inventory.Room) (inventory.Room, error) {
	return b.a.inv.AddRoom(ctx, r)
}

func (b webBackend) Discover(ctx context.Context, ifname string, prefix netip.Prefix) ([]inventory.Found, error) {
	return b.a.inv.Discover(ctx, ifname, prefix, inventory.SweepOptions{})
}

func (b webBackend) Seen(ctx context.Context) ([]web.SeenMAC, error) {
	seen, err := b.a.seen.List(ctx)
	var out []web.SeenMAC
	for _, s := range seen {
		ip, _ := netip.ParseAddr(s.IP)
		out = append(out, web.SeenMAC{MAC: s.MAC, IP: ip, Arch: s.Firmware, Last: s.Last, Count: s.Count, Known: s.Known})
	}
	return out, err
}

func (b webBackend) Images(ctx context.Context) (clonezilla.ScanResult, error) {
	cfg, err := b.a.Config(ctx)
	if err != nil {
		return clonezilla.ScanResult{}, err
	}
	if cfg.Repository == "" {
		return clonezilla.ScanResult{}, fmt.Errorf("%w: no image repository configured yet", web.ErrInvalid)
	}
	return clonezilla.Scan(ctx, cfg.Repository, clonezilla.ScanOptions{})
}

func (b webBackend) ImportLive(ctx context.Context, zipRel string) (clonezilla.LiveFiles, error) {
	lf, err := b.a.ImportLive(ctx, zipRel)
	if errors.Is(err, clonezilla.ErrBadLiveZip) {
		err = fmt.Errorf("%w: %v", web.ErrInvalid, err)
	}
	return lf, invalid(err)
}

func (b webBackend) Schedules(ctx context.Context) ([]schedule.Schedule, error) {
	return b.a.Schedules(ctx)
}

func (b webBackend) PutSchedule(ctx context.Context, s schedule.Schedule) error {
	return invalid(b.a.PutSchedule(ctx, s))
}

func (b webBackend) Missed(ctx context.Context, since time.Time) ([]schedule.MissedRecord, error) {
	return b.a.book.Missed(ctx, since)
}

func (b webBackend) DeleteSchedule(ctx context.Context, id string) error {
	err := b.a.DeleteSchedule(ctx, id)
	if errors.Is(err, inventory.ErrNotFound) || errors.Is(err, schedule.ErrNotFound) {
		err = fmt.Errorf("%w: %v", web.ErrNotFound, err)
	}
	return err
}

func (b webBackend) RunNow(ctx context.Context, id string) (string, error) {
	runID, err := b.a.RunNow(ctx, id)
	if errors.Is(err, inventory.ErrNotFound) || errors.Is(err, schedule.ErrNotFound) {
		err = fmt.Errorf("%w: %v", web.ErrNotFound, err)
	}
	return runID, invalid(err)
}

func (b webBackend) Runs(ctx context.Context) ([]web.Run, error) {
	rs, err := b.a.engine.Runs(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]web.Run, 0, len(rs))
	for _, r := range rs {
		out = append(out, b.webRun(ctx, r))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Started.After(out[j].Started) })
	return out, nil
}

func (b webBackend) Run(ctx context.Context, id string) (web.Run, error) {
	r, ok, err := b.a.engine.Get(ctx, id)
	if err != nil {
		return web.Run{}, err
	}
	if !ok {
		return web.Run{}, fmt.Errorf("run %s: %w", id, web.ErrNotFound)
	}
	return b.webRun(ctx, r), nil
}

func (b webBackend) webRun(ctx context.Context, r reimage.Run) web.Run {
	state := string(r.State)
	if r.Cancelled != "" && r.State != reimage.RunOpen {
		state = "cancelled"
	}
	name := r.ScheduleName
	if name == "" {
		name = r.ID
	}
	wr := web.Run{ID: r.ID, ScheduleID: r.ScheduleID, Name: name, Action: string(r.Action), Image: r.Image,
		State: state, Started: r.Created, Ended: r.Finished}
	hostnames := map[string]string{}
	if seats, err := b.a.inv.Seats(ctx); err == nil {
		for _, s := range seats {
			hostnames[s.MAC] = s.Hostname
		}
	}
	for _, s := range r.Seats {
		sp := web.SeatProgress{MAC: s.Seat.MAC, Hostname: hostnames[s.Seat.MAC], State: string(s.State), Reason: s.Reason,
			LastEvent: s.LastEvent, Started: s.Started, Updated: s.Since, Finished: s.Finished, Bytes: s.Bytes, HasLog: true}
		if !s.Started.IsZero() && s.Bytes > 0 {
			end := s.Finished
			if end.IsZero() {
				end = time.Now()
			}
			if d := end.Sub(s.Started).Seconds(); d > 0 {
				sp.Rate = float64(s.Bytes) / d
			}
		}
		wr.Seats = append(wr.Seats, sp)
	}
	return wr
}

func (b webBackend) CancelRun(ctx context.Context, id string) error {
	if _, ok, err := b.a.engine.Get(ctx, id); err != nil || !ok {
		if err == nil {
			err = fmt.Errorf("run %s: %w", id, web.ErrNotFound)
		}
		return err
	}
	return b.a.engine.Cancel(ctx, id, "cancelled by the admin")
}

// SeatLog is the seat's part of the run log followed by the Clonezilla logs
// it uploaded during the run.
func (b webBackend) SeatLog(ctx context.Context, runID, mac string) (io.ReadCloser, error) {
	var buf bytes.Buffer
	if err := b.a.engine.SeatLog(ctx, runID, mac, &buf); errors.Is(err, reimage.ErrNoRun) {
		return nil, fmt.Errorf("%w: %v", web.ErrNotFound, err)
	} else if err != nil {
		return nil, err
	}
	if err := b.a.jobs.WriteLogs(&buf, runID, mac); err != nil {
		return nil, err
	}
	return io.NopCloser(&buf), nil
}
