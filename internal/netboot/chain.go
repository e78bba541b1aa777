package netboot

import (
	"fmt"
	"net"
	"strings"
)

// Chain is the boot program a seat's UEFI firmware is sent by PXE. It is
// chosen per MAC; the boot decision behind it is the same for both (one
// internal/boot.Decision, rendered as an iPXE script or as a GRUB config).
type Chain string

const (
	// ChainIPXE (the default) sends iPXE (FileUEFI), which fetches its
	// script over HTTP. iPXE is not signed: Secure Boot must be off.
	ChainIPXE Chain = "ipxe"
	// ChainSigned sends Debian's Microsoft-signed shim (FileShim), which
	// loads Debian's signed network GRUB (grubx64.efi, same TFTP
	// directory), which reads grub/grub.cfg and then grub/<mac>.cfg over
	// TFTP and loads the distribution-signed kernel over TFTP. It boots
	// with Secure Boot enforced. The TFTP files must then include
	// assets.SecureBoot() and boot.GrubFiles (see Layers).
	ChainSigned Chain = "signed"
)

// FileShim is the signed chain's first boot program (assets.SecureBoot).
const FileShim = "shimx64.efi"

// ParseChain accepts the spellings used in config files and the API: ""
// means ChainIPXE.
func ParseChain(s string) (Chain, error) {
	switch c := Chain(strings.ToLower(strings.TrimSpace(s))); c {
	case ChainIPXE, ChainSigned:
		return c, nil
	case "":
		return ChainIPXE, nil
	}
	return "", fmt.Errorf("boot chain %q: want ipxe or signed", s)
}

// ChainChooser is optionally implemented by an Admission: it says which
// chain an admitted MAC boots. It is asked on every PXE answer (under the
// DHCP handler's lock, so it must be quick and must not call back into the
// Server). An Admission without it gets ChainIPXE for every MAC, as before.
type ChainChooser interface {
	Chain(mac net.HardwareAddr) Chain
}

// chainOf asks the admission, if it can tell, which chain mac boots.
func (h *handler) chainOf(mac net.HardwareAddr) Chain {
	if cc, ok := h.adm.(ChainChooser); ok {
		if c := cc.Chain(mac); c != "" {
			return c
		}
	}
	return ChainIPXE
}

// chainTarget adapts the iPXE chain's target t for a MAC on the signed
// chain: firmware PXE gets the shim; UEFI HTTP boot gets nothing (the
// signed network GRUB has no HTTP, so after loading over HTTP it would find
// no configuration and stop at its prompt; the firmware goes on to PXE or
// the disk instead). iPXE itself (Secure Boot off, started some other way)
// and BIOS PXE keep their answers: the decision behind them is the same.
func (h *handler) chainTarget(c client, mac net.HardwareAddr, t bootTarget, ok bool) (bootTarget, bool) {
	if !ok || h.chainOf(mac) != ChainSigned {
		return t, ok
	}
	switch c.fw {
	case fwUEFIPXE:
		return bootTarget{file: FileShim, vendorClass: "PXEClient"}, true
	case fwUEFIHTTP:
		h.log.Info("UEFI HTTP boot of a seat on the signed chain: no answer (its GRUB cannot use HTTP); the firmware goes on to PXE", "mac", mac.String())
		return bootTarget{}, false
	}
	return t, ok
}

// WithChains sets the chain StaticAdmission reports (ChainChooser): per
// MAC (canonical net.HardwareAddr.String() keys), def for every other MAC
// ("" is ChainIPXE). Call it before serving; it returns a.
func (a *StaticAdmission) WithChains(def Chain, per map[string]Chain) *StaticAdmission {
	a.defaultChain = def
	a.chains = per
	return a
}

// Chain implements ChainChooser.
func (a *StaticAdmission) Chain(mac net.HardwareAddr) Chain {
	if c, ok := a.chains[mac.String()]; ok && c != "" {
		return c
	}
	if a.defaultChain != "" {
		return a.defaultChain
	}
	return ChainIPXE
}
