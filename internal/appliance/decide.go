package appliance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pumi-lab/pumi/internal/netboot"
	"github.com/pumi-lab/pumi/internal/seatjob"
	"github.com/pumi-lab/pumi/internal/settings"
)

// jobEnv is what a Clonezilla boot needs from the settings (seatjob.Config.Env).
func (a *App) jobEnv(ctx context.Context) (seatjob.Env, error) {
	cfg, err := a.Config(ctx)
	if err != nil {
		return seatjob.Env{}, err
	}
	env := seatjob.Env{NFSPort: a.nfsPort, Live: cfg.LiveVersion, Repository: cfg.Repository, Console: cfg.Console}
	// Without a lab address the repository is still known (captures' NFS
	// folders); only a boot cannot be rendered.
	env.Base, env.Server, err = a.httpBase(cfg)
	return env, err
}

// admission lets only inventory MACs get a PXE answer and notes every PXE
// client in the "seen" list (netboot.Admission). Both run on the DHCP
// handler's path: a read, and a map update that internal/seen writes later.
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
	known, _ := ad.app.known(context.Background(), mac)
	ad.app.seen.Record(mac, known, info.Firmware, info.Arch, info.IP, time.Now().UTC())
}

func (a *App) known(ctx context.Context, mac net.HardwareAddr) (bool, error) {
	return a.inv.Known(ctx, mac.String())
}

// httpBase is the URL seats use to reach pumi, and pumi's IPv4 on the lab
// network (for NFS and ocs_server).
func (a *App) httpBase(cfg settings.Config) (string, netip.Addr, error) {
	nb, err := cfg.NetbootConfig(a.httpPort, nil)
	if err != nil {
		return "", netip.Addr{}, err
	}
	server := nb.ServerIP
	if !server.IsValid() && nb.Interface != "" {
		server, err = netboot.InterfaceIPv4(nb.Interface)
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
