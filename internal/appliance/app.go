// Package appliance wires pumi's packages into the appliance process: the
// state file, the inventory, boot decisions per MAC, the HTTP server (boot
// scripts, Clonezilla live files, JSON API, Clonezilla's reports), the NFS
// export of the image repository, Clonezilla's ocs_server listener, and the
// DHCP/TFTP netboot server, which runs only once an admin has enabled it.
package appliance

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/pumi-lab/pumi/assets"
	"github.com/pumi-lab/pumi/internal/atomicfile"
	"github.com/pumi-lab/pumi/internal/boot"
	"github.com/pumi-lab/pumi/internal/clonezilla"
	"github.com/pumi-lab/pumi/internal/inventory"
	"github.com/pumi-lab/pumi/internal/macaddr"
	"github.com/pumi-lab/pumi/internal/netboot"
	"github.com/pumi-lab/pumi/internal/nfsexport"
	"github.com/pumi-lab/pumi/internal/notify"
	"github.com/pumi-lab/pumi/internal/power"
	"github.com/pumi-lab/pumi/internal/reimage"
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

	changes notifier // config changes, for the supervisors

	webAuth web.AuthStore // admin password, sessions, API tokens of the web page
	sshKey  *power.Key
	ssh     *power.Client
	outbox  *notify.Outbox
	engine  *reimage.Engine

	ready    chan struct{} // closed once Serve has bound its listeners
	httpAddr net.Addr
	ocsAddr  net.Addr

	mu       sync.Mutex
	netStat  componentStatus
	nfsStat  componentStatus
	nbServer *netboot.Server
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
	a := &App{opts: opts, log: opts.Log, st: st, inv: inventory.New(st), ready: make(chan struct{})}
	if a.apiToken, err = loadOrCreateToken(a.APITokenPath(), opts.APITokenFile == ""); err != nil {
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

func loadOrCreateToken(path string, create bool) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		if t := strings.TrimSpace(string(b)); len(t) >= 32 {
			return t, nil
		}
		return "", fmt.Errorf("API token file %s is damaged: delete it and restart pumi to get a new token", path)
	}
	if !errors.Is(err, os.ErrNotExist) || !create {
		return "", fmt.Errorf("API token: %w", err)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	t := base64.RawURLEncoding.EncodeToString(raw[:])
	if err := atomicfile.Write(path, []byte(t+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("API token: %w", err)
	}
	return t, nil
}

// Config returns the current configuration (the zero Config, netboot off,
// before an admin saved one).
func (a *App) Config(ctx context.Context) (Config, error) {
	var cfg Config
	err := a.st.View(ctx, func(tx *store.Tx) error {
		c, ok, err := configBucket.Get(tx, configKey)
		if ok {
			cfg = c
		}
		return err
	})
	if cfg.Netboot.Mode == "" {
		cfg.Netboot.Mode = string(netboot.ModeOff)
	}
	return cfg, err
}

// SetConfig validates and stores cfg, then restarts the services it affects.
// An invalid config changes nothing.
func (a *App) SetConfig(ctx context.Context, cfg Config) error {
	if cfg.Netboot.Mode == "" {
		cfg.Netboot.Mode = string(netboot.ModeOff)
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Repository != "" {
		if st, err := os.Stat(cfg.Repository); err != nil || !st.IsDir() {
			return fmt.Errorf("%w: repository %s is not a readable folder", errConfig, cfg.Repository)
		}
	}
	if cfg.LiveVersion != "" {
		if _, err := os.Stat(filepath.Join(a.liveRoot(), cfg.LiveVersion, clonezilla.LiveKernel)); err != nil {
			return fmt.Errorf("%w: Clonezilla live version %q is not imported", errConfig, cfg.LiveVersion)
		}
	}
	err := a.st.Update(ctx, func(tx *store.Tx) error {
		if err := configBucket.Put(tx, configKey, cfg); err != nil {
			return err
		}
		return addEvent(tx, Event{Kind: "config", Message: "configuration changed (netboot " + cfg.Netboot.Mode + ")"})
	})
	if err != nil {
		return err
	}
	a.changes.notify()
	return nil
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

// Assign gives seats a restore or capture job for their next network boot.
// Seats are named by MAC or by room; every seat must be in the inventory,
// and a restore needs a valid image. All or nothing.
func (a *App) Assign(ctx context.Context, req AssignRequest) ([]Assignment, error) {
	if req.Action != ActionRestore && req.Action != ActionCapture {
		return nil, badRequest("action must be restore or capture")
	}
	if err := clonezilla.CheckImagePath(req.Image); err != nil {
		return nil, badRequest("image: %v", err)
	}
	if req.Disk != "" {
		if err := clonezilla.CheckDisk(req.Disk); err != nil {
			return nil, badRequest("disk: %v", err)
		}
	}
	cfg, err := a.Config(ctx)
	if err != nil {
		return nil, err
	}
	if cfg.Repository == "" {
		return nil, badRequest("no image repository configured")
	}
	if req.Action == ActionRestore {
		img, err := clonezilla.Inspect(ctx, cfg.Repository, req.Image)
		if err != nil {
			return nil, badRequest("image %s: %v", req.Image, err)
		}
		if !img.Valid {
			return nil, badRequest("image %s cannot be restored: %s", req.Image, strings.Join(img.Problems, "; "))
		}
	}
	if req.Action == ActionCapture && req.Disk == "" && cfg.TargetDisk == "" {
		return nil, badRequest("a capture needs the source disk (disk)")
	}
	macs := map[string]bool{}
	for _, m := range req.MACs {
		n, err := macaddr.Normalize(m)
		if err != nil {
			return nil, badRequest("%v", err)
		}
		macs[n] = true
	}
	if req.Room != "" {
		seats, err := a.inv.SeatsInRoom(ctx, req.Room)
		if err != nil {
			return nil, err
		}
		for _, s := range seats {
			macs[s.MAC] = true
		}
	}
	if len(macs) == 0 {
		return nil, badRequest("no seats named (macs or room)")
	}
	if req.Action == ActionCapture && len(macs) != 1 {
		return nil, badRequest("a capture is taken from exactly one seat")
	}
	runID := req.RunID
	if runID == "" {
		runID = "manual-" + time.Now().UTC().Format("20060102-150405")
	}
	disk := req.Disk
	if disk == "" {
		disk = cfg.TargetDisk
	}
	var out []Assignment
	err = a.st.Update(ctx, func(tx *store.Tx) error {
		now := time.Now().UTC()
		for m := range macs {
			if _, err := inventory.SeatByMACTx(tx, m); err != nil {
				return err
			}
			tok, err := newToken()
			if err != nil {
				return err
			}
			asg := Assignment{MAC: m, RunID: runID, Action: req.Action, Image: req.Image, Disk: disk, Token: tok,
				State: StatePending, Created: now, Updated: now}
			if err := assignmentBucket.Put(tx, m, asg); err != nil {
				return err
			}
			if err := addEvent(tx, Event{MAC: m, RunID: runID, Kind: "assigned",
				Message: fmt.Sprintf("%s %s on the next network boot", req.Action, req.Image)}); err != nil {
				return err
			}
			out = append(out, asg)
		}
		return nil
	})
	return out, err
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
	s := Status{StateDir: a.st.Dir(), Netboot: a.netStat, NFS: a.nfsStat}
	if a.nbServer != nil {
		s.Leases = a.nbServer.Leases()
	}
	return s
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

	mux, err := boot.NewMux(decider{a}, "", a.log)
	if err != nil {
		return err
	}
	live, err := boot.Files(a.liveRoot(), a.log)
	if err != nil {
		return err
	}
	mux.Handle("/live/", http.StripPrefix("/live", live))
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
		if err := a.serveOCS(ctx, ocsL); err != nil {
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
	go a.superviseHostNetwork(ctx)
	go a.superviseNetboot(ctx)
	go a.st.BackupEvery(ctx, 6*time.Hour)
	go a.serveRuns(ctx)

	a.httpAddr, a.ocsAddr = httpL.Addr(), ocsL.Addr()
	close(a.ready)
	a.log.Info("pumi appliance up", "http", httpL.Addr().String(), "nfs", nfsL.Addr().String(),
		"ocs_server", ocsL.Addr().String(), "state", a.st.Dir(), "api_token_file", a.APITokenPath())
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	shut, c2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer c2()
	srv.Shutdown(shut)
	return err
}

// superviseNetboot runs the DHCP/TFTP server with the current config and
// restarts it when what it serves changes: the netboot settings, or the
// inventory's addresses, which become full mode's reservations (rechecked
// every few seconds, so an imported CSV takes effect without a restart). A
// failure (interface missing, port in use) is shown in the status and the
// same config is retried after a minute.
func (a *App) superviseNetboot(ctx context.Context) {
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	var (
		running  *netboot.Config // what the server was started with; nil: not running
		stop     = func() {}
		done     chan error
		failed   *netboot.Config // the config that last failed, and when
		failedAt time.Time
	)
	halt := func() {
		stop()
		if done != nil {
			<-done
		}
		running, done = nil, nil
	}
	defer halt()
	for {
		changed := a.changes.wait()
		want, off, err := a.netbootWanted(ctx)
		switch {
		case err != nil:
			halt()
			a.setNetStat(componentStatus{Error: err.Error()})
		case off:
			halt()
			a.setNetStat(componentStatus{Detail: "(enable it in the configuration)"})
			a.mu.Lock()
			a.nbServer = nil
			a.mu.Unlock()
		case running != nil && reflect.DeepEqual(want, *running):
			// Serving exactly this already.
		case failed != nil && reflect.DeepEqual(want, *failed) && time.Since(failedAt) < time.Minute:
			// Retried after a minute, not on every tick.
		default:
			halt()
			runCtx, cancel := context.WithCancel(ctx)
			srv, err := netboot.New(want, admission{a}, leaseStore{a.st}, assets.IPXE(), a.log)
			if err != nil {
				cancel()
				failed, failedAt = &want, time.Now()
				a.setNetStat(componentStatus{Error: err.Error()})
				a.log.Error("netboot not started", "err", err)
				break
			}
			cfg := want
			running, stop, done = &cfg, cancel, make(chan error, 1)
			a.mu.Lock()
			a.nbServer = srv
			a.mu.Unlock()
			go func(done chan<- error) { done <- srv.Run(runCtx) }(done)
			go func() {
				select {
				case <-srv.Ready():
					a.setNetStat(componentStatus{Running: true, Detail: fmt.Sprintf("(%s on %s)", cfg.Mode, cfg.Interface)})
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
			a.setNetStat(componentStatus{Error: err.Error()})
			a.log.Error("netboot stopped", "err", err)
		}
	}
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
	res, err := a.reservations(ctx)
	if err != nil {
		return nc, false, err
	}
	nc, err = cfg.netbootConfig(a.httpPort, res)
	if err == nil && nc.HTTPBase == "" {
		nc.HTTPBase, _, err = a.httpBase(cfg)
	}
	return nc, false, err
}

func (a *App) setNetStat(s componentStatus) {
	a.mu.Lock()
	a.netStat = s
	a.mu.Unlock()
}

func (a *App) reservations(ctx context.Context) ([]netboot.Reservation, error) {
	seats, err := a.inv.Seats(ctx)
	if err != nil {
		return nil, err
	}
	var out []netboot.Reservation
	for _, s := range seats {
		if !s.IP.IsValid() {
			continue
		}
		m, err := macaddr.Parse(s.MAC)
		if err != nil {
			continue
		}
		out = append(out, netboot.Reservation{MAC: m, IP: s.IP, Hostname: s.Hostname})
	}
	return out, nil
}

// superviseNFS serves the repository over NFS with the current config and
// restarts the export when the config changes, on the same port, so the
// command lines already handed to seats stay right. Clients reconnect by
// themselves and keep their file handles (they are stable across restarts).
func (a *App) superviseNFS(ctx context.Context, l net.Listener) {
	host, _, _ := net.SplitHostPort(a.opts.NFSListen)
	addr := net.JoinHostPort(host, fmt.Sprint(a.nfsPort))
	for {
		changed := a.changes.wait()
		cfg, err := a.Config(ctx)
		var srv *nfsexport.Server
		switch {
		case err != nil:
			a.setNFSStat(componentStatus{Error: err.Error()})
		case cfg.Repository == "":
			a.setNFSStat(componentStatus{Detail: "(no image repository configured)"})
		default:
			srv, err = nfsexport.New(nfsexport.Config{Exports: []nfsexport.Export{
				{Path: ExportImages, Dir: cfg.Repository},
				{Path: ExportCapture, Dir: cfg.Repository, Writable: true},
			}}, nfsAllow{a}, a.log)
			if err != nil {
				a.setNFSStat(componentStatus{Error: err.Error()})
			}
		}
		if srv != nil && l == nil {
			var lc net.ListenConfig
			if l, err = lc.Listen(ctx, "tcp", addr); err != nil {
				a.setNFSStat(componentStatus{Error: fmt.Sprintf("listen %s: %v", addr, err)})
				srv = nil
			}
		}
		if srv == nil && l != nil {
			l.Close()
			l = nil
		}
		genCtx, stop := context.WithCancel(ctx)
		served := make(chan struct{})
		if srv != nil {
			a.setNFSStat(componentStatus{Running: true, Detail: fmt.Sprintf("(%s read-only, %s for captures, port %d)", ExportImages, ExportCapture, a.nfsPort)})
			go func(l net.Listener) {
				defer close(served)
				// Serve closes l when genCtx ends.
				if err := srv.Serve(genCtx, l); err != nil && genCtx.Err() == nil {
					a.log.Error("nfs", "err", err)
					a.setNFSStat(componentStatus{Error: err.Error()})
				}
			}(l)
			l = nil
		} else {
			close(served)
		}
		select {
		case <-ctx.Done():
			stop()
			<-served
			return
		case <-changed:
		}
		stop()
		<-served
	}
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

func (a *App) setNFSStat(s componentStatus) {
	a.mu.Lock()
	a.nfsStat = s
	a.mu.Unlock()
}

// nfsAllow lets a client use /images while its seat has an active restore and
// /capture (read-write) while it has an active capture. The seat is found by
// the client's address: its inventory IP, its DHCP lease or the address it
// last network-booted with.
type nfsAllow struct{ a *App }

// AllowConnect admits a TCP connection to the NFS port only from an address
// whose seat has an active job (restore or capture); nfsexport asks it at
// accept, before reading anything.
func (n nfsAllow) AllowConnect(ip netip.Addr) bool {
	ip = ip.Unmap()
	allowed := false
	err := n.a.st.View(context.Background(), func(tx *store.Tx) error {
		return assignmentBucket.ForEach(tx, func(mac string, asg Assignment) error {
			if !allowed && asg.Active() && n.a.seatHasIP(tx, mac, ip) {
				allowed = true
			}
			return nil
		})
	})
	if err != nil {
		n.a.log.Error("nfs connect check", "err", err)
		return false
	}
	return allowed
}

func (n nfsAllow) AllowClient(ip netip.Addr, export string, write bool) bool {
	ctx := context.Background()
	ip = ip.Unmap()
	allowed := false
	err := n.a.st.View(ctx, func(tx *store.Tx) error {
		return assignmentBucket.ForEach(tx, func(mac string, asg Assignment) error {
			if !asg.Active() || allowed {
				return nil
			}
			switch {
			case export == ExportImages && asg.Action == ActionRestore && !write:
			case export == ExportCapture && asg.Action == ActionCapture:
			default:
				return nil
			}
			if n.a.seatHasIP(tx, mac, ip) {
				allowed = true
			}
			return nil
		})
	})
	if err != nil {
		n.a.log.Error("nfs allow check", "err", err)
		return false
	}
	if !allowed {
		n.a.log.Info("nfs: client refused (no active job for this address)", "client", ip, "export", export, "write", write)
	}
	return allowed
}

func (a *App) seatHasIP(tx *store.Tx, mac string, ip netip.Addr) bool {
	if s, err := inventory.SeatByMACTx(tx, mac); err == nil && s.IP == ip {
		return true
	}
	if l, ok, _ := leaseBucket.Get(tx, mac); ok && l.IP == ip {
		return true
	}
	if s, ok, _ := seenBucket.Get(tx, mac); ok && s.IP == ip.String() {
		return true
	}
	if asg, ok, _ := assignmentBucket.Get(tx, mac); ok && asg.ClientIP == ip.String() {
		return true
	}
	return false
}

// notifier broadcasts "the config changed" to every supervisor: wait returns
// a channel that notify closes. Take it before reading the config, so a
// change in between is never missed.
type notifier struct {
	mu sync.Mutex
	ch chan struct{}
}

func (n *notifier) wait() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ch == nil {
		n.ch = make(chan struct{})
	}
	return n.ch
}

func (n *notifier) notify() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ch != nil {
		close(n.ch)
	}
	n.ch = make(chan struct{})
}
