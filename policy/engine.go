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
	ss        sunspecEngine // devices' SunSpec maps and the rules compiled for them
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
	e.ss.compileLocked(p)
	e.ss.mu.Unlock()
	return e
}

// SetClock replaces the clock approval windows are judged by (tests).
func (e *Engine) SetClock(now func() time.Time) { e.now = now }

// Policy returns the policy in force.
func (e *Engine) Policy() *Policy { return e.cur.Load() }

// Swap puts p in force for every request decided after it returns.
func (e *Engine) Swap(p *Policy) {
	e.ss.mu.Lock()
	e.ss.compileLocked(p) // before p is in force: its SunSpec rules never run uncompiled
	old := e.cur.Swap(p)
	e.ss.mu.Unlock()
	e.log.Info("policy in force", zap.String("id", p.ID), zap.Int("version", p.Version),
		zap.String("digest", p.Digest), zap.String("previous", old.Digest))
}

// Decide returns the verdict for one request. Allowing does not allocate.
func (e *Engine) Decide(ctx context.Context, in *decision.Input) decision.Result {
	p := e.cur.Load()
	d := p.byName[in.Device]
	if d == nil {
		return decision.Result{Verdict: audit.Deny, Denial: decision.DenyDevice, Policy: p.Digest,
			Reason: fmt.Sprintf("device %q is not in policy %s", in.Device, p.ID)}
	}
	req := &in.Request
	cls := req.Class()
	worst := decision.DenyFunction
	var near *Rule
	var detail string
	for _, r := range d.Rules {
		if r.Class != cls || !r.functions[req.Function] {
			continue
		}
		rule, rr, why := e.ss.rule(p, r, in.Unit)
		if rule == nil { // a SunSpec rule not resolved for this unit
			if decision.DenyAddress > worst || near == nil {
				worst, near, detail = decision.DenyAddress, r, why
			}
			continue
		}
		denial, why := rule.check(d, in)
		if denial == 0 && r.Requires != nil {
			return e.decideApproval(ctx, p, r, in)
		}
		if denial == 0 {
			reason := r.Name
			if rr != nil && req.StateChanging() {
				reason = r.Name + ": " + rr.describe(req)
			}
			return decision.Result{Verdict: audit.Allow, Rule: r.Name, Reason: reason, Policy: p.Digest}
		}
		if rr != nil && req.StateChanging() {
			why = rr.describe(req) + ": " + why
		}
		if denial > worst || near == nil {
			worst, near, detail = denial, r, why
		}
	}
	v := decision.Result{Verdict: audit.Deny, Denial: worst, Policy: p.Digest}
	if near == nil {
		v.Reason = fmt.Sprintf("no rule of device %s allows function %d (%s, a %s)",
			d.Name, req.Function, req.Function, cls)
		return v
	}
	v.Rule = near.Name
	v.Reason = fmt.Sprintf("rule %s: %s", near.Name, detail)
	return v
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
// device is not in p. An approval is judged under this rule.
func (p *Policy) Match(in *decision.Input) *Rule {
	d := p.byName[in.Device]
	if d == nil {
		return nil
	}
	req := &in.Request
	for _, r := range d.Rules {
		if r.Class != req.Class() || !r.functions[req.Function] {
			continue
		}
		if denial, _ := r.check(d, in); denial == 0 {
			return r
		}
	}
	return nil
}

// check returns 0 if r allows the request, or the denial and why.
func (r *Rule) check(d *Device, in *decision.Input) (decision.Denial, string) {
	req := &in.Request
	if len(r.roles) > 0 && !contains(r.roles, in.Role) {
		role := in.Role
		if role == "" {
			role = "none (plain TCP or no role in the certificate)"
		}
		return decision.DenyFunction, fmt.Sprintf("client role %s not allowed (rule is for %s)", role, strings.Join(r.roles, ", "))
	}
	if len(r.units) > 0 && !hasUnit(r.units, in.Unit) {
		return decision.DenyAddress, fmt.Sprintf("unit %d not allowed", in.Unit)
	}
	// Unit 0 is the broadcast address: on a gateway, every device behind
	// it. A rule naming no units does not stretch to that.
	if in.Unit == 0 && req.StateChanging() && len(r.units) == 0 {
		return decision.DenyAddress, "unit 0 is a broadcast; a state-changing request to it needs a rule that names unit 0"
	}
	switch r.Class {
	case modbus.ClassDiagnostic:
		if req.Function == modbus.Diagnostics && !r.subs.containsValue(req.Sub) {
			return decision.DenyFunction, fmt.Sprintf("diagnostics sub-function %d not allowed (rule allows %s)", req.Sub, r.subs)
		}
	case modbus.ClassRead:
		return r.checkRead(req)
	case modbus.ClassWrite:
		if denial, why := r.checkWrite(req); denial != 0 {
			return denial, why
		}
		if req.Function == modbus.ReadWriteMultipleRegisters && !readAllowed(d, in) {
			return decision.DenyAddress, fmt.Sprintf("read part %d+%d of function 23 is not allowed by any read rule",
				req.Address, req.Quantity)
		}
	}
	return 0, ""
}

func (r *Rule) checkRead(req *modbus.Request) (decision.Denial, string) {
	if r.Table != modbus.SpaceNone && req.Space != r.Table {
		return decision.DenyAddress, fmt.Sprintf("reads %s, rule allows %s", req.Space, r.Table)
	}
	if r.addresses == nil {
		return 0, ""
	}
	switch req.Function {
	case modbus.ReadFIFOQueue:
		if !r.addresses.containsRange(req.Address, 1) {
			return decision.DenyAddress, fmt.Sprintf("fifo %d outside %s", req.Address, r.addresses)
		}
	case modbus.ReadFileRecord, modbus.EncapsulatedInterface:
	default:
		if !r.addresses.containsRange(req.Address, req.Quantity) {
			return decision.DenyAddress, fmt.Sprintf("%s %d+%d outside %s", req.Space, req.Address, req.Quantity, r.addresses)
		}
	}
	return 0, ""
}

func (r *Rule) checkWrite(req *modbus.Request) (decision.Denial, string) {
	space, addr, qty, ok := req.WriteRange()
	if !ok { // function 21: file records, no addresses or values to check
		if r.values != nil {
			return decision.DenyValue, "file record values cannot be checked against a value range"
		}
		return 0, ""
	}
	if r.Table != modbus.SpaceNone && space != r.Table {
		return decision.DenyAddress, fmt.Sprintf("writes %s, rule allows %s", space, r.Table)
	}
	if !r.addresses.containsRange(addr, qty) {
		return decision.DenyAddress, fmt.Sprintf("%s %d+%d outside %s", space, addr, qty, r.addresses)
	}
	if r.values == nil {
		return 0, ""
	}
	switch req.Function {
	case modbus.WriteSingleCoil, modbus.WriteMultipleCoils:
		for i := 0; i < int(qty); i++ {
			v := uint16(0)
			if req.CoilValue(i) {
				v = 1
			}
			if !r.values.containsValue(v) {
				return decision.DenyValue, fmt.Sprintf("coil %d value %d outside %s", int(addr)+i, v, r.values)
			}
		}
	case modbus.MaskWriteRegister:
		if req.AndMask != 0 {
			return decision.DenyValue, "mask write with a non-zero AND mask: the result depends on the current value"
		}
		if !r.values.containsValue(req.OrMask) {
			return decision.DenyValue, fmt.Sprintf("register %d value %d outside %s", addr, req.OrMask, r.values)
		}
	default:
		for i := 0; i < int(qty); i++ {
			if v := req.RegisterValue(i); !r.values.containsValue(v) {
				return decision.DenyValue, fmt.Sprintf("register %d value %d outside %s", int(addr)+i, v, r.values)
			}
		}
	}
	return 0, ""
}

// readAllowed reports whether a read rule allows function 23's read part,
// as a function 3 read of the same range.
func readAllowed(d *Device, in *decision.Input) bool {
	req := in.Request
	req.Function = modbus.ReadHoldingRegisters
	for _, r := range d.Rules {
		if r.Class != modbus.ClassRead || !r.functions[modbus.ReadHoldingRegisters] {
			continue
		}
		if len(r.units) > 0 && !hasUnit(r.units, in.Unit) {
			continue
		}
		if denial, _ := r.checkRead(&req); denial == 0 {
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
