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
	dec, err := boot.ParseStatic(fc.Boot)
	if err != nil {
		t.Fatal(err)
	}
	adm := netboot.NewStaticAdmission(nil, nil).WithChains(fc.DefaultChain, fc.Chains)
	if len(fc.Chains) != 1 {
		t.Fatalf("example lost its chains entry: %v", fc.Chains)
	}
	if err := checkSignedChain(dec, adm); err != nil {
		t.Fatal(err)
	}
}
