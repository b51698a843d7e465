package mirror

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gridseal/gridseal/chain"
)

// verifyLoop follows the local chain stream from its first message and
// verifies each message as it lands (chain.Verifier, against the pinned
// writer keys only), adding every block's events to the tree in stream
// order, as the checkpointer does.
func (m *Mirror) verifyLoop(ctx context.Context) error {
	v := chain.NewVerifier(chain.Trust{Writers: m.cfg.Trust.Writers})
	var unknown []string // policy digests the current message's events name that are not known
	if len(m.cfg.KnownPolicies) > 0 {
		v.OnEvent = func(_ *chain.Msg, _ *chain.Block, i int, e []byte) error {
			ev, err := chain.DecodeEvent(e)
			if err == nil && ev.Policy != "" && !m.cfg.KnownPolicies[ev.Policy] {
				unknown = append(unknown, fmt.Sprintf("event %d names policy %s", i, ev.Policy))
			}
			return nil
		}
	}
	return m.retry(ctx, "verifying the copy", m.cfg.Poll, func(ctx context.Context) error {
		m.mu.Lock()
		from := m.verified + 1
		m.mu.Unlock()
		err := chain.Scan(ctx, m.cfg.Local, from, true, func(msg *chain.Msg) error {
			unknown = unknown[:0]
			ps := problems(v.Add(msg))
			return m.advance(msg, ps, unknown)
		})
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil // the copier creates it; a JetStream mirror is being set up
		}
		return err
	})
}

// problems splits what Verifier.Add returned into its problems.
func problems(err error) []error {
	if err == nil {
		return nil
	}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		return joined.Unwrap()
	}
	return []error{err}
}

// advance adds a verified message's events to the tree and moves the
// mirror on: alarms for its problems, the clean prefix if it has none,
// the signed checkpoints that waited for the copy to reach them.
func (m *Mirror) advance(msg *chain.Msg, ps []error, unknown []string) error {
	var leaves [][]byte
	if b, err := chain.ParseBlock(msg.Data); err == nil { // not a block: no leaves, as the checkpointer counts
		leaves = b.Events
		m.mu.Lock()
		tree := m.tree
		m.mu.Unlock()
		if err := tree.AppendBlock(msg.Seq, b.Events); err != nil {
			return &fatalError{fmt.Errorf("the mirror's tree: %w", err)}
		}
	}
	var alarms []Alarm
	for _, p := range ps {
		a := Alarm{Kind: KindBlock, Seq: msg.Seq, Reason: p.Error()}
		var prob *chain.Problem
		if errors.As(p, &prob) && prob.Seq != 0 {
			a.Seq = prob.Seq
		}
		alarms = append(alarms, a)
	}
	if len(unknown) > 0 {
		alarms = append(alarms, Alarm{Kind: KindPolicy, Seq: msg.Seq, Reason: fmt.Sprintf(
			"sequence %d (writer %s): %s, which is not a known policy: the writer decided under a policy nobody told the mirror of",
			msg.Seq, msg.Writer(), strings.Join(unknown, "; "))})
	}
	m.mu.Lock()
	m.verified = msg.Seq
	m.events = m.tree.Size()
	if len(alarms) > 0 && m.tainted == nil {
		a := alarms[0]
		m.tainted = &a
	}
	if m.tainted == nil {
		m.clean = m.events
	}
	due := m.duePending()
	close(m.grown)
	m.grown = make(chan struct{})
	m.mu.Unlock()
	m.met.verified.Set(float64(msg.Seq))
	m.met.verifiedEvents.Add(float64(len(leaves)))
	for _, a := range alarms {
		m.raise(a)
	}
	for _, cp := range due {
		m.checkAgainstTree(cp)
	}
	return nil
}

// duePending takes the pending checkpoints the tree now reaches. m.mu is
// held.
func (m *Mirror) duePending() []*chain.Checkpoint {
	var due []*chain.Checkpoint
	keep := m.pending[:0]
	for _, cp := range m.pending {
		if cp.Size <= m.events {
			due = append(due, cp)
		} else {
			keep = append(keep, cp)
		}
	}
	m.pending = keep
	return due
}

// observe checks a signed checkpoint met anywhere (from says where)
// against the copy: one the tree reaches must have the tree's root; one it
// does not reach yet waits for it, and must agree with every other one
// of its size meanwhile.
func (m *Mirror) observe(cp *chain.Checkpoint, from string) {
	m.mu.Lock()
	if m.tree == nil || cp.Size > m.events {
		var clash *chain.Checkpoint
		dup := false
		for _, p := range m.pending {
			if p.Size == cp.Size {
				dup = dup || p.Root == cp.Root
				if p.Root != cp.Root {
					clash = p
				}
			}
		}
		if !dup && clash == nil {
			if len(m.pending) >= maxPending {
				m.pending = m.pending[1:]
			}
			m.pending = append(m.pending, cp)
		}
		m.mu.Unlock()
		if clash != nil {
			m.raise(Alarm{Kind: KindSplitView, Reason: fmt.Sprintf(
				"two checkpoints signed by %s of %d events have different roots, %s and %s (the second from %s): a split view",
				signers(cp), cp.Size, clash.Root, cp.Root, from), Checkpoints: []string{string(clash.Note), string(cp.Note)}})
		}
		return
	}
	m.mu.Unlock()
	m.checkAgainstTree(cp)
}

// checkAgainstTree compares a signed checkpoint with the copy's tree at
// its size.
func (m *Mirror) checkAgainstTree(cp *chain.Checkpoint) {
	m.mu.Lock()
	tree, matched := m.tree, m.matched
	m.mu.Unlock()
	if tree == nil {
		return
	}
	root, err := tree.Root(cp.Size)
	if err != nil {
		m.log.Warn("the mirror's tree cannot be read")
		return
	}
	if root == cp.Root {
		m.mu.Lock()
		if m.matched == nil || cp.Size > m.matched.Size {
			m.matched = cp
		}
		m.mu.Unlock()
		return
	}
	a := Alarm{Kind: KindSplitView, Reason: fmt.Sprintf(
		"a checkpoint signed by %s says the first %d events have root %s; in the copy of the source's stream they have root %s: the checkpoint key signed another history than the stream holds (a split view, or the stream rewritten behind it)",
		signers(cp), cp.Size, cp.Root, root), Checkpoints: []string{string(cp.Note)}}
	if matched != nil {
		a.Reason += fmt.Sprintf("; the same key's checkpoint of %d events agrees with the copy", matched.Size)
		a.Checkpoints = append([]string{string(matched.Note)}, a.Checkpoints...)
	}
	m.raise(a)
}

func signers(cp *chain.Checkpoint) string {
	if len(cp.Signers) == 0 {
		return "a pinned key"
	}
	return strings.Join(cp.Signers, ", ")
}
