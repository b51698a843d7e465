package chain

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// blocksIndex is the tiles' blocks index open for reading: record k (16
// bytes, big-endian) is block k's stream sequence and its first leaf.
type blocksIndex struct{ f *os.File }

func (ts *Tiles) openBlocks() (*blocksIndex, error) {
	f, err := os.Open(filepath.Join(ts.dir, "blocks"))
	if err != nil {
		return nil, fmt.Errorf("tiles blocks index: %w", err)
	}
	return &blocksIndex{f: f}, nil
}

// read returns block k's stream sequence and first leaf.
func (bi *blocksIndex) read(k int64) (seq uint64, first int64, err error) {
	var rec [16]byte
	if _, err := bi.f.ReadAt(rec[:], 16*k); err != nil {
		return 0, 0, fmt.Errorf("tiles blocks index record %d: %w", k, err)
	}
	return binary.BigEndian.Uint64(rec[:8]), int64(binary.BigEndian.Uint64(rec[8:])), nil
}

func (bi *blocksIndex) close() { _ = bi.f.Close() }

// BlockOf returns where leaf i sits in the stream: the sequence of the
// block that holds it and its index among the block's events. It is
// LeafOf's inverse, a binary search of the blocks index (O(log n) reads);
// a leaf the tiles do not reach is an error matching ErrNoTile.
func (ts *Tiles) BlockOf(i int64) (seq uint64, index int, err error) {
	st, err := ts.state()
	if err != nil {
		return 0, 0, err
	}
	if i < 0 || i >= st.Size || st.Blocks == 0 {
		return 0, 0, fmt.Errorf("%w: leaf %d of %d", ErrNoTile, i, st.Size)
	}
	bi, err := ts.openBlocks()
	if err != nil {
		return 0, 0, err
	}
	defer bi.close()
	read := bi.read
	// The first block whose first leaf is past i; the one before it holds
	// i (blocks of no events share their first leaf with the next block,
	// and this finds the last of them: the one with events).
	var rerr error
	k := int64(sort.Search(int(st.Blocks), func(k int) bool {
		_, first, err := read(int64(k))
		if err != nil {
			rerr = err
			return true
		}
		return first > i
	}))
	if rerr != nil {
		return 0, 0, rerr
	}
	if k == 0 {
		return 0, 0, fmt.Errorf("%w: the blocks index starts past leaf %d", ErrFormat, i)
	}
	seq, first, err := read(k - 1)
	if err != nil {
		return 0, 0, err
	}
	return seq, int(i - first), nil
}
