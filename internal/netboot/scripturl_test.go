package netboot_test

import (
	"net"
	"testing"

	"github.com/pumi-lab/pumi/internal/boot"
	"github.com/pumi-lab/pumi/internal/netboot"
)

// DHCP hands iPXE netboot.ScriptURL; internal/boot serves boot.ScriptURL.
// They must agree or every seat gets a 404 instead of its script.
func TestScriptURLMatchesBoot(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0x00, 0xab, 0xcd, 0xef}
	for _, base := range []string{"http://10.99.0.1:8080", "http://10.99.0.1:8080/", "http://pumi"} {
		if a, b := netboot.ScriptURL(base, mac), boot.ScriptURL(base, mac); a != b {
			t.Errorf("netboot %q != boot %q", a, b)
		}
	}
}
