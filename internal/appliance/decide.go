package appliance

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
	"github.com/pumi-lab/pumi/internal/inventory"
	"github.com/pumi-lab/pumi/internal/netboot"
	"github.com/pumi-lab/pumi/internal/store"
)

// NFS export paths. The repository is read-only for restores; capture runs
// write below the same root through the read-write export.
const (
	ExportImages  = "/images"
	ExportCapture = "/capture"
)

// decider answers every network boot from the state file (boot.Decider):
// unknown MAC → local disk; known with nothing to do → local disk; an active
// restore or capture assignment → Clonezilla. It records the boot before it
// answers, so the history shows how often a seat started its restore.
type decider struct {
	app *App
}

func (d decider) Decide(ctx context.Context, mac net.HardwareAddr) (boot.Decision, error) {
	a := d.app
	cfg, err := a.Config(ctx)
	if err != nil {
		return boot.Decision{}, err
	}
	var dec boot.Decision
	err = a.st.Update(ctx, func(tx *store.Tx) error {
		seat, err := inventory.SeatByMACTx(tx, mac.String())
		if errors.Is(err, inventory.ErrNotFound) {
			dec = boot.Decision{Action: boot.Exit, Reason: "unknown MAC: not in pumi's inventory, never imaged"}
			return nil
		}
		if err != nil {
			return err
		}
		asg, ok, err := assignmentBucket.Get(tx, seat.MAC)
		if err != nil {
			return err
		}
		if !ok || !asg.Active() {
			reason := "nothing to do"
			if ok {
				reason = fmt.Sprintf("nothing to do (last %s of %s: %s)", asg.Action, asg.Image, asg.State)
			}
			dec = boot.Decision{Action: boot.Exit, Reason: reason}
			return nil
		}
		dec, err = d.clonezillaDecision(ctx, cfg, seat, asg)
		if err != nil {
			// A seat must never hang on a broken job: it boots its disk and
			// the reason is recorded for the run report.
			dec = boot.Decision{Action: boot.Exit, Reason: "cannot start Clonezilla: " + err.Error()}
			return addEvent(tx, Event{MAC: seat.MAC, RunID: asg.RunID, Kind: "boot-refused", Message: dec.Reason})
		}
		asg.Boots++
		if asg.State == StatePending {
			asg.State = StateBooted
		}
		asg.OCSLine = ""
		asg.Updated = time.Now().UTC()
		if err := assignmentBucket.Put(tx, seat.MAC, asg); err != nil {
			return err
		}
		return addEvent(tx, Event{MAC: seat.MAC, RunID: asg.RunID, Kind: "netboot",
			Message: fmt.Sprintf("network boot %d: Clonezilla %s %s", asg.Boots, asg.Action, asg.Image)})
	})
	if err != nil {
		return boot.Decision{}, err
	}
	return dec, nil
}

func (d decider) clonezillaDecision(ctx context.Context, cfg Config, seat inventory.Seat, asg Assignment) (boot.Decision, error) {
	a := d.app
	if cfg.LiveVersion == "" {
		return boot.Decision{}, errors.New("no Clonezilla live files imported yet")
	}
	if cfg.Repository == "" {
		return boot.Decision{}, errors.New("no image repository configured")
	}
	base, server, err := a.httpBase(cfg)
	if err != nil {
		return boot.Decision{}, err
	}
	mac, _ := net.ParseMAC(seat.MAC)
	liveURL := base + "/live/" + cfg.LiveVersion + "/"
	common := clonezilla.Common{
		Server:      server,
		SquashfsURL: liveURL + clonezilla.LiveSquashfs,
		ReportBase:  base,
		NFSPort:     a.nfsPort,
		ImagePath:   asg.Image,
		Disk:        asg.Disk,
		MAC:         mac,
		Token:       asg.Token,
		Console:     cfg.Console,
	}
	var args string
	switch asg.Action {
	case ActionRestore:
		img, err := clonezilla.Inspect(ctx, cfg.Repository, asg.Image)
		if err != nil {
			return boot.Decision{}, fmt.Errorf("image %s: %w", asg.Image, err)
		}
		if !img.Valid {
			return boot.Decision{}, fmt.Errorf("image %s cannot be restored: %v", asg.Image, img.Problems)
		}
		common.NFSExport = ExportImages
		args, err = clonezilla.RestoreArgs(clonezilla.RestoreParams{Common: common})
		if err != nil {
			return boot.Decision{}, err
		}
	case ActionCapture:
		common.NFSExport = ExportCapture
		args, err = clonezilla.CaptureArgs(clonezilla.CaptureParams{Common: common})
		if err != nil {
			return boot.Decision{}, err
		}
	default:
		return boot.Decision{}, fmt.Errorf("unknown action %q", asg.Action)
	}
	return boot.Decision{
		Action:  boot.Linux,
		Kernel:  liveURL + clonezilla.LiveKernel,
		Initrds: []string{liveURL + clonezilla.LiveInitrd},
		Cmdline: args,
		Reason:  fmt.Sprintf("%s %s (run %s)", asg.Action, path.Base(asg.Image), asg.RunID),
	}, nil
}

// admission lets only inventory MACs get a PXE answer and records every PXE
// client in the "seen" list (netboot.Admission).
type admission struct {
	app *App
}

func (ad admission) Allow(mac net.HardwareAddr) bool {
	known, err := ad.app.known(context.Background(), mac)
	if err != nil {
		ad.app.log.Error("admission check failed; not answering", "mac", mac.String(), "err", err)
		return false
	}
	return known
}

func (ad admission) Seen(mac net.HardwareAddr, info netboot.ClientInfo) {
	ctx := context.Background()
	known, _ := ad.app.known(ctx, mac)
	if !known {
		ad.app.log.Info("seen: unknown MAC network-booting; not answered", "mac", mac.String(), "firmware", info.Firmware, "arch", info.Arch)
	}
	err := ad.app.st.Update(ctx, func(tx *store.Tx) error {
		s, ok, err := seenBucket.Get(tx, mac.String())
		if err != nil {
			return err
		}
		now := time.Now().UTC()
		if !ok {
			s = Seen{MAC: mac.String(), First: now}
		}
		s.Known, s.Firmware, s.Arch, s.Last = known, info.Firmware, info.Arch, now
		if info.IP.IsValid() {
			s.IP = info.IP.String()
		}
		s.Count++
		return seenBucket.Put(tx, mac.String(), s)
	})
	if err != nil {
		ad.app.log.Error("recording seen MAC", "mac", mac.String(), "err", err)
	}
}

func (a *App) known(ctx context.Context, mac net.HardwareAddr) (bool, error) {
	var known bool
	err := a.st.View(ctx, func(tx *store.Tx) error {
		_, err := inventory.SeatByMACTx(tx, mac.String())
		if errors.Is(err, inventory.ErrNotFound) {
			return nil
		}
		known = err == nil
		return err
	})
	return known, err
}

// httpBase is the URL seats use to reach pumi, and pumi's IPv4 on the lab
// network (for NFS and ocs_server).
func (a *App) httpBase(cfg Config) (string, netip.Addr, error) {
	nb, err := cfg.netbootConfig(a.httpPort, nil)
	if err != nil {
		return "", netip.Addr{}, err
	}
	server := nb.ServerIP
	if !server.IsValid() && nb.Interface != "" {
		server, err = interfaceIPv4(nb.Interface)
		if err != nil {
			return "", netip.Addr{}, err
		}
	}
	if !server.IsValid() {
		return "", netip.Addr{}, errors.New("pumi's lab address is unknown: set netboot.server_ip or netboot.interface")
	}
	base := nb.HTTPBase
	if base == "" {
		base = fmt.Sprintf("http://%s:%d", server, a.httpPort)
	}
	return base, server, nil
}

func interfaceIPv4(name string) (netip.Addr, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("lab interface %q: %w", name, err)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("lab interface %q: %w", name, err)
	}
	for _, ad := range addrs {
		if ipn, ok := ad.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(ipn.IP.To4()); ok && ipn.IP.To4() != nil {
				return ip, nil
			}
		}
	}
	return netip.Addr{}, fmt.Errorf("lab interface %q has no IPv4 address", name)
}
