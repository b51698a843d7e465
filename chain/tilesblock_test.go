package chain_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/chaintest"
)

// TestTilesBlockOf: every leaf maps back to the block and index it was
// appended from, across messages that are not blocks and blocks of one
// event and of more than a tile; a leaf past the end is ErrNoTile.
func TestTilesBlockOf(t *testing.T) {
	dir := t.TempDir()
	signer, _ := newKey(t)
	tl := chaintest.OpenTiler(t, dir)
	var where []placed
	for seq, n := range []int{1, 0, 300, 1, 1, 0, 255, 2} { // 0: a message that is not a block
		seq := uint64(seq + 1)
		if n == 0 {
			if err := tl.Append(seq, []byte("junk")); err != nil {
				t.Fatal(err)
			}
			continue
		}
		evs := make([][]byte, n)
		for i := range evs {
			evs[i] = fmt.Appendf(nil, "event %d of %d", i, seq)
			where = append(where, placed{seq, i})
		}
		if err := tl.Append(seq, blockMsg(t, signer, seq, evs)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tl.Close(); err != nil {
		t.Fatal(err)
	}
	ts := chaintest.OpenTiles(t, dir)
	for i, w := range where {
		seq, index, err := ts.BlockOf(int64(i))
		if err != nil || seq != w.seq || index != w.index {
			t.Fatalf("BlockOf(%d) = %d, %d, %v; want %d, %d", i, seq, index, err, w.seq, w.index)
		}
	}
	for _, bad := range []int64{-1, int64(len(where)), int64(len(where)) + 500} {
		if _, _, err := ts.BlockOf(bad); !errors.Is(err, chain.ErrNoTile) {
			t.Fatalf("BlockOf(%d): %v, want ErrNoTile", bad, err)
		}
	}
}
