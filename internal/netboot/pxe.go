package netboot

import (
	"net"
	"strconv"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/pumi-lab/pumi/internal/macaddr"
)

// TFTP file names, as embedded in assets.IPXE().
const (
	FileUEFI = "bootx64.efi"   // iPXE (snponly) for x86-64 UEFI
	FileBIOS = "undionly.kpxe" // iPXE for legacy BIOS PXE
)

// optIPXE is iPXE's encapsulated option space (175); its presence in a
// request means "this is iPXE", and sub-option 176 (no-pxedhcp) in a reply
// stops iPXE from waiting 2-3 s for a ProxyDHCP answer.
var optIPXE = dhcpv4.GenericOptionCode(175)

// firmware is what kind of network boot program sent a request.
type firmware int

const (
	fwNone        firmware = iota // not a PXE client (no PXEClient/HTTPClient vendor class)
	fwUEFIPXE                     // x86-64 UEFI firmware PXE: TFTP bootx64.efi
	fwUEFIHTTP                    // x86-64 UEFI HTTP boot: URL of bootx64.efi
	fwBIOS                        // legacy BIOS PXE: TFTP undionly.kpxe
	fwIPXE                        // our iPXE, already running: the HTTP script
	fwUnsupported                 // a PXE client of an architecture pumi has no program for
)

func (f firmware) String() string {
	switch f {
	case fwUEFIPXE:
		return "uefi-pxe"
	case fwUEFIHTTP:
		return "uefi-http"
	case fwBIOS:
		return "bios-pxe"
	case fwIPXE:
		return "ipxe"
	case fwUnsupported:
		return "unsupported"
	}
	return "none"
}

// client is the PXE view of one request.
type client struct {
	fw          firmware
	arch        int // -1: unknown
	vendorClass string
	userClass   string
}

// classify decides which boot program a request is from. The order matters:
// iPXE also sends PXEClient and arch 7, and must get the HTTP script rather
// than bootx64.efi again, or it would load itself in a loop.
func classify(req *dhcpv4.DHCPv4) client {
	c := client{arch: -1, vendorClass: req.ClassIdentifier()}
	if uc := req.UserClass(); len(uc) > 0 {
		c.userClass = uc[0]
	}
	isPXE := strings.HasPrefix(c.vendorClass, "PXEClient") || strings.HasPrefix(c.vendorClass, "HTTPClient")
	isIPXE := req.Options.Has(optIPXE) || c.userClass == "iPXE"
	if !isPXE && !isIPXE {
		c.fw = fwNone
		return c
	}
	if archs := req.ClientArch(); len(archs) > 0 {
		c.arch = int(archs[0])
	} else if a, ok := archFromVendorClass(c.vendorClass); ok {
		// Some ROMs omit option 93 but say "PXEClient:Arch:00007:UNDI:003000".
		c.arch = a
	}
	switch {
	case isIPXE:
		c.fw = fwIPXE
	case c.arch == int(iana.EFI_X86_64) || c.arch == int(iana.EFI_BC):
		// IANA swapped RFC 4578's 7 and 9; firmware in the wild sends both
		// for x86-64 UEFI.
		c.fw = fwUEFIPXE
	case c.arch == int(iana.EFI_X86_64_HTTP):
		c.fw = fwUEFIHTTP
	case c.arch == int(iana.INTEL_X86PC):
		c.fw = fwBIOS
	default:
		c.fw = fwUnsupported
	}
	return c
}

func archFromVendorClass(vc string) (int, bool) {
	const key = ":Arch:"
	i := strings.Index(vc, key)
	if i < 0 || len(vc) < i+len(key)+5 {
		return 0, false
	}
	n, err := strconv.ParseUint(vc[i+len(key):i+len(key)+5], 10, 16)
	if err != nil {
		return 0, false
	}
	return int(n), true
}

// ScriptURL is the per-MAC iPXE script URL; internal/boot serves it
// (boot.ScriptURL has the same shape).
func ScriptURL(base string, mac net.HardwareAddr) string {
	return strings.TrimRight(base, "/") + "/boot/" + macaddr.Hyphen(mac) + ".ipxe"
}

// bootTarget is where a client's boot program is.
type bootTarget struct {
	file        string // DHCP "file" field and option 67
	vendorClass string // option 60 to send back: PXEClient or HTTPClient
}

// target returns the boot program for c, ok=false when there is none.
func target(c client, httpBase string, mac net.HardwareAddr) (bootTarget, bool) {
	switch c.fw {
	case fwUEFIPXE:
		return bootTarget{file: FileUEFI, vendorClass: "PXEClient"}, true
	case fwBIOS:
		return bootTarget{file: FileBIOS, vendorClass: "PXEClient"}, true
	case fwUEFIHTTP:
		// UEFI HTTP boot only accepts the offer if option 60 says HTTPClient.
		return bootTarget{file: strings.TrimRight(httpBase, "/") + "/ipxe/" + FileUEFI, vendorClass: "HTTPClient"}, true
	case fwIPXE:
		return bootTarget{file: ScriptURL(httpBase, mac), vendorClass: "PXEClient"}, true
	}
	return bootTarget{}, false
}

// addPXE puts the boot options on resp. serverIP is siaddr, option 54 and
// sname, because some ROMs only look at one of them.
func addPXE(req, resp *dhcpv4.DHCPv4, t bootTarget, serverIP net.IP, full bool, c client) {
	resp.ServerIPAddr = serverIP
	resp.ServerHostName = serverIP.String()
	resp.BootFileName = t.file
	resp.UpdateOption(dhcpv4.OptServerIdentifier(serverIP))
	resp.UpdateOption(dhcpv4.OptClassIdentifier(t.vendorClass))
	resp.UpdateOption(dhcpv4.OptTFTPServerName(serverIP.String()))
	resp.UpdateOption(dhcpv4.OptBootFileName(t.file))
	// PXE discovery control: bypass boot server discovery, boot the file
	// named in this packet.
	resp.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation, []byte{6, 1, 8}))
	if g := req.GetOneOption(dhcpv4.OptionClientMachineIdentifier); len(g) == 17 && g[0] == 0 {
		resp.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, g))
	}
	if full && c.fw == fwIPXE {
		// no-pxedhcp: pumi is the only DHCP server, so there is no
		// ProxyDHCP answer worth waiting for.
		resp.UpdateOption(dhcpv4.OptGeneric(optIPXE, []byte{176, 1, 1}))
	}
}
