package power

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"
	"sync"
	"unicode"

	"golang.org/x/crypto/ssh"

	"github.com/pumi-lab/pumi/internal/atomicfile"
)

// HostKeyStore keeps the host key first seen per (image, seat). The
// appliance implements it on its state store; FileHostKeyStore is a
// file-backed one for tests and the CLI.
type HostKeyStore interface {
	// PinnedHostKey returns the key pinned for (image, seat), or nil, nil
	// when there is none yet.
	PinnedHostKey(ctx context.Context, image, seat string) (ssh.PublicKey, error)
	// PinHostKey records key for (image, seat) on first use.
	PinHostKey(ctx context.Context, image, seat string, key ssh.PublicKey) error
}

// FileHostKeyStore is a HostKeyStore in a text file, one pin per line:
//
//	<image> <seat> <key type> <base64 key>
//
// Blank lines and lines starting with '#' are ignored. The file is rewritten
// crash-safely on every change.
type FileHostKeyStore struct {
	path string
	mu   sync.Mutex
}

// NewFileHostKeyStore uses path; the file is created on the first pin.
func NewFileHostKeyStore(path string) *FileHostKeyStore { return &FileHostKeyStore{path: path} }

type pinKey struct{ image, seat string }

func (s *FileHostKeyStore) load() (map[pinKey]ssh.PublicKey, error) {
	data, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[pinKey]ssh.PublicKey{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("host key file %s: %w", s.path, err)
	}
	m, err := parseHostKeys(data)
	if err != nil {
		return nil, fmt.Errorf("host key file %s: %w; fix or remove that line", s.path, err)
	}
	return m, nil
}

// parseHostKeys parses the FileHostKeyStore format.
func parseHostKeys(data []byte) (map[pinKey]ssh.PublicKey, error) {
	m := map[pinKey]ssh.PublicKey{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 4 {
			return nil, fmt.Errorf("line %d: want \"<image> <seat> <key type> <base64 key>\", got %d fields", n, len(f))
		}
		key, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(f[2] + " " + f[3]))
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if len(bytes.TrimSpace(rest)) != 0 {
			return nil, fmt.Errorf("line %d: trailing data after key", n)
		}
		if key.Type() != f[2] {
			return nil, fmt.Errorf("line %d: key type %q does not match the key's own type %q", n, f[2], key.Type())
		}
		k := pinKey{f[0], f[1]}
		if _, dup := m[k]; dup {
			return nil, fmt.Errorf("line %d: second pin for image %q seat %q", n, f[0], f[1])
		}
		m[k] = key
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return m, nil
}

func formatHostKeys(m map[pinKey]ssh.PublicKey) []byte {
	keys := make([]pinKey, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].image != keys[j].image {
			return keys[i].image < keys[j].image
		}
		return keys[i].seat < keys[j].seat
	})
	var b bytes.Buffer
	b.WriteString("# pumi pinned SSH host keys: <image> <seat> <key>\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s %s %s", k.image, k.seat, ssh.MarshalAuthorizedKey(m[k]))
	}
	return b.Bytes()
}

// checkPinName rejects names the one-line format cannot hold.
func checkPinName(what, s string) error {
	if s == "" {
		return fmt.Errorf("host key pin: empty %s", what)
	}
	for _, r := range s {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return fmt.Errorf("host key pin: %s %q contains white space or control characters", what, s)
		}
	}
	if s[0] == '#' {
		return fmt.Errorf("host key pin: %s %q starts with '#'", what, s)
	}
	return nil
}

// PinnedHostKey implements HostKeyStore.
func (s *FileHostKeyStore) PinnedHostKey(_ context.Context, image, seat string) (ssh.PublicKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.load()
	if err != nil {
		return nil, err
	}
	return m[pinKey{image, seat}], nil
}

// PinHostKey implements HostKeyStore. Pinning a different key over an
// existing pin is refused: that is what Forget is for.
func (s *FileHostKeyStore) PinHostKey(_ context.Context, image, seat string, key ssh.PublicKey) error {
	if err := checkPinName("image", image); err != nil {
		return err
	}
	if err := checkPinName("seat", seat); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.load()
	if err != nil {
		return err
	}
	if old, ok := m[pinKey{image, seat}]; ok {
		if bytes.Equal(old.Marshal(), key.Marshal()) {
			return nil
		}
		return fmt.Errorf("host key for image %q seat %q is already pinned to %s; forget it first", image, seat, ssh.FingerprintSHA256(old))
	}
	m[pinKey{image, seat}] = key
	return atomicfile.Write(s.path, formatHostKeys(m), 0o600)
}

// Forget removes the pin for (image, seat), for an admin who rebuilt an
// image with new host keys.
func (s *FileHostKeyStore) Forget(_ context.Context, image, seat string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.load()
	if err != nil {
		return err
	}
	if _, ok := m[pinKey{image, seat}]; !ok {
		return nil
	}
	delete(m, pinKey{image, seat})
	return atomicfile.Write(s.path, formatHostKeys(m), 0o600)
}
