// Command pumi-netboot runs pumi's network boot alone: DHCP (full or proxy),
// TFTP of iPXE (and of the signed chain for MACs set to it: shim, GRUB, the
// per-MAC GRUB configs and the -files tree) and, with -http-listen, the
// HTTP boot endpoint, configured from a JSON file. It is for an existing Linux server next to the school's DHCP
// (proxy mode, pointing iPXE at an appliance with -http-base) and for
// debugging; the appliance runs the same packages in-process.
//
//	pumi-netboot -iface eth0 -mode proxy -config netboot.json -http-base http://10.0.0.5:8080
//	pumi-netboot -iface lab0 -mode full -config netboot.json -lease-file /var/lib/pumi/leases.json -http-listen :8080
//
// The config file format is documented at netboot.FileConfig.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/pumi-lab/pumi/assets"
	"github.com/pumi-lab/pumi/internal/boot"
	"github.com/pumi-lab/pumi/internal/netboot"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "pumi-netboot:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("pumi-netboot", flag.ContinueOnError)
	iface := fl.String("iface", "", "lab interface to serve DHCP/TFTP on (required)")
	modeS := fl.String("mode", "proxy", "proxy (beside an existing DHCP server) or full (pumi hands out addresses)")
	cfgPath := fl.String("config", "", "JSON config file (server_ip, range, reservations, known_macs, boot entries)")
	leaseFile := fl.String("lease-file", "pumi-leases.json", "where full mode keeps its leases")
	httpBase := fl.String("http-base", "", "URL iPXE fetches its script from, e.g. http://10.0.0.5:8080 (overrides http_base)")
	httpListen := fl.String("http-listen", "", "also serve the boot HTTP endpoint here, e.g. :8080 (empty: don't)")
	filesDir := fl.String("files", "", "directory served under /files/ over HTTP (with -http-listen) and TFTP (kernels, initrds)")
	verbose := fl.Bool("v", false, "debug logging")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (all settings are flags)", fl.Arg(0))
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	mode, err := netboot.ParseMode(*modeS)
	if err != nil {
		return err
	}
	if mode == netboot.ModeOff {
		return errors.New("-mode off serves nothing: use proxy or full")
	}
	fc := &netboot.FileConfig{}
	if *cfgPath != "" {
		if fc, err = netboot.LoadFileConfig(*cfgPath); err != nil {
			return err
		}
	} else if mode == netboot.ModeFull {
		return errors.New("-mode full needs -config with the address range")
	}
	cfg := fc.Config
	cfg.Interface, cfg.Mode = *iface, mode
	if *httpBase != "" {
		cfg.HTTPBase = *httpBase
	}

	bootJSON := []byte(fc.Boot)
	if len(bootJSON) == 0 {
		bootJSON = []byte("{}")
	}
	decider, err := boot.ParseStatic(bootJSON)
	if err != nil {
		return fmt.Errorf("config boot entries: %w", err)
	}
	// A MAC with a boot entry is obviously meant to netboot.
	known := append(fc.Known, decider.MACs()...)

	adm := netboot.NewStaticAdmission(known, log).WithChains(fc.DefaultChain, fc.Chains)
	if err := checkSignedChain(decider, adm); err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	files, closeFiles, err := tftpFiles(ctx, decider, *filesDir, log)
	if err != nil {
		return err
	}
	defer closeFiles()
	var leases netboot.LeaseStore
	if mode == netboot.ModeFull {
		leases = netboot.FileLeaseStore(*leaseFile)
	}
	srv, err := netboot.New(cfg, adm, leases, files, log)
	if err != nil {
		return err
	}

	errc := make(chan error, 2)
	running := 1
	if *httpListen != "" {
		mux, err := boot.NewMux(decider, *filesDir, log)
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", *httpListen)
		if err != nil {
			return fmt.Errorf("HTTP %s: %w", *httpListen, err)
		}
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		running++
		go func() {
			err := hs.Serve(ln)
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			errc <- err
		}()
		go func() {
			<-ctx.Done()
			sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
			defer c()
			hs.Shutdown(sctx)
		}()
		log.Info("boot HTTP endpoint", "listen", ln.Addr().String())
	}
	go func() { errc <- srv.Run(ctx) }()
	var first error
	for ; running > 0; running-- {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
		cancel() // one part ending ends the other
	}
	return first
}

// tftpFiles is what TFTP serves: iPXE, the signed chain (shim, GRUB), the
// GRUB configs rendered from decider, and filesDir under "files/", so that
// a boot entry's http://<server>/files/... URLs exist over TFTP under the
// same paths for GRUB (which has no HTTP).
func tftpFiles(ctx context.Context, decider boot.Decider, filesDir string, log *slog.Logger) (fs.FS, func(), error) {
	layers := []fs.FS{assets.IPXE(), assets.SecureBoot(), boot.NewGrubFiles(ctx, decider, nil, log.With("svc", "grub"))}
	if filesDir == "" {
		return netboot.Layers(layers...), func() {}, nil
	}
	// os.Root: neither ".." nor a symlink leads out of the directory.
	root, err := os.OpenRoot(filesDir)
	if err != nil {
		return nil, nil, fmt.Errorf("-files: %w (create it or fix the path)", err)
	}
	layers = append(layers, netboot.Mount("files", root.FS()))
	return netboot.Layers(layers...), func() { root.Close() }, nil
}

// checkSignedChain renders, at start, the GRUB config of every boot entry
// whose MAC is on the signed chain, so an entry GRUB cannot pass on (a '
// in the command line, an HTTP-only URL) is an error now, not a seat that
// silently boots its disk later.
func checkSignedChain(decider *boot.StaticDecider, adm *netboot.StaticAdmission) error {
	for _, mac := range decider.MACs() {
		if adm.Chain(mac) != netboot.ChainSigned {
			continue
		}
		d, err := decider.Decide(context.Background(), boot.Machine{MAC: mac})
		if err != nil {
			return err
		}
		if _, err := boot.GrubConfig(d, nil); err != nil {
			return fmt.Errorf("boot entry %s (signed chain): %w", mac, err)
		}
	}
	return nil
}
