package chain_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"

	"github.com/gridseal/gridseal/chain"
)

// TestCheckpointVector pins a signed checkpoint: the tree of the five
// events "event 0" … "event 4", signed by a test key derived from a fixed
// seed (Ed25519 signatures are deterministic), so another implementation
// can check its tree, its note body and its signature against ours.
func TestCheckpointVector(t *testing.T) {
	seed := sha256.Sum256([]byte("gridseal checkpoint test vector"))
	skey, vkey, err := note.GenerateKey(bytes.NewReader(seed[:]), "cp-test")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	var acc chain.RootAcc
	for i := range 5 {
		acc.Append(chain.LeafHash(fmt.Appendf(nil, "event %d", i)))
	}
	cp, err := chain.SignCheckpoint(acc.Size(), acc.Root(), signer)
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	back, err := chain.OpenCheckpoint(cp.Note, note.VerifierList(verifier))
	if err != nil || back.Size != 5 || back.Root != acc.Root() || len(back.Signers) != 1 || back.Signers[0] != "cp-test" {
		t.Fatalf("open: %+v %v", back, err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "leaves event 0..event 4\n")
	fmt.Fprintf(&b, "root %s\n", acc.Root())
	fmt.Fprintf(&b, "verifier-key %s\n", vkey)
	fmt.Fprintf(&b, "note %x\n", cp.Note)
	golden(t, "checkpoint-v1.txt", []byte(b.String()))
}
