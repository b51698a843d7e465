package chain_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/gridseal/gridseal/chain"
)

// TestTreeFilesMatchMemory: a tree kept in files gives the same roots,
// leaf positions and checkable proofs as one kept in memory, for blocks of
// uneven sizes at gapped stream sequences (messages that are not blocks
// have no leaves); the files go with Close.
func TestTreeFilesMatchMemory(t *testing.T) {
	dir := t.TempDir()
	ft, err := chain.TempTreeFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	var mt chain.Tree
	rng := rand.New(rand.NewPCG(1, 2))
	type pos struct {
		seq uint64
		i   int
	}
	var where []pos
	var leaves []chain.Hash
	seq := uint64(0)
	for b := 0; b < 120; b++ {
		seq += 1 + uint64(rng.IntN(3)) // gaps: a message that is no block
		n := 1 + rng.IntN(9)
		var events [][]byte
		for i := 0; i < n; i++ {
			e := fmt.Appendf(nil, "event %d.%d", seq, i)
			events = append(events, e)
			where = append(where, pos{seq, i})
			leaves = append(leaves, chain.LeafHash(e))
		}
		for _, tr := range []*chain.Tree{ft, &mt} {
			if err := tr.AppendBlock(seq, events); err != nil {
				t.Fatal(err)
			}
		}
	}
	if ft.Size() != int64(len(leaves)) || mt.Size() != ft.Size() {
		t.Fatalf("sizes %d and %d, want %d", ft.Size(), mt.Size(), len(leaves))
	}
	for n := int64(1); n <= ft.Size(); n += 1 + int64(rng.IntN(7)) {
		fr, err1 := ft.Root(n)
		mr, err2 := mt.Root(n)
		if err1 != nil || err2 != nil || fr != mr {
			t.Fatalf("root at %d: %s vs %s (%v %v)", n, fr, mr, err1, err2)
		}
	}
	size := ft.Size()
	root, _ := ft.Root(size)
	for k := 0; k < 50; k++ {
		j := rng.IntN(len(where))
		leaf, err := ft.LeafOf(where[j].seq, where[j].i)
		if err != nil || leaf != int64(j) {
			t.Fatalf("leaf of %+v: %d %v, want %d", where[j], leaf, err, j)
		}
		p, err := ft.ProveInclusion(leaf, size)
		if err != nil {
			t.Fatal(err)
		}
		if err := chain.CheckInclusion(p, size, root, leaf, leaves[j]); err != nil {
			t.Fatalf("proof of leaf %d: %v", leaf, err)
		}
		if lh, err := ft.LeafHash(leaf); err != nil || lh != leaves[j] {
			t.Fatalf("leaf hash %d: %v", leaf, err)
		}
	}
	last := where[len(where)-1]
	for _, miss := range []pos{{0, 0}, {last.seq + 1, 0}, {where[0].seq, 99}, {where[0].seq, -1}} {
		if leaf, err := ft.LeafOf(miss.seq, miss.i); err != nil || leaf != -1 {
			t.Fatalf("leaf of missing %+v: %d %v", miss, leaf, err)
		}
	}
	// The files were unlinked as they were opened: nothing outlives the
	// process, even one killed with SIGKILL.
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 0 {
		t.Fatalf("files visible while the tree is open: %v", left)
	}
	if err := ft.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := ft.LeafOf(where[0].seq, 0); !errors.Is(err, chain.ErrTreeClosed) {
		t.Fatalf("LeafOf after Close: %v", err)
	}
	if _, err := ft.Root(1); !errors.Is(err, chain.ErrTreeClosed) {
		t.Fatalf("Root after Close: %v", err)
	}
}

// BenchmarkTreeFiles: what the console pays to keep its proof tree as it
// follows the chain (events/s appended, in blocks of 64), and an inclusion
// proof against a tree of a million events (ns/op).
func BenchmarkTreeFiles(b *testing.B) {
	t, err := chain.OpenTreeFiles(b.TempDir(), "bench")
	if err != nil {
		b.Fatal(err)
	}
	defer t.Close()
	events := make([][]byte, 64)
	for i := range events {
		events[i] = make([]byte, 120)
	}
	const leaves = 1 << 20
	start := time.Now()
	for seq := uint64(1); t.Size() < leaves; seq++ {
		if err := t.AppendBlock(seq, events); err != nil {
			b.Fatal(err)
		}
	}
	appendRate := float64(leaves) / time.Since(start).Seconds()
	root, _ := t.Root(leaves)
	rng := rand.New(rand.NewPCG(3, 4))
	b.ResetTimer()
	for b.Loop() {
		seq := 1 + uint64(rng.IntN(leaves/64))
		leaf, err := t.LeafOf(seq, 7)
		if err != nil || leaf < 0 {
			b.Fatal(leaf, err)
		}
		p, err := t.ProveInclusion(leaf, leaves)
		if err != nil {
			b.Fatal(err)
		}
		lh, _ := t.LeafHash(leaf)
		if err := chain.CheckInclusion(p, leaves, root, leaf, lh); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(appendRate, "appended-events/s")
}
