package policy

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/policy/decision"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// Engine decides requests against the policy in force. Decide is safe for
// concurrent use, and Swap replaces the policy atomically: a request is
// decided wholly under one policy.
type Engine struct {
	cur       atomic.Pointer[Policy]
	log       *zap.Logger
	approvals Approvals
	now       func() time.Time
	ss        sunspecEngine // devices' SunSpec maps, the rules compiled for them, the shadow candidate
}

// Approvals lets through the commands that a rule allows only with an m-of-n
// approval. The approvals package implements it over its store (see
// approvals.Use); policy declares it so that it imports neither approvals
// nor NATS.
type Approvals interface {
	// Approve judges, at now, the approvals held for exactly in's command
	// under rule r of p (r.Requires is set), and consumes the best usable
	// one for in.Op before answering audit.Allow. Otherwise it answers
	// audit.Deny with decision.DenyApproval and says why. Either way the
	// result names r and p's digest. It must be safe for concurrent use.
	Approve(ctx context.Context, p *Policy, r *Rule, in *decision.Input, now time.Time) decision.Result
}

// UseApprovals lets rules that require a quorum allow commands with
// approvals from a. Call it before deciding.
func (e *Engine) UseApprovals(a Approvals) { e.approvals = a }

// NewEngine returns an Engine enforcing p.
func NewEngine(p *Policy, log *zap.Logger) *Engine {
	e := &Engine{log: log, now: time.Now}
	e.cur.Store(p)
	e.ss.mu.Lock()
	e.ss.compileLocked(p, nil)
	e.ss.mu.Unlock()
	return e
}

// SetClock replaces the clock approval windows are judged by (tests).
func (e *Engine) SetClock(now func() time.Time) { e.now = now }

// Policy returns the policy in force.
func (e *Engine) Policy() *Policy { return e.cur.Load() }

// SetCandidate evaluates p, a signed candidate policy, beside the policy
// in force: every request is still decided by the policy in force, and
// one the candidate decides otherwise is flagged with what the candidate
// says (a dry run in production before a reload). Its SunSpec rules are
// compiled for the devices' maps as the policy in force's are. Nil stops
// it.
func (e *Engine) SetCandidate(p *Policy) {
	e.ss.mu.Lock()
	e.ss.cand.Store(compileState(p, e.ss.maps, notReadYet))
	e.ss.mu.Unlock()
}

// Candidate is the shadow candidate policy, or nil.
func (e *Engine) Candidate() *Policy {
	if st := e.ss.cand.Load(); st != nil {
		return st.pol
	}
	return nil
}

// shadow flags v when the candidate (st.pol, its SunSpec rules compiled
// in st) decides in otherwise than the rules in force did (an approval the
// policy in force consumed counts for the candidate too). Nothing is
// allocated unless they differ.
func shadow(st *sunspecState, in *decision.Input, v *decision.Result) {
	c := st.pol
	approved := v.Approval != ""
	r, denial := c.judge(in, approved, st)
	inForce := v.Allowed() && !v.Observed
	if (denial == 0) == inForce {
		return
	}
	v.CandidateDiffers = true
	if denial == 0 {
		v.Reason += fmt.Sprintf(" | candidate %s v%d would allow (rule %s)", c.ID, c.Version, r.Name)
		return
	}
	v.Reason += fmt.Sprintf(" | candidate %s v%d would deny: %s", c.ID, c.Version, c.explain(in, approved, st))
}

// Swap puts p in force for every request decided after it returns.
func (e *Engine) Swap(p *Policy) {
	e.ss.mu.Lock()
	e.ss.compileLocked(p, e.Candidate()) // before p is in force: its SunSpec rules never run uncompiled
	old := e.cur.Swap(p)
	e.ss.mu.Unlock()
	e.log.Info("policy in force", zap.String("id", p.ID), zap.Int("version", p.Version),
		zap.String("digest", p.Digest), zap.String("previous", old.Digest))
}

// Decide returns the verdict for one request. Allowing does not allocate.
// On a device in observe mode, a request the rules deny is allowed with
// Observed set and the reason it would have been denied; an approval that
// matches is still judged and consumed first.
func (e *Engine) Decide(ctx context.Context, in *decision.Input) decision.Result {
	v := e.decide(ctx, in)
	if st := e.ss.cand.Load(); st != nil {
		shadow(st, in, &v)
	}
	return v
}

func (e *Engine) decide(ctx context.Context, in *decision.Input) decision.Result {
	p := e.cur.Load()
	d := p.byName[in.Device]
	if d == nil {
		return decision.Result{Verdict: audit.Deny, Denial: decision.DenyDevice, Policy: p.Digest,
			Reason: fmt.Sprintf("device %q is not in policy %s", in.Device, p.ID)}
	}
	r, m := d.judge(in, e.ss.state.Load(), p)
	var v decision.Result
	switch {
	case m.denial == 0 && r.Requires != nil:
		v = e.decideApproval(ctx, p, r, in)
		if m.rr != nil { // name the SunSpec point the approval is (or would be) for
			v.Reason += "; " + m.rr.describe(&in.Request)
		}
	case m.denial == 0:
		reason := r.Name
		if m.rr != nil && in.Request.StateChanging() {
			reason = r.Name + ": " + m.rr.describe(&in.Request) // names the SunSpec point
		}
		return decision.Result{Verdict: audit.Allow, Rule: r.Name, Reason: reason, Policy: p.Digest}
	default:
		v = decision.Result{Verdict: audit.Deny, Denial: m.denial, Policy: p.Digest, Reason: d.explain(r, m, in)}
		if r != nil {
			v.Rule = r.Name
		}
	}
	if d.Observe && !v.Allowed() {
		v = observed(v)
	}
	return v
}

// observed turns the deny v of a device in observe mode into a forward
// that says, loudly, what would have denied it. No approval was used.
func observed(v decision.Result) decision.Result {
	v.Verdict, v.Observed = audit.Allow, true
	v.Approval, v.Approvers, v.BreakGlass = "", nil, false
	v.Reason = "OBSERVE would deny: " + v.Reason
	return v
}

// Judge is Decide without side effects, for replaying recorded requests:
// it returns the rule that allows in's request (denial 0), or the rule
// that nearly allowed it (nil if none) and why not. A rule that requires
// a quorum allows only if approved says an approval was used for the
// request; otherwise the denial is decision.DenyApproval. Observe mode is
// not applied: Judge says what the rules decide. It does not allocate and
// is safe for concurrent use.
func (p *Policy) Judge(in *decision.Input, approved bool) (*Rule, decision.Denial) {
	return p.judge(in, approved, nil)
}

// judge is Judge with p's SunSpec rules as compiled in st (nil: none
// resolved).
func (p *Policy) judge(in *decision.Input, approved bool, st *sunspecState) (*Rule, decision.Denial) {
	d := p.byName[in.Device]
	if d == nil {
		return nil, decision.DenyDevice
	}
	r, m := d.judge(in, st, p)
	if m.denial == 0 && r.Requires != nil && !approved {
		return r, decision.DenyApproval
	}
	return r, m.denial
}

// Explain says in words why p's rules deny in's request, as Decide's
// reason would (without consulting approvals); "" if they allow it.
func (p *Policy) Explain(in *decision.Input, approved bool) string {
	return p.explain(in, approved, nil)
}

func (p *Policy) explain(in *decision.Input, approved bool, st *sunspecState) string {
	d := p.byName[in.Device]
	if d == nil {
		return fmt.Sprintf("device %q is not in policy %s", in.Device, p.ID)
	}
	r, m := d.judge(in, st, p)
	switch {
	case m.denial == 0 && r.Requires != nil && !approved:
		return fmt.Sprintf("rule %s: needs an approval by %d of %s for exactly this command", r.Name, r.Requires.M, r.Requires.Group)
	case m.denial == 0:
		return ""
	}
	return d.explain(r, m, in)
}

// judge returns the first rule of d that allows in's request (m.denial 0),
// or the rule that came nearest and why it does not: the one with the
// worst denial, the first of those. A SunSpec rule is judged as st
// compiled it for the request's unit from the device's map (p is the
// policy d is of); with no st (replaying without maps), or not resolved,
// it allows nothing. It does not allocate.
func (d *Device) judge(in *decision.Input, st *sunspecState, p *Policy) (*Rule, miss) {
	req := &in.Request
	cls := req.Class()
	worst := miss{denial: decision.DenyFunction}
	var near *Rule
	for _, r := range d.Rules {
		if r.Class != cls || !r.functions[req.Function] {
			continue
		}
		rule, rr, why := st.rule(p, r, in.Unit)
		if rule == nil { // a SunSpec rule not resolved for this unit
			if decision.DenyAddress > worst.denial || near == nil {
				worst, near = miss{denial: decision.DenyAddress, kind: missUnresolved, why: why}, r
			}
			continue
		}
		m := rule.check(d, in)
		m.rr = rr
		if m.denial == 0 {
			return r, m
		}
		if m.denial > worst.denial || near == nil {
			worst, near = m, r
		}
	}
	return near, worst
}

// explain formats why near (nil: no rule of d names the function) does not
// allow in's request.
func (d *Device) explain(near *Rule, m miss, in *decision.Input) string {
	req := &in.Request
	if near == nil {
		return fmt.Sprintf("no rule of device %s allows function %d (%s, a %s)",
			d.Name, req.Function, req.Function, req.Class())
	}
	judged := near
	if m.rr != nil {
		judged = m.rr.Rule // its ranges are the compiled addresses and raw values
	}
	why := judged.why(m, in)
	if m.rr != nil && req.StateChanging() {
		why = m.rr.describe(req) + ": " + why // names the SunSpec point
	}
	return fmt.Sprintf("rule %s: %s", near.Name, why)
}

// decideApproval allows a command that rule r allows only with a quorum,
// if an approval for exactly this command holds.
func (e *Engine) decideApproval(ctx context.Context, p *Policy, r *Rule, in *decision.Input) decision.Result {
	if e.approvals == nil {
		return decision.Result{Verdict: audit.Deny, Denial: decision.DenyApproval, Rule: r.Name, Policy: p.Digest,
			Reason: fmt.Sprintf("rule %s: needs %d of %s, and this proxy has no approval store", r.Name, r.Requires.M, r.Requires.Group)}
	}
	v := e.approvals.Approve(ctx, p, r, in, e.now())
	if v.Allowed() && v.BreakGlass {
		e.log.Error("break-glass approval used", zap.String("rule", r.Name), zap.String("approval", v.Approval),
			zap.Strings("approvers", v.Approvers), zap.String("device", in.Device))
	}
	return v
}

// Match returns the first rule of in's device that allows in's request,
// whether or not the rule also requires an approval; nil if none does or the
// device is not in p. An approval is judged under this rule. A SunSpec rule
// matches nothing here: only where the device's map is known (Engine.Match;
// MatchUnresolved names the rule it may be).
func (p *Policy) Match(in *decision.Input) *Rule { return p.match(in, nil) }

func (p *Policy) match(in *decision.Input, st *sunspecState) *Rule {
	d := p.byName[in.Device]
	if d == nil {
		return nil
	}
	if r, m := d.judge(in, st, p); m.denial == 0 {
		return r
	}
	return nil
}

// Match is Policy.Match of the policy in force, with its SunSpec rules as
// compiled for the devices' maps this engine read: the rule an approval for
// in's command is judged under here.
func (e *Engine) Match(in *decision.Input) *Rule {
	return e.cur.Load().match(in, e.ss.state.Load())
}

// MatchUnresolved returns the first SunSpec rule of in's device that
// requires a quorum and whose functions, units and roles admit in's
// request, or nil: the rule an approval for it would be judged under if the
// request's registers are its points and its values in range, which only
// the device's map can tell (the proxy judges that when the write comes).
func (p *Policy) MatchUnresolved(in *decision.Input) *Rule {
	d := p.byName[in.Device]
	if d == nil {
		return nil
	}
	req := &in.Request
	for _, r := range d.Rules {
		if r.SunSpec != nil && r.Requires != nil && r.Class == req.Class() && r.functions[req.Function] && r.admits(in).denial == 0 {
			return r
		}
	}
	return nil
}

// miss says why a rule does not allow a request, in few enough words that
// judging does not allocate; why puts it in a sentence.
type miss struct {
	denial decision.Denial // 0: the rule allows the request
	kind   missKind
	at     int           // the offending coil or register
	value  uint16        // its value
	rr     *resolvedRule // the SunSpec rule as compiled for the unit, if one (rr.Rule judged it)
	why    string        // missUnresolved: why the SunSpec rule is not resolved
}

type missKind uint8

const (
	missNone missKind = iota
	missRole
	missUnit
	missBroadcast
	missUnresolved // a SunSpec rule not resolved for the request's unit
	missSub
	missReadTable
	missFIFO
	missReadRange
	missFileValues
	missWriteTable
	missWriteRange
	missCoilValue
	missMaskAnd
	missMaskValue
	missRegisterValue
	missReadPart
)

// check returns the zero miss if r allows the request, or why not.
func (r *Rule) check(d *Device, in *decision.Input) miss {
	if m := r.admits(in); m.denial != 0 {
		return m
	}
	switch r.Class {
	case modbus.ClassDiagnostic:
		req := &in.Request
		if req.Function == modbus.Diagnostics && !r.subs.containsValue(req.Sub) {
			return miss{denial: decision.DenyFunction, kind: missSub}
		}
	case modbus.ClassRead:
		return r.checkRead(&in.Request)
	case modbus.ClassWrite:
		if m := r.checkWrite(&in.Request); m.denial != 0 {
			return m
		}
		if in.Request.Function == modbus.ReadWriteMultipleRegisters && !readAllowed(d, in) {
			return miss{denial: decision.DenyAddress, kind: missReadPart}
		}
	}
	return miss{}
}

// admits returns the zero miss if r is for in's client role and unit.
func (r *Rule) admits(in *decision.Input) miss {
	req := &in.Request
	if len(r.roles) > 0 && !contains(r.roles, in.Role) {
		return miss{denial: decision.DenyFunction, kind: missRole}
	}
	if len(r.units) > 0 && !hasUnit(r.units, in.Unit) {
		return miss{denial: decision.DenyAddress, kind: missUnit}
	}
	// Unit 0 is the broadcast address: on a gateway, every device behind
	// it. A rule naming no units does not stretch to that.
	if in.Unit == 0 && req.StateChanging() && len(r.units) == 0 {
		return miss{denial: decision.DenyAddress, kind: missBroadcast}
	}
	return miss{}
}

// why says in words what m says about r and in's request.
func (r *Rule) why(m miss, in *decision.Input) string {
	req := &in.Request
	switch m.kind {
	case missRole:
		role := in.Role
		if role == "" {
			role = "none (plain TCP or no role in the certificate)"
		}
		return fmt.Sprintf("client role %s not allowed (rule is for %s)", role, strings.Join(r.roles, ", "))
	case missUnit:
		return fmt.Sprintf("unit %d not allowed", in.Unit)
	case missBroadcast:
		return "unit 0 is a broadcast; a state-changing request to it needs a rule that names unit 0"
	case missUnresolved:
		return m.why
	case missSub:
		return fmt.Sprintf("diagnostics sub-function %d not allowed (rule allows %s)", req.Sub, r.subs)
	case missReadTable:
		return fmt.Sprintf("reads %s, rule allows %s", req.Space, r.Table)
	case missFIFO:
		return fmt.Sprintf("fifo %d outside %s", req.Address, r.addresses)
	case missReadRange:
		return fmt.Sprintf("%s %d+%d outside %s", req.Space, req.Address, req.Quantity, r.addresses)
	case missFileValues:
		return "file record values cannot be checked against a value range"
	case missWriteTable, missWriteRange:
		space, addr, qty, _ := req.WriteRange()
		if m.kind == missWriteTable {
			return fmt.Sprintf("writes %s, rule allows %s", space, r.Table)
		}
		return fmt.Sprintf("%s %d+%d outside %s", space, addr, qty, r.addresses)
	case missCoilValue:
		return fmt.Sprintf("coil %d value %d outside %s", m.at, m.value, r.values)
	case missMaskAnd:
		return "mask write with a non-zero AND mask: the result depends on the current value"
	case missMaskValue, missRegisterValue:
		return fmt.Sprintf("register %d value %d outside %s", m.at, m.value, r.values)
	case missReadPart:
		return fmt.Sprintf("read part %d+%d of function 23 is not allowed by any read rule", req.Address, req.Quantity)
	}
	return m.denial.String() + " not allowed"
}

func (r *Rule) checkRead(req *modbus.Request) miss {
	if r.Table != modbus.SpaceNone && req.Space != r.Table {
		return miss{denial: decision.DenyAddress, kind: missReadTable}
	}
	if r.addresses == nil {
		return miss{}
	}
	switch req.Function {
	case modbus.ReadFIFOQueue:
		if !r.addresses.containsRange(req.Address, 1) {
			return miss{denial: decision.DenyAddress, kind: missFIFO}
		}
	case modbus.ReadFileRecord, modbus.EncapsulatedInterface:
	default:
		if !r.addresses.containsRange(req.Address, req.Quantity) {
			return miss{denial: decision.DenyAddress, kind: missReadRange}
		}
	}
	return miss{}
}

func (r *Rule) checkWrite(req *modbus.Request) miss {
	space, addr, qty, ok := req.WriteRange()
	if !ok { // function 21: file records, no addresses or values to check
		if r.values != nil {
			return miss{denial: decision.DenyValue, kind: missFileValues}
		}
		return miss{}
	}
	if r.Table != modbus.SpaceNone && space != r.Table {
		return miss{denial: decision.DenyAddress, kind: missWriteTable}
	}
	if !r.addresses.containsRange(addr, qty) {
		return miss{denial: decision.DenyAddress, kind: missWriteRange}
	}
	if r.values == nil {
		return miss{}
	}
	switch req.Function {
	case modbus.WriteSingleCoil, modbus.WriteMultipleCoils:
		for i := 0; i < int(qty); i++ {
			v := uint16(0)
			if req.CoilValue(i) {
				v = 1
			}
			if !r.values.containsValue(v) {
				return miss{denial: decision.DenyValue, kind: missCoilValue, at: int(addr) + i, value: v}
			}
		}
	case modbus.MaskWriteRegister:
		if req.AndMask != 0 {
			return miss{denial: decision.DenyValue, kind: missMaskAnd}
		}
		if !r.values.containsValue(req.OrMask) {
			return miss{denial: decision.DenyValue, kind: missMaskValue, at: int(addr), value: req.OrMask}
		}
	default:
		for i := 0; i < int(qty); i++ {
			if v := req.RegisterValue(i); !r.values.containsValue(v) {
				return miss{denial: decision.DenyValue, kind: missRegisterValue, at: int(addr) + i, value: v}
			}
		}
	}
	return miss{}
}

// readAllowed reports whether a read rule naming addresses allows function
// 23's read part, as a function 3 read of the same range. (A SunSpec read
// rule does not: its addresses are the unit's map's.)
func readAllowed(d *Device, in *decision.Input) bool {
	req := in.Request
	req.Function = modbus.ReadHoldingRegisters
	for _, r := range d.Rules {
		if r.Class != modbus.ClassRead || !r.functions[modbus.ReadHoldingRegisters] || r.SunSpec != nil {
			continue
		}
		if len(r.units) > 0 && !hasUnit(r.units, in.Unit) {
			continue
		}
		if r.checkRead(&req).denial == 0 {
			return true
		}
	}
	return false
}

func hasUnit(units []byte, u byte) bool {
	for _, x := range units {
		if x == u {
			return true
		}
	}
	return false
}
