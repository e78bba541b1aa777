package web

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pumi-lab/pumi/internal/clonezilla"
	"github.com/pumi-lab/pumi/internal/inventory"
	"github.com/pumi-lab/pumi/internal/macaddr"
	"github.com/pumi-lab/pumi/internal/notify"
	"github.com/pumi-lab/pumi/internal/power"
	"github.com/pumi-lab/pumi/internal/schedule"
	"github.com/pumi-lab/pumi/internal/store"
)

// storeBackend is a Backend on the real packages (store, inventory,
// clonezilla, power's key, notify's mailer, schedule's validation) for the
// tests, until the appliance's own implementation is wired. Runs are kept in
// the store the way the runs engine will keep them; the tests move a seat
// along with advance, as the engine would.
type storeBackend struct {
	st  *store.Store
	inv *inventory.Inventory
	key *power.Key
	now func() time.Time
}

var (
	tbSettings  = store.NewBucket[Settings]("webtest-settings")
	tbSecrets   = store.NewBucket[string]("webtest-secrets")
	tbSeen      = store.NewBucket[SeenMAC]("webtest-seen")
	tbSchedules = store.NewBucket[schedule.Schedule]("webtest-schedules")
	tbRuns      = store.NewBucket[Run]("webtest-runs")
	tbLogs      = store.NewBucket[string]("webtest-logs")
)

func newStoreBackend(t testing.TB, dir string) (*storeBackend, *store.Store) {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	st, err := store.Open(context.Background(), dir, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	key, err := power.LoadOrCreateKey(dir, log)
	if err != nil {
		t.Fatal(err)
	}
	return &storeBackend{st: st, inv: inventory.New(st), key: key, now: time.Now}, st
}

func (b *storeBackend) Settings(ctx context.Context) (Settings, error) {
	var s Settings
	err := b.st.View(ctx, func(tx *store.Tx) error {
		v, ok, err := tbSettings.Get(tx, "settings")
		if err != nil {
			return err
		}
		if ok {
			s = v
		} else {
			s = Settings{Network: Network{Mode: "dhcp"}, Netboot: Netboot{Mode: "off"}}
		}
		mp, err := tbSecrets.Has(tx, SecretMail)
		s.Mail.PasswordSet = mp
		for i, l := range s.SSH {
			s.SSH[i].PasswordSet, _ = tbSecrets.Has(tx, SSHSecretName(l.Scope, l.Name))
		}
		return err
	})
	return s, err
}

func (b *storeBackend) SetSettings(ctx context.Context, s Settings) error {
	if s.Repository != "" {
		if fi, err := os.Stat(s.Repository); err != nil || !fi.IsDir() {
			return fmt.Errorf("%w: image repository %s is not a readable folder", ErrInvalid, s.Repository)
		}
	}
	return b.st.Update(ctx, func(tx *store.Tx) error { return tbSettings.Put(tx, "settings", s) })
}

func (b *storeBackend) SetSecret(ctx context.Context, name, value string) error {
	return b.st.Update(ctx, func(tx *store.Tx) error {
		if value == "" {
			return tbSecrets.Delete(tx, name)
		}
		return tbSecrets.Put(tx, name, value)
	})
}

func (b *storeBackend) SendTestMail(ctx context.Context) error {
	s, err := b.Settings(ctx)
	if err != nil {
		return err
	}
	var pw string
	b.st.View(ctx, func(tx *store.Tx) error { pw, _, err = tbSecrets.Get(tx, SecretMail); return err })
	m := notify.Mailer{Host: s.Mail.Host, Port: s.Mail.Port, Username: s.Mail.Username, Password: pw, From: s.Mail.From,
		To: s.Mail.To, TLS: notify.TLSMode(s.Mail.TLS)}
	if err := m.Validate(); err != nil {
		return err
	}
	return m.Send(ctx, notify.Message{Subject: "pumi test mail", Text: "The mail settings work."})
}

func (b *storeBackend) PublicKey(ctx context.Context) (string, error) { return b.key.PublicKey(), nil }

func (b *storeBackend) Seats(ctx context.Context) ([]inventory.Seat, error) { return b.inv.Seats(ctx) }
func (b *storeBackend) AddSeat(ctx context.Context, s inventory.Seat) (inventory.Seat, error) {
	return b.inv.AddSeat(ctx, s)
}
func (b *storeBackend) DeleteSeat(ctx context.Context, mac string) error {
	return b.inv.DeleteSeat(ctx, mac)
}
func (b *storeBackend) ImportSeats(ctx context.Context, r io.Reader, mode inventory.ImportMode) (inventory.ImportResult, error) {
	return b.inv.Import(ctx, r, mode)
}
func (b *storeBackend) Rooms(ctx context.Context) ([]inventory.Room, error) { return b.inv.Rooms(ctx) }
func (b *storeBackend) AddRoom(ctx context.Context, r inventory.Room) (inventory.Room, error) {
	return b.inv.AddRoom(ctx, r)
}
func (b *storeBackend) Discover(ctx context.Context, ifname string, prefix netip.Prefix) ([]inventory.Found, error) {
	return b.inv.Discover(ctx, ifname, prefix, inventory.SweepOptions{})
}

func (b *storeBackend) Seen(ctx context.Context) ([]SeenMAC, error) {
	var out []SeenMAC
	err := b.st.View(ctx, func(tx *store.Tx) error {
		var err error
		out, err = tbSeen.List(tx)
		return err
	})
	return out, err
}

// seen records a PXE client, as netboot's Admission.Seen does.
func (b *storeBackend) seen(ctx context.Context, mac string, ip netip.Addr) error {
	m, err := macaddr.Parse(mac)
	if err != nil {
		return err
	}
	return b.st.Update(ctx, func(tx *store.Tx) error {
		v, _, err := tbSeen.Get(tx, m.String())
		if err != nil {
			return err
		}
		v.MAC, v.IP, v.Arch, v.Last = m.String(), ip, "UEFI x64", b.now()
		v.Count++
		return tbSeen.Put(tx, m.String(), v)
	})
}

func (b *storeBackend) Images(ctx context.Context) (clonezilla.ScanResult, error) {
	s, err := b.Settings(ctx)
	if err != nil {
		return clonezilla.ScanResult{}, err
	}
	if s.Repository == "" {
		return clonezilla.ScanResult{}, fmt.Errorf("%w: no image repository is set", ErrInvalid)
	}
	return clonezilla.Scan(ctx, s.Repository, clonezilla.ScanOptions{})
}

func (b *storeBackend) ImportLive(ctx context.Context, zipRel string) (clonezilla.LiveFiles, error) {
	s, err := b.Settings(ctx)
	if err != nil {
		return clonezilla.LiveFiles{}, err
	}
	if s.Repository == "" || strings.Contains(zipRel, "..") {
		return clonezilla.LiveFiles{}, fmt.Errorf("%w: set the repository and name a zip inside it", ErrInvalid)
	}
	lf, err := clonezilla.ImportLiveZip(ctx, filepath.Join(s.Repository, filepath.Clean("/"+zipRel)),
		filepath.Join(b.st.Dir(), "live"), clonezilla.DefaultLiveLimits)
	if err != nil {
		return lf, err
	}
	s.Live = lf.Version
	return lf, b.SetSettings(ctx, s)
}

func (b *storeBackend) Schedules(ctx context.Context) ([]schedule.Schedule, error) {
	var out []schedule.Schedule
	err := b.st.View(ctx, func(tx *store.Tx) error {
		var err error
		out, err = tbSchedules.List(tx)
		return err
	})
	return out, err
}

func (b *storeBackend) PutSchedule(ctx context.Context, s schedule.Schedule) error {
	if err := s.Validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return b.st.Update(ctx, func(tx *store.Tx) error { return tbSchedules.Put(tx, s.ID, s) })
}

func (b *storeBackend) DeleteSchedule(ctx context.Context, id string) error {
	return b.st.Update(ctx, func(tx *store.Tx) error {
		ok, err := tbSchedules.Has(tx, id)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("schedule %q: %w", id, ErrNotFound)
		}
		return tbSchedules.Delete(tx, id)
	})
}

func (b *storeBackend) RunNow(ctx context.Context, id string) (string, error) {
	var runID string
	err := b.st.Update(ctx, func(tx *store.Tx) error {
		sc, ok, err := tbSchedules.Get(tx, id)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("schedule %q: %w", id, ErrNotFound)
		}
		now := b.now()
		seq, err := tbRuns.NextSeq(tx)
		if err != nil {
			return err
		}
		runID = fmt.Sprintf("r%06d", seq)
		run := Run{ID: runID, ScheduleID: sc.ID, Name: sc.Name, Action: string(sc.Action.Kind), Image: sc.Action.Image,
			State: "running", Started: now}
		seats, err := b.inv.Seats(ctx)
		if err != nil {
			return err
		}
		rooms := map[string]bool{}
		for _, r := range sc.Target.Rooms {
			rooms[r] = true
		}
		named := map[string]bool{}
		for _, s := range sc.Target.Seats {
			named[s] = true
		}
		for _, s := range seats {
			if rooms[s.Room] || named[s.MAC] || named[s.Hostname] {
				run.Seats = append(run.Seats, SeatProgress{MAC: s.MAC, Hostname: s.Hostname, State: "pending",
					LastEvent: "waiting to be powered on", Started: now, Updated: now})
			}
		}
		if len(run.Seats) == 0 {
			return fmt.Errorf("%w: the schedule's rooms and seats have no seat in the inventory", ErrInvalid)
		}
		return tbRuns.Put(tx, runID, run)
	})
	return runID, err
}

func (b *storeBackend) Runs(ctx context.Context) ([]Run, error) {
	var out []Run
	err := b.st.View(ctx, func(tx *store.Tx) error {
		var err error
		out, err = tbRuns.List(tx)
		return err
	})
	sort.Slice(out, func(i, j int) bool { return out[i].ID > out[j].ID })
	return out, err
}

func (b *storeBackend) Run(ctx context.Context, id string) (Run, error) {
	var run Run
	err := b.st.View(ctx, func(tx *store.Tx) error {
		v, ok, err := tbRuns.Get(tx, id)
		if err == nil && !ok {
			err = fmt.Errorf("run %q: %w", id, ErrNotFound)
		}
		run = v
		return err
	})
	return run, err
}

func (b *storeBackend) CancelRun(ctx context.Context, id string) error {
	return b.changeRun(ctx, id, func(run *Run) error {
		if !run.Open() {
			return nil
		}
		run.State, run.Ended = "cancelled", b.now()
		for i := range run.Seats {
			if s := run.Seats[i].State; s != "verified" && s != "failed" {
				run.Seats[i].State, run.Seats[i].LastEvent = "cancelled", "cancelled by the admin"
			}
		}
		return nil
	})
}

func (b *storeBackend) changeRun(ctx context.Context, id string, fn func(*Run) error) error {
	return b.st.Update(ctx, func(tx *store.Tx) error {
		run, ok, err := tbRuns.Get(tx, id)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("run %q: %w", id, ErrNotFound)
		}
		if err := fn(&run); err != nil {
			return err
		}
		return tbRuns.Put(tx, id, run)
	})
}

// advance moves one seat to state, as the runs engine does, and appends
// the event to the seat's log, in one transaction.
func (b *storeBackend) advance(ctx context.Context, runID, mac, state, event string, done, total int64) error {
	return b.st.Update(ctx, func(tx *store.Tx) error {
		run, ok, err := tbRuns.Get(tx, runID)
		if err != nil || !ok {
			return fmt.Errorf("run %s: %w", runID, errors.Join(err, ErrNotFound))
		}
		for i := range run.Seats {
			sp := &run.Seats[i]
			if sp.MAC != mac {
				continue
			}
			sp.State, sp.LastEvent, sp.Updated, sp.Bytes, sp.Total = state, event, b.now(), done, total
			sp.HasLog = true
			key := runID + "/" + mac
			old, _, err := tbLogs.Get(tx, key)
			if err != nil {
				return err
			}
			if err := tbLogs.Put(tx, key, old+fmt.Sprintf("%s %s: %s\n", b.now().Format(time.RFC3339), state, event)); err != nil {
				return err
			}
			return tbRuns.Put(tx, runID, run)
		}
		return fmt.Errorf("seat %s is not in run %s", mac, runID)
	})
}

func (b *storeBackend) SeatLog(ctx context.Context, runID, mac string) (io.ReadCloser, error) {
	var text string
	err := b.st.View(ctx, func(tx *store.Tx) error {
		v, ok, err := tbLogs.Get(tx, runID+"/"+mac)
		if err == nil && !ok {
			err = fmt.Errorf("log of %s in run %s: %w", mac, runID, ErrNotFound)
		}
		text = v
		return err
	})
	if err != nil {
		return nil, err
	}
	return io.NopCloser(strings.NewReader(text)), nil
}

var _ Backend = (*storeBackend)(nil)

func (b *storeBackend) Missed(ctx context.Context, since time.Time) ([]schedule.MissedRecord, error) {
	return schedule.Book{St: b.st}.Missed(ctx, since)
}
