package chain

import (
	"encoding/binary"
	"fmt"
	"time"

	"golang.org/x/mod/sumdb/note"
)

// BlockVerifier checks writer signatures: a Tink verifier for the writer's
// public keyset, and the ids of its keys.
type BlockVerifier interface {
	Verify(signature, data []byte) error
}

// Trust is what a verifier pins: each writer's public keys, and optionally
// each writer's locally kept head.
type Trust struct {
	Writers       map[string]WriterKeys
	Heads         map[string]Head
	Checkpointers note.Verifiers // nil: no checkpoints checked
}

// WriterKeys is one writer's public keyset.
type WriterKeys struct {
	Verifier BlockVerifier
	KeyIDs   map[uint32]bool
}

// Problem names the first bad block and why.
type Problem struct {
	Seq    uint64 // stream sequence (0 if the problem is not one message)
	Writer string
	Height uint64
	Reason string
}

func (p *Problem) Error() string {
	if p.Seq == 0 {
		return fmt.Sprintf("writer %s: %s", p.Writer, p.Reason)
	}
	return fmt.Sprintf("sequence %d (writer %s, block %d): %s", p.Seq, p.Writer, p.Height, p.Reason)
}

// WriterState is what the verifier knows of one writer's chain so far.
type WriterState struct {
	Blocks uint64
	Events uint64
	Height uint64 // height of the last block
	Hash   Hash
	Seq    uint64
}

// Verifier checks a stream of block messages, one at a time, in stream
// order. It trusts only the pinned keys and heads in Trust, never NATS.
type Verifier struct {
	trust   Trust
	lastSeq uint64
	writers map[string]*WriterState
	Blocks  uint64
	Events  uint64
	First   time.Time
	Last    time.Time
	// OnEvent, if set, is called with each verified event's bytes.
	OnEvent func(m *Msg, b *Block, i int, event []byte) error
	leaves  []Hash
}

// NewVerifier returns a verifier pinned to trust.
func NewVerifier(trust Trust) *Verifier {
	return &Verifier{trust: trust, writers: map[string]*WriterState{}}
}

// Writers returns the state of every writer seen.
func (v *Verifier) Writers() map[string]*WriterState { return v.writers }

// Add verifies the next message. It returns a *Problem for the first bad block.
func (v *Verifier) Add(m *Msg) error {
	bad := func(w string, h uint64, format string, args ...any) error {
		return &Problem{Seq: m.Seq, Writer: w, Height: h, Reason: fmt.Sprintf(format, args...)}
	}
	writer := m.Writer()
	if m.Seq != v.lastSeq+1 {
		return bad(writer, 0, "stream sequence jumps from %d to %d: messages are missing", v.lastSeq, m.Seq)
	}
	v.lastSeq = m.Seq
	b, err := ParseBlock(m.Data)
	if err != nil {
		return bad(writer, 0, "unreadable block: %v", err)
	}
	if b.Writer != writer {
		return bad(writer, b.Height, "block names writer %q but was stored under %s", b.Writer, m.Subject)
	}
	keys, ok := v.trust.Writers[writer]
	if !ok {
		return bad(writer, b.Height, "writer is not in the trust file")
	}
	if !keys.KeyIDs[b.KeyID] {
		return bad(writer, b.Height, "signed with key id %d, which is not a pinned key of this writer", b.KeyID)
	}
	if len(b.Signature) < 5 || b.Signature[0] != 1 || binary.BigEndian.Uint32(b.Signature[1:5]) != b.KeyID {
		return bad(writer, b.Height, "signature prefix does not name the header's key id %d", b.KeyID)
	}
	if err := keys.Verifier.Verify(b.Signature, SigningInput(b.Hash)); err != nil {
		return bad(writer, b.Height, "signature does not verify with the writer's pinned keys")
	}
	if m.MsgID != "" && m.MsgID != b.Hash.String() {
		return bad(writer, b.Height, "message id %s is not the block hash %s", m.MsgID, b.Hash)
	}
	if int(b.Count) != len(b.Events) {
		return bad(writer, b.Height, "header counts %d events, block holds %d", b.Count, len(b.Events))
	}
	v.leaves = v.leaves[:0]
	for _, e := range b.Events {
		v.leaves = append(v.leaves, LeafHash(e))
	}
	if root := MerkleRoot(v.leaves); root != b.Root {
		return bad(writer, b.Height, "events do not match the signed Merkle root: an event was altered, added or removed")
	}
	st := v.writers[writer]
	switch {
	case st == nil && b.Height != 0:
		return bad(writer, b.Height, "first block of this writer is block %d, not 0: blocks 0..%d are missing", b.Height, b.Height-1)
	case st == nil && b.Prev != GenesisPrev(writer):
		return bad(writer, 0, "genesis block does not name this writer's genesis hash")
	case st != nil && b.Height <= st.Height:
		return bad(writer, b.Height, "fork: block %d appears again after block %d", b.Height, st.Height)
	case st != nil && b.Height != st.Height+1:
		return bad(writer, b.Height, "blocks %d..%d are missing", st.Height+1, b.Height-1)
	case st != nil && b.Prev != st.Hash:
		return bad(writer, b.Height, "previous hash %s is not block %d's hash %s", b.Prev, st.Height, st.Hash)
	}
	if h, ok := v.trust.Heads[writer]; ok && h.Height == b.Height && h.Hash != b.Hash.String() {
		return bad(writer, b.Height, "block hash %s differs from the local head's %s: the chain was rewritten", b.Hash, h.Hash)
	}
	for i, e := range b.Events {
		if _, err := DecodeEvent(e); err != nil {
			return bad(writer, b.Height, "event %d: %v", i, err)
		}
		if v.OnEvent != nil {
			if err := v.OnEvent(m, b, i, e); err != nil {
				return err
			}
		}
	}
	if st == nil {
		st = &WriterState{}
		v.writers[writer] = st
	}
	st.Blocks++
	st.Events += uint64(len(b.Events))
	st.Height, st.Hash, st.Seq = b.Height, b.Hash, m.Seq
	v.Blocks++
	v.Events += uint64(len(b.Events))
	if v.First.IsZero() {
		v.First = b.Time
	}
	v.Last = b.Time
	return nil
}

// Finish checks what only the end can tell: every pinned head is present,
// so a stream truncated behind a writer's head is caught.
func (v *Verifier) Finish() error {
	for writer, head := range v.trust.Heads {
		st := v.writers[writer]
		if st == nil {
			return &Problem{Writer: writer, Height: head.Height,
				Reason: fmt.Sprintf("no blocks in the stream, but the local head is block %d: the chain was deleted or truncated", head.Height)}
		}
		if st.Height < head.Height {
			return &Problem{Writer: writer, Height: st.Height + 1,
				Reason: fmt.Sprintf("chain ends at block %d, but the local head is block %d: blocks %d..%d were truncated",
					st.Height, head.Height, st.Height+1, head.Height)}
		}
	}
	return nil
}
