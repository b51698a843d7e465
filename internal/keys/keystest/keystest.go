// Package keystest makes keys for tests, in one call: a fresh in-memory
// Ed25519 Tink keyset with its signer and verifier, a person who signs
// with one, and a checkpointer's signed-note key pair.
package keystest

import (
	"crypto/rand"
	"errors"
	"testing"

	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/signature"
	"golang.org/x/mod/sumdb/note"

	"github.com/gridseal/gridseal/internal/keys"
)

// Person is someone who signs as policies name them (an approver, a policy
// admin) with a real Tink keyset; Key holds its current handle.
type Person struct {
	Name string
	Key
}

// NewPerson gives name a fresh Ed25519 keyset.
func NewPerson(t testing.TB, name string) *Person {
	t.Helper()
	return &Person{Name: name, Key: New(t)}
}

// SecondKey adds a key to p's keyset, makes it the primary one (so
// PublicJSON lists both) and returns a signer that signs with it.
func (p *Person) SecondKey(t testing.TB) *keys.Signer {
	t.Helper()
	m := keyset.NewManagerFromHandle(p.Handle)
	id, err := m.Add(signature.ED25519KeyTemplate())
	if err != nil {
		t.Fatal(err)
	}
	if err := m.SetPrimary(id); err != nil {
		t.Fatal(err)
	}
	h, err := m.Handle()
	if err != nil {
		t.Fatal(err)
	}
	p.Handle = h
	s, err := keys.SignerFromHandle(h)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// PublicJSON is the public half of p's keyset, as a policy lists it.
func (p *Person) PublicJSON(t testing.TB) []byte {
	t.Helper()
	pub, err := keys.PublicJSON(p.Handle)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

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

// Checkpointer is a fresh signed-note key pair, as a checkpointer signs
// the chain's tree with.
type Checkpointer struct {
	Signer   note.Signer
	Verifier note.Verifier
	// VerifierKey is the encoded verifier key, as a trust file lists it.
	VerifierKey string
}

// Verifiers is the list of checkpointer keys a chain trust holds: this one.
func (c Checkpointer) Verifiers() note.Verifiers { return note.VerifierList(c.Verifier) }

// NewCheckpointer makes a fresh key pair named name.
func NewCheckpointer(t testing.TB, name string) Checkpointer {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		t.Fatal(err)
	}
	s, serr := note.NewSigner(skey)
	v, verr := note.NewVerifier(vkey)
	if err := errors.Join(serr, verr); err != nil {
		t.Fatal(err)
	}
	return Checkpointer{Signer: s, Verifier: v, VerifierKey: vkey}
}
