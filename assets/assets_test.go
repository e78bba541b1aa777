package assets

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path"
	"strings"
	"testing"
)

// TestChecksums: the embedded boot programs are exactly the files whose
// checksums SOURCE.md's SHA256SUMS records (so a replaced binary cannot
// slip in without its provenance being updated too).
func TestChecksums(t *testing.T) {
	for _, tc := range []struct {
		dir   string
		files fs.FS
		names []string
	}{
		{"ipxe", IPXE(), []string{"bootx64.efi", "undionly.kpxe"}},
		{"secureboot", SecureBoot(), []string{SecureBootShim, SecureBootGrub}},
	} {
		t.Run(tc.dir, func(t *testing.T) {
			f, err := os.Open(path.Join(tc.dir, "SHA256SUMS"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			want := map[string]string{}
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				sum, name, ok := strings.Cut(sc.Text(), "  ")
				if !ok {
					t.Fatalf("SHA256SUMS line %q: want '<sum>  <path>'", sc.Text())
				}
				want[path.Base(name)] = sum
			}
			for _, n := range tc.names {
				b, err := fs.ReadFile(tc.files, n)
				if err != nil {
					t.Fatal(err)
				}
				got := sha256.Sum256(b)
				if hex.EncodeToString(got[:]) != want[n] {
					t.Errorf("%s/%s: sha256 %x, SHA256SUMS says %q", tc.dir, n, got, want[n])
				}
			}
		})
	}
}
