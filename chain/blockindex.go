package chain

import "sort"

// leafInIndex finds the leaf of event index of the block at stream
// sequence seq in a block index of nb records (a block's sequence and its
// first leaf, in stream order) over a tree of n leaves, read by read; -1
// if the index has no such block or the block no such event. Tiles and
// Tree keep the same index.
func leafInIndex(read func(i int64) (seq uint64, first int64, err error), nb, n int64, seq uint64, index int) (int64, error) {
	var rerr error
	i := int64(sort.Search(int(nb), func(i int) bool {
		s, _, err := read(int64(i))
		if err != nil {
			rerr = err
			return true
		}
		return s >= seq
	}))
	if rerr != nil {
		return -1, rerr
	}
	if i >= nb {
		return -1, nil
	}
	s, first, err := read(i)
	if err != nil || s != seq {
		return -1, err
	}
	end := n
	if i+1 < nb {
		if _, end, err = read(i + 1); err != nil {
			return -1, err
		}
	}
	if first+int64(index) >= end {
		return -1, nil
	}
	return first + int64(index), nil
}
