package chain_test

import (
	"flag"
	"fmt"
	"testing"
	"time"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/chaintest"
)

var benchLeaves = flag.Int64("tiles.leaves", 10_000_000, "leaves of the tree BenchmarkTilesProof builds")

// BenchmarkTilerAppend measures how fast the tiler tiles: blocks of 256
// realistic events (225 bytes), a flush (each file that grew written and
// fsync'd, then the state) every 4096 events, as Run does.
func BenchmarkTilerAppend(b *testing.B) {
	signer, _ := newKey(b)
	evs := make([][]byte, 256)
	for i := range evs {
		evs[i] = chain.AppendEvent(nil, event(uint64(i), audit.Allow))
	}
	msg, _, err := chain.EncodeBlock("gw-1", signer, 0, chain.GenesisPrev("gw-1"), time.Now(), evs)
	if err != nil {
		b.Fatal(err)
	}
	tl := chaintest.OpenTiler(b, b.TempDir())
	defer func() { _ = tl.Close() }()
	seq := uint64(0)
	start := time.Now()
	for b.Loop() {
		seq++
		if err := tl.Append(seq, msg); err != nil {
			b.Fatal(err)
		}
		if seq%16 == 0 {
			if err := tl.Flush(); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := tl.Flush(); err != nil {
		b.Fatal(err)
	}
	el := time.Since(start).Seconds()
	b.ReportMetric(float64(seq)*256/el, "events/s")
	b.ReportMetric(float64(seq)*256/256*2/el, "full-tiles/s") // a level-0 tile and an entry bundle per 256 events
}

// tilesOf builds tiles of n leaves of 16-byte events, in blocks of 4096,
// each block flushed as Run would, in a temporary directory.
func tilesOf(b *testing.B, n int64) *chain.Tiles {
	b.Helper()
	dir := b.TempDir()
	signer, _ := newKey(b)
	tl := chaintest.OpenTiler(b, dir)
	start := time.Now()
	seq := uint64(0)
	for done := int64(0); done < n; {
		k := min(4096, n-done)
		evs := make([][]byte, k)
		for i := range evs {
			evs[i] = fmt.Appendf(nil, "event %10d", done+int64(i))
		}
		msg, _, err := chain.EncodeBlock("gw-1", signer, seq, chain.GenesisPrev("gw-1"), time.Unix(0, 0), evs)
		if err != nil {
			b.Fatal(err)
		}
		seq++
		if err := tl.Append(seq, msg); err != nil {
			b.Fatal(err)
		}
		if err := tl.Flush(); err != nil {
			b.Fatal(err)
		}
		done += k
	}
	if err := tl.Close(); err != nil {
		b.Fatal(err)
	}
	el := time.Since(start)
	b.Logf("built tiles of %d leaves in %s (%.0f leaves/s)", n, el.Round(time.Millisecond), float64(n)/el.Seconds())
	ts := chaintest.OpenTiles(b, dir)
	return ts
}

// BenchmarkTilesProof measures an inclusion and a consistency proof, each
// computed from the tiles on disk and checked, in a tree of -tiles.leaves
// leaves (10 M by default; building it is not timed).
func BenchmarkTilesProof(b *testing.B) {
	n := *benchLeaves
	ts := tilesOf(b, n)
	root, err := ts.Root(n)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("inclusion", func(b *testing.B) {
		i := int64(0)
		for b.Loop() {
			i = (i + 7_654_321) % n
			p, err := ts.ProveInclusion(i, n)
			if err != nil {
				b.Fatal(err)
			}
			leaf, err := ts.LeafHash(i)
			if err != nil {
				b.Fatal(err)
			}
			if err := chain.CheckInclusion(p, n, root, i, leaf); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("consistency", func(b *testing.B) {
		old := int64(1)
		for b.Loop() {
			old = 1 + (old+7_654_321)%(n-1)
			p, err := ts.ProveTree(n, old)
			if err != nil {
				b.Fatal(err)
			}
			oldRoot, err := ts.Root(old)
			if err != nil {
				b.Fatal(err)
			}
			proof := make([]chain.Hash, len(p))
			for k, h := range p {
				proof[k] = chain.Hash(h)
			}
			if err := chain.CheckConsistency(proof, n, root, old, oldRoot); err != nil {
				b.Fatal(err)
			}
		}
	})
}
