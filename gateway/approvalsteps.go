package gateway

import (
	"fmt"
	"strings"
	"time"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// approvalEvents describes what changed on an approval as chain events. A
// step is recorded as done (verdict allow) only once it is verified under p,
// the policy in force: a proposal whose proposer's signature verifies and
// whose window does not start in the future, a signature that verifies with
// an approver's key that is not revoked. Anything else is recorded as
// refused (verdict deny, reason "refused: …" saying why), never under the
// name a key id merely claims.
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
		if err := approvals.VerifyProposal(p, after); err != nil {
			ev.Verdict, ev.Reason = audit.Deny, "refused: "+ev.Reason+": "+err.Error()
		}
		out = append(out, ev)
	}
	seen := 0
	if before != nil {
		seen = len(before.Entry.Signatures)
	}
	for _, s := range after.Entry.Signatures[min(seen, len(after.Entry.Signatures)):] {
		ev := base
		if a, err := approvals.VerifySignature(p, after, s.Sig); err != nil {
			ev.Verdict, ev.Reason = audit.Deny, "refused: a signature: "+err.Error()
		} else {
			id, _ := keys.SignatureKeyID(s.Sig)
			ev.Reason = fmt.Sprintf("signed by %s (key %d)", a.Name, id)
		}
		out = append(out, ev)
	}
	if after.Entry.Consumed != nil && (before == nil || before.Entry.Consumed == nil) {
		ev := base
		ev.Reason = fmt.Sprintf("used by %s for operation %d", after.Entry.Consumed.By, after.Entry.Consumed.Op)
		out = append(out, ev)
	}
	return out
}

// invalidApprovalEvent records a change to a proposal's key in the bucket
// that is not a valid proposal stored under its own id.
func invalidApprovalEvent(p *policy.Policy, key string, err error) audit.Event {
	return audit.Event{Time: time.Now(), Phase: audit.PhaseApproval, Verdict: audit.Deny, Class: "approval",
		Approval: strings.TrimPrefix(key, "p."), Policy: p.Digest,
		Reason: "refused: bucket entry " + key + " is not a valid proposal: " + err.Error()}
}
