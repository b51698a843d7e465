package approvals

import (
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/policy/decision"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// Evaluation is what an approval is worth under a policy at one moment.
type Evaluation struct {
	Rule       *policy.Rule
	Approvers  []string // distinct approvers whose signatures count
	Ignored    []string // signatures that do not count, and why
	Problem    string   // why the approval cannot be used at all; "" if it can
	Enough     bool     // the rule's full quorum is met
	BreakGlass bool     // only the rule's break-glass quorum is met
}

// Usable reports whether the approval may allow its command now.
func (ev *Evaluation) Usable() bool { return ev.Problem == "" && (ev.Enough || ev.BreakGlass) }

// Summary says in one line where the approval stands.
func (ev *Evaluation) Summary() string {
	if ev.Rule == nil || ev.Rule.Requires == nil {
		return ev.Problem
	}
	q := ev.Rule.Requires
	s := fmt.Sprintf("%d of %d %s signed", len(ev.Approvers), q.M, q.Group)
	if len(ev.Approvers) > 0 {
		s += " (" + strings.Join(ev.Approvers, ", ") + ")"
	}
	if ev.BreakGlass {
		s += "; break-glass quorum met"
	}
	if ev.Problem != "" {
		s += "; " + ev.Problem
	}
	return s
}

// ApprovalRule returns the rule of p under which an approval for this
// command would be judged: the write rule that allows the command subject to
// a quorum. It reports why if none does. Without the device's SunSpec map
// (the CLI, the console) a rule naming SunSpec points is the one whose
// functions and units admit the command (Policy.MatchUnresolved): the proxy
// judges the points and values against the map, under the rule its engine
// finds (Engine.Match).
func ApprovalRule(p *policy.Policy, device string, unit byte, pdu []byte) (*policy.Rule, error) {
	if p.Device(device) == nil {
		return nil, fmt.Errorf("device %q is not in policy %s", device, p.ID)
	}
	req, err := modbus.ParseRequest(pdu)
	if err != nil {
		return nil, err
	}
	in := &decision.Input{Device: device, Unit: unit, Request: req}
	if r := p.Match(in); r != nil {
		return r, nil
	}
	if r := p.MatchUnresolved(in); r != nil {
		return r, nil
	}
	return nil, fmt.Errorf("no rule of device %s allows %s, even with approvals", device, (&Proposal{Device: device, Unit: unit, PDU: pdu}).Describe())
}

// Evaluate judges a stored approval for its command under p at now.
func Evaluate(p *policy.Policy, st *Stored, now time.Time) Evaluation {
	pr := st.Proposal
	r, err := ApprovalRule(p, pr.Device, pr.Unit, pr.PDU)
	if err != nil {
		return Evaluation{Problem: err.Error()}
	}
	return evaluate(p, r, st, now)
}

// evaluate judges st under rule r of p at now.
func evaluate(p *policy.Policy, r *policy.Rule, st *Stored, now time.Time) Evaluation {
	pr := st.Proposal
	ev := Evaluation{Rule: r}
	if r.Requires == nil {
		ev.Problem = "rule " + r.Name + " allows this command without approval"
		return ev
	}
	sr := signatures(p, st, r)
	ev.Approvers, ev.Ignored = sr.approvers, sr.ignored
	switch {
	case st.Entry.Consumed != nil:
		ev.Problem = fmt.Sprintf("already used by %s at %s", st.Entry.Consumed.By, st.Entry.Consumed.At.Format(time.RFC3339))
	case pr.PolicyID != p.ID || hex.EncodeToString(pr.PolicyDigest[:]) != p.Digest:
		ev.Problem = fmt.Sprintf("proposed under policy %s %x…, but %s %s… is in force", pr.PolicyID, pr.PolicyDigest[:6], p.ID, p.Digest[:12])
	case !st.Seen.IsZero() && pr.CheckStart(st.Seen) != nil:
		ev.Problem = pr.CheckStart(st.Seen).Error()
	case now.Before(pr.NotBefore.Add(-Skew)):
		ev.Problem = "not valid before " + pr.NotBefore.Format(time.RFC3339)
	case now.After(pr.NotAfter.Add(Skew)):
		ev.Problem = "expired at " + pr.NotAfter.Format(time.RFC3339)
	case pr.NotAfter.Sub(pr.NotBefore) > r.MaxTTL:
		ev.Problem = fmt.Sprintf("window %v is longer than rule %s allows (%v)", pr.NotAfter.Sub(pr.NotBefore), r.Name, r.MaxTTL)
	}
	if ev.Problem == "" && sr.proposerErr != nil {
		ev.Problem = sr.proposerErr.Error()
	}
	n := len(ev.Approvers)
	ev.Enough = n >= r.Requires.M
	ev.BreakGlass = !ev.Enough && r.BreakGlass != nil && n >= r.BreakGlass.M
	return ev
}

// signatures verifies the proposer's and approvers' signatures of st under
// p and rule r, once per (revision, policy): the result is cached on st.
func signatures(p *policy.Policy, st *Stored, r *policy.Rule) *sigResult {
	if c := st.sigs.Load(); c != nil && c.digest == p.Digest && c.rule == r {
		return c
	}
	var ev Evaluation
	countSignatures(p, st, r, &ev)
	sr := &sigResult{digest: p.Digest, rule: r, approvers: ev.Approvers, ignored: ev.Ignored, proposerErr: checkProposer(p, st)}
	st.sigs.Store(sr)
	return sr
}

// warm verifies st's signatures under the rule of e's policy in force that
// its command would be decided by, so that deciding the write does not pay
// for it.
func warm(e *policy.Engine, st *Stored) {
	req, err := modbus.ParseRequest(st.Proposal.PDU)
	if err != nil {
		return
	}
	if r := e.Match(&decision.Input{Device: st.Proposal.Device, Unit: st.Proposal.Unit, Request: req}); r != nil && r.Requires != nil {
		signatures(e.Policy(), st, r)
	}
}

func checkProposer(p *policy.Policy, st *Stored) error {
	id, ok := keys.SignatureKeyID(st.Entry.ProposerSig)
	if !ok {
		return fmt.Errorf("the proposer's signature is missing or malformed")
	}
	a := p.ApproverForKey(id)
	switch {
	case a == nil:
		return fmt.Errorf("the proposer's key %d is not in the policy", id)
	case p.Revoked(id):
		return fmt.Errorf("the proposer's key %d is revoked", id)
	case a.Name != st.Proposal.Proposer:
		return fmt.Errorf("proposal names %s as proposer but was signed by %s", st.Proposal.Proposer, a.Name)
	}
	if a.Verify(st.Entry.ProposerSig, ProposeInput(st.ID)) != nil {
		return fmt.Errorf("the proposer's signature does not verify")
	}
	return nil
}

// VerifyProposal checks what a proposal claims before anyone relies on it:
// that the proposer it names signed its id (the SHA-256 of its encoding, which
// every Stored has been checked against) with a key of p that is not revoked,
// and that its window does not start more than Skew after it was first seen.
func VerifyProposal(p *policy.Policy, st *Stored) error {
	if err := checkProposer(p, st); err != nil {
		return err
	}
	if !st.Seen.IsZero() {
		return st.Proposal.CheckStart(st.Seen)
	}
	return nil
}

// VerifySignature checks one approver signature on st under p. It returns
// the approver whose key made it, or why it does not verify: malformed, a
// key of no approver, a revoked key (which counts zero), or not a
// signature of st's id by that key. Whether it counts toward a quorum (the
// group, the proposer, duplicates) is for Evaluate to judge.
func VerifySignature(p *policy.Policy, st *Stored, sig []byte) (*policy.Approver, error) {
	id, ok := keys.SignatureKeyID(sig)
	if !ok {
		return nil, errors.New("malformed (no Tink key prefix)")
	}
	a := p.ApproverForKey(id)
	switch {
	case a == nil:
		return nil, fmt.Errorf("key %d belongs to no approver", id)
	case p.Revoked(id):
		return nil, fmt.Errorf("key %d of %s is revoked", id, a.Name)
	}
	if a.Verify(sig, ApproveInput(st.ID)) != nil {
		return nil, fmt.Errorf("does not verify with %s's key %d", a.Name, id)
	}
	return a, nil
}

// countSignatures counts distinct approvers of the rule's group with a
// valid signature; the proposer and revoked keys count zero.
func countSignatures(p *policy.Policy, st *Stored, r *policy.Rule, ev *Evaluation) {
	counted := map[string]bool{}
	for i, s := range st.Entry.Signatures {
		ignore := func(why string) { ev.Ignored = append(ev.Ignored, fmt.Sprintf("signature %d: %s", i+1, why)) }
		a, err := VerifySignature(p, st, s.Sig)
		if err != nil {
			ignore(err.Error())
			continue
		}
		switch {
		case a.Name == st.Proposal.Proposer:
			ignore(a.Name + " proposed this command and cannot approve it")
		case !a.InGroup(r.Requires.Group):
			ignore(a.Name + " is not in group " + r.Requires.Group)
		case counted[a.Name]:
			ignore(a.Name + " already signed (approvers count once, not keys)")
		default:
			counted[a.Name] = true
			ev.Approvers = append(ev.Approvers, a.Name)
		}
	}
	sort.Strings(ev.Approvers)
}
