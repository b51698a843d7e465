package gateway

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/policy/decision"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// PolicyInForce is the policy in the file given, or else the policy the
// site's proxies publish as in force (what policy learn builds on and
// what-if compares with).
func PolicyInForce(ctx context.Context, js jetstream.JetStream, file string) (*policy.Policy, error) {
	if file != "" {
		return policy.Load(file)
	}
	_, p, err := approvals.OpenPublished(ctx, js)
	if err != nil {
		return nil, fmt.Errorf("the policy in force: %w (or name a policy file with --policy)", err)
	}
	return p, nil
}

// ReplayChain feeds every recorded request of the chain at or after from
// to w: the completed record of each well-formed request routed to a
// device. It decodes in place and allocates per block, not per event.
func ReplayChain(ctx context.Context, js jetstream.JetStream, from time.Time, w *policy.WhatIf) error {
	return chain.ScanBlocks(ctx, js, 1, NewReplayer(from, w).Block)
}

// Replayer turns stored events into policy.Recorded for a what-if without
// allocating: device and role names are interned.
type Replayer struct {
	from  int64
	w     *policy.WhatIf
	names map[string]string
	v     chain.EventView
	q     policy.Recorded
}

// NewReplayer replays to w the requests recorded at or after from (zero:
// all of them).
func NewReplayer(from time.Time, w *policy.WhatIf) *Replayer {
	rp := &Replayer{w: w, names: map[string]string{}}
	if !from.IsZero() {
		rp.from = from.UnixNano()
	}
	return rp
}

func (rp *Replayer) intern(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if s, ok := rp.names[string(b)]; ok {
		return s
	}
	s := string(b)
	rp.names[s] = s
	return s
}

// Block replays the events of block b, stored at m.
func (rp *Replayer) Block(m *chain.Msg, b *chain.Block) error {
	v, q := &rp.v, &rp.q
	for i, e := range b.Events {
		if err := chain.ViewEvent(e, v); err != nil {
			return fmt.Errorf("sequence %d event %d: %w", m.Seq, i, err)
		}
		if v.IsMapRead() { // the proxy's own read: SunSpec rules are judged for the map it read
			rp.w.MapRead(rp.intern(v.Device), v.Unit, v.Address, v.Quantity, v.Response)
			continue
		}
		if v.Phase != audit.PhaseComplete || v.Verdict == audit.Malformed || len(v.PDU) == 0 || len(v.Device) == 0 || v.Time < rp.from {
			continue
		}
		req, err := modbus.ParseRequest(v.PDU)
		if err != nil {
			continue
		}
		q.In = decision.Input{Op: v.Op, Device: rp.intern(v.Device), Role: rp.intern(v.Role), Unit: v.Unit, Client: v.Client, Request: req}
		q.Approved = len(v.Approval) > 0 && v.Verdict == audit.Allow && !v.Observed()
		q.Time, q.Seq, q.Op = time.Unix(0, v.Time).UTC(), m.Seq, v.Op
		rp.w.Add(q)
	}
	return nil
}
