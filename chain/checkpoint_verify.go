package chain

import (
	"context"
	"errors"
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
	want []*Checkpoint // by size
	acc  RootAcc
	seen int // checkpoints confirmed
}

// NewCheckpointCheck checks the given checkpoints (any order).
func NewCheckpointCheck(cps []*Checkpoint) *CheckpointCheck {
	c := &CheckpointCheck{want: append([]*Checkpoint(nil), cps...)}
	sort.Slice(c.want, func(i, j int) bool { return c.want[i].Size < c.want[j].Size })
	return c
}

// Add folds one stream message's events into the tree.
func (c *CheckpointCheck) Add(m *Msg) error {
	for _, e := range leavesOf(m.Data) {
		c.acc.Append(LeafHash(e))
		for c.seen < len(c.want) && c.want[c.seen].Size == c.acc.Size() {
			if cp := c.want[c.seen]; c.acc.Root() != cp.Root {
				return &Problem{Seq: m.Seq, Writer: m.Writer(), Reason: fmt.Sprintf(
					"the first %d events do not hash to the signed checkpoint's root: the stream was rewritten behind it", cp.Size)}
			}
			c.seen++
		}
	}
	return nil
}

// Finish reports checkpoints larger than the stream.
func (c *CheckpointCheck) Finish() error {
	for c.seen < len(c.want) && c.want[c.seen].Size == 0 {
		c.seen++
	}
	if c.seen < len(c.want) {
		cp := c.want[c.seen]
		return &Problem{Reason: fmt.Sprintf("a signed checkpoint covers %d events but the stream holds %d: the stream was truncated",
			cp.Size, c.acc.Size())}
	}
	return nil
}

// Confirmed returns how many checkpoints matched, and the events seen.
func (c *CheckpointCheck) Confirmed() (int, int64) { return c.seen, c.acc.Size() }

// Checkpoints returns every checkpoint in the stream that a known key signed.
func Checkpoints(ctx context.Context, js jetstream.JetStream, known note.Verifiers) ([]*Checkpoint, error) {
	s, err := js.Stream(ctx, CheckpointStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, err
	}
	var out []*Checkpoint
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && seq > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		if c, err := OpenCheckpoint(m.Data, known); err == nil {
			out = append(out, c)
		}
	}
	return out, nil
}
