package power_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/pumi-lab/pumi/internal/power"
)

// How the appliance is expected to use the package (not run: it needs a
// lab network).
func Example() {
	ctx := context.Background()
	log := slog.Default()
	key, err := power.LoadOrCreateKey("/perm/pumi", log)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("add to the image's authorized_keys:", key.PublicKey())

	c := &power.Client{Key: key, HostKeys: power.NewFileHostKeyStore("/perm/pumi/host_keys"), Log: log}
	seat := power.Target{Addr: "10.0.0.21", Seat: "52:54:00:12:34:56", Image: "LAB-2025-img",
		Cred: power.Credential{User: "tareas", UseKey: true}}
	if err := c.Reboot(ctx, seat); errors.Is(err, power.ErrUnreachable) {
		// Not running: wake it instead.
		mac, _ := net.ParseMAC(seat.Seat)
		err = power.WoL{Interface: "eth0", Gap: 2 * time.Second, Raw: true}.Wake(ctx, []net.HardwareAddr{mac})
		fmt.Println(err)
	}
	// ... after the restore:
	if err := c.Verify(ctx, seat, "LAB-2026-img"); err != nil {
		fmt.Println("seat failed:", power.Reason(err)) // e.g. `wrong image: found "LAB-2025", want "LAB-2026"`
	}
}
