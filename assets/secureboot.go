package assets

import (
	"embed"
	"io/fs"
)

// The signed network-boot chain for seats with Secure Boot on: Debian's
// Microsoft-signed shim and Debian's signed network GRUB, unchanged from
// their packages (versions, checksums, licences: secureboot/SOURCE.md).
// GRUB is stored as grubx64.efi because shim loads exactly that name from
// the TFTP directory it was itself loaded from.
//
//go:embed secureboot/shimx64.efi secureboot/grubx64.efi
var secureBootFS embed.FS

// Names of the signed chain's programs in SecureBoot().
const (
	SecureBootShim = "shimx64.efi" // the first-stage boot program a seat's firmware is sent
	SecureBootGrub = "grubx64.efi" // what shim fetches next, from the same TFTP directory
)

// SecureBoot returns the signed chain's programs by the names clients
// request: "shimx64.efi" and "grubx64.efi".
func SecureBoot() fs.FS {
	sub, err := fs.Sub(secureBootFS, "secureboot")
	if err != nil {
		panic(err) // cannot happen: the directory is embedded at build time
	}
	return sub
}
