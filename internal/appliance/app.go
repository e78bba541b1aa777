// Package appliance wires pumi's packages into the appliance process: the
// state file, the inventory, boot decisions per MAC, the HTTP server (boot
// scripts, Clonezilla live files, JSON API, Clonezilla's reports), the NFS
// export of the image repository, Clonezilla's ocs_server listener, and the
// DHCP/TFTP netboot server, which runs only once an admin has enabled it.
package appliance

import (
	"cmp"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/pumi-lab/pumi/assets"
	"github.com/pumi-lab/pumi/internal/boot"
	"github.com/pumi-lab/pumi/internal/change"
	"github.com/pumi-lab/pumi/internal/clonezilla"
	"github.com/pumi-lab/pumi/internal/history"
	"github.com/pumi-lab/pumi/internal/hostnet"
	"github.com/pumi-lab/pumi/internal/inventory"
	"github.com/pumi-lab/pumi/internal/netboot"
	"github.com/pumi-lab/pumi/internal/nfsexport"
	"github.com/pumi-lab/pumi/internal/notify"
	"github.com/pumi-lab/pumi/internal/power"
	"github.com/pumi-lab/pumi/internal/reimage"
	"github.com/pumi-lab/pumi/internal/roomcast"
	"github.com/pumi-lab/pumi/internal/schedule"
	"github.com/pumi-lab/pumi/internal/seatjob"
	"github.com/pumi-lab/pumi/internal/seen"
	"github.com/pumi-lab/pumi/internal/settings"
	"github.com/pumi-lab/pumi/internal/store"
	"github.com/pumi-lab/pumi/internal/web"
)

// Options are the appliance's command-line settings; everything else is in
// the state file and set through the API.
type Options struct {
	StateDir  string // state directory (gokrazy: /perm/pumi)
	Listen    string // HTTP: web page, API, boot scripts, Clonezilla files
	NFSListen string // NFSv3 + MOUNT on one TCP port
	OCSListen string // Clonezilla ocs_server status lines (TCP 6461)
	// PortmapListen, if set (":111" on the appliance), answers rpcbind v2
	// GETPORT on TCP and UDP so plain `mount server:/images` and
	// Clonezilla's ocs_repository="nfs://..." find the NFS port.
	PortmapListen string
	// APITokenFile overrides <state>/api-token: a file (0600) holding the
	// admin API token, e.g. provisioned by a deployment tool. It must exist.
	APITokenFile string
	Log          *slog.Logger
	// Runs tunes the runs engine's timeouts and limits (zero: defaults).
	Runs reimage.Config
	// ManageNetwork, on gokrazy only, makes pumi run gokrazy's dhcp for the
	// appliance's own address as the setup page sets it: "" (off), "dhcp" or
	// the image's default network object (see ParseManageNetwork).
	ManageNetwork string
}

// App is a running appliance.
type App struct {
	opts     Options
	log      *slog.Logger
	st       *store.Store
	inv      *inventory.Inventory
	apiToken string

	httpPort int // the port seats reach the HTTP server on
	nfsPort  int

	changes change.Broadcast // config changes, for the supervisors

	webAuth web.AuthStore // admin password, sessions, API tokens of the web page
	sshKey  *power.Key
	ssh     *power.Client
	outbox  *notify.Outbox
	engine  *reimage.Engine
	jobs    *seatjob.Jobs
	rooms   *roomcast.Manager
	book    schedule.Book
	seen    *seen.Recorder

	ready    chan struct{} // closed once Serve has bound its listeners
	httpAddr net.Addr
	ocsAddr  net.Addr

	mu      sync.Mutex
	netStat componentStatus
	nfsStat componentStatus
	netboot *netboot.Supervisor
}

type componentStatus struct {
	Running bool   `json:"running"`
	Detail  string `json:"detail,omitempty"`
	Error   string `json:"error,omitempty"`
}

// Open opens the state directory and prepares the appliance. A missing,
// read-only or damaged state directory is an error that says what to do.
func Open(ctx context.Context, opts Options) (*App, error) {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	st, err := store.Open(ctx, opts.StateDir, opts.Log)
	if err != nil {
		return nil, err
	}
	a := &App{opts: opts, log: opts.Log, st: st, inv: inventory.New(st), seen: seen.New(st, opts.Log), book: schedule.Book{St: st}, ready: make(chan struct{})}
	if a.apiToken, err = settings.LoadOrCreateToken(a.APITokenPath(), opts.APITokenFile == ""); err != nil {
		st.Close()
		return nil, err
	}
	for _, dir := range []string{"live", "logs"} {
		if err := os.MkdirAll(filepath.Join(st.Dir(), dir), 0o700); err != nil {
			st.Close()
			return nil, fmt.Errorf("state directory %s: %w", st.Dir(), err)
		}
	}
	a.webAuth = web.NewStoreAuth(st)
	if err := a.startRuns(); err != nil {
		st.Close()
		return nil, err
	}
	a.netboot = &netboot.Supervisor{Want: a.netbootWanted, Changed: a.changes.Wait,
		Report:    a.reporter(&a.netStat, ""),
		Admission: admission{a}, LeaseStore: seatjob.Leases{Store: a.st, Jobs: a.jobs}, Files: assets.IPXE(), Log: a.log}
	return a, nil
}

// Ready is closed once Serve listens; then Addrs is valid.
func (a *App) Ready() <-chan struct{} { return a.ready }

// Addrs are the bound HTTP, NFS and ocs_server addresses (after Ready).
func (a *App) Addrs() (httpAddr, ocsAddr net.Addr, nfsPort int) {
	return a.httpAddr, a.ocsAddr, a.nfsPort
}

// Close closes the state file.
func (a *App) Close() error { return a.st.Close() }

// APITokenPath is where the admin API token is kept (0600).
func (a *App) APITokenPath() string {
	if a.opts.APITokenFile != "" {
		return a.opts.APITokenFile
	}
	return filepath.Join(a.st.Dir(), "api-token")
}

// Config returns the current configuration (the zero Config, netboot off,
// before an admin saved one).
func (a *App) Config(ctx context.Context) (settings.Config, error) {
	var cfg settings.Config
	err := a.st.View(ctx, func(tx *store.Tx) error {
		var err error
		cfg, err = settings.Load(tx)
		return err
	})
	return cfg, err
}

// SetConfig validates and stores cfg, then restarts the services it affects.
// An invalid config changes nothing.
func (a *App) SetConfig(ctx context.Context, cfg settings.Config) error {
	if cfg.Netboot.Mode == "" {
		cfg.Netboot.Mode = string(netboot.ModeOff)
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Repository != "" {
		if st, err := os.Stat(cfg.Repository); err != nil || !st.IsDir() {
			return fmt.Errorf("%w: repository %s is not a readable folder", settings.ErrInvalid, cfg.Repository)
		}
	}
	if cfg.LiveVersion != "" {
		if _, err := os.Stat(filepath.Join(a.liveRoot(), cfg.LiveVersion, clonezilla.LiveKernel)); err != nil {
			return fmt.Errorf("%w: Clonezilla live version %q is not imported", settings.ErrInvalid, cfg.LiveVersion)
		}
	}
	err := a.st.Update(ctx, func(tx *store.Tx) error {
		if err := settings.Save(tx, cfg); err != nil {
			return err
		}
		return history.Add(tx, history.Event{Kind: "config", Message: "configuration changed (netboot " + cfg.Netboot.Mode + ")"})
	})
	if err != nil {
		return err
	}
	a.changes.Notify()
	// The netboot mode decides whether leases count as address records.
	return a.jobs.Refresh(ctx)
}

func (a *App) liveRoot() string { return filepath.Join(a.st.Dir(), "live") }

// ImportLive imports an official Clonezilla live zip found in the repository
// and makes it the live version seats boot.
func (a *App) ImportLive(ctx context.Context, zipRel string) (clonezilla.LiveFiles, error) {
	cfg, err := a.Config(ctx)
	if err != nil {
		return clonezilla.LiveFiles{}, err
	}
	zipPath, err := relRepo(cfg.Repository, zipRel)
	if err != nil {
		return clonezilla.LiveFiles{}, err
	}
	lf, err := clonezilla.ImportLiveZip(ctx, zipPath, a.liveRoot(), clonezilla.DefaultLiveLimits)
	if err != nil {
		return clonezilla.LiveFiles{}, err
	}
	cfg.LiveVersion = lf.Version
	if err := a.SetConfig(ctx, cfg); err != nil {
		return lf, err
	}
	return lf, nil
}

// JobRequest asks pumi for a manual job on seats (by MAC or room) on their
// next network boot, outside any run.
type JobRequest struct {
	Key    string         `json:"key,omitempty"`
	Action seatjob.Action `json:"action"`
	Image  string         `json:"image"`
	MACs   []string       `json:"macs,omitempty"`
	Room   string         `json:"room,omitempty"`
	Disk   string         `json:"disk,omitempty"`
}

// StartJobs gives seats, by MAC or room, a manual job (seatjob.Jobs.StartAll).
func (a *App) StartJobs(ctx context.Context, req JobRequest) ([]seatjob.Job, error) {
	macs := req.MACs
	if req.Room != "" {
		seats, err := a.inv.SeatsInRoom(ctx, req.Room)
		if err != nil {
			return nil, err
		}
		for _, s := range seats {
			macs = append(macs, s.MAC)
		}
	}
	cfg, err := a.Config(ctx)
	if err != nil {
		return nil, err
	}
	key := cmp.Or(req.Key, "manual-"+time.Now().UTC().Format("20060102-150405"))
	return a.jobs.StartAll(ctx, key, macs, req.Action, req.Image, cmp.Or(req.Disk, cfg.TargetDisk))
}

// Status is what the status page and API show.
type Status struct {
	StateDir string          `json:"state_dir"`
	Netboot  componentStatus `json:"netboot"`
	NFS      componentStatus `json:"nfs"`
	Leases   []netboot.Lease `json:"leases,omitempty"`
}

// Status reports the services' state.
func (a *App) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	return Status{StateDir: a.st.Dir(), Netboot: a.netStat, NFS: a.nfsStat, Leases: a.netboot.Leases()}
}

// Serve runs every service until ctx ends. The HTTP server, the NFS export
// and the ocs_server listener start at once; DHCP/TFTP only when the config
// enables them, and they are restarted whenever the config changes.
func (a *App) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var lc net.ListenConfig
	httpL, err := lc.Listen(ctx, "tcp", a.opts.Listen)
	if err != nil {
		return fmt.Errorf("HTTP listen %s: %w (is another pumi or web server running? use -listen)", a.opts.Listen, err)
	}
	a.httpPort = httpL.Addr().(*net.TCPAddr).Port
	nfsL, err := lc.Listen(ctx, "tcp", a.opts.NFSListen)
	if err != nil {
		httpL.Close()
		return fmt.Errorf("NFS listen %s: %w (use -nfs-listen)", a.opts.NFSListen, err)
	}
	a.nfsPort = nfsL.Addr().(*net.TCPAddr).Port
	ocsL, err := lc.Listen(ctx, "tcp", a.opts.OCSListen)
	if err != nil {
		httpL.Close()
		nfsL.Close()
		return fmt.Errorf("ocs_server listen %s: %w (use -ocs-listen)", a.opts.OCSListen, err)
	}

	mux, err := boot.NewMux(a.jobs, "", a.log)
	if err != nil {
		return err
	}
	live, err := boot.Files(a.liveRoot(), a.log)
	if err != nil {
		return err
	}
	mux.Handle("/live/", http.StripPrefix("/live", live))
	mux.Handle("/api/v1/clonezilla/report", a.jobs.ReportHandler())
	a.apiRoutes(mux)
	pages, err := web.New(webBackend{a}, web.Options{Auth: a.webAuth, BootstrapToken: func(tok string) bool {
		return subtle.ConstantTimeCompare([]byte(tok), []byte(a.apiToken)) == 1
	}}, a.log)
	if err != nil {
		return err
	}
	mux.Handle("/", pages)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	errc := make(chan error, 4)
	go func() {
		if err := srv.Serve(httpL); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("HTTP: %w", err)
		}
	}()
	go func() {
		if err := a.jobs.ServeOCS(ctx, ocsL); err != nil {
			errc <- err
		}
	}()
	go a.superviseNFS(ctx, nfsL)
	if a.opts.PortmapListen != "" {
		if err := a.servePortmap(ctx, errc); err != nil {
			httpL.Close()
			ocsL.Close()
			return err
		}
	}
	go hostnet.Supervise(ctx, a.opts.ManageNetwork, a.log, func(ctx context.Context) (hostnet.NetworkSettings, <-chan struct{}, error) {
		changed := a.changes.Wait()
		cfg, err := a.Config(ctx)
		return cfg.Network, changed, err
	})
	go a.netboot.Run(ctx)
	go a.st.BackupEvery(ctx, 6*time.Hour)
	go a.seen.Run(ctx)
	go history.PruneEvery(ctx, a.st, time.Hour, a.log)
	go a.rooms.Run(ctx)
	go a.serveRuns(ctx)

	a.httpAddr, a.ocsAddr = httpL.Addr(), ocsL.Addr()
	close(a.ready)
	a.log.Info("pumi appliance up", "http", httpL.Addr().String(), "nfs", nfsL.Addr().String(),
		"ocs_server", ocsL.Addr().String(), "state", a.st.Dir(), "api_token_file", a.APITokenPath(), "open", web.OpenURL(httpL.Addr()))
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	shut, c2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer c2()
	srv.Shutdown(shut)
	return err
}

// netbootWanted is the netboot server's config from the state; off when the
// admin has not enabled it.
func (a *App) netbootWanted(ctx context.Context) (nc netboot.Config, off bool, err error) {
	cfg, err := a.Config(ctx)
	if err != nil {
		return nc, false, err
	}
	if cfg.Netboot.Mode == string(netboot.ModeOff) {
		return nc, true, nil
	}
	seats, err := a.inv.Seats(ctx)
	if err != nil {
		return nc, false, err
	}
	nc, err = cfg.NetbootConfig(a.httpPort, seats)
	if err == nil && nc.HTTPBase == "" {
		nc.HTTPBase, _, err = a.httpBase(cfg)
	}
	return nc, false, err
}

// superviseNFS serves the repository over NFS (nfsexport.Supervisor): /images
// read-only for restores, /capture for captures.
func (a *App) superviseNFS(ctx context.Context, l net.Listener) {
	host, _, _ := net.SplitHostPort(a.opts.NFSListen)
	sup := &nfsexport.Supervisor{Allow: a.jobs, Log: a.log, Changed: a.changes.Wait,
		Want: func(ctx context.Context) ([]nfsexport.Export, error) {
			cfg, err := a.Config(ctx)
			if err != nil || cfg.Repository == "" {
				return nil, err
			}
			return []nfsexport.Export{
				{Path: seatjob.ExportImages, Dir: cfg.Repository},
				{Path: seatjob.ExportCapture, Writable: true, DirFor: a.jobs.CaptureDir},
			}, nil
		},
		Report: a.reporter(&a.nfsStat, fmt.Sprintf("(%s read-only, %s for captures, port %d)", seatjob.ExportImages, seatjob.ExportCapture, a.nfsPort))}
	sup.Run(ctx, l, net.JoinHostPort(host, fmt.Sprint(a.nfsPort)))
}

func (a *App) servePortmap(ctx context.Context, errc chan<- error) error {
	var lc net.ListenConfig
	tl, err := lc.Listen(ctx, "tcp", a.opts.PortmapListen)
	if err != nil {
		return fmt.Errorf("portmapper listen %s: %w (use -portmap-listen=\"\" to turn it off)", a.opts.PortmapListen, err)
	}
	ul, err := lc.ListenPacket(ctx, "udp", a.opts.PortmapListen)
	if err != nil {
		tl.Close()
		return fmt.Errorf("portmapper listen udp %s: %w", a.opts.PortmapListen, err)
	}
	go func() {
		if err := nfsexport.ServePortmap(ctx, tl, ul, a.nfsPort, a.log); err != nil && ctx.Err() == nil {
			errc <- fmt.Errorf("portmapper: %w", err)
		}
	}()
	return nil
}

// reporter is a supervisor's Report callback that keeps its status in dst
// for the status page; running replaces the detail with runningDetail if set.
func (a *App) reporter(dst *componentStatus, runningDetail string) func(bool, string, error) {
	return func(running bool, detail string, err error) {
		st := componentStatus{Running: running, Detail: detail}
		if running && runningDetail != "" {
			st.Detail = runningDetail
		}
		if err != nil {
			st.Error = err.Error()
		}
		a.mu.Lock()
		*dst = st
		a.mu.Unlock()
	}
}

// SetSecret stores (value != "") or clears (value == "") a secret
// (settings.SetSecret on the appliance's state).
func (a *App) SetSecret(ctx context.Context, name, value string) error {
	return settings.SetSecret(ctx, a.st, name, value)
}
