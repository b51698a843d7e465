package keystest_test

import (
	"testing"

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
