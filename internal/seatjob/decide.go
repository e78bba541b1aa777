package seatjob

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path"
	"time"

	"github.com/pumi-lab/pumi/internal/boot"
	"github.com/pumi-lab/pumi/internal/clonezilla"
	"github.com/pumi-lab/pumi/internal/history"
	"github.com/pumi-lab/pumi/internal/store"
)

// NFS export paths. The repository is read-only for restores; a capture
// writes through the read-write export.
const (
	ExportImages  = "/images"
	ExportCapture = "/capture"
)

// Decide implements boot.Decider. Unknown MAC → local disk; no active job →
// local disk; an active job asked for from the seat's trusted address →
// Clonezilla, with a new token for this boot (the old one dies), recorded
// before the answer leaves. Asked for from any other address, a seat with a
// job gets `exit 1` and nothing changes: the boot script is where the token
// is handed out.
func (j *Jobs) Decide(ctx context.Context, m boot.Machine) (boot.Decision, error) {
	mac := m.MAC.String()
	var (
		job     Job
		refusal string
	)
	err := j.cfg.Store.View(ctx, func(tx *store.Tx) error {
		addr, err := j.cfg.Addr(tx, mac)
		switch {
		case errors.Is(err, ErrUnknownSeat):
			refusal = "unknown MAC: not in pumi's inventory, never imaged"
			return nil
		case errors.Is(err, ErrNoAddress):
			addr = netip.Addr{}
		case err != nil:
			return err
		}
		v, ok, err := bucket.Get(tx, mac)
		if err != nil {
			return err
		}
		switch {
		case !ok:
			refusal = "nothing to do"
		case !v.State.Active() || v.Ending != "":
			refusal = fmt.Sprintf("nothing to do (last %s of %s: %s)", v.Action, v.Image, v.State)
		case !addr.IsValid():
			refusal = "job refused: " + ErrNoAddress.Error()
		case m.Addr.Unmap() != addr:
			refusal = "nothing to do here"
			j.refused("boot script for a seat with a job asked from another address; refused",
				"mac", mac, "from", m.Addr, "seat_addr", addr)
		default:
			job = v
		}
		return nil
	})
	if err != nil {
		return boot.Decision{}, err
	}
	if refusal != "" {
		return boot.Decision{Action: boot.Exit, Reason: refusal}, nil
	}
	tok, err := newToken()
	if err != nil {
		return boot.Decision{}, err
	}
	// A multicast job's first boot joins the room's stream; any later boot
	// (power cut, reset) restores alone, by unicast: the stream has moved on.
	mcast, demote := 0, ""
	var wait time.Duration
	if job.Group != "" && job.Demoted == "" {
		switch {
		case job.Boots > 0:
			demote = "booted again during the multicast session"
		case j.cfg.Multicast == nil:
			demote = "multicast is not available"
		default:
			port, w, why, ok := j.cfg.Multicast(job.Group)
			if ok {
				mcast, wait = port, w
			} else {
				demote = why
			}
		}
	}
	dec, derr := j.clonezilla(ctx, job, tok, mcast, wait)
	changed := false
	err = j.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		changed = false
		v, ok, err := bucket.Get(tx, mac)
		if err != nil {
			return err
		}
		if !ok || v.Key != job.Key || v.Boots != job.Boots || !v.State.Active() || v.Ending != "" {
			dec = boot.Decision{Action: boot.Exit, Reason: "job changed meanwhile; try again"}
			return nil
		}
		if derr != nil {
			// A seat must never hang on a broken job: it boots its disk and
			// the reason is recorded for the run report.
			dec = boot.Decision{Action: boot.Exit, Reason: "cannot start Clonezilla: " + derr.Error()}
			return history.Add(tx, history.Event{MAC: mac, RunID: v.Key, Kind: "boot-refused", Message: dec.Reason})
		}
		now := j.cfg.Now().UTC()
		v.Boots++
		v.State, v.Token, v.OCSLine, v.Updated = Booted, tok, "", now
		v.McastBoot, v.McastPort = mcast > 0, mcast
		if demote != "" {
			v.Demoted = demote
			if err := history.Add(tx, history.Event{MAC: mac, RunID: v.Key, Kind: "multicast", Message: "restore by unicast: " + demote}); err != nil {
				return err
			}
		}
		changed = true
		if err := bucket.Put(tx, mac, v); err != nil {
			return err
		}
		return history.Add(tx, history.Event{MAC: mac, RunID: v.Key, Kind: "netboot",
			Message: fmt.Sprintf("network boot %d: Clonezilla %s %s", v.Boots, v.Action, v.Image)})
	})
	if err != nil {
		return boot.Decision{}, err
	}
	if changed {
		j.changed(ctx)
	}
	return dec, nil
}

// clonezilla renders the job's Clonezilla boot with this boot's token; with
// mcastPort > 0 it is Clonezilla's multicast client on that port base.
func (j *Jobs) clonezilla(ctx context.Context, job Job, token string, mcastPort int, wait time.Duration) (boot.Decision, error) {
	env, err := j.cfg.Env(ctx)
	if err != nil {
		return boot.Decision{}, err
	}
	if env.Live == "" {
		return boot.Decision{}, errors.New("no Clonezilla live files imported yet")
	}
	if env.Repository == "" {
		return boot.Decision{}, errors.New("no image repository configured")
	}
	mac, err := net.ParseMAC(job.MAC)
	if err != nil {
		return boot.Decision{}, err
	}
	liveURL := env.Base + "/live/" + env.Live + "/"
	common := clonezilla.Common{
		Server:      env.Server,
		SquashfsURL: liveURL + clonezilla.LiveSquashfs,
		ReportBase:  env.Base,
		NFSPort:     env.NFSPort,
		ImagePath:   job.Image,
		Disk:        job.Disk,
		MAC:         mac,
		Token:       token,
		Console:     env.Console,
	}
	var args string
	switch job.Action {
	case Restore:
		img, err := clonezilla.Inspect(ctx, env.Repository, job.Image)
		if err != nil {
			return boot.Decision{}, fmt.Errorf("image %s: %w", job.Image, err)
		}
		if !img.Valid {
			return boot.Decision{}, fmt.Errorf("image %s cannot be restored: %v", job.Image, img.Problems)
		}
		common.NFSExport = ExportImages
		if mcastPort > 0 {
			args, err = clonezilla.MulticastRestoreArgs(clonezilla.MulticastParams{Common: common, Port: mcastPort,
				MaxWait: int(wait.Seconds())})
		} else {
			args, err = clonezilla.RestoreArgs(clonezilla.RestoreParams{Common: common})
		}
		if err != nil {
			return boot.Decision{}, err
		}
	case Capture:
		common.NFSExport = ExportCapture
		args, err = clonezilla.CaptureArgs(clonezilla.CaptureParams{Common: common})
		if err != nil {
			return boot.Decision{}, err
		}
	default:
		return boot.Decision{}, fmt.Errorf("unknown action %q", job.Action)
	}
	return boot.Decision{
		Action:  boot.Linux,
		Kernel:  liveURL + clonezilla.LiveKernel,
		Initrds: []string{liveURL + clonezilla.LiveInitrd},
		Cmdline: args,
		Reason:  fmt.Sprintf("%s %s (job %s)", job.Action, path.Base(job.Image), job.Key),
	}, nil
}
