package chain

import (
	"context"
	"fmt"
	"sort"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/note"
)

// CheckpointCheck checks signed checkpoints against the stream's events:
// feed it every stream message in order, then Finish. A checkpoint whose
// root differs from the recomputed tree, or that claims more events than
// the stream holds, means the stream was rewritten or truncated behind it.
type CheckpointCheck struct {
	want      []*Checkpoint // by size
	acc       RootAcc
	next      int // want[next] is the next checkpoint to reach
	confirmed int
	mismatch  bool // a checkpoint did not match: the larger ones cannot
}

// NewCheckpointCheck checks the given checkpoints (any order).
func NewCheckpointCheck(cps []*Checkpoint) *CheckpointCheck {
	c := &CheckpointCheck{want: append([]*Checkpoint(nil), cps...)}
	sort.Slice(c.want, func(i, j int) bool { return c.want[i].Size < c.want[j].Size })
	return c
}

// Add folds one stream message's events into the tree.
func (c *CheckpointCheck) Add(m *Msg) error {
	events := leavesOf(m.Data)
	leaves := make([]Hash, len(events))
	for i, e := range events {
		leaves[i] = LeafHash(e)
	}
	return c.addLeaves(m, leaves)
}

// addLeaves is Add with the leaf hashes of m's events (none if m is not a
// readable block).
func (c *CheckpointCheck) addLeaves(m *Msg, leaves []Hash) error {
	for _, leaf := range leaves {
		c.acc.Append(leaf)
		for c.next < len(c.want) && c.want[c.next].Size == c.acc.Size() {
			cp := c.want[c.next]
			c.next++
			switch {
			case c.acc.Root() == cp.Root:
				c.confirmed++
			case !c.mismatch:
				// Every larger tree holds these events too: report once.
				c.mismatch = true
				return &Problem{Seq: m.Seq, Writer: m.Writer(), Reason: fmt.Sprintf(
					"the first %d events do not hash to the signed checkpoint's root: the stream was rewritten behind it", cp.Size)}
			}
		}
	}
	return nil
}

// Finish reports checkpoints larger than the stream.
func (c *CheckpointCheck) Finish() error {
	for c.next < len(c.want) && c.want[c.next].Size == 0 {
		c.next++
		c.confirmed++
	}
	if c.next < len(c.want) && !c.mismatch {
		cp := c.want[c.next]
		return &Problem{Reason: fmt.Sprintf("a signed checkpoint covers %d events but the stream holds %d: the stream was truncated",
			cp.Size, c.acc.Size())}
	}
	return nil
}

// Confirmed returns how many checkpoints matched, and the events seen.
func (c *CheckpointCheck) Confirmed() (int, int64) { return c.confirmed, c.acc.Size() }

// Checkpoints returns every checkpoint in the stream that a known key signed.
func Checkpoints(ctx context.Context, js jetstream.JetStream, known note.Verifiers) ([]*Checkpoint, error) {
	s, st, err := checkpointStream(ctx, js)
	if s == nil || err != nil {
		return nil, err
	}
	var out []*Checkpoint
	for seq := st.FirstSeq; seq <= st.LastSeq && seq > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		if c, err := OpenCheckpoint(m.Data, known); err == nil {
			c.Stored = m.Time
			out = append(out, c)
		}
	}
	return out, nil
}
