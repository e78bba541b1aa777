package power

import (
	"fmt"
	"strings"
)

// SignaturePath is where the seed's convention puts an image's name.
func SignaturePath(user string) string { return "/home/" + user + "/Desktop/Signature" }

// WantedSignature is the Signature content expected for image: its name
// minus the "-img" suffix Clonezilla image folders carry by convention.
func WantedSignature(image string) string { return strings.TrimSuffix(image, "-img") }

// CheckSignature compares a Signature file's content with image. Surrounding
// white space (a trailing newline, Windows line ends) and a UTF-8 byte order
// mark (Notepad) are ignored; the comparison is otherwise exact.
func CheckSignature(content []byte, image string) error {
	wanted := WantedSignature(image)
	if wanted == "" {
		return fmt.Errorf("image name %q gives an empty signature; name the image", image)
	}
	found := strings.TrimSpace(strings.TrimPrefix(string(content), "\ufeff"))
	if found == "" {
		return ErrNoSignature
	}
	if found != wanted {
		return &WrongImageError{Found: printable(found), Wanted: wanted}
	}
	return nil
}

// printable keeps what a seat sent us short and free of control characters
// before it reaches logs and mail.
func printable(s string) string {
	const max = 80
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= max {
			b.WriteString("…")
			break
		}
		if r < 0x20 || r == 0x7f || r == '\ufffd' {
			r = '?'
		}
		b.WriteRune(r)
	}
	return b.String()
}
