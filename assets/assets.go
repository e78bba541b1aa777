// Package assets holds the files pumi embeds into its binaries with go:embed:
// the iPXE boot programs served over TFTP/HTTP (and, later, the web page's
// templates and static files).
package assets

import (
	"embed"
	"io/fs"
)

//go:embed ipxe/bootx64.efi ipxe/undionly.kpxe
var ipxeFS embed.FS

// IPXE returns the boot programs by the names clients request:
// "bootx64.efi" for x86-64 UEFI and "undionly.kpxe" for legacy BIOS.
func IPXE() fs.FS {
	sub, err := fs.Sub(ipxeFS, "ipxe")
	if err != nil {
		panic(err) // cannot happen: the directory is embedded at build time
	}
	return sub
}
