package mirror

import (
	"fmt"
	"sort"

	"github.com/gridseal/gridseal/chain"
)

// Tree is what Compare needs of a tree of the chain: a mirror's copy, a
// console's tiles (chain.Tiles), a tree read from a stream (chain.Tree).
type Tree interface {
	Size() int64
	Root(n int64) (chain.Hash, error)
}

// Comparison is what Compare found.
type Comparison struct {
	// Splits are the pairs that cannot both be true: two checkpoints of
	// one size with different roots, or (B nil) a checkpoint whose root is
	// not the tree's at its size.
	Splits []Split
	// Confirmed counts the checkpoints whose root is the tree's.
	Confirmed int
	// Unchecked says what could not be compared, and why.
	Unchecked []string
}

// Split is two signed checkpoints that disagree, or one (B nil) that
// disagrees with the tree.
type Split struct {
	A, B   *chain.Checkpoint
	Reason string
}

// Compare checks signed checkpoints of one origin against each other and,
// if tree is not nil, against the tree: two of one size must have one
// root, and each the tree reaches must have the tree's root at its size
// (two checkpoints that both do are consistent: one tree holds both).
// Without a tree, checkpoints of different sizes cannot be compared — a
// consistency proof needs the tree's hashes — and are listed in Unchecked.
func Compare(cps []*chain.Checkpoint, tree Tree) (*Comparison, error) {
	sorted := append([]*chain.Checkpoint(nil), cps...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Size < sorted[j].Size })
	c := &Comparison{}
	for i := 0; i < len(sorted); {
		j := i
		for j < len(sorted) && sorted[j].Size == sorted[i].Size {
			j++
		}
		for k := i + 1; k < j; k++ {
			if sorted[k].Root != sorted[i].Root {
				c.Splits = append(c.Splits, Split{A: sorted[i], B: sorted[k], Reason: fmt.Sprintf(
					"two checkpoints of %d events with different roots, %s and %s: a split view", sorted[i].Size, sorted[i].Root, sorted[k].Root)})
			}
		}
		i = j
	}
	if tree == nil {
		if n := distinctSizes(sorted); n > 1 {
			c.Unchecked = append(c.Unchecked, fmt.Sprintf(
				"%d different tree sizes: whether the larger extend the smaller needs a tree (give the mirror's or a console's data)", n))
		}
		return c, nil
	}
	size := tree.Size()
	for _, cp := range sorted {
		if cp.Size > size {
			c.Unchecked = append(c.Unchecked, fmt.Sprintf("the checkpoint of %d events: the tree holds only %d", cp.Size, size))
			continue
		}
		root, err := tree.Root(cp.Size)
		if err != nil {
			return nil, fmt.Errorf("the tree's root at %d: %w", cp.Size, err)
		}
		if root != cp.Root {
			c.Splits = append(c.Splits, Split{A: cp, Reason: fmt.Sprintf(
				"the checkpoint of %d events has root %s, the tree %s: it signs another history", cp.Size, cp.Root, root)})
			continue
		}
		c.Confirmed++
	}
	return c, nil
}

func distinctSizes(cps []*chain.Checkpoint) int {
	n := 0
	for i, cp := range cps {
		if i == 0 || cp.Size != cps[i-1].Size {
			n++
		}
	}
	return n
}
