package policy

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/gridseal/gridseal/policy/decision"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// Evaluation is what an approval is worth under a policy at one moment.
type Evaluation struct {
	Rule       *Rule
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

// ApprovalRule returns the rule under which an approval for this command
// would be judged: the write rule that allows the command subject to a
// quorum. It reports why if none does.
func (p *Policy) ApprovalRule(device string, unit byte, pdu []byte) (*Rule, error) {
	d := p.Device(device)
	if d == nil {
		return nil, fmt.Errorf("device %q is not in policy %s", device, p.ID)
	}
	req, err := modbus.ParseRequest(pdu)
	if err != nil {
		return nil, err
	}
	in := &decision.Input{Device: device, Unit: unit, Request: req}
	for _, r := range d.Rules {
		if r.Class != req.Class() || !r.functions[req.Function] {
			continue
		}
		if denial, _ := r.check(d, in); denial == 0 {
			return r, nil
		}
	}
	return nil, fmt.Errorf("no rule of device %s allows %s, even with approvals", device, (&Proposal{Device: device, Unit: unit, PDU: pdu}).Describe())
}

// Evaluate judges a stored approval for its command under p at now.
func (p *Policy) Evaluate(st *Stored, now time.Time) Evaluation {
	pr := st.Proposal
	ev := Evaluation{}
	r, err := p.ApprovalRule(pr.Device, pr.Unit, pr.PDU)
	if err != nil {
		ev.Problem = err.Error()
		return ev
	}
	ev.Rule = r
	if r.Requires == nil {
		ev.Problem = "rule " + r.Name + " allows this command without approval"
		return ev
	}
	sr := p.signatures(st, r)
	ev.Approvers, ev.Ignored = sr.approvers, sr.ignored
	switch {
	case st.Entry.Consumed != nil:
		ev.Problem = fmt.Sprintf("already used by %s at %s", st.Entry.Consumed.By, st.Entry.Consumed.At.Format(time.RFC3339))
	case pr.PolicyID != p.ID || hex.EncodeToString(pr.PolicyDigest[:]) != p.Digest:
		ev.Problem = fmt.Sprintf("proposed under policy %s %x…, but %s %s… is in force", pr.PolicyID, pr.PolicyDigest[:6], p.ID, p.Digest[:12])
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
func (p *Policy) signatures(st *Stored, r *Rule) *sigResult {
	if c := st.sigs.Load(); c != nil && c.digest == p.Digest && c.rule == r {
		return c
	}
	var ev Evaluation
	p.countSignatures(st, r, &ev)
	sr := &sigResult{digest: p.Digest, rule: r, approvers: ev.Approvers, ignored: ev.Ignored, proposerErr: p.checkProposer(st)}
	st.sigs.Store(sr)
	return sr
}

// Warm verifies st's signatures under the policy in force, so that deciding
// a write does not pay for it.
func (e *Engine) warm(st *Stored) {
	p := e.cur.Load()
	if r, err := p.ApprovalRule(st.Proposal.Device, st.Proposal.Unit, st.Proposal.PDU); err == nil && r.Requires != nil {
		p.signatures(st, r)
	}
}

// keyOf returns the Tink key id a signature's 5-byte output prefix names.
func keyOf(sig []byte) (uint32, bool) {
	if len(sig) < 5 || sig[0] != 1 {
		return 0, false
	}
	return binary.BigEndian.Uint32(sig[1:5]), true
}

func (p *Policy) checkProposer(st *Stored) error {
	id, ok := keyOf(st.Entry.ProposerSig)
	if !ok {
		return fmt.Errorf("the proposer's signature is missing or malformed")
	}
	k, ok := p.keyIndex[id]
	switch {
	case !ok:
		return fmt.Errorf("the proposer's key %d is not in the policy", id)
	case p.revoked[id]:
		return fmt.Errorf("the proposer's key %d is revoked", id)
	case k.approver.Name != st.Proposal.Proposer:
		return fmt.Errorf("proposal names %s as proposer but was signed by %s", st.Proposal.Proposer, k.approver.Name)
	}
	if k.verifier.Verify(st.Entry.ProposerSig, ProposeInput(st.ID)) != nil {
		return fmt.Errorf("the proposer's signature does not verify")
	}
	return nil
}

// countSignatures counts distinct approvers of the rule's group with a
// valid signature; the proposer and revoked keys count zero.
func (p *Policy) countSignatures(st *Stored, r *Rule, ev *Evaluation) {
	counted := map[string]bool{}
	input := ApproveInput(st.ID)
	for i, s := range st.Entry.Signatures {
		ignore := func(why string) { ev.Ignored = append(ev.Ignored, fmt.Sprintf("signature %d: %s", i+1, why)) }
		id, ok := keyOf(s.Sig)
		if !ok {
			ignore("malformed (no Tink key prefix)")
			continue
		}
		k, ok := p.keyIndex[id]
		switch {
		case !ok:
			ignore(fmt.Sprintf("key %d belongs to no approver", id))
			continue
		case p.revoked[id]:
			ignore(fmt.Sprintf("key %d of %s is revoked", id, k.approver.Name))
			continue
		}
		if k.verifier.Verify(s.Sig, input) != nil {
			ignore(fmt.Sprintf("does not verify with %s's key %d", k.approver.Name, id))
			continue
		}
		a := k.approver
		switch {
		case a.Name == st.Proposal.Proposer:
			ignore(a.Name + " proposed this command and cannot approve it")
		case !a.inGroup(r.Requires.Group):
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
