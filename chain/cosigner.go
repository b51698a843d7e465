package chain

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Cosigner signs cosignature/v1 cosignatures (c2sp.org/tlog-cosignature)
// as one witness: what a gridseal mirror answers a checkpointer with. Its
// secret key is written as a signed-note style line,
// "PRIVATE+KEY+<name>+<key ID hex>+base64(0x04 ‖ Ed25519 seed)", beside
// the verifier key CosignatureVerifier reads. Safe for concurrent use.
type Cosigner struct {
	name string
	hash uint32
	key  ed25519.PrivateKey
}

// GenerateCosignerKey returns a new witness key pair named name: the
// secret key line and the verifier key.
func GenerateCosignerKey(name string) (skey, vkey string, err error) {
	if !validKeyName(name) {
		return "", "", fmt.Errorf("witness name %q: no spaces or '+'", name)
	}
	seed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return "", "", err
	}
	priv := ed25519.NewKeyFromSeed(seed)
	pub := priv.Public().(ed25519.PublicKey)
	hash := cosignatureKeyID(name, pub)
	skey = fmt.Sprintf("PRIVATE+KEY+%s+%08x+%s", name, hash, base64.StdEncoding.EncodeToString(append([]byte{cosignatureV1}, seed...)))
	vkey = (&CosignatureVerifier{name: name, hash: hash, key: pub}).String()
	return skey, vkey, nil
}

// NewCosigner parses a secret key line of GenerateCosignerKey.
func NewCosigner(skey string) (*Cosigner, error) {
	bad := fmt.Errorf("witness secret key: want PRIVATE+KEY+name+keyid+base64(0x04 ‖ Ed25519 seed)")
	rest, ok := strings.CutPrefix(skey, "PRIVATE+KEY+")
	if !ok {
		return nil, bad
	}
	name, rest, ok1 := strings.Cut(rest, "+")
	hexHash, b64, ok2 := strings.Cut(rest, "+")
	if !ok1 || !ok2 || !validKeyName(name) || len(hexHash) != 8 {
		return nil, bad
	}
	h, err1 := strconv.ParseUint(hexHash, 16, 32)
	raw, err2 := base64.StdEncoding.DecodeString(b64)
	if err1 != nil || err2 != nil || len(raw) != 1+ed25519.SeedSize || raw[0] != cosignatureV1 {
		return nil, bad
	}
	priv := ed25519.NewKeyFromSeed(raw[1:])
	if cosignatureKeyID(name, priv.Public().(ed25519.PublicKey)) != uint32(h) {
		return nil, fmt.Errorf("witness secret key of %s: key id %s does not match the key", name, hexHash)
	}
	return &Cosigner{name: name, hash: uint32(h), key: priv}, nil
}

// Name is the witness's name, as in its signature lines.
func (c *Cosigner) Name() string { return c.name }

// Verifier returns the verifier of this cosigner's signatures.
func (c *Cosigner) Verifier() *CosignatureVerifier {
	return &CosignatureVerifier{name: c.name, hash: c.hash, key: c.key.Public().(ed25519.PublicKey)}
}

// Cosign returns the note signature line, newline included, that cosigns
// the checkpoint text body (the note's text, as signed) at time t.
func (c *Cosigner) Cosign(body []byte, t time.Time) []byte {
	ts := uint64(max(t.Unix(), 0))
	sig := make([]byte, 12, 12+ed25519.SignatureSize)
	binary.BigEndian.PutUint32(sig, c.hash)
	binary.BigEndian.PutUint64(sig[4:], ts)
	sig = append(sig, ed25519.Sign(c.key, CosignedMessage(ts, body))...)
	return []byte("— " + c.name + " " + base64.StdEncoding.EncodeToString(sig) + "\n")
}

// CosignerKeyPaths are the files of a witness key pair named name in dir:
// the secret key (0600) and the verifier key. A name may hold '/' (names
// are often a domain and a path): it becomes '_' in the file names.
func CosignerKeyPaths(dir, name string) (skey, vkey string) {
	base := strings.ReplaceAll(name, "/", "_")
	return filepath.Join(dir, base+".witness.key"), filepath.Join(dir, base+".witness.vkey")
}

// NewCosignerKey writes a new witness key pair named name into dir and
// returns the verifier key. It refuses to replace an existing key
// (atomicfile.ErrExists).
func NewCosignerKey(dir, name string) (vkey string, err error) {
	sp, vp := CosignerKeyPaths(dir, name)
	return newKeyPair(sp, vp, func() (string, string, error) { return GenerateCosignerKey(name) })
}

// LoadCosigner reads a witness secret key file; a key file that others
// may read is refused.
func LoadCosigner(path string) (*Cosigner, error) {
	key, err := readSecretKey(path, "witness key")
	if err != nil {
		return nil, err
	}
	c, err := NewCosigner(key)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}
