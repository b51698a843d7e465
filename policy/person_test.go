package policy_test

import (
	"bytes"
	"testing"

	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/signature"

	"github.com/gridseal/gridseal/internal/keys"
)

// person is an approver with a real Tink keyset.
type person struct {
	name   string
	signer *keys.Signer
	handle *keyset.Handle
}

func newPerson(t testing.TB, name string) *person {
	t.Helper()
	h, err := keys.New(keys.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	s, err := keys.SignerFromHandle(h)
	if err != nil {
		t.Fatal(err)
	}
	return &person{name: name, signer: s, handle: h}
}

// secondKey gives p a second key in the same keyset and returns a signer
// that signs with it.
func (p *person) secondKey(t testing.TB) *keys.Signer {
	t.Helper()
	m := keyset.NewManagerFromHandle(p.handle)
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
	p.handle = h
	s, err := keys.SignerFromHandle(h)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (p *person) publicJSON(t testing.TB) string {
	t.Helper()
	pub, err := p.handle.Public()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := pub.WriteWithNoSecrets(keyset.NewJSONWriter(&b)); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
