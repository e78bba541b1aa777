package power

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/pumi-lab/pumi/internal/atomicfile"
)

// KeyFile is the name of pumi's private key inside the state directory.
const KeyFile = "ssh_ed25519"

// keyComment marks pumi's key in an image's authorized_keys.
const keyComment = "pumi"

// Key is pumi's own SSH identity.
type Key struct {
	signer ssh.Signer
	path   string
}

// LoadOrCreateKey loads pumi's ed25519 key from dir/KeyFile, generating and
// saving it (0600, crash-safe) on first start. An existing file that does not
// parse is an error and is left alone: replacing it silently would lock pumi
// out of every image that trusts the old key.
func LoadOrCreateKey(dir string, log *slog.Logger) (*Key, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	path := filepath.Join(dir, KeyFile)
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		signer, perr := ssh.ParsePrivateKey(data)
		if perr != nil {
			return nil, fmt.Errorf("pumi ssh key %s: %w; restore it from a backup, or move it aside to generate a new one (then update every image's authorized_keys)", path, perr)
		}
		if fi, serr := os.Stat(path); serr == nil && fi.Mode().Perm()&0o077 != 0 {
			// The key is only useful if nobody else can read it.
			if cerr := os.Chmod(path, 0o600); cerr != nil {
				return nil, fmt.Errorf("pumi ssh key %s is readable by others (%v) and chmod 0600 failed: %w", path, fi.Mode().Perm(), cerr)
			}
			log.Warn("pumi ssh key was readable by others; set to 0600", "path", path)
		}
		return &Key{signer: signer, path: path}, nil
	case errors.Is(err, fs.ErrNotExist):
	default:
		return nil, fmt.Errorf("pumi ssh key %s: %w; check the state directory", path, err)
	}

	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate pumi ssh key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, keyComment)
	if err != nil {
		return nil, fmt.Errorf("encode pumi ssh key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pumi ssh key: state directory %s: %w", dir, err)
	}
	if err := atomicfile.Write(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, fmt.Errorf("save pumi ssh key: %w; is the state directory writable?", err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, fmt.Errorf("pumi ssh key: %w", err)
	}
	k := &Key{signer: signer, path: path}
	log.Info("generated pumi ssh key", "path", path, "fingerprint", k.Fingerprint())
	return k, nil
}

// Signer is the key for ssh.PublicKeys.
func (k *Key) Signer() ssh.Signer { return k.signer }

// Path is the file the key is stored in.
func (k *Key) Path() string { return k.path }

// PublicKey is the line for an image's ~/.ssh/authorized_keys.
func (k *Key) PublicKey() string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k.signer.PublicKey()))) + " " + keyComment
}

// Fingerprint is the key's SHA256 fingerprint, as ssh-keygen -l prints it.
func (k *Key) Fingerprint() string { return ssh.FingerprintSHA256(k.signer.PublicKey()) }
