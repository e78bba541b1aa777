package netboot

import (
	"errors"

	"io/fs"
	"net"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// TestChainPerMAC: a MAC on the signed chain is sent the shim by firmware
// PXE, in full and proxy mode; HTTP boot gets no answer; iPXE (Secure Boot
// off) and BIOS keep their usual answers; every other MAC still gets iPXE.
func TestChainPerMAC(t *testing.T) {
	for _, mode := range []Mode{ModeFull, ModeProxy} {
		t.Run(string(mode), func(t *testing.T) {
			cfg := fullConfig()
			cfg.Mode = mode
			x := newHarness(t, cfg)
			x.adm.WithChains(ChainIPXE, map[string]Chain{macA.String(): ChainSigned})
			answer := func(mac net.HardwareAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
				t.Helper()
				resp := x.do(msg(t, dhcpv4.MessageTypeDiscover, mac, mods...), PortServer)
				if mode == ModeProxy && resp == nil {
					return nil
				}
				wantType(t, resp, dhcpv4.MessageTypeOffer)
				return resp
			}
			tests := []struct {
				name string
				mac  net.HardwareAddr
				mods []dhcpv4.Modifier
				want string // "" = no PXE answer
			}{
				{"signed uefi pxe", macA, []dhcpv4.Modifier{pxe(iana.EFI_X86_64)}, FileShim},
				{"signed uefi pxe arch 9", macA, []dhcpv4.Modifier{pxe(iana.EFI_BC)}, FileShim},
				{"signed uefi http", macA, []dhcpv4.Modifier{pxe(iana.EFI_X86_64_HTTP)}, ""},
				{"signed but running ipxe", macA, []dhcpv4.Modifier{pxe(iana.EFI_X86_64), ipxeUC}, "http://10.99.0.1:8080/boot/52-54-00-00-00-0a.ipxe"},
				{"signed bios", macA, []dhcpv4.Modifier{pxe(iana.INTEL_X86PC)}, FileBIOS},
				{"ipxe chain uefi pxe", macB, []dhcpv4.Modifier{pxe(iana.EFI_X86_64)}, FileUEFI},
				{"ipxe chain http", macB, []dhcpv4.Modifier{pxe(iana.EFI_X86_64_HTTP)}, "http://10.99.0.1:8080/ipxe/bootx64.efi"},
			}
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					resp := answer(tc.mac, tc.mods...)
					if tc.want == "" {
						if resp != nil {
							wantNoPXE(t, resp)
						}
						return
					}
					if resp == nil {
						t.Fatalf("no answer, want boot file %q", tc.want)
					}
					if resp.BootFileName != tc.want || resp.BootFileNameOption() != tc.want {
						t.Errorf("boot file %q / option 67 %q, want %q", resp.BootFileName, resp.BootFileNameOption(), tc.want)
					}
					if !resp.ServerIPAddr.Equal(ip("10.99.0.1")) {
						t.Errorf("next-server %s: the shim and GRUB fetch from it", resp.ServerIPAddr)
					}
				})
			}
		})
	}
}

// chooserAdmission is an Admission that is also a ChainChooser, as the
// appliance's will be.
type chooserAdmission struct {
	Admission
	chain Chain
}

func (c chooserAdmission) Chain(net.HardwareAddr) Chain { return c.chain }

func TestChainChooserOptional(t *testing.T) {
	plain := NewStaticAdmission([]net.HardwareAddr{macA}, nil)
	for _, tc := range []struct {
		name string
		adm  Admission
		want Chain
	}{
		{"no chooser", struct{ Admission }{plain}, ChainIPXE},
		{"static default", plain, ChainIPXE},
		{"chooser signed", chooserAdmission{plain, ChainSigned}, ChainSigned},
		{"chooser empty", chooserAdmission{plain, ""}, ChainIPXE},
		{"static default signed", NewStaticAdmission(nil, nil).WithChains(ChainSigned, nil), ChainSigned},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &handler{adm: tc.adm, log: discardLog()}
			if got := h.chainOf(macA); got != tc.want {
				t.Errorf("chain %q, want %q", got, tc.want)
			}
		})
	}
}

func TestParseChain(t *testing.T) {
	for in, want := range map[string]Chain{"": ChainIPXE, "ipxe": ChainIPXE, " Signed ": ChainSigned} {
		if got, err := ParseChain(in); err != nil || got != want {
			t.Errorf("ParseChain(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"shim", "grub", "secureboot"} {
		if _, err := ParseChain(bad); err == nil {
			t.Errorf("ParseChain(%q) accepted", bad)
		}
	}
}

func TestFileConfigChains(t *testing.T) {
	fc, err := ParseFileConfig([]byte(`{"default_chain": "signed", "chains": {"52-54-00-00-00-0A": "ipxe", "5254.0000.000b": "signed"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if fc.DefaultChain != ChainSigned || fc.Chains[macA.String()] != ChainIPXE || fc.Chains[macB.String()] != ChainSigned || len(fc.Chains) != 2 {
		t.Errorf("parsed default %q chains %v", fc.DefaultChain, fc.Chains)
	}
	for in, want := range map[string]string{
		`{"default_chain": "shim"}`:                                                "default_chain",
		`{"chains": {"52:54:00": "signed"}}`:                                       "chains",
		`{"chains": {"52:54:00:00:00:0a": ""}}`:                                    "want",
		`{"chains": {"52:54:00:00:00:0a": "signed", "52-54-00-00-00-0A": "ipxe"}}`: "twice",
		`{"chain": {}}`: "unknown field",
	} {
		if _, err := ParseFileConfig([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseFileConfig(%s): err %v, want one mentioning %q", in, err, want)
		}
	}
}

func TestLayersAndMount(t *testing.T) {
	a := fstest.MapFS{"bootx64.efi": {Data: []byte("ipxe")}}
	b := fstest.MapFS{"bootx64.efi": {Data: []byte("shadowed")}, "shimx64.efi": {Data: []byte("shim")}}
	live := fstest.MapFS{"v1/vmlinuz": {Data: []byte("kernel")}}
	broken := errFS{fs.ErrPermission}
	l := Layers(a, nil, b, Mount("live", live), Mount("live2/x", broken))
	for name, want := range map[string]string{
		"bootx64.efi":     "ipxe",
		"shimx64.efi":     "shim",
		"live/v1/vmlinuz": "kernel",
	} {
		got, err := fs.ReadFile(l, name)
		if err != nil || string(got) != want {
			t.Errorf("%s: %q, %v; want %q", name, got, err, want)
		}
	}
	for _, name := range []string{"live", "live/", "v1/vmlinuz", "livex/v1/vmlinuz", "../x", "live/../bootx64.efi", "nothing"} {
		if _, err := l.Open(name); err == nil {
			t.Errorf("%s: opened, want an error", name)
		}
	}
	if _, err := l.Open("live2/x/y"); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("a layer's real error must not be hidden: %v", err)
	}
}

type errFS struct{ err error }

func (e errFS) Open(name string) (fs.File, error) {
	return nil, &fs.PathError{Op: "open", Path: name, Err: e.err}
}
