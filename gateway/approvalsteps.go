package gateway

import (
	"fmt"
	"time"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// approvalEvents describes what changed on an approval as chain events.
func approvalEvents(p *policy.Policy, before, after *approvals.Stored) []audit.Event {
	pr := after.Proposal
	base := audit.Event{Time: time.Now(), Phase: audit.PhaseApproval, Verdict: audit.Allow, Class: "approval",
		Device: pr.Device, Unit: pr.Unit, Function: pr.PDU[0], PDU: pr.PDU, Approval: after.ID.String(), Policy: p.Digest}
	if req, err := modbus.ParseRequest(pr.PDU); err == nil {
		base.Address, base.Quantity = req.Address, req.Quantity
	}
	var out []audit.Event
	if before == nil {
		ev := base
		ev.Reason = fmt.Sprintf("proposed by %s: %s, valid %s to %s", pr.Proposer, pr.Describe(),
			pr.NotBefore.Format(time.RFC3339), pr.NotAfter.Format(time.RFC3339))
		out = append(out, ev)
	}
	seen := 0
	if before != nil {
		seen = len(before.Entry.Signatures)
	}
	for _, s := range after.Entry.Signatures[min(seen, len(after.Entry.Signatures)):] {
		ev := base
		who := "an unknown key"
		if len(s.Sig) >= 5 {
			id := uint32(s.Sig[1])<<24 | uint32(s.Sig[2])<<16 | uint32(s.Sig[3])<<8 | uint32(s.Sig[4])
			who = fmt.Sprintf("key %d", id)
			if a := p.ApproverForKey(id); a != nil {
				who = fmt.Sprintf("%s (key %d)", a.Name, id)
			}
		}
		ev.Reason = "signed by " + who
		out = append(out, ev)
	}
	if after.Entry.Consumed != nil && (before == nil || before.Entry.Consumed == nil) {
		ev := base
		ev.Reason = fmt.Sprintf("used by %s for operation %d", after.Entry.Consumed.By, after.Entry.Consumed.Op)
		out = append(out, ev)
	}
	return out
}
