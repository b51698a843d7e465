package chain_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/gridseal/gridseal/chain"
)

// verifyWithSumdb is the whole offline check of a gridseal tlog-proof with
// golang.org/x/mod/sumdb alone and the checkpointer's verifier key, as
// docs/FORMAT.md shows it: it returns the proved event.
func verifyWithSumdb(proof []byte, vkey string) ([]byte, error) {
	head, cpNote, ok := bytes.Cut(proof, []byte("\n\n"))
	lines := strings.Split(string(head), "\n")
	if !ok || len(lines) < 3 || lines[0] != "c2sp.org/tlog-proof@v1" {
		return nil, fmt.Errorf("not a tlog-proof")
	}
	event, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(lines[1], "extra "))
	if err != nil {
		return nil, err
	}
	index, err := strconv.ParseInt(strings.TrimPrefix(lines[2], "index "), 10, 64)
	if err != nil {
		return nil, err
	}
	var rp tlog.RecordProof
	for _, l := range lines[3:] {
		h, err := base64.StdEncoding.DecodeString(l)
		if err != nil || len(h) != 32 {
			return nil, fmt.Errorf("proof hash %q", l)
		}
		rp = append(rp, tlog.Hash(h))
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, err
	}
	n, err := note.Open(cpNote, note.VerifierList(v))
	if err != nil {
		return nil, err
	}
	body := strings.Split(n.Text, "\n") // origin, size, root
	size, err := strconv.ParseInt(body[1], 10, 64)
	if err != nil || body[0] != "gridseal/chain/GRIDSEAL_CHAIN" {
		return nil, fmt.Errorf("checkpoint %q", n.Text)
	}
	root, err := base64.StdEncoding.DecodeString(body[2])
	if err != nil || len(root) != 32 {
		return nil, fmt.Errorf("checkpoint root %q", body[2])
	}
	return event, tlog.CheckRecord(rp, size, tlog.Hash(root), index, tlog.RecordHash(event))
}

// TestTlogProofVerifiesWithSumdbAlone: a proof written by gridseal checks
// with x/mod/sumdb and the public key only, and with chain's own Verify;
// a changed event checks with neither.
func TestTlogProofVerifiesWithSumdbAlone(t *testing.T) {
	skey, vkey, err := note.GenerateKey(rand.Reader, "cp-1")
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	known := note.VerifierList(v)
	var tree chain.Tree
	var events [][]byte
	for i := range 1000 {
		events = append(events, fmt.Appendf(nil, "event %d", i))
	}
	if err := tree.AppendBlock(1, events); err != nil {
		t.Fatal(err)
	}
	root, _ := tree.Root(1000)
	cp, err := chain.SignCheckpoint(1000, root, signer)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 1, 511, 999} {
		t.Run(fmt.Sprint("leaf ", i), func(t *testing.T) {
			inc, err := chain.ProveInTree(&tree, cp, 1, i)
			if err != nil {
				t.Fatal(err)
			}
			file := chain.NewTlogProof(inc, events[i]).Marshal()
			if got, err := verifyWithSumdb(file, vkey); err != nil || !bytes.Equal(got, events[i]) {
				t.Fatalf("sumdb alone: %q, %v", got, err)
			}
			p, err := chain.ParseTlogProof(file)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := p.Verify(known); err != nil {
				t.Fatal(err)
			}
			p.Extra = events[(i+1)%len(events)]
			bad := p.Marshal()
			if _, err := verifyWithSumdb(bad, vkey); err == nil {
				t.Fatal("another event checks with sumdb")
			}
			if _, err := p.Verify(known); err == nil {
				t.Fatal("another event checks")
			}
		})
	}
}

// FuzzParseTlogProof: any input parses or is refused without a panic, and
// what parses is written back byte for byte.
func FuzzParseTlogProof(f *testing.F) {
	f.Add([]byte("c2sp.org/tlog-proof@v1\nextra ZXZlbnQ=\nindex 3\n" + strings.Repeat("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", 2) +
		"\ngridseal/chain/GRIDSEAL_CHAIN\n4\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n— cp x\n"))
	f.Add([]byte("c2sp.org/tlog-proof@v1\nindex 0\n\ncp\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := chain.ParseTlogProof(data)
		if err != nil {
			return
		}
		if out := p.Marshal(); !bytes.Equal(out, data) {
			t.Fatalf("parsed and written back:\n%q\nwas\n%q", out, data)
		}
	})
}
