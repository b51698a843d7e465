package policy

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// LearnOptions say what a Learner builds.
type LearnOptions struct {
	Device string // learn only this device ("" every device of the base policy)
	// Gap lets read ranges up to Gap addresses apart merge into one range.
	// Write ranges merge only when they touch: a write rule never covers
	// an address nobody wrote.
	Gap int
	// StandingWrites makes state-changing requests standing rules; by
	// default they become rules that require a quorum.
	StandingWrites bool
	// Group and M are the quorum of those rules; "" and 0: the group and m
	// of the base policy's first approval rule, else its first approver
	// group and m 2 (fewer if the group is smaller).
	Group string
	M     int
	// Since: learn only from requests at or after it (zero: all). The
	// proxy's reads of SunSpec maps before it still count.
	Since time.Time
}

// Learner builds a candidate policy from recorded requests: what each
// device was asked and forwarded, as rules. Where the chain holds the
// proxy's reads of a unit's SunSpec map, holding registers that are points
// of a model gridseal knows are named by SunSpec rules, with values in the
// points' units where they have a scale factor; other addresses stay
// addresses. Add the events, in chain order, then Policy. It is not safe
// for concurrent use.
type Learner struct {
	base        *Policy
	opts        LearnOptions
	maps        RecordedMaps
	devs        map[string]*learnedDevice
	first, last time.Time
	learned     int
	denied      int // refused, so not learned
	malformed   int
	unknown     map[string]int // devices not in the base policy
}

// NewLearner returns a Learner that builds on base: its id, approvers and
// devices stay; each learned device's rules are replaced by what was seen.
func NewLearner(base *Policy, o LearnOptions) (*Learner, error) {
	if o.Device != "" && base.Device(o.Device) == nil {
		return nil, fmt.Errorf("device %q is not in policy %s", o.Device, base.ID)
	}
	if o.Gap < 0 {
		return nil, errors.New("gap must not be negative")
	}
	return &Learner{base: base, opts: o, devs: map[string]*learnedDevice{}, unknown: map[string]int{}}, nil
}

// seen is what was observed of one kind of request: how often, when, from
// whom, on which units, with which functions and values.
type seen struct {
	n           int
	first, last time.Time
	clients     map[netip.Addr]bool
	units       map[byte]bool
	functions   map[modbus.Function]bool
	lo, hi      uint16 // values written (unsigned), when any
	slo, shi    int16  // the same values as signed registers
	values      bool
	unchecked   bool // a mask write with a non-zero AND mask: no value range can allow it
}

func (s *seen) add(ev *audit.Event, fc modbus.Function) {
	if s.n == 0 || ev.Time.Before(s.first) {
		s.first = ev.Time
	}
	if ev.Time.After(s.last) {
		s.last = ev.Time
	}
	s.n++
	if s.clients == nil {
		s.clients, s.units, s.functions = map[netip.Addr]bool{}, map[byte]bool{}, map[modbus.Function]bool{}
	}
	if ev.Client.IsValid() {
		s.clients[ev.Client.Addr()] = true
	}
	s.units[ev.Unit] = true
	s.functions[fc] = true
}

func (s *seen) value(v uint16) {
	if !s.values || v < s.lo {
		s.lo = v
	}
	if !s.values || v > s.hi {
		s.hi = v
	}
	if sv := int16(v); !s.values || sv < s.slo {
		s.slo = sv
	}
	if sv := int16(v); !s.values || sv > s.shi {
		s.shi = sv
	}
	s.values = true
}

// valueRange is the narrower of the unsigned and signed ranges of the
// values written, as a policy writes it ("0-100", "-50..50").
func (s *seen) valueRange() string {
	if int(s.shi)-int(s.slo) < int(s.hi)-int(s.lo) {
		return fmt.Sprintf("%d..%d", s.slo, s.shi)
	}
	return spanText(addrSpan{int(s.lo), int(s.hi)})
}

func (s *seen) merge(o *seen) {
	if o.n == 0 {
		return
	}
	if s.n == 0 || o.first.Before(s.first) {
		s.first = o.first
	}
	if o.last.After(s.last) {
		s.last = o.last
	}
	s.n += o.n
	if s.clients == nil {
		s.clients, s.units, s.functions = map[netip.Addr]bool{}, map[byte]bool{}, map[modbus.Function]bool{}
	}
	for k := range o.clients {
		s.clients[k] = true
	}
	for k := range o.units {
		s.units[k] = true
	}
	for k := range o.functions {
		s.functions[k] = true
	}
	if o.values {
		s.value(o.lo)
		s.value(o.hi)
		s.value(uint16(o.slo))
		s.value(uint16(o.shi))
	}
	s.unchecked = s.unchecked || o.unchecked
}

// span of addresses lo..hi inclusive.
type addrSpan struct{ lo, hi int }

type tableKey struct {
	fc    modbus.Function // reads: the function; writes: 0 (functions are per range)
	space modbus.Space
}

type learnedDevice struct {
	reads     map[tableKey]map[addrSpan]*seen
	writes    map[tableKey]map[addrSpan]*seen
	held      map[heldKey]*seen      // function 3 reads and writes of holding registers, to be named by points
	plain     map[modbus.Class]*seen // reads and diagnostics without addresses (20, 43, 7, 11, 12, 17)
	subs      map[uint16]*seen       // function 8 sub-functions
	fileWrite *seen                  // function 21
}

func (l *Learner) device(name string) *learnedDevice {
	d := l.devs[name]
	if d == nil {
		d = &learnedDevice{reads: map[tableKey]map[addrSpan]*seen{}, writes: map[tableKey]map[addrSpan]*seen{},
			held: map[heldKey]*seen{}, plain: map[modbus.Class]*seen{}, subs: map[uint16]*seen{}}
		l.devs[name] = d
	}
	return d
}

func at(m map[tableKey]map[addrSpan]*seen, k tableKey, s addrSpan) *seen {
	spans := m[k]
	if spans == nil {
		spans = map[addrSpan]*seen{}
		m[k] = spans
	}
	st := spans[s]
	if st == nil {
		st = &seen{}
		spans[s] = st
	}
	return st
}

// Add learns from one recorded event. Only the completed records of
// requests that were forwarded teach: denied requests are counted, not
// learned, and malformed ones never make a rule; other phases are ignored.
// The proxy's own reads of SunSpec maps teach the map, not a rule.
func (l *Learner) Add(ev *audit.Event) {
	if ev.Phase != audit.PhaseComplete || ev.Device == "" {
		return
	}
	if l.opts.Device != "" && ev.Device != l.opts.Device {
		return
	}
	if ev.IsMapRead() {
		l.maps.Add(ev.Device, ev.Unit, ev.Address, ev.Quantity, ev.Response)
		return
	}
	if ev.Time.Before(l.opts.Since) {
		return
	}
	if ev.Verdict == audit.Malformed || len(ev.PDU) == 0 {
		l.malformed++
		return
	}
	if ev.Verdict != audit.Allow {
		l.denied++
		return
	}
	if l.base.Device(ev.Device) == nil {
		l.unknown[ev.Device]++
		return
	}
	req, err := modbus.ParseRequest(ev.PDU)
	if err != nil || !req.Function.Known() {
		l.malformed++
		return
	}
	if l.learned == 0 || ev.Time.Before(l.first) {
		l.first = ev.Time
	}
	if ev.Time.After(l.last) {
		l.last = ev.Time
	}
	l.learned++
	d := l.device(ev.Device)
	fc := req.Function
	switch req.Class() {
	case modbus.ClassRead:
		switch fc {
		case modbus.ReadFileRecord, modbus.EncapsulatedInterface:
			d.plainSeen(modbus.ClassRead).add(ev, fc)
		case modbus.ReadFIFOQueue:
			at(d.reads, tableKey{fc: fc}, addrSpan{int(req.Address), int(req.Address)}).add(ev, fc)
		case modbus.ReadHoldingRegisters:
			l.learnHeld(d, ev.Device, ev.Unit, fc, int(req.Address), int(req.Address)+int(req.Quantity)-1).add(ev, fc)
		default:
			at(d.reads, tableKey{fc: fc, space: req.Space}, addrSpan{int(req.Address), int(req.Address) + int(req.Quantity) - 1}).add(ev, fc)
		}
	case modbus.ClassWrite:
		space, addr, qty, ok := req.WriteRange()
		if !ok { // function 21
			if d.fileWrite == nil {
				d.fileWrite = &seen{}
			}
			d.fileWrite.add(ev, fc)
			return
		}
		var st *seen
		if space == modbus.SpaceHoldingRegisters && fc != modbus.ReadWriteMultipleRegisters { // 23's read part needs an address rule
			st = l.learnHeld(d, ev.Device, ev.Unit, 0, int(addr), int(addr)+int(qty)-1)
		} else {
			st = at(d.writes, tableKey{space: space}, addrSpan{int(addr), int(addr) + int(qty) - 1})
		}
		st.add(ev, fc)
		if fc == modbus.MaskWriteRegister {
			if req.AndMask != 0 {
				st.unchecked = true
			} else {
				st.value(req.OrMask)
			}
		} else {
			for _, v := range req.WriteValues() {
				st.value(v)
			}
		}
		if fc == modbus.ReadWriteMultipleRegisters { // its read part needs a read rule
			at(d.reads, tableKey{fc: modbus.ReadHoldingRegisters, space: modbus.SpaceHoldingRegisters},
				addrSpan{int(req.Address), int(req.Address) + int(req.Quantity) - 1}).add(ev, modbus.ReadHoldingRegisters)
		}
	case modbus.ClassDiagnostic:
		if fc == modbus.Diagnostics {
			st := d.subs[req.Sub]
			if st == nil {
				st = &seen{}
				d.subs[req.Sub] = st
			}
			st.add(ev, fc)
			return
		}
		d.plainSeen(modbus.ClassDiagnostic).add(ev, fc)
	}
}

func (d *learnedDevice) plainSeen(c modbus.Class) *seen {
	st := d.plain[c]
	if st == nil {
		st = &seen{}
		d.plain[c] = st
	}
	return st
}

// merged sorts spans and merges those at most gap addresses apart.
func merged(spans map[addrSpan]*seen, gap int) ([]addrSpan, []*seen) {
	keys := make([]addrSpan, 0, len(spans))
	for k := range spans {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b addrSpan) int { return cmp.Or(cmp.Compare(a.lo, b.lo), cmp.Compare(a.hi, b.hi)) })
	var outS []addrSpan
	var outT []*seen
	for _, k := range keys {
		if n := len(outS); n > 0 && k.lo <= outS[n-1].hi+1+gap {
			outS[n-1].hi = max(outS[n-1].hi, k.hi)
			outT[n-1].merge(spans[k])
			continue
		}
		st := &seen{}
		st.merge(spans[k])
		outS, outT = append(outS, k), append(outT, st)
	}
	return outS, outT
}

// quorum picks the group and m of learned state-changing rules.
func (l *Learner) quorum() (string, int, error) {
	group, m := l.opts.Group, l.opts.M
	if group == "" {
		for _, d := range l.base.Devices {
			for _, r := range d.Rules {
				if r.Requires != nil && group == "" {
					group = r.Requires.Group
					if m == 0 {
						m = r.Requires.M
					}
				}
			}
		}
	}
	if group == "" {
		for _, a := range l.base.Approvers {
			if len(a.Groups) > 0 {
				group = a.Groups[0]
				break
			}
		}
	}
	if group == "" {
		return "", 0, fmt.Errorf("policy %s has no approvers to require for the state-changing rules: add approvers, name --group, or use --standing-writes", l.base.ID)
	}
	size := l.base.groupSize(group)
	if size == 0 {
		return "", 0, fmt.Errorf("approver group %q is not in policy %s", group, l.base.ID)
	}
	if m == 0 {
		m = min(2, size)
	}
	if m > size {
		return "", 0, fmt.Errorf("m=%d but group %q has %d approvers", m, group, size)
	}
	return group, m, nil
}

// Summary says in one line what was learned from how much.
func (l *Learner) Summary() string {
	s := fmt.Sprintf("%d forwarded requests learned", l.learned)
	if l.learned > 0 {
		s += fmt.Sprintf(", %s to %s", stamp(l.first), stamp(l.last))
	}
	s += fmt.Sprintf("; %d denied and %d malformed not learned", l.denied, l.malformed)
	if n := l.maps.mapped(); n > 0 {
		s += fmt.Sprintf("; SunSpec points named by the maps of %d device units the chain recorded", n)
	}
	if len(l.unknown) > 0 {
		names := make([]string, 0, len(l.unknown))
		for n, c := range l.unknown {
			names = append(names, fmt.Sprintf("%s (%d)", n, c))
		}
		slices.Sort(names)
		s += "; devices not in the policy: " + strings.Join(names, ", ")
	}
	return s
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// Policy returns the candidate policy file: the base policy's YAML with
// version + 1, and each learned device's rules replaced by the rules its
// recorded requests need (its mode line dropped: the candidate enforces),
// every rule commented with what it was learned from. The result parses.
func (l *Learner) Policy() ([]byte, error) {
	var group string
	var m int
	if !l.opts.StandingWrites && l.needsQuorum() {
		var err error
		if group, m, err = l.quorum(); err != nil {
			return nil, err
		}
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(l.base.Bytes(), &doc); err != nil {
		return nil, err
	}
	root := doc.Content[0]
	setKey(root, "version", intNode(l.base.Version+1), "id")
	doc.HeadComment = strings.TrimSpace("Candidate policy learned by gridseal policy learn from the chain, built on " +
		fmt.Sprintf("policy %s v%d (sha256 %s).\n%s.\nReview it, then sign it like any policy.", l.base.ID, l.base.Version, l.base.Digest, l.Summary()))
	devs := value(root, "devices")
	for _, dn := range devs.Content {
		name := value(dn, "name")
		if name == nil || (l.opts.Device != "" && name.Value != l.opts.Device) {
			continue
		}
		if mode := value(dn, "mode"); mode != nil {
			if mode.Value == "observe" {
				dn.HeadComment = strings.TrimSpace(dn.HeadComment + "\nwas mode: observe; the learned rules enforce")
			}
			deleteKey(dn, "mode")
		}
		rules := l.rules(name.Value, group, m)
		if len(rules.Content) == 0 {
			rules.Style = yaml.FlowStyle
		}
		setKey(dn, "rules", rules, "")
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	if _, err := Parse("learned policy", b.Bytes()); err != nil {
		return nil, fmt.Errorf("the learned policy does not parse (a bug in policy learn): %w", err)
	}
	return b.Bytes(), nil
}

func (l *Learner) needsQuorum() bool {
	for _, d := range l.devs {
		for k := range d.held {
			if k.fc == 0 {
				return true
			}
		}
		if len(d.writes) > 0 || d.fileWrite != nil {
			return true
		}
		for sub := range d.subs {
			if modbus.DiagnosticChangesState(sub) {
				return true
			}
		}
	}
	return false
}

// rules builds the learned rules of one device, reads first.
func (l *Learner) rules(device, group string, m int) *yaml.Node {
	seq := &yaml.Node{Kind: yaml.SequenceNode}
	d := l.devs[device]
	if d == nil {
		seq.LineComment = "no forwarded request of this device was recorded: every request is denied"
		return seq
	}
	requires := func(r *yaml.Node) {
		if l.opts.StandingWrites {
			return
		}
		q := mapping("group", strNode(group), "m", intNode(m))
		q.Style = yaml.FlowStyle
		r.Content = append(r.Content, strNode("requires"), q)
	}
	reads, writes, pts := l.nameHeld(device, d)
	pointReads, pointWrites := l.sunspecRules(pts, requires)
	for _, k := range sortedKeys(reads) {
		spans, stats := merged(reads[k], l.opts.Gap)
		total := &seen{}
		addrs := &yaml.Node{Kind: yaml.SequenceNode}
		for i, s := range spans {
			total.merge(stats[i])
			a := spanNode(s)
			a.LineComment = describe(stats[i])
			addrs.Content = append(addrs.Content, a)
		}
		name := fmt.Sprintf("learned-read-%d", k.fc)
		r := mapping("name", strNode(name), "allow", strNode("read"), "functions", flowInts(int(k.fc)))
		if k.space != modbus.SpaceNone {
			r.Content[1].Value = name + "-" + k.space.String()
			r.Content = append(r.Content, strNode("table"), strNode(k.space.String()))
		}
		r.Content = append(r.Content, strNode("units"), unitsNode(total.units), strNode("addresses"), addrs)
		r.HeadComment = describe(total)
		seq.Content = append(seq.Content, r)
	}
	if st := d.plain[modbus.ClassRead]; st != nil {
		r := mapping("name", strNode("learned-read-records-and-identity"), "allow", strNode("read"),
			"functions", flowInts(functionInts(st.functions)...), "units", unitsNode(st.units))
		r.HeadComment = describe(st)
		seq.Content = append(seq.Content, r)
	}
	seq.Content = append(seq.Content, pointReads...)
	for _, k := range sortedKeys(writes) {
		spans, stats := merged(writes[k], 0)
		for i, s := range spans {
			st := stats[i]
			r := mapping("name", strNode(fmt.Sprintf("learned-write-%s-%s", k.space, spanText(s))), "allow", strNode("write"),
				"functions", flowInts(functionInts(st.functions)...), "table", strNode(k.space.String()),
				"units", unitsNode(st.units), "addresses", spanNode(s))
			comment := describe(st)
			if st.values && !st.unchecked {
				r.Content = append(r.Content, strNode("values"), strNode(st.valueRange()))
				comment += "; values written " + st.valueRange()
			}
			if st.unchecked {
				comment += "; mask writes with a non-zero AND mask were seen, so no value range"
			}
			requires(r)
			r.HeadComment = comment
			seq.Content = append(seq.Content, r)
		}
	}
	seq.Content = append(seq.Content, pointWrites...)
	if st := d.fileWrite; st != nil {
		r := mapping("name", strNode("learned-write-file-records"), "allow", strNode("write"),
			"functions", flowInts(int(modbus.WriteFileRecord)), "units", unitsNode(st.units))
		requires(r)
		r.HeadComment = describe(st)
		seq.Content = append(seq.Content, r)
	}
	plainDiag := d.plain[modbus.ClassDiagnostic]
	var quiet, changing []int
	quietSeen, changingSeen := &seen{}, &seen{}
	for _, sub := range sortedSubs(d.subs) {
		if modbus.DiagnosticChangesState(sub) {
			changing = append(changing, int(sub))
			changingSeen.merge(d.subs[sub])
		} else {
			quiet = append(quiet, int(sub))
			quietSeen.merge(d.subs[sub])
		}
	}
	if plainDiag != nil || len(quiet) > 0 {
		total := &seen{}
		var fcs []int
		if plainDiag != nil {
			total.merge(plainDiag)
			fcs = functionInts(plainDiag.functions)
		}
		if len(quiet) > 0 {
			total.merge(quietSeen)
			fcs = append(fcs, int(modbus.Diagnostics))
			slices.Sort(fcs)
		}
		r := mapping("name", strNode("learned-diagnostics"), "allow", strNode("diagnostic"),
			"functions", flowInts(fcs...), "units", unitsNode(total.units))
		if len(quiet) > 0 {
			r.Content = append(r.Content, strNode("subfunctions"), flowInts(quiet...))
		}
		r.HeadComment = describe(total)
		seq.Content = append(seq.Content, r)
	}
	if len(changing) > 0 {
		r := mapping("name", strNode("learned-diagnostics-state-changing"), "allow", strNode("diagnostic"),
			"functions", flowInts(int(modbus.Diagnostics)), "units", unitsNode(changingSeen.units),
			"subfunctions", flowInts(changing...))
		requires(r)
		r.HeadComment = describe(changingSeen)
		seq.Content = append(seq.Content, r)
	}
	return seq
}

// describe says how often, when and from whom.
func describe(s *seen) string {
	clients := make([]string, 0, len(s.clients))
	for c := range s.clients {
		clients = append(clients, c.String())
	}
	slices.Sort(clients)
	if len(clients) > 5 {
		clients = append(clients[:5], fmt.Sprintf("and %d more", len(clients)-5))
	}
	who := "no client address"
	if len(clients) > 0 {
		who = "from " + strings.Join(clients, ", ")
	}
	what := "requests"
	if s.n == 1 {
		what = "request"
	}
	return fmt.Sprintf("%d %s, %s to %s, %s", s.n, what, stamp(s.first), stamp(s.last), who)
}

func spanText(s addrSpan) string {
	if s.lo == s.hi {
		return strconv.Itoa(s.lo)
	}
	return fmt.Sprintf("%d-%d", s.lo, s.hi)
}

func sortedKeys(m map[tableKey]map[addrSpan]*seen) []tableKey {
	out := make([]tableKey, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b tableKey) int { return cmp.Or(cmp.Compare(a.space, b.space), cmp.Compare(a.fc, b.fc)) })
	return out
}

func sortedSubs(m map[uint16]*seen) []uint16 {
	out := make([]uint16, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func functionInts(m map[modbus.Function]bool) []int {
	out := make([]int, 0, len(m))
	for fc := range m {
		out = append(out, int(fc))
	}
	slices.Sort(out)
	return out
}

func unitsNode(units map[byte]bool) *yaml.Node {
	out := make([]int, 0, len(units))
	for u := range units {
		out = append(out, int(u))
	}
	slices.Sort(out)
	return flowInts(out...)
}

func strNode(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s} }

// spanNode is an address range as a policy writes it: a number, or "lo-hi".
func spanNode(s addrSpan) *yaml.Node {
	if s.lo == s.hi {
		return intNode(s.lo)
	}
	return strNode(spanText(s))
}

func intNode(v int) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.Itoa(v)}
}

func flowInts(vs ...int) *yaml.Node {
	n := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
	for _, v := range vs {
		n.Content = append(n.Content, intNode(v))
	}
	return n
}

func mapping(kv ...any) *yaml.Node {
	n := &yaml.Node{Kind: yaml.MappingNode}
	for i := 0; i+1 < len(kv); i += 2 {
		n.Content = append(n.Content, strNode(kv[i].(string)), kv[i+1].(*yaml.Node))
	}
	return n
}

// value returns the value of key in mapping n, or nil.
func value(n *yaml.Node, key string) *yaml.Node {
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// setKey sets key in mapping n to v, adding it after the key after (or
// at the end) if it is not there.
func setKey(n *yaml.Node, key string, v *yaml.Node, after string) {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			n.Content[i+1] = v
			return
		}
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == after {
			n.Content = slices.Insert(n.Content, i+2, strNode(key), v)
			return
		}
	}
	n.Content = append(n.Content, strNode(key), v)
}

func deleteKey(n *yaml.Node, key string) {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			n.Content = slices.Delete(n.Content, i, i+2)
			return
		}
	}
}
