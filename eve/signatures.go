package eve

import (
	"strings"

	"github.com/gridseal/gridseal/audit"
)

// Signature is one kind of alert gridseal raises: a fixed id, a fixed
// signature string (the values of one occurrence go in the alert's
// metadata, never in the string, so a SIEM can route on either) and a
// severity in Suricata's scale, 1 the most urgent.
type Signature struct {
	ID       int
	Kind     string // short name, also alert.metadata.gridseal_kind
	Text     string // alert.signature
	Category string // alert.category
	Severity int    // alert.severity: 1 high, 2 medium, 3 low
	// Allowed: the operation went ahead (alert.action "allowed");
	// otherwise gridseal stopped it ("blocked").
	Allowed bool
}

// GID is the generator id of every gridseal alert (Suricata's gid for
// rule-based alerts).
const GID = 1

// Signature kinds, one per alert gridseal raises. The ids are stable: a
// SIEM's routing depends on them, so an id is never reused for another
// meaning. README.md ("Alerts") lists the same table; a test checks it.
var (
	SigWriteDenied    = Signature{9050001, "write-denied", "GRIDSEAL write denied by policy", "gridseal: request denied by policy", 2, false}
	SigMalformed      = Signature{9050002, "malformed", "GRIDSEAL malformed Modbus request", "gridseal: malformed Modbus request", 2, false}
	SigReplyNoRequest = Signature{9050003, "reply-no-request", "GRIDSEAL device reply matches no request", "gridseal: device reply dropped", 2, false}
	SigReplyLate      = Signature{9050004, "reply-late", "GRIDSEAL late device reply to a timed-out request", "gridseal: device reply dropped", 2, false}
	SigBreakGlass     = Signature{9050005, "break-glass", "GRIDSEAL break-glass approval used", "gridseal: break-glass approval used", 1, true}
	SigReadDenied     = Signature{9050006, "read-denied", "GRIDSEAL read denied by policy", "gridseal: request denied by policy", 3, false}
	SigNeedsApproval  = Signature{9050007, "needs-approval", "GRIDSEAL write needs an approval", "gridseal: request denied by policy", 2, false}
	SigRateLimited    = Signature{9050008, "rate-limited", "GRIDSEAL client over its request rate limit", "gridseal: request rate limited", 3, false}
	SigUnrecorded     = Signature{9050009, "unrecorded", "GRIDSEAL request refused: it could not be recorded", "gridseal: record unavailable", 1, false}
	SigProposed       = Signature{9050010, "approval-proposed", "GRIDSEAL approval proposed", "gridseal: approval step", 3, true}
	SigSigned         = Signature{9050011, "approval-signed", "GRIDSEAL approval signed", "gridseal: approval step", 3, true}
	SigUsed           = Signature{9050012, "approval-used", "GRIDSEAL approval used", "gridseal: approval step", 3, true}
	SigRefused        = Signature{9050013, "approval-refused", "GRIDSEAL approval step refused", "gridseal: approval step refused", 2, false}
	SigVerifyFailed   = Signature{9050014, "chain-verify-failed", "GRIDSEAL chain verification failed", "gridseal: chain verification failed", 1, false}
	SigGap            = Signature{9050015, "chain-gap", "GRIDSEAL operations not recorded", "gridseal: record unavailable", 1, false}
)

// Signatures lists every kind, in id order.
func Signatures() []Signature {
	return []Signature{SigWriteDenied, SigMalformed, SigReplyNoRequest, SigReplyLate, SigBreakGlass, SigReadDenied,
		SigNeedsApproval, SigRateLimited, SigUnrecorded, SigProposed, SigSigned, SigUsed, SigRefused, SigVerifyFailed, SigGap}
}

// severityName is the alert's severity as Emerging Threats' rule metadata
// names it (alert.metadata.signature_severity).
func (s Signature) severityName() string {
	switch s.Severity {
	case 1:
		return "Critical"
	case 2:
		return "Major"
	}
	return "Minor"
}

// Reasons as the proxy, the policy engine and the approvals gate record
// them (proxy/session.go, policy/engine.go, approvals/gate.go,
// gateway/approvalsteps.go). The event does not store why a request was
// denied as a code, so the kind is read from these prefixes; TestAlertKinds
// drives a real proxy to produce each and checks the kind.
const (
	reasonRateLimited = "client over its request rate limit"
	reasonUnrecorded  = "refused: the record "
	reasonProposed    = "proposed by "
	reasonSigned      = "signed by "
	reasonUsed        = "used by "
)

// alertFor says which alert, if any, an event raises.
func alertFor(ev *audit.Event) (Signature, bool) {
	switch ev.Phase {
	case audit.PhaseDroppedReply:
		if len(ev.PDU) > 0 {
			return SigReplyLate, true
		}
		return SigReplyNoRequest, true
	case audit.PhaseGap:
		return SigGap, true
	case audit.PhaseApproval:
		switch {
		case ev.Verdict != audit.Allow:
			return SigRefused, true
		case strings.HasPrefix(ev.Reason, reasonProposed):
			return SigProposed, true
		case strings.HasPrefix(ev.Reason, reasonSigned):
			return SigSigned, true
		case strings.HasPrefix(ev.Reason, reasonUsed):
			return SigUsed, true
		}
		return Signature{}, false
	case audit.PhaseComplete:
	default:
		return Signature{}, false
	}
	switch {
	case ev.Verdict == audit.Allow:
		if ev.BreakGlass {
			return SigBreakGlass, true
		}
		return Signature{}, false
	case strings.HasPrefix(ev.Reason, reasonRateLimited):
		return SigRateLimited, true
	case ev.Verdict == audit.Malformed:
		return SigMalformed, true
	case strings.HasPrefix(ev.Reason, reasonUnrecorded):
		return SigUnrecorded, true
	case needsApproval(ev):
		return SigNeedsApproval, true
	case ev.Class == "read":
		return SigReadDenied, true
	}
	return SigWriteDenied, true
}

// needsApproval: the rule that matched requires an m-of-n approval and none
// held (approvals/gate.go, policy/engine.go decideApproval). Those reasons
// are "rule R: needs …", "rule R: no approval …" and "rule R: approval ID…:
// why"; a rule's range or value refusal reads "rule R: <what is outside>".
func needsApproval(ev *audit.Event) bool {
	if ev.Rule == "" {
		return false
	}
	rest, ok := strings.CutPrefix(ev.Reason, "rule "+ev.Rule+": ")
	if !ok {
		return false
	}
	return ev.Approval != "" || strings.HasPrefix(rest, "needs ") || strings.HasPrefix(rest, "no approval ")
}
