package approvals

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/policy/decision"
)

// Source finds approvals for an exact command and consumes them. *Store is
// the one a proxy uses; both methods must be safe for concurrent use.
type Source interface {
	Candidates(device string, unit byte, pdu []byte) []*Stored
	Consume(ctx context.Context, st *Stored, by string, op uint64) error
}

// Use lets e's rules that require a quorum allow commands with approvals
// from src; writer names this proxy in each consumption. If src is a
// *Store, each approval it indexes from then on has its signatures verified
// under e's policy as it arrives, off the request path. Call it before e
// decides.
func Use(e *policy.Engine, src Source, writer string) {
	e.UseApprovals(&gate{src: src, writer: writer})
	if s, ok := src.(*Store); ok {
		w := func(st *Stored) { warm(e, st) }
		s.warm.Store(&w)
	}
}

// gate is the policy.Approvals an engine is given by Use.
type gate struct {
	src    Source
	writer string
}

// Approve finds an approval for exactly in's command, checks it under rule r
// of p at now — the rule the engine found allows the command, SunSpec rules
// compiled for the device's map — and consumes it before answering Allow.
func (g *gate) Approve(ctx context.Context, p *policy.Policy, r *policy.Rule, in *decision.Input, now time.Time) decision.Result {
	v := decision.Result{Verdict: audit.Deny, Denial: decision.DenyApproval, Rule: r.Name, Policy: p.Digest}
	cands := g.src.Candidates(in.Device, in.Unit, in.Request.PDU)
	if len(cands) == 0 {
		v.Reason = fmt.Sprintf("rule %s: needs an approval by %d of %s for exactly this command (gridseal propose)", r.Name, r.Requires.M, r.Requires.Group)
		return v
	}
	// Verify signatures only on approvals that could still be used; if
	// none could, judge the newest one so the reason says why.
	live := cands[:0:0]
	newest := cands[0]
	for _, st := range cands {
		pr := st.Proposal
		if st.Entry.Consumed == nil && !now.Before(pr.NotBefore.Add(-Skew)) && !now.After(pr.NotAfter.Add(Skew)) {
			live = append(live, st)
		}
		if pr.NotBefore.After(newest.Proposal.NotBefore) {
			newest = st
		}
	}
	if len(live) == 0 {
		live = append(live, newest)
	}
	var best *Evaluation
	var bestSt *Stored
	for _, st := range live {
		ev := evaluate(p, r, st, now)
		better := best == nil || (ev.Usable() && !best.Usable()) ||
			(ev.Usable() == best.Usable() && ev.Enough && !best.Enough) ||
			(ev.Usable() == best.Usable() && ev.Enough == best.Enough && len(ev.Approvers) > len(best.Approvers))
		if better {
			evCopy := ev
			best, bestSt = &evCopy, st
		}
	}
	v.Approval = bestSt.ID.String()
	if !best.Usable() {
		v.Reason = fmt.Sprintf("rule %s: approval %s…: %s", r.Name, v.Approval[:12], best.Summary())
		return v
	}
	if err := g.src.Consume(ctx, bestSt, g.writer, in.Op); err != nil {
		v.Reason = fmt.Sprintf("rule %s: approval %s…: %v", r.Name, v.Approval[:12], err)
		return v
	}
	v.Verdict, v.Denial, v.Approvers, v.BreakGlass = audit.Allow, 0, best.Approvers, best.BreakGlass
	v.Reason = fmt.Sprintf("%s: approval %s… by %s", r.Name, v.Approval[:12], strings.Join(best.Approvers, ", "))
	if best.BreakGlass {
		v.Reason = "BREAK-GLASS " + v.Reason + fmt.Sprintf(" (%d of %d)", len(best.Approvers), r.Requires.M)
	}
	return v
}
