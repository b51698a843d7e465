package chain

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/note"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/internal/atomicfile"
)

// LoadCheckpointers reads the checkpointer keys of the trust file at path;
// a trust file that lists none is an error, for what needs them.
func LoadCheckpointers(path string) (note.Verifiers, error) {
	trust, err := LoadTrust(path, "")
	if err != nil {
		return nil, err
	}
	if trust.Checkpointers == nil {
		return nil, fmt.Errorf("trust file %s lists no checkpointers", path)
	}
	return trust.Checkpointers, nil
}

// ReadCheckpoint reads a signed checkpoint note from the file at path and
// verifies it with the known keys.
func ReadCheckpoint(path string, known note.Verifiers) (*Checkpoint, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	cp, err := OpenCheckpoint(b, known)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cp, nil
}

// ReadTree reads the whole chain stream into a tree of every event.
func ReadTree(ctx context.Context, js jetstream.JetStream) (*Tree, error) {
	tree, err := readTree(ctx, js, -1)
	if err != nil {
		return nil, fmt.Errorf("read the chain stream: %w", err)
	}
	return tree, nil
}

// readTree reads the stream from its start, block by block, into a tree
// of at least size events (size < 0: all of them), or of all the stream
// holds if that is fewer. A message that is not a block adds no leaves
// (verifiers skip it alike).
func readTree(ctx context.Context, js jetstream.JetStream, size int64) (*Tree, error) {
	tree := &Tree{}
	done := errors.New("done")
	err := scanContiguous(ctx, js, 1, false, func(m *Msg) error {
		if size >= 0 && tree.Size() >= size {
			return done
		}
		if b, err := ParseBlock(m.Data); err == nil {
			return tree.AppendBlock(m.Seq, b.Events)
		}
		return nil
	})
	if err != nil && !errors.Is(err, done) {
		_ = tree.Close()
		return nil, err
	}
	return tree, nil
}

// ProveEventFrom proves event index of the block at stream sequence seq is
// in the newest checkpoint signed by a known key: from the tiles ts, or,
// with ts nil, from the stream, read from its start.
func ProveEventFrom(ctx context.Context, js jetstream.JetStream, known note.Verifiers, ts *Tiles, seq uint64, index int) (*Inclusion, error) {
	if ts != nil {
		return ProveEventInTiles(ctx, js, known, ts, seq, index)
	}
	return ProveEvent(ctx, js, known, seq, index)
}

// ProvedEvent returns the event inc proves, as recorded: from the tiles'
// entry bundle, or (ts nil) the block at seq; it must hash to the proved
// leaf.
func ProvedEvent(ctx context.Context, js jetstream.JetStream, ts *Tiles, inc *Inclusion, seq uint64, index int) ([]byte, error) {
	var event []byte
	if ts != nil {
		var err error
		if event, err = ts.Entry(inc.Leaf); err != nil {
			return nil, err
		}
	} else {
		s, err := js.Stream(ctx, StreamName)
		if err != nil {
			return nil, err
		}
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			return nil, fmt.Errorf("read chain sequence %d: %w", seq, err)
		}
		b, err := ParseBlock(m.Data)
		if err != nil || index >= len(b.Events) {
			return nil, fmt.Errorf("sequence %d holds no event %d", seq, index)
		}
		event = b.Events[index]
	}
	if LeafHash(event) != inc.LeafHash {
		return nil, fmt.Errorf("%w: event %d of block %d does not hash to the proved leaf", ErrCheckpointMismatch, index, seq)
	}
	return event, nil
}

// Text is inc as chain prove prints it for event index of the block at
// seq: the leaf, its hash, the proof's hashes and the checkpoint.
func (inc *Inclusion) Text(seq uint64, index int) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "event %d of block %d is leaf %d of the signed tree of %d events\nleaf hash %s\nproof (%d hashes):\n",
		index, seq, inc.Leaf, inc.Checkpoint.Size, inc.LeafHash, len(inc.Proof))
	for _, h := range inc.Proof {
		fmt.Fprintf(&b, "  %s\n", h)
	}
	fmt.Fprintf(&b, "checkpoint:\n%s", inc.Checkpoint.Note)
	return []byte(b.String())
}

// ProveExtends proves the newest checkpoint signed by a known key extends
// an older tree: the one of old, a checkpoint the caller kept in the file
// named oldName (its root must still be the stream's), or, with old nil,
// the stream's first size events. It reads the tiles ts, or (nil) the
// stream.
func ProveExtends(ctx context.Context, js jetstream.JetStream, known note.Verifiers, ts *Tiles, old *Checkpoint, oldName string, size int64) (*Consistency, error) {
	if old != nil {
		size = old.Size
	}
	var c *Consistency
	var err error
	if ts != nil {
		c, err = ProveConsistencyInTiles(ctx, js, known, ts, size)
	} else {
		c, err = ProveConsistency(ctx, js, known, size)
	}
	if err != nil {
		return nil, err
	}
	if old != nil && old.Root != c.OldRoot {
		return nil, fmt.Errorf("the stream's first %d events no longer have the root %s signed in %s: the chain was rewritten", old.Size, old.Root, oldName)
	}
	return c, nil
}

// WriteText writes c as chain prove prints it: both sizes and roots, the
// proof's hashes and the newer checkpoint.
func (c *Consistency) WriteText(w io.Writer) {
	fmt.Fprintf(w, "the signed tree of %d events extends the tree of %d events\nold root %s\nnew root %s\nproof (%d hashes):\n",
		c.New.Size, c.OldSize, c.OldRoot, c.New.Root, len(c.Proof))
	for _, h := range c.Proof {
		fmt.Fprintf(w, "  %s\n", h)
	}
	fmt.Fprintf(w, "checkpoint:\n%s", c.New.Note)
}

// CheckedProof is a c2sp.org/tlog-proof file checked offline: the proof,
// the checkpoint whose tree holds its event, and that event.
type CheckedProof struct {
	Proof      *TlogProof
	Checkpoint *Checkpoint
	Event      audit.Event
}

// CheckTlogProofFile reads the tlog-proof file at path and checks it with
// the known checkpointer keys alone: the checkpoint's signature, that the
// event it holds is the proved leaf, and that the event is a gridseal one.
// Errors name path.
func CheckTlogProofFile(path string, known note.Verifiers) (*CheckedProof, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	p, err := ParseTlogProof(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	cp, err := p.Verify(known)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	ev, err := DecodeEvent(p.Extra)
	if err != nil {
		return nil, fmt.Errorf("%s: the proved entry is no gridseal event: %w", path, err)
	}
	return &CheckedProof{Proof: p, Checkpoint: cp, Event: ev}, nil
}

// WriteText writes what chain verify-proof prints of c: where the event is
// and who signed that, then the event — the command, its verdict, the rule
// and approval that allowed it, the policy it was decided under.
func (c *CheckedProof) WriteText(w io.Writer) {
	ev := &c.Event
	fmt.Fprintf(w, "proof OK: leaf %d of the tree of %d events signed by %s\n", c.Proof.Index, c.Checkpoint.Size, strings.Join(c.Checkpoint.Signers, ", "))
	fmt.Fprintf(w, "time      %s\n", ev.Time.Format(time.RFC3339Nano))
	fmt.Fprintf(w, "command   %s unit %d function %d address %d quantity %d pdu %x\n", ev.Device, ev.Unit, ev.Function, ev.Address, ev.Quantity, ev.PDU)
	fmt.Fprintf(w, "client    %s (role %q) via %s\n", ev.Client, ev.Role, ev.Listener)
	fmt.Fprintf(w, "verdict   %s (phase %s), exception %d\n", ev.Verdict, ev.Phase, ev.Exception)
	fmt.Fprintf(w, "rule      %s\nreason    %s\n", ev.Rule, ev.Reason)
	fmt.Fprintf(w, "approval  %s\npolicy    %s\n", ev.Approval, ev.Policy)
	if ev.BreakGlass {
		fmt.Fprintln(w, "BREAK-GLASS: allowed by fewer approvers than the rule normally needs")
	}
}

// ProveExtendsFile is gridseal chain prove --from-checkpoint / --from-size:
// it writes to w the proof that the newest checkpoint extends the signed
// checkpoint kept at oldPath (its signature and root checked too) or, with
// oldPath empty, the stream's first size events. With update, a newer
// checkpoint, once proved, replaces the one at oldPath (a witness's cron
// job).
func ProveExtendsFile(ctx context.Context, js jetstream.JetStream, known note.Verifiers, ts *Tiles, oldPath string, size int64, update bool, w io.Writer) error {
	var old *Checkpoint
	if oldPath != "" {
		var err error
		if old, err = ReadCheckpoint(oldPath, known); err != nil {
			return err
		}
	}
	c, err := ProveExtends(ctx, js, known, ts, old, oldPath, size)
	if err != nil {
		return err
	}
	c.WriteText(w)
	if update && c.New.Size > c.OldSize {
		if err := atomicfile.Write(oldPath, c.New.Note, 0o644); err != nil {
			return err
		}
		fmt.Fprintf(w, "%s now keeps the checkpoint of %d events\n", oldPath, c.New.Size)
	}
	return nil
}
