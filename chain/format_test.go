package chain_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/goldentest"
)

// golden compares got with testdata/name (or writes it, with -update).
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	goldentest.Check(t, name, got, "the stored format is a contract; bump its version instead")
}

// TestEventGolden pins the stored encoding of an event (format version 5)
// and its leaf hash, so another implementation can check itself; versions
// 1 to 4, already in chains, still decode.
func TestEventGolden(t *testing.T) {
	ev := event(42, audit.Allow)
	ev.Approval = "a1b2"
	ev.Closed = true
	ev.Role = "operator"
	ev.BreakGlass = true
	ev.Observed = true
	ev.CandidateDiffers = true
	enc := chain.AppendEvent(nil, ev)
	leaf := chain.LeafHash(enc)
	golden(t, "event-v5.txt", fmt.Appendf(nil, "event %x\nleaf %x\n", enc, leaf[:]))
	for _, old := range []struct {
		file       string
		role       string
		breakGlass bool
		observed   bool
		unknown    byte // the first flag bit this version gives no meaning
	}{{"event-v1.txt", "", false, false, 2}, {"event-v2.txt", "operator", false, false, 2}, {"event-v3.txt", "operator", true, false, 4},
		{"event-v4.txt", "operator", true, true, 8}} {
		b, err := os.ReadFile("testdata/" + old.file)
		if err != nil {
			t.Fatal(err)
		}
		var oldHex string
		if _, err := fmt.Sscanf(string(b), "event %s", &oldHex); err != nil {
			t.Fatalf("testdata/%s: %v", old.file, err)
		}
		oldBytes, _ := hex.DecodeString(oldHex)
		got, err := chain.DecodeEvent(oldBytes)
		if err != nil || got.Op != 42 || got.Role != old.role || got.Approval != "a1b2" || !got.Closed ||
			got.BreakGlass != old.breakGlass || got.Observed != old.observed || got.CandidateDiffers {
			t.Fatalf("%s: %+v %v", old.file, got, err)
		}
		// A flag bit the version does not define is an error.
		oldBytes[len(oldBytes)-1-len(old.role)-btoi(old.role != "")] |= old.unknown
		if _, err := chain.DecodeEvent(oldBytes); !errors.Is(err, chain.ErrFormat) {
			t.Fatalf("%s with flag bit %#x: %v, want a format error", old.file, old.unknown, err)
		}
	}
	back, err := chain.DecodeEvent(enc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(chain.AppendEvent(nil, &back), enc) {
		t.Fatalf("decode/encode round trip differs:\n%+v", back)
	}
	for i := range enc { // every strict prefix is rejected
		if _, err := chain.DecodeEvent(enc[:i]); err == nil {
			t.Fatalf("prefix of %d bytes decoded", i)
		}
	}
	if _, err := chain.DecodeEvent(append(enc, 0)); err == nil {
		t.Fatal("trailing byte accepted")
	}
}

// TestEventPhases: every phase the proxy records decodes as itself; a
// phase or verdict outside the documented ones is a format error.
func TestEventPhases(t *testing.T) {
	phaseAt := 1 + 8 + 8 // version, time, op
	for _, ph := range []audit.Phase{audit.PhaseRequest, audit.PhaseComplete, audit.PhaseApproval, audit.PhaseDroppedReply, audit.PhaseGap, audit.PhasePolicy} {
		ev := event(7, audit.Deny)
		ev.Phase = ph
		enc := chain.AppendEvent(nil, ev)
		if enc[phaseAt] != byte(ph) {
			t.Fatalf("phase byte at %d is %d, want %d", phaseAt, enc[phaseAt], ph)
		}
		back, err := chain.DecodeEvent(enc)
		if err != nil || back.Phase != ph {
			t.Fatalf("phase %s: %v %v", ph, back.Phase, err)
		}
	}
	enc := chain.AppendEvent(nil, event(7, audit.Deny))
	for _, bad := range [][2]byte{{0, 2}, {7, 2}, {2, 0}, {2, 4}} {
		b := bytes.Clone(enc)
		b[phaseAt], b[phaseAt+1] = bad[0], bad[1]
		if _, err := chain.DecodeEvent(b); !errors.Is(err, chain.ErrFormat) {
			t.Fatalf("phase %d verdict %d: %v, want a format error", bad[0], bad[1], err)
		}
	}
	// Phase 6 (policy) is new in version 4: a version 3 event cannot have it.
	b := bytes.Clone(enc)
	b[0], b[phaseAt] = 3, byte(audit.PhasePolicy)
	if _, err := chain.DecodeEvent(b); !errors.Is(err, chain.ErrFormat) {
		t.Fatalf("version 3 event with phase 6: %v, want a format error", err)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// refRoot is RFC 6962's recursive definition of the Merkle tree hash.
func refRoot(leaves []chain.Hash) chain.Hash {
	switch len(leaves) {
	case 0:
		return sha256.Sum256(nil)
	case 1:
		return leaves[0]
	}
	k := 1
	for k*2 < len(leaves) {
		k *= 2
	}
	l, r := refRoot(leaves[:k]), refRoot(leaves[k:])
	return sha256.Sum256(append(append([]byte{1}, l[:]...), r[:]...))
}

func TestMerkleRootMatchesRFC6962(t *testing.T) {
	for n := 0; n <= 70; n++ {
		leaves := make([]chain.Hash, n)
		for i := range leaves {
			leaves[i] = chain.LeafHash([]byte{byte(i)})
		}
		want := refRoot(append([]chain.Hash(nil), leaves...))
		if got := chain.MerkleRoot(leaves); got != want {
			t.Fatalf("n=%d: root %x, want %x", n, got, want)
		}
	}
	// RFC 6962 / Certificate Transparency test vector: the tree of the
	// single empty leaf.
	if got := hex.EncodeToString(func() []byte { h := chain.MerkleRoot([]chain.Hash{chain.LeafHash(nil)}); return h[:] }()); got != "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d" {
		t.Fatalf("leaf hash of the empty string = %s", got)
	}
}

// TestBlockVector pins a block header's encoding and hash, and the genesis
// hash, for writer "gw-1".
func TestBlockVector(t *testing.T) {
	h := chain.Header{Writer: "gw-1", KeyID: 0x01020304, Height: 7, Prev: chain.GenesisPrev("gw-1"),
		Time: time.Unix(1764072000, 5).UTC(), Count: 2, Root: chain.MerkleRoot([]chain.Hash{chain.LeafHash([]byte("a")), chain.LeafHash([]byte("b"))})}
	hdr := chain.AppendHeader(nil, &h)
	var b strings.Builder
	fmt.Fprintf(&b, "genesis-prev(gw-1) %s\n", chain.GenesisPrev("gw-1"))
	fmt.Fprintf(&b, "header %x\n", hdr)
	fmt.Fprintf(&b, "block-hash %x\n", sha256.Sum256(hdr))
	fmt.Fprintf(&b, "signing-input %x\n", chain.SigningInput(sha256.Sum256(hdr)))
	golden(t, "block-v1.txt", []byte(b.String()))
}

func TestBlockRoundTrip(t *testing.T) {
	signer, wk := newKey(t)
	events := [][]byte{chain.AppendEvent(nil, event(1, audit.Allow)), chain.AppendEvent(nil, event(2, audit.Deny))}
	msg, hash, err := chain.EncodeBlock("gw-1", signer, 0, chain.GenesisPrev("gw-1"), time.Now(), events)
	if err != nil {
		t.Fatal(err)
	}
	b, err := chain.ParseBlock(msg)
	if err != nil {
		t.Fatal(err)
	}
	if b.Hash != hash || b.Count != 2 || b.ComputeRoot() != b.Root || b.KeyID != signer.KeyID {
		t.Fatalf("block = %+v", b.Header)
	}
	if err := wk.Verifier.Verify(b.Signature, chain.SigningInput(hash)); err != nil {
		t.Fatal(err)
	}
	for _, cut := range []int{0, 1, 10, len(msg) - 1} {
		if _, err := chain.ParseBlock(msg[:cut]); err == nil {
			t.Fatalf("truncated block (%d bytes) parsed", cut)
		}
	}
}

func FuzzDecodeEvent(f *testing.F) {
	f.Add(chain.AppendEvent(nil, event(1, audit.Allow)))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := chain.DecodeEvent(b)
		if err != nil || b[0] != 4 { // versions 1 to 3 re-encode as version 4
			return
		}
		if !bytes.Equal(chain.AppendEvent(nil, &ev), b) {
			t.Fatalf("accepted a non-canonical encoding: %x", b)
		}
	})
}

func FuzzParseBlock(f *testing.F) {
	signer, _ := newKey(f)
	msg, _, err := chain.EncodeBlock("gw-1", signer, 0, chain.GenesisPrev("gw-1"), time.Unix(0, 0),
		[][]byte{chain.AppendEvent(nil, event(1, audit.Allow))})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(msg)
	f.Fuzz(func(_ *testing.T, b []byte) {
		blk, err := chain.ParseBlock(b)
		if err != nil {
			return
		}
		_ = blk.ComputeRoot()
	})
}

// TestViewEventDoesNotAllocate: what-if reads millions of events through
// ViewEvent; it must agree with DecodeEvent and allocate nothing.
func TestViewEventDoesNotAllocate(t *testing.T) {
	ev := event(42, audit.Allow)
	ev.Observed, ev.Approval = true, "a1b2"
	enc := chain.AppendEvent(nil, ev)
	var v chain.EventView
	if n := testing.AllocsPerRun(100, func() {
		if err := chain.ViewEvent(enc, &v); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("ViewEvent allocates %.1f times", n)
	}
	back, err := chain.DecodeEvent(enc)
	if err != nil || v.Client != back.Client || string(v.Device) != back.Device || !bytes.Equal(v.PDU, back.PDU) ||
		!v.Observed() || v.Closed() != back.Closed || string(v.Approval) != "a1b2" || v.Time != back.Time.UnixNano() {
		t.Fatalf("view %+v\ndecoded %+v (%v)", v, back, err)
	}
}

func BenchmarkViewEvent(b *testing.B) {
	enc := chain.AppendEvent(nil, event(42, audit.Allow))
	var v chain.EventView
	b.ReportAllocs()
	for b.Loop() {
		_ = chain.ViewEvent(enc, &v)
	}
}
