package chain

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/mod/sumdb/note"
)

// Witness cosignatures (c2sp.org/tlog-cosignature, type cosignature/v1):
// a witness that checked a checkpoint extends the tree it saw before signs
// "cosignature/v1\ntime <unix seconds>\n" ‖ the checkpoint's body with
// Ed25519, and adds a note signature line
// "— <witness name> base64(key ID ‖ u64 timestamp ‖ signature)". Its
// verifier key is "<name>+<key ID hex>+base64(0x04 ‖ public key)", with
// key ID = SHA-256(name ‖ "\n" ‖ 0x04 ‖ public key)[:4].
const cosignatureV1 = 0x04

// CosignatureVerifier checks cosignature/v1 signatures of one witness. It
// is a note.Verifier, so note.Open counts a witness's cosignature like any
// signature, and a verifier that does not know the witness ignores it.
type CosignatureVerifier struct {
	name string
	hash uint32
	key  ed25519.PublicKey
}

var _ note.Verifier = (*CosignatureVerifier)(nil)

// NewCosignatureVerifier parses a witness's verifier key (type 0x04).
func NewCosignatureVerifier(vkey string) (*CosignatureVerifier, error) {
	name, rest, ok1 := strings.Cut(vkey, "+")
	hexHash, b64, ok2 := strings.Cut(rest, "+")
	if !ok1 || !ok2 || !validKeyName(name) || len(hexHash) != 8 {
		return nil, fmt.Errorf("witness key %q: want name+keyid+base64(0x04 ‖ Ed25519 key)", vkey)
	}
	h, err1 := strconv.ParseUint(hexHash, 16, 32)
	raw, err2 := base64.StdEncoding.DecodeString(b64)
	if err1 != nil || err2 != nil || len(raw) != 1+ed25519.PublicKeySize {
		return nil, fmt.Errorf("witness key %q: malformed", vkey)
	}
	if raw[0] != cosignatureV1 {
		return nil, fmt.Errorf("witness key %q: type 0x%02x is not a cosignature/v1 (Ed25519) key", vkey, raw[0])
	}
	v := &CosignatureVerifier{name: name, hash: uint32(h), key: ed25519.PublicKey(raw[1:])}
	if id := cosignatureKeyID(name, v.key); id != v.hash {
		return nil, fmt.Errorf("witness key %q: key id %08x does not match the key (%08x)", vkey, v.hash, id)
	}
	return v, nil
}

// Name is the witness's name, as in its signature lines.
func (v *CosignatureVerifier) Name() string { return v.name }

// KeyHash is the key ID of the witness's signature lines.
func (v *CosignatureVerifier) KeyHash() uint32 { return v.hash }

// Verify checks one cosignature (timestamp ‖ Ed25519 signature) on msg,
// the checkpoint's body.
func (v *CosignatureVerifier) Verify(msg, sig []byte) bool {
	if len(sig) != 8+ed25519.SignatureSize {
		return false
	}
	t := binary.BigEndian.Uint64(sig)
	if t > math.MaxInt64 {
		return false
	}
	return ed25519.Verify(v.key, CosignedMessage(t, msg), sig[8:])
}

// String is the verifier key.
func (v *CosignatureVerifier) String() string {
	return fmt.Sprintf("%s+%08x+%s", v.name, v.hash,
		base64.StdEncoding.EncodeToString(append([]byte{cosignatureV1}, v.key...)))
}

// CosignedMessage is what a witness signs for a checkpoint body at Unix
// time t.
func CosignedMessage(t uint64, body []byte) []byte {
	return append([]byte("cosignature/v1\ntime "+strconv.FormatUint(t, 10)+"\n"), body...)
}

func cosignatureKeyID(name string, key ed25519.PublicKey) uint32 {
	h := sha256.New()
	h.Write([]byte(name + "\n"))
	h.Write([]byte{cosignatureV1})
	h.Write(key)
	return binary.BigEndian.Uint32(h.Sum(nil))
}

func validKeyName(name string) bool {
	return name != "" && utf8.ValidString(name) && strings.IndexFunc(name, unicode.IsSpace) < 0 && !strings.Contains(name, "+")
}

// Cosignature is one witness's verified cosignature of a checkpoint.
type Cosignature struct {
	Witness string    // the witness's name
	Time    time.Time // when the witness says it signed (whole seconds)
}

// ErrBadCosignature says a signature line names a pinned witness key but
// does not verify: the note is malformed, or forged.
var ErrBadCosignature = errors.New("a cosignature from a pinned witness key does not verify")

// Cosignatures returns the valid cosignatures of a signed checkpoint note
// by the given witnesses; signatures by any other key are ignored.
func Cosignatures(msg []byte, witnesses []*CosignatureVerifier) ([]Cosignature, error) {
	if len(witnesses) == 0 {
		return nil, nil
	}
	vs := make([]note.Verifier, len(witnesses))
	for i, w := range witnesses {
		vs[i] = w
	}
	n, err := note.Open(msg, note.VerifierList(vs...))
	var unverified *note.UnverifiedNoteError
	switch {
	case errors.As(err, &unverified):
		return nil, nil
	case err != nil:
		var bad *note.InvalidSignatureError
		if errors.As(err, &bad) {
			return nil, fmt.Errorf("%w: %s", ErrBadCosignature, bad.Name)
		}
		return nil, err
	}
	out := make([]Cosignature, 0, len(n.Sigs))
	for _, s := range n.Sigs {
		raw, err := base64.StdEncoding.DecodeString(s.Base64)
		if err != nil || len(raw) < 12 {
			continue // note.Open verified it: cannot happen
		}
		out = append(out, Cosignature{Witness: s.Name, Time: time.Unix(int64(binary.BigEndian.Uint64(raw[4:])), 0)})
	}
	return out, nil
}
