package netboot

import (
	"log/slog"
	"os"
)

// discardLog keeps test output quiet unless PUMI_TEST_LOG=1.
func discardLog() *slog.Logger {
	if os.Getenv("PUMI_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}
