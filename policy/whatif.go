package policy

import (
	"bytes"
	"cmp"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/gridseal/gridseal/policy/decision"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// WhatIf replays recorded requests against the policy in force (Baseline)
// and a Candidate and collects where their verdicts differ. Both judge a
// request the same way (Judge): a rule that requires a quorum allows it
// only if an approval was used for it when it was recorded. Observe mode
// is not applied: what-if compares what the rules decide. SunSpec rules
// are judged for the maps the proxy read, replayed from the chain
// (MapRead). Add does not allocate unless the request starts a new group
// (or waits for its unit's first map). It is not safe for concurrent use.
type WhatIf struct {
	Baseline, Candidate *Policy
	Examples            int // kept per group; 0: 3

	replayed    int
	first, last time.Time
	groups      map[whatIfKey]*WhatIfGroup

	maps       RecordedMaps
	base, cand *Resolved // compiled when maps had made changes changes
	changes    uint64
	sunspec    map[unitKey]bool       // the units SunSpec rules of either policy name
	waiting    map[unitKey][]Recorded // their requests recorded before their first map
	nwaiting   int
}

// maxWaiting bounds the requests kept until their unit's first map comes
// in the chain; past it they are judged without one.
const maxWaiting = 1 << 16

// Recorded is one recorded request as a replay needs it.
type Recorded struct {
	In       decision.Input // Device, Unit, Role, Client and the parsed Request
	Approved bool           // an approval was used for it
	Time     time.Time
	Seq      uint64 // the chain message holding it
	Op       uint64
}

type whatIfKey struct {
	newlyDenied bool
	device      string
	in, cand    *Rule
	fc          modbus.Function
	space       modbus.Space
	addr, qty   uint16
	client      netip.Addr
}

// WhatIfGroup is the requests of one device, function, address range and
// client whose verdict the candidate changes the same way.
type WhatIfGroup struct {
	NewlyDenied   bool            `json:"newly_denied"`
	Device        string          `json:"device"`
	RuleInForce   string          `json:"rule_in_force,omitempty"` // the rule that allows (or nearly allows) it now
	CandidateRule string          `json:"candidate_rule,omitempty"`
	Denial        string          `json:"denial,omitempty"` // why the policy that denies it does
	Function      byte            `json:"fc"`
	FuncName      string          `json:"function"`
	Table         string          `json:"table,omitempty"`
	Address       uint16          `json:"address"`
	Quantity      uint16          `json:"quantity"`
	Client        string          `json:"client,omitempty"`
	Count         int             `json:"count"`
	First         time.Time       `json:"first"`
	Last          time.Time       `json:"last"`
	Examples      []WhatIfExample `json:"examples"`
}

// WhatIfExample is one request of a group, with where it is in the chain
// and the reason of the policy that denies it.
type WhatIfExample struct {
	Seq    uint64    `json:"seq"`
	Op     uint64    `json:"op"`
	Time   time.Time `json:"time"`
	Client string    `json:"client,omitempty"`
	Unit   byte      `json:"unit"`
	PDU    string    `json:"pdu"`
	Reason string    `json:"reason"`
}

// MapRead replays one of the proxy's recorded reads of a device's SunSpec
// map (chain.EventView.IsMapRead): n registers of the unit at addr,
// answered resp (copied). A unit's requests recorded before its first map
// are judged once the chain has it, or by Report without one.
func (w *WhatIf) MapRead(device string, unit byte, addr, n uint16, resp []byte) {
	if !w.maps.Add(device, unit, addr, n, resp) {
		return
	}
	k := unitKey{device, unit}
	q := w.waiting[k]
	delete(w.waiting, k)
	w.nwaiting -= len(q)
	for i := range q {
		w.judge(&q[i])
	}
}

// Add replays one recorded request.
func (w *WhatIf) Add(q *Recorded) {
	if w.replayed == 0 || q.Time.Before(w.first) {
		w.first = q.Time
	}
	if q.Time.After(w.last) {
		w.last = q.Time
	}
	w.replayed++
	if !w.waits(q) {
		w.judge(q)
	}
}

// waits keeps q, a request to a unit SunSpec rules name whose map the
// chain has not shown yet, until it has; it reports whether it did.
func (w *WhatIf) waits(q *Recorded) bool {
	if w.sunspec == nil {
		w.sunspec, w.waiting = map[unitKey]bool{}, map[unitKey][]Recorded{}
		for _, p := range []*Policy{w.Baseline, w.Candidate} {
			for _, d := range p.Devices {
				for _, r := range d.Rules {
					for _, u := range sunspecUnits(r) {
						w.sunspec[unitKey{d.Name, u}] = true
					}
				}
			}
		}
	}
	k := unitKey{q.In.Device, q.In.Unit}
	if !w.sunspec[k] || w.nwaiting >= maxWaiting {
		return false
	}
	if sm, _ := w.maps.known(k.device, k.unit); sm != nil {
		return false
	}
	req, err := modbus.ParseRequest(bytes.Clone(q.In.Request.PDU)) // q's PDU is the caller's buffer
	if err != nil {
		return false
	}
	kept := *q
	kept.In.Request = req
	w.waiting[k] = append(w.waiting[k], kept)
	w.nwaiting++
	return true
}

func sunspecUnits(r *Rule) []byte {
	if r.SunSpec == nil {
		return nil
	}
	return r.SunSpec.units
}

// judge replays q against both policies, their SunSpec rules compiled for
// the maps read so far.
func (w *WhatIf) judge(q *Recorded) {
	if w.base == nil || w.changes != w.maps.changes {
		w.base, w.cand, w.changes = w.maps.Resolve(w.Baseline), w.maps.Resolve(w.Candidate), w.maps.changes
	}
	br, bd := w.base.Judge(&q.In, q.Approved)
	cr, cd := w.cand.Judge(&q.In, q.Approved)
	if (bd == 0) == (cd == 0) {
		return
	}
	req := &q.In.Request
	k := whatIfKey{newlyDenied: cd != 0, device: q.In.Device, in: br, cand: cr, fc: req.Function,
		space: req.Space, addr: req.Address, qty: req.Quantity, client: q.In.Client.Addr()}
	if space, addr, qty, ok := req.WriteRange(); ok {
		k.space, k.addr, k.qty = space, addr, qty
	}
	g := w.groups[k]
	if g == nil {
		if w.groups == nil {
			w.groups = map[whatIfKey]*WhatIfGroup{}
		}
		g = &WhatIfGroup{NewlyDenied: k.newlyDenied, Device: k.device, RuleInForce: ruleName(br), CandidateRule: ruleName(cr),
			Function: byte(k.fc), FuncName: k.fc.String(), Address: k.addr, Quantity: k.qty, First: q.Time}
		if k.space != modbus.SpaceNone {
			g.Table = k.space.String()
		}
		if k.client.IsValid() {
			g.Client = k.client.String()
		}
		d := cd
		if !k.newlyDenied {
			d = bd
		}
		g.Denial = d.String()
		w.groups[k] = g
	}
	g.Count++
	if q.Time.Before(g.First) {
		g.First = q.Time
	}
	if q.Time.After(g.Last) {
		g.Last = q.Time
	}
	if n := cmp.Or(w.Examples, 3); len(g.Examples) < n {
		denier := w.cand
		if !k.newlyDenied {
			denier = w.base
		}
		ex := WhatIfExample{Seq: q.Seq, Op: q.Op, Time: q.Time, Unit: q.In.Unit, PDU: hex.EncodeToString(req.PDU),
			Reason: denier.Explain(&q.In, q.Approved)}
		if q.In.Client.IsValid() {
			ex.Client = q.In.Client.String()
		}
		g.Examples = append(g.Examples, ex)
	}
}

func ruleName(r *Rule) string {
	if r == nil {
		return ""
	}
	return r.Name
}

// WhatIfReport is the outcome of a replay.
type WhatIfReport struct {
	InForce      Ref            `json:"in_force"`
	Candidate    Ref            `json:"candidate"`
	Replayed     int            `json:"replayed"`
	From         *time.Time     `json:"from,omitempty"`
	To           *time.Time     `json:"to,omitempty"`
	NewlyDenied  int            `json:"newly_denied"`
	NewlyAllowed int            `json:"newly_allowed"`
	Groups       []*WhatIfGroup `json:"groups"`
}

// Ref names a policy: id, version and digest.
type Ref struct {
	ID      string `json:"id"`
	Version int    `json:"version"`
	Digest  string `json:"digest"`
}

func refOf(p *Policy) Ref { return Ref{ID: p.ID, Version: p.Version, Digest: p.Digest} }

// Report returns what the replay found: the newly denied groups first,
// then the newly allowed, each by device, then most requests first.
func (w *WhatIf) Report() *WhatIfReport {
	for _, k := range slices.SortedFunc(maps.Keys(w.waiting), func(a, b unitKey) int {
		return cmp.Or(strings.Compare(a.device, b.device), cmp.Compare(a.unit, b.unit))
	}) {
		for i := range w.waiting[k] { // no map of the unit came: judged without
			w.judge(&w.waiting[k][i])
		}
		delete(w.waiting, k)
	}
	w.nwaiting = 0
	r := &WhatIfReport{InForce: refOf(w.Baseline), Candidate: refOf(w.Candidate), Replayed: w.replayed, Groups: []*WhatIfGroup{}}
	if w.replayed > 0 {
		r.From, r.To = &w.first, &w.last
	}
	for _, g := range w.groups {
		if g.NewlyDenied {
			r.NewlyDenied += g.Count
		} else {
			r.NewlyAllowed += g.Count
		}
		r.Groups = append(r.Groups, g)
	}
	slices.SortFunc(r.Groups, func(a, b *WhatIfGroup) int {
		if a.NewlyDenied != b.NewlyDenied {
			if a.NewlyDenied {
				return -1
			}
			return 1
		}
		return cmp.Or(strings.Compare(a.Device, b.Device), cmp.Compare(b.Count, a.Count),
			strings.Compare(a.RuleInForce, b.RuleInForce), strings.Compare(a.CandidateRule, b.CandidateRule),
			cmp.Compare(a.Function, b.Function), cmp.Compare(a.Address, b.Address), cmp.Compare(a.Quantity, b.Quantity),
			strings.Compare(a.Client, b.Client))
	})
	return r
}

// WriteText writes the report for a terminal.
func (r *WhatIfReport) WriteText(w io.Writer) {
	fmt.Fprintf(w, "candidate %s v%d (sha256 %.12s…) against the policy in force %s v%d (sha256 %.12s…)\n",
		r.Candidate.ID, r.Candidate.Version, r.Candidate.Digest, r.InForce.ID, r.InForce.Version, r.InForce.Digest)
	span := ""
	if r.From != nil {
		span = fmt.Sprintf(", %s to %s", stamp(*r.From), stamp(*r.To))
	}
	fmt.Fprintf(w, "%d recorded requests replayed%s: %d newly denied, %d newly allowed\n", r.Replayed, span, r.NewlyDenied, r.NewlyAllowed)
	section := -1
	for _, g := range r.Groups {
		if s := btoi(g.NewlyDenied); s != section {
			section = s
			if g.NewlyDenied {
				fmt.Fprintf(w, "\nNEWLY DENIED (%d requests the policy in force allows)\n", r.NewlyDenied)
			} else {
				fmt.Fprintf(w, "\nnewly allowed (%d requests the policy in force denies)\n", r.NewlyAllowed)
			}
		}
		rules := fmt.Sprintf("rule in force %s, candidate %s", orNone(g.RuleInForce), orNone(g.CandidateRule))
		where := fmt.Sprintf("%d+%d", g.Address, g.Quantity)
		if g.Table != "" {
			where = g.Table + " " + where
		}
		fmt.Fprintf(w, "  %s  fc %d (%s) %s  client %s  %d× %s to %s  (%s; %s)\n", g.Device, g.Function, g.FuncName, where,
			orNone(g.Client), g.Count, stamp(g.First), stamp(g.Last), rules, g.Denial)
		for _, ex := range g.Examples {
			fmt.Fprintf(w, "      e.g. seq %d op %d %s %s unit %d pdu %s: %s\n", ex.Seq, ex.Op, stamp(ex.Time), ex.Client, ex.Unit, ex.PDU, ex.Reason)
		}
	}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
