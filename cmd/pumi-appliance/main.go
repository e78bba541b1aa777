// Command pumi-appliance is the pumi appliance: web page and JSON API, boot
// decisions per MAC, Clonezilla live files over HTTP, the NFS export of the
// image repository, and DHCP/TFTP netboot once an admin enables it.
//
// With no flags it keeps its state in ./pumi-data and serves HTTP on :8080;
// netboot stays off until configured. On gokrazy: -state=/perm/pumi -listen=:80.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/pumi-lab/pumi/internal/appliance"
	"github.com/pumi-lab/pumi/internal/hostnet"
	"github.com/pumi-lab/pumi/internal/store"
	_ "time/tzdata" // gokrazy ships no zoneinfo; schedules use the admin's time zone
)

func main() {
	var opts appliance.Options
	flag.StringVar(&opts.StateDir, "state", "pumi-data", "state directory (on gokrazy: /perm/pumi)")
	flag.StringVar(&opts.Listen, "listen", ":8080", "HTTP listen address (web page, API, boot scripts, Clonezilla files)")
	flag.StringVar(&opts.NFSListen, "nfs-listen", ":2049", "NFSv3 + MOUNT listen address (one TCP port)")
	flag.StringVar(&opts.OCSListen, "ocs-listen", ":6461", "Clonezilla ocs_server status listen address")
	flag.StringVar(&opts.PortmapListen, "portmap-listen", "", `rpcbind v2 (portmapper) listen address, e.g. ":111" (TCP+UDP); "" turns it off`)
	flag.StringVar(&opts.APITokenFile, "api-token-file", "", "file holding the admin API token (default: <state>/api-token, created at first start)")
	flag.StringVar(&opts.ManageNetwork, "manage-network", "", `gokrazy only: run gokrazy's dhcp for the address set on the setup page; "dhcp" or the image's default network JSON until one is set; "" leaves the network alone`)
	restore := flag.Bool("restore-backup", false, "replace a damaged state file by its backup (state.db.bak), then exit")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	opts.Log = log

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *restore {
		moved, err := store.RestoreBackup(ctx, opts.StateDir, log)
		if err != nil {
			fmt.Fprintln(os.Stderr, "pumi-appliance:", err)
			os.Exit(1)
		}
		fmt.Printf("state restored from backup; the previous file was kept as %q\n", moved)
		return
	}
	app, err := appliance.Open(ctx, opts)
	if err != nil {
		// A missing, read-only or damaged state directory must not become a
		// restart loop (gokrazy restarts exited services every second):
		// say so on the console and on the web page, and wait.
		msg := "pumi-appliance: " + err.Error()
		fmt.Fprintln(os.Stderr, msg)
		if c, cerr := os.OpenFile("/dev/console", os.O_WRONLY, 0); cerr == nil {
			fmt.Fprintln(c, msg)
			c.Close()
		}
		// Without its state pumi still brings up the network (the image's
		// -manage-network default), so that page can be reached.
		go hostnet.RunDefault(ctx, opts.ManageNetwork, log)
		if derr := appliance.ServeDegraded(ctx, opts.Listen, opts.StateDir, err, log); derr != nil {
			fmt.Fprintln(os.Stderr, "pumi-appliance:", derr)
			if errors.Is(derr, appliance.ErrListen) {
				os.Exit(125) // gokrazy: do not restart
			}
			os.Exit(1)
		}
		return
	}
	defer app.Close()
	if err := app.Serve(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "pumi-appliance:", err)
		app.Close()
		os.Exit(1)
	}
}
