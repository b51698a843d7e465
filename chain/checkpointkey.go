package chain

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/sumdb/note"

	"github.com/gridseal/gridseal/internal/atomicfile"
)

// CheckpointKeyPaths are the files of a checkpointer's signed-note key pair
// in dir: the signer key (secret, 0600) and the verifier key.
func CheckpointKeyPaths(dir, name string) (skey, vkey string) {
	return filepath.Join(dir, name+".checkpoint.key"), filepath.Join(dir, name+".checkpoint.vkey")
}

// NewCheckpointKey writes a new signed-note key pair for a checkpointer
// named name into dir and returns the verifier key. It refuses to replace
// an existing key (atomicfile.ErrExists).
func NewCheckpointKey(dir, name string) (vkey string, err error) {
	sp, vp := CheckpointKeyPaths(dir, name)
	return newKeyPair(sp, vp, func() (string, string, error) { return note.GenerateKey(rand.Reader, name) })
}

// newKeyPair writes a key pair that generate makes: the secret key to sp
// (0600) and the verifier key to vp, replacing neither
// (atomicfile.ErrExists). It returns the verifier key.
func newKeyPair(sp, vp string, generate func() (skey, vkey string, err error)) (string, error) {
	skey, vkey, err := generate()
	if err != nil {
		return "", err
	}
	if err := atomicfile.Create(sp, []byte(skey+"\n"), 0o600); err != nil {
		return "", err
	}
	if err := atomicfile.Create(vp, []byte(vkey+"\n"), 0o644); err != nil {
		return "", err
	}
	return vkey, nil
}

// readSecretKey reads the secret key in the file at path, what kind of
// key it is named in errors; a key file that others may read is refused.
func readSecretKey(path, what string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s %s is readable by others; chmod 600 it", what, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// LoadCheckpointSigner reads a checkpointer's signer key; a key file that
// others may read is refused.
func LoadCheckpointSigner(path string) (note.Signer, error) {
	key, err := readSecretKey(path, "checkpoint key")
	if err != nil {
		return nil, err
	}
	s, err := note.NewSigner(key)
	if err != nil {
		return nil, fmt.Errorf("checkpoint key %s: not a signed-note signer key", path)
	}
	return s, nil
}
