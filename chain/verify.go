package chain

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
)

// BlockVerifier checks writer signatures: a Tink verifier for the writer's
// public keyset, and the ids of its keys. VerifyStream calls Verify from
// several goroutines at once, as Tink's verifiers allow.
type BlockVerifier interface {
	Verify(signature, data []byte) error
}

// Trust is what a verifier pins: each writer's public keys, and optionally
// each writer's locally kept head.
type Trust struct {
	Writers       map[string]WriterKeys
	Heads         map[string]Head
	Checkpointers note.Verifiers // nil: no checkpoints checked
	// Witnesses, if any, are the witnesses whose cosignatures count: the
	// newest checkpoint must carry valid ones by WitnessQuorum of them, the
	// quorum's newest no older than WitnessMaxAge.
	Witnesses     []*CosignatureVerifier
	WitnessQuorum int
	WitnessMaxAge time.Duration
}

// WriterKeys is one writer's public keyset.
type WriterKeys struct {
	Verifier BlockVerifier
	KeyIDs   map[uint32]bool
}

// Problem names one bad block, or a missing piece of the chain, and why.
type Problem struct {
	Seq    uint64 // stream sequence (0 if the problem is not one message)
	Writer string // "" if no writer is known
	Height uint64
	// HasHeight says Height is known: the block could be read, or the
	// problem is about a height.
	HasHeight bool
	Reason    string
	// Later counts the writer's blocks after this one that were not
	// verified because they follow it: the chain breaks here, so they
	// reach the trusted history only through this bad block or gap.
	Later uint64
}

func (p *Problem) Error() string {
	var b strings.Builder
	switch {
	case p.Seq != 0:
		fmt.Fprintf(&b, "sequence %d", p.Seq)
		switch {
		case p.Writer != "" && p.HasHeight:
			fmt.Fprintf(&b, " (writer %s, block %d)", p.Writer, p.Height)
		case p.Writer != "":
			fmt.Fprintf(&b, " (writer %s)", p.Writer)
		}
		b.WriteString(": ")
	case p.Writer != "":
		fmt.Fprintf(&b, "writer %s: ", p.Writer)
	}
	b.WriteString(p.Reason)
	switch {
	case p.Later == 1:
		fmt.Fprintf(&b, "; and 1 later block not verified because it follows this one")
	case p.Later > 1:
		fmt.Fprintf(&b, "; and %d later blocks not verified because they follow this one", p.Later)
	}
	return b.String()
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
//
// A bad block is reported once: the writer's later blocks, which reach
// its trusted history only through it, are counted in its Problem.Later
// unless they are bad in themselves (a signature, a Merkle root, another
// break in the links between them), which is reported too, so one
// injected message cannot hide what comes after it.
type Verifier struct {
	trust   Trust
	lastSeq uint64
	writers map[string]*WriterState
	links   map[string]*link
	lastGap *Problem // the latest run of missing sequences
	Blocks  uint64
	Events  uint64
	First   time.Time
	Last    time.Time
	// OnEvent, if set, is called with each verified event's bytes.
	OnEvent func(m *Msg, b *Block, i int, event []byte) error
	check   blockCheck // Add's
	leaves  []Hash     // Add's scratch for the Merkle root
}

// link is what the verifier knows of a writer's chain beyond WriterState:
// where it broke, and the last sound block since.
type link struct {
	seen     uint64   // sequence of the writer's last message
	broken   *Problem // the chain broke here (nil: it holds up to WriterState)
	anchored bool     // a sound block was seen since the break: height, hash
	height   uint64
	hash     Hash
}

// NewVerifier returns a verifier pinned to trust.
func NewVerifier(trust Trust) *Verifier {
	return &Verifier{trust: trust, writers: map[string]*WriterState{}, links: map[string]*link{}}
}

// Writers returns the state of every writer seen: each one's chain as
// verified from its genesis block.
func (v *Verifier) Writers() map[string]*WriterState { return v.writers }

// Missing reports that stream sequences first..last are not there, and
// moves past them: cause is what the store answered when asked for first,
// or nil when the stream simply jumps over them. A writer whose chain then
// skips blocks is counted in this Problem's Later, not reported again.
func (v *Verifier) Missing(first, last uint64, cause error) error {
	through := ""
	if last > first {
		through = fmt.Sprintf(" (through sequence %d)", last)
	}
	reason := fmt.Sprintf("stream sequence jumps from %d to %d: messages are missing (records corrupt on disk, or lost)", first-1, last+1)
	if cause != nil {
		reason = fmt.Sprintf("unreadable%s: the stream holds it but its store cannot return it (a record corrupt on disk, or lost): %v", through, cause)
	}
	p := &Problem{Seq: first, Reason: reason}
	v.lastGap = p
	v.lastSeq = max(v.lastSeq, last)
	return p
}

// Add verifies the next message. It returns a *Problem for a bad block, or
// errors.Join of two when messages are missing before it and it is bad too.
func (v *Verifier) Add(m *Msg) error {
	checkBlock(&v.trust, m, &v.check, &v.leaves)
	return v.addChecked(m, &v.check)
}

// addChecked is Add with what checkBlock found of m.
func (v *Verifier) addChecked(m *Msg, c *blockCheck) error {
	var gap error
	if m.Seq != v.lastSeq+1 {
		gap = v.Missing(v.lastSeq+1, m.Seq-1, nil)
	}
	v.lastSeq = m.Seq
	return errors.Join(gap, v.add(m, c))
}

func (v *Verifier) link(writer string) *link {
	l := v.links[writer]
	if l == nil {
		l = &link{}
		v.links[writer] = l
	}
	return l
}

// blockCheck is what a block message shows on its own, apart from its
// place in the writer's chain: checkBlock works it out, on any goroutine,
// for add to judge in stream order.
type blockCheck struct {
	b          *Block // nil if unreadable
	unreadable error  // why ParseBlock refused it
	noKeys     bool   // the writer is not in the trust file
	reason     string // the first check it fails on its own; "" if none
	leaves     []Hash // its events' leaf hashes, if it could be read
}

// checkBlock checks m on its own against trust, in add's order, into c
// (whose leaves it reuses); scratch is where it computes the Merkle root.
// It only reads trust, so several may run at once.
func checkBlock(trust *Trust, m *Msg, c *blockCheck, scratch *[]Hash) {
	*c = blockCheck{leaves: c.leaves[:0]}
	b, err := ParseBlock(m.Data)
	if err != nil {
		c.unreadable = err
		return
	}
	c.b = b
	for _, e := range b.Events {
		c.leaves = append(c.leaves, LeafHash(e))
	}
	c.reason, c.noKeys = blockReason(trust, m, b, c.leaves, scratch)
}

// CheckParsed checks block b, parsed from message m, for what it shows on
// its own — its writer is pinned, its signature verifies with a pinned
// key, its events match the signed Merkle root and are well formed — but
// not its place in the writer's chain, which only a Verifier reading the
// stream in order can judge. The console checks the newest blocks it shows
// this way while its Verifier is still reading from the first.
func (t *Trust) CheckParsed(m *Msg, b *Block) error {
	leaves := make([]Hash, len(b.Events))
	for i, e := range b.Events {
		leaves[i] = LeafHash(e)
	}
	var scratch []Hash
	reason, noKeys := blockReason(t, m, b, leaves, &scratch)
	switch {
	case noKeys:
		return fmt.Errorf("sequence %d: writer %q is not in the trust file", m.Seq, m.Writer())
	case reason != "":
		return fmt.Errorf("sequence %d: %s", m.Seq, reason)
	}
	return nil
}

// blockReason says why block b, stored as m, is bad in itself, or "";
// noKeys says its writer is not in the trust file, which add judges.
func blockReason(trust *Trust, m *Msg, b *Block, leaves []Hash, scratch *[]Hash) (reason string, noKeys bool) {
	writer := m.Writer()
	if b.Writer != writer {
		return fmt.Sprintf("block names writer %q but was stored under %s", b.Writer, m.Subject), false
	}
	keys, ok := trust.Writers[writer]
	if !ok {
		return "", true
	}
	if !keys.KeyIDs[b.KeyID] {
		return fmt.Sprintf("signed with key id %d, which is not a pinned key of this writer", b.KeyID), false
	}
	if len(b.Signature) < 5 || b.Signature[0] != 1 || binary.BigEndian.Uint32(b.Signature[1:5]) != b.KeyID {
		return fmt.Sprintf("signature prefix does not name the header's key id %d", b.KeyID), false
	}
	if err := keys.Verifier.Verify(b.Signature, SigningInput(b.Hash)); err != nil {
		return "signature does not verify with the writer's pinned keys", false
	}
	if m.MsgID != "" && m.MsgID != b.Hash.String() {
		return fmt.Sprintf("message id %s is not the block hash %s", m.MsgID, b.Hash), false
	}
	if int(b.Count) != len(b.Events) {
		return fmt.Sprintf("header counts %d events, block holds %d", b.Count, len(b.Events)), false
	}
	*scratch = append((*scratch)[:0], leaves...)
	if root := MerkleRoot(*scratch); root != b.Root {
		return "events do not match the signed Merkle root: an event was altered, added or removed", false
	}
	var view EventView
	for i, e := range b.Events {
		if err := ViewEvent(e, &view); err != nil { // checks the format, copies nothing
			return fmt.Sprintf("event %d: %v", i, err), false
		}
	}
	if h, ok := trust.Heads[writer]; ok && h.Height == b.Height && h.Hash != b.Hash.String() {
		return fmt.Sprintf("block hash %s differs from the local head's %s: the chain was rewritten", b.Hash, h.Hash), false
	}
	return "", false
}

// add verifies m, whose sequence follows the last, with what checkBlock
// found of it.
func (v *Verifier) add(m *Msg, c *blockCheck) error {
	writer := m.Writer()
	l := v.link(writer)
	defer func() { l.seen = m.Seq }()
	// broke reports p and starts counting the writer's later blocks in it.
	broke := func(p *Problem) error {
		l.broken, l.anchored = p, false
		return p
	}
	if c.unreadable != nil {
		return broke(&Problem{Seq: m.Seq, Writer: writer, Reason: fmt.Sprintf("unreadable block: %v", c.unreadable)})
	}
	b, reason := c.b, c.reason
	if c.noKeys {
		if l.broken != nil {
			l.broken.Later++
			return nil
		}
		reason = "writer is not in the trust file"
	}
	if reason != "" {
		return broke(&Problem{Seq: m.Seq, Writer: writer, Height: b.Height, HasHeight: true, Reason: reason})
	}
	// The block is sound in itself; now its place in the writer's chain.
	st := v.writers[writer]
	var skipped bool
	if st == nil {
		reason, skipped = linkReason(writer, false, 0, Hash{}, b)
	} else {
		reason, skipped = linkReason(writer, true, st.Height, st.Hash, b)
	}
	if reason != "" {
		followsAnchor := false
		if l.broken != nil && l.anchored {
			// Since the break, the chain is checked from the last sound block.
			reason, skipped = linkReason(writer, true, l.height, l.hash, b)
			followsAnchor = reason == ""
		}
		var p *Problem
		switch {
		case l.broken != nil && (!l.anchored || followsAnchor):
			l.broken.Later++
		case skipped && v.lastGap != nil && v.lastGap.Seq > l.seen:
			// The missing messages may hold the skipped blocks.
			l.broken = v.lastGap
			l.broken.Later++
		default:
			p = &Problem{Seq: m.Seq, Writer: writer, Height: b.Height, HasHeight: true, Reason: reason}
			l.broken = p
		}
		l.anchored, l.height, l.hash = true, b.Height, b.Hash
		if p != nil {
			return p
		}
		return nil
	}
	l.broken, l.anchored = nil, false
	for i, e := range b.Events {
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

// linkReason says why block b cannot follow the writer's block at height
// with hash (have false: the writer has no block yet), or "" if it can;
// skipped says blocks are missing between them.
func linkReason(writer string, have bool, height uint64, hash Hash, b *Block) (reason string, skipped bool) {
	switch {
	case !have && b.Height != 0:
		return fmt.Sprintf("first block of this writer is block %d, not 0: blocks 0..%d are missing", b.Height, b.Height-1), true
	case !have && b.Prev != GenesisPrev(writer):
		return "genesis block does not name this writer's genesis hash", false
	case have && b.Height <= height:
		return fmt.Sprintf("fork: block %d appears again after block %d", b.Height, height), false
	case have && b.Height != height+1:
		return fmt.Sprintf("blocks %d..%d are missing", height+1, b.Height-1), true
	case have && b.Prev != hash:
		return fmt.Sprintf("previous hash %s is not block %d's hash %s", b.Prev, height, hash), false
	}
	return "", false
}

// Finish checks what only the end can tell: every pinned head is present,
// so a stream truncated behind a writer's head is caught. A head that
// missing messages (Missing) may hold is not reported again.
func (v *Verifier) Finish() error {
	for writer, head := range v.trust.Heads {
		st, l := v.writers[writer], v.link(writer)
		have, top := st != nil, uint64(0)
		if have {
			top = st.Height
		}
		if l.anchored && (!have || l.height > top) {
			have, top = true, l.height
		}
		switch {
		case have && top >= head.Height:
		case v.lastGap != nil && v.lastGap.Seq > l.seen:
		case !have:
			return &Problem{Writer: writer, Height: head.Height, HasHeight: true,
				Reason: fmt.Sprintf("no blocks in the stream, but the local head is block %d: the chain was deleted or truncated", head.Height)}
		default:
			return &Problem{Writer: writer, Height: top + 1, HasHeight: true,
				Reason: fmt.Sprintf("chain ends at block %d, but the local head is block %d: blocks %d..%d were truncated",
					top, head.Height, top+1, head.Height)}
		}
	}
	return nil
}
