// Package keystest makes Tink keys for tests: a fresh in-memory Ed25519
// keyset with its signer and verifier, in one call.
package keystest

import (
	"testing"

	"github.com/tink-crypto/tink-go/v2/keyset"

	"github.com/gridseal/gridseal/internal/keys"
)

// Key is a fresh Ed25519 keyset: its private handle, a signer with its
// primary key and a verifier of its public half.
type Key struct {
	Handle   *keyset.Handle
	Signer   *keys.Signer
	Verifier *keys.Verifier
}

// New makes a fresh Ed25519 keyset, failing the test if Tink cannot.
func New(t testing.TB) Key {
	t.Helper()
	h, err := keys.New(keys.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	s, err := keys.SignerFromHandle(h)
	if err != nil {
		t.Fatal(err)
	}
	v, err := keys.VerifierFromHandle(h)
	if err != nil {
		t.Fatal(err)
	}
	return Key{Handle: h, Signer: s, Verifier: v}
}

// Signer is New(t).Signer: a signer with a fresh Ed25519 key.
func Signer(t testing.TB) *keys.Signer {
	t.Helper()
	return New(t).Signer
}
