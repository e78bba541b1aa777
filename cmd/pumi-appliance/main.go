// Command pumi-appliance is the pumi appliance: web page and JSON API, boot
// decisions per MAC, Clonezilla live files over HTTP, the NFS export of the
// image repository, and DHCP/TFTP netboot once an admin enables it.
//
// With no flags it keeps its state in ./pumi-data and serves HTTP on :8080;
// netboot stays off until configured. On gokrazy: -state=/perm/pumi -listen=:80.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/pumi-lab/pumi/internal/appliance"
	"github.com/pumi-lab/pumi/internal/store"
	_ "time/tzdata" // gokrazy ships no zoneinfo; schedules use the admin's time zone
)

func main() {
	var opts appliance.Options
	flag.StringVar(&opts.StateDir, "state", "pumi-data", "state directory (on gokrazy: /perm/pumi)")
	flag.StringVar(&opts.Listen, "listen", ":8080", "HTTP listen address (web page, API, boot scripts, Clonezilla files)")
	flag.StringVar(&opts.NFSListen, "nfs-listen", ":2049", "NFSv3 + MOUNT listen address (one TCP port)")
	flag.StringVar(&opts.OCSListen, "ocs-listen", ":6461", "Clonezilla ocs_server status listen address")
	flag.StringVar(&opts.APITokenFile, "api-token-file", "", "file holding the admin API token (default: <state>/api-token, created at first start)")
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
	if err := run(ctx, opts); err != nil {
		fmt.Fprintln(os.Stderr, "pumi-appliance:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, opts appliance.Options) error {
	app, err := appliance.Open(ctx, opts)
	if err != nil {
		return err
	}
	defer app.Close()
	return app.Serve(ctx)
}
