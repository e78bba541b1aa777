// Command pumi-image builds the pumi appliance image (pumi.img, ready to be
// written to a USB stick, /perm formatted) from this working tree, or with
// -update sends a new build to a running appliance with `gok update`.
//
//	PUMI_GOKRAZY_PASSWORD=... go run ./cmd/pumi-image -o pumi.img
//	PUMI_GOKRAZY_PASSWORD=... go run ./cmd/pumi-image -update -host pumi
//
// The password is gokrazy's (web UI on port 8080, user "gokrazy", and
// updates); without one a random password is generated and printed once.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/pumi-lab/pumi/gokrazy"
)

func main() {
	var (
		out      = flag.String("o", "pumi.img", "image file to write")
		sizeMiB  = flag.Int64("size-mib", gokrazy.DefaultSize>>20, "image size in MiB (at least 1300; the stick must be at least this big)")
		static   = flag.String("static", "", "fixed address for the appliance instead of DHCP, e.g. 10.20.0.2/24,router=10.20.0.1,dns=10.20.0.1")
		pwFile   = flag.String("password-file", "", "file holding the gokrazy password (default: $"+gokrazy.PasswordEnv+", else a generated one)")
		update   = flag.Bool("update", false, "instead of writing an image, update the running appliance with gok update")
		host     = flag.String("host", "", "with -update: the appliance's host name or address (default: the config's Hostname, pumi)")
		noPerm   = flag.Bool("no-perm", false, "leave /perm unformatted (only for testing the appliance without persistent storage)")
		verbose  = flag.Bool("v", false, "show gok's output")
		instance = flag.String("instance", "", "gokrazy instance folder (default gokrazy/pumi in this repository)")
	)
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	o := gokrazy.Options{Instance: *instance, Output: *out, SizeBytes: *sizeMiB << 20, NoPerm: *noPerm, Log: log,
		Password: os.Getenv(gokrazy.PasswordEnv)}
	if *verbose {
		o.GokLog = os.Stderr
	}
	if *pwFile != "" {
		b, err := os.ReadFile(*pwFile)
		if err != nil {
			fail(fmt.Errorf("password file: %w", err))
		}
		o.Password = strings.TrimSpace(string(b))
	}
	if *static != "" {
		n, err := gokrazy.ParseStaticNetwork(*static)
		if err != nil {
			fail(err)
		}
		o.Static = &n
	}
	if *update {
		if *host != "" {
			o.Edit = func(c *gokrazy.Config) error { c.Update.Hostname = *host; return nil }
		}
		ts, err := gokrazy.Update(ctx, o)
		if err != nil {
			fail(err)
		}
		fmt.Printf("updated; the appliance now runs the build of %s\n", ts)
		return
	}
	res, err := gokrazy.Build(ctx, o)
	if err != nil {
		fail(err)
	}
	fmt.Printf("wrote %s (build %s); write it to a USB stick with: dd if=%s of=/dev/sdX bs=4M conv=fsync\n", res.Image, res.BuildTimestamp, *out)
	if res.PasswordGenerated {
		fmt.Printf("gokrazy password (web UI on port 8080, user gokrazy; needed for updates), shown only now: %s\n", res.Password)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "pumi-image:", err)
	os.Exit(1)
}
