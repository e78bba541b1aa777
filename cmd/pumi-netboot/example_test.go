package main

import (
	"testing"

	"github.com/pumi-lab/pumi/internal/boot"
	"github.com/pumi-lab/pumi/internal/netboot"
)

// The example the README points to must stay a valid config.
func TestExampleConfigParses(t *testing.T) {
	fc, err := netboot.LoadFileConfig("example.json")
	if err != nil {
		t.Fatal(err)
	}
	if len(fc.Config.Reservations) != 1 || len(fc.Known) != 1 || fc.Boot == nil {
		t.Fatalf("example lost entries: %+v", fc)
	}
	if _, err := boot.ParseStatic(fc.Boot); err != nil {
		t.Fatal(err)
	}
}
