package keystest_test

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/mod/sumdb/note"

	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/internal/keys/keystest"
)

func TestNewSignsWhatItsVerifierAccepts(t *testing.T) {
	k := keystest.New(t)
	sig, err := k.Signer.Sign([]byte("op 7"))
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Verifier.Verify(sig, []byte("op 7")); err != nil {
		t.Fatal(err)
	}
	if !k.Verifier.KeyIDs[k.Signer.KeyID] {
		t.Fatalf("verifier key ids %v lack the signer's %d", k.Verifier.KeyIDs, k.Signer.KeyID)
	}
	if keystest.Signer(t).KeyID == k.Signer.KeyID {
		t.Fatal("two keys with one id")
	}
}

// TestPersonSecondKey: after SecondKey the person's public keyset lists
// both keys, so what either signs verifies against it.
func TestPersonSecondKey(t *testing.T) {
	p := keystest.NewPerson(t, "alice")
	first := p.Signer
	second := p.SecondKey(t)
	if second.KeyID == first.KeyID {
		t.Fatal("the second key has the first one's id")
	}
	path := filepath.Join(t.TempDir(), "alice.public.json")
	if err := os.WriteFile(path, p.PublicJSON(t), 0o644); err != nil {
		t.Fatal(err)
	}
	v, err := keys.LoadVerifier(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*keys.Signer{first, second} {
		sig, err := s.Sign([]byte("op 7"))
		if err != nil {
			t.Fatal(err)
		}
		if err := v.Verify(sig, []byte("op 7")); err != nil {
			t.Fatalf("key %d: %v", s.KeyID, err)
		}
	}
}

// TestCheckpointerSignsWhatItsVerifiersAccept: a note signed with the
// checkpointer's key opens with its verifiers, and with the verifier
// parsed from VerifierKey.
func TestCheckpointerSignsWhatItsVerifiersAccept(t *testing.T) {
	c := keystest.NewCheckpointer(t, "checkpointer-1")
	msg, err := note.Sign(&note.Note{Text: "gridseal tree\n40\n"}, c.Signer)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := note.NewVerifier(c.VerifierKey)
	if err != nil {
		t.Fatal(err)
	}
	for name, vs := range map[string]note.Verifiers{"Verifiers": c.Verifiers(), "VerifierKey": note.VerifierList(parsed)} {
		if _, err := note.Open(msg, vs); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if other := keystest.NewCheckpointer(t, "checkpointer-1"); other.VerifierKey == c.VerifierKey {
		t.Fatal("two checkpointers with one key")
	}
}
