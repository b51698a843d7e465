// Package keys reads and writes gridseal's Tink signature keysets: a private
// keyset (NAME.private.json, mode 0600, never logged) and its public half
// (NAME.public.json, shareable) that verifiers pin.
package keys

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/signature"
	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/gridseal/gridseal/internal/atomicfile"
)

// Algorithms a keyset may be created with.
const (
	Ed25519   = "ed25519"
	ECDSAP256 = "ecdsa-p256"
)

// Signer signs with the primary key of a private keyset, and verifies
// with its public half.
type Signer struct {
	tink.Signer
	KeyID    uint32 // primary key id: the Tink output prefix names it
	verifier tink.Verifier
}

// Verify checks a signature made by any key of this keyset.
func (s *Signer) Verify(sig, data []byte) error { return s.verifier.Verify(sig, data) }

// PrimaryKeyID returns the id of the key that signs.
func (s *Signer) PrimaryKeyID() uint32 { return s.KeyID }

// New creates a keyset with one key of the given algorithm.
func New(alg string) (*keyset.Handle, error) {
	switch alg {
	case "", Ed25519:
		return keyset.NewHandle(signature.ED25519KeyTemplate())
	case ECDSAP256:
		return keyset.NewHandle(signature.ECDSAP256KeyTemplate())
	}
	return nil, fmt.Errorf("unknown key algorithm %q: want %s or %s", alg, Ed25519, ECDSAP256)
}

// Paths returns the private and public file names for name in dir.
func Paths(dir, name string) (private, public string) {
	return filepath.Join(dir, name+".private.json"), filepath.Join(dir, name+".public.json")
}

// ErrExists is returned when a keyset would overwrite another.
var ErrExists = errors.New("keyset already exists")

// WritePair writes h's private keyset (0600) and public keyset (0644) for
// name in dir. It refuses to overwrite either file.
func WritePair(dir, name string, h *keyset.Handle) (private, public string, err error) {
	private, public = Paths(dir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("key directory: %w", err)
	}
	var priv bytes.Buffer
	if err := insecurecleartextkeyset.Write(h, keyset.NewJSONWriter(&priv)); err != nil {
		return "", "", fmt.Errorf("encode private keyset: %w", err)
	}
	pub, err := PublicJSON(h)
	if err != nil {
		return "", "", err
	}
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{{private, priv.Bytes(), 0o600}, {public, pub, 0o644}} {
		if err := atomicfile.Create(f.path, f.data, f.mode); errors.Is(err, atomicfile.ErrExists) {
			return "", "", fmt.Errorf("%s: %w", f.path, ErrExists)
		} else if err != nil {
			return "", "", err
		}
	}
	return private, public, nil
}

// PublicJSON is h's public keyset in Tink's JSON form (no secrets).
func PublicJSON(h *keyset.Handle) ([]byte, error) {
	pubH, err := h.Public()
	if err != nil {
		return nil, fmt.Errorf("public keyset: %w", err)
	}
	var pub bytes.Buffer
	if err := pubH.WriteWithNoSecrets(keyset.NewJSONWriter(&pub)); err != nil {
		return nil, fmt.Errorf("encode public keyset: %w", err)
	}
	return pub.Bytes(), nil
}

// LoadSigner reads a private keyset. It refuses a file others can read.
func LoadSigner(path string) (*Signer, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("private keyset: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("private keyset %s is readable by others (mode %o); chmod 600 it", path, fi.Mode().Perm())
	}
	h, err := readKeyset(path, "private keyset", "a Tink keyset", func(r keyset.Reader) (*keyset.Handle, error) {
		return insecurecleartextkeyset.Read(r)
	})
	if err != nil {
		return nil, err
	}
	return SignerFromHandle(h)
}

// readKeyset reads the JSON keyset at path with read; its errors name the
// file as what (and, when it cannot be read as one, what it should be).
func readKeyset(path, what, want string, read func(keyset.Reader) (*keyset.Handle, error)) (*keyset.Handle, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	h, err := read(keyset.NewJSONReader(bytes.NewReader(data)))
	if err != nil {
		return nil, fmt.Errorf("%s %s: not %s", what, path, want)
	}
	return h, nil
}

// Generate makes a fresh Ed25519 keyset in memory and returns its signer
// and its public keyset as JSON (benchmarks and tests; real keys are
// written with WritePair).
func Generate() (*Signer, []byte, error) {
	h, err := New(Ed25519)
	if err != nil {
		return nil, nil, err
	}
	s, err := SignerFromHandle(h)
	if err != nil {
		return nil, nil, err
	}
	pub, err := PublicJSON(h)
	if err != nil {
		return nil, nil, err
	}
	return s, pub, nil
}

// SignerFromHandle returns a signer for a private keyset handle.
func SignerFromHandle(h *keyset.Handle) (*Signer, error) {
	s, err := signature.NewSigner(h)
	if err != nil {
		return nil, fmt.Errorf("signer: %w", err)
	}
	pub, err := h.Public()
	if err != nil {
		return nil, fmt.Errorf("signer: %w", err)
	}
	v, err := signature.NewVerifier(pub)
	if err != nil {
		return nil, fmt.Errorf("signer: %w", err)
	}
	return &Signer{Signer: s, KeyID: h.KeysetInfo().GetPrimaryKeyId(), verifier: v}, nil
}

// Verifier checks signatures against a public keyset.
type Verifier struct {
	tink.Verifier
	KeyIDs map[uint32]bool // ids of the keys in the keyset
}

// LoadVerifier reads a public keyset.
func LoadVerifier(path string) (*Verifier, error) {
	h, err := readKeyset(path, "public keyset", "a Tink public keyset", keyset.ReadWithNoSecrets)
	if err != nil {
		return nil, err
	}
	return VerifierFromHandle(h)
}

// VerifierFromHandle returns a verifier for a public keyset handle (or the
// public half of a private one).
func VerifierFromHandle(h *keyset.Handle) (*Verifier, error) {
	if pub, err := h.Public(); err == nil {
		h = pub
	}
	v, err := signature.NewVerifier(h)
	if err != nil {
		return nil, fmt.Errorf("verifier: %w", err)
	}
	ids := map[uint32]bool{}
	for _, k := range h.KeysetInfo().GetKeyInfo() {
		ids[k.GetKeyId()] = true
	}
	return &Verifier{Verifier: v, KeyIDs: ids}, nil
}
