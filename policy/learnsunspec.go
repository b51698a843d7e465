package policy

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/gridseal/gridseal/protocols/modbus"
	"github.com/gridseal/gridseal/protocols/sunspec"
)

// heldKey is holding-register traffic of one unit, learned while the
// walk-th map of the unit was the latest read (-1: before any), that
// SunSpec points may name: function 3 reads (fc 3) and writes (fc 0).
type heldKey struct {
	unit byte
	walk int
	fc   modbus.Function
	span addrSpan
}

// learnHeld files st's request, a read (function 3) or a write of
// holding registers lo..hi, to be named by points if the unit has a map.
func (l *Learner) learnHeld(d *learnedDevice, device string, unit byte, fc modbus.Function, lo, hi int) *seen {
	_, walk := l.maps.known(device, unit)
	k := heldKey{unit: unit, walk: walk, fc: fc, span: addrSpan{lo, hi}}
	st := d.held[k]
	if st == nil {
		st = &seen{}
		d.held[k] = st
	}
	return st
}

// pointsKey is one learned SunSpec rule: reads by fc 3 or writes (fc 0)
// of the points first..last of a model.
type pointsKey struct {
	fc          modbus.Function
	model       uint16
	first, last string
}

// learnedPoints is what the requests a SunSpec rule names were.
type learnedPoints struct {
	names    []string // writes: the points
	st       *seen
	eng      bool               // writes: every value has a point, a scale factor and units
	noEng    bool               // some write's values cannot be put in units
	lo, hi   decimal            // the values written, in units
	unit     string             // the units' first word
	spansOff map[addrSpan]*seen // reads: registers from the model's ID register → requests
}

// decimal is v × 10^exp, kept exact to be written as the policy reads it.
type decimal struct {
	v   int64
	exp int16
}

func (d decimal) float() float64 { return float64(d.v) * math.Pow(10, float64(d.exp)) }

func (d decimal) String() string {
	s := strconv.FormatInt(max(d.v, -d.v), 10)
	if d.exp >= 0 {
		s += strings.Repeat("0", int(d.exp))
	} else {
		n := int(-d.exp)
		if len(s) <= n {
			s = strings.Repeat("0", n-len(s)+1) + s
		}
		s = strings.TrimRight(strings.TrimRight(s[:len(s)-n]+"."+s[len(s)-n:], "0"), ".")
	}
	if d.v < 0 {
		s = "-" + s
	}
	return s
}

// pointsAt names registers lo..hi of map m as points: of the first instance
// of a model gridseal knows, after its header, each register a point's; for
// a write, whole writable points. It returns the model, its ID register's
// address and the points, or ok false.
func pointsAt(m *sunspec.Map, lo, hi int, write bool) (id, base uint16, pts []*sunspec.Point, ok bool) {
	for _, b := range m.Blocks {
		if lo < int(b.Addr)+2 || hi > int(b.Addr)+1+int(b.Len) {
			continue
		}
		k := sunspec.Lookup(b.ID)
		if first, _ := m.Find(b.ID); k == nil || first.Addr != b.Addr {
			return 0, 0, nil, false
		}
		if pts = modelPoints(k, lo-int(b.Addr), hi-int(b.Addr)); pts == nil {
			return 0, 0, nil, false
		}
		if write {
			last := pts[len(pts)-1]
			if int(pts[0].Offset) != lo-int(b.Addr) || int(last.Offset+last.Size)-1 != hi-int(b.Addr) {
				return 0, 0, nil, false
			}
			for _, p := range pts {
				if !p.RW {
					return 0, 0, nil, false
				}
			}
		}
		return b.ID, b.Addr, pts, true
	}
	return 0, 0, nil, false
}

// modelPoints returns the points of k covering its registers lo..hi
// (offsets from its ID register), in order; nil if one of them is no
// point's.
func modelPoints(k *sunspec.Model, lo, hi int) []*sunspec.Point {
	var pts []*sunspec.Point
	for off := lo; off <= hi; off++ {
		p := k.PointAt(uint16(off))
		if p == nil {
			return nil
		}
		if len(pts) == 0 || pts[len(pts)-1] != p {
			pts = append(pts, p)
		}
	}
	return pts
}

// engValues puts the values st saw written to pts in units with sm's scale
// factors, if every point is one register with a scale factor and units
// and they share both.
func engValues(sm *sunspecMap, model uint16, pts []*sunspec.Point, st *seen) (lo, hi decimal, unit string, ok bool) {
	if !st.values || st.unchecked {
		return lo, hi, "", false
	}
	var sf int16
	signed := pts[0].Type.Signed()
	for i, p := range pts {
		u, _, _ := strings.Cut(strings.TrimSpace(p.Units), " ")
		s, known := sm.sfs[fmt.Sprintf("%d.%s", model, p.SF)]
		if p.Size != 1 || p.SF == "" || !known || u == "" || numberish.MatchString(u) || p.Type.Signed() != signed ||
			i > 0 && (s != sf || u != unit) {
			return lo, hi, "", false
		}
		sf, unit = s, u
	}
	if signed {
		return decimal{int64(st.slo), sf}, decimal{int64(st.shi), sf}, unit, true
	}
	return decimal{int64(st.lo), sf}, decimal{int64(st.hi), sf}, unit, true
}

// nameHeld names d's holding-register traffic by SunSpec points where the
// unit's map (the one read then, or for traffic before any, the first)
// has them, and returns the rest as address rules would learn it: reads
// and writes added to copies of d's.
func (l *Learner) nameHeld(device string, d *learnedDevice) (reads, writes map[tableKey]map[addrSpan]*seen, pts map[pointsKey]*learnedPoints) {
	clone := func(m map[tableKey]map[addrSpan]*seen) map[tableKey]map[addrSpan]*seen {
		out := make(map[tableKey]map[addrSpan]*seen, len(m))
		for k, spans := range m {
			out[k] = make(map[addrSpan]*seen, len(spans))
			for s, st := range spans {
				c := &seen{}
				c.merge(st)
				out[k][s] = c
			}
		}
		return out
	}
	reads, writes, pts = clone(d.reads), clone(d.writes), map[pointsKey]*learnedPoints{}
	for k, st := range d.held {
		write := k.fc == 0
		sm := l.maps.walk(device, k.unit, k.walk)
		var id, base uint16
		var ps []*sunspec.Point
		ok := sm != nil && sm.m != nil
		if ok {
			id, base, ps, ok = pointsAt(sm.m, k.span.lo, k.span.hi, write)
		}
		if !ok {
			tk := tableKey{space: modbus.SpaceHoldingRegisters}
			into := writes
			if !write {
				tk.fc, into = modbus.ReadHoldingRegisters, reads
			}
			at(into, tk, k.span).merge(st)
			continue
		}
		pk := pointsKey{fc: k.fc, model: id, first: ps[0].Name, last: ps[len(ps)-1].Name}
		if !write { // reads of a model merge by their registers in it
			pk.first, pk.last = "", ""
		}
		lp := pts[pk]
		if lp == nil {
			lp = &learnedPoints{st: &seen{}, spansOff: map[addrSpan]*seen{}}
			for _, p := range ps {
				lp.names = append(lp.names, p.Name)
			}
			pts[pk] = lp
		}
		lp.st.merge(st)
		if !write {
			off := addrSpan{k.span.lo - int(base), k.span.hi - int(base)}
			if lp.spansOff[off] == nil {
				lp.spansOff[off] = &seen{}
			}
			lp.spansOff[off].merge(st)
			continue
		}
		lo, hi, unit, eng := engValues(sm, id, ps, st)
		switch {
		case !eng:
			lp.noEng = true
		case !lp.eng:
			lp.eng, lp.lo, lp.hi, lp.unit = true, lo, hi, unit
		default:
			if lo.float() < lp.lo.float() {
				lp.lo = lo
			}
			if hi.float() > lp.hi.float() {
				lp.hi = hi
			}
		}
	}
	return reads, writes, pts
}

// sunspecRules builds the learned SunSpec rules of one device: reads of
// each model merged as address reads are (across gaps of up to Gap
// registers), then writes, one rule per set of points written.
func (l *Learner) sunspecRules(pts map[pointsKey]*learnedPoints, requires func(*yaml.Node)) (reads, writes []*yaml.Node) {
	keys := make([]pointsKey, 0, len(pts))
	for k := range pts {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b pointsKey) int {
		return cmp.Or(cmp.Compare(a.fc, b.fc), cmp.Compare(a.model, b.model), cmp.Compare(a.first, b.first), cmp.Compare(a.last, b.last))
	})
	rule := func(allow string, model uint16, names []string, st *seen) *yaml.Node {
		label := (&SunSpecRef{Model: model, Points: names}).Label()
		if len(names) > 1 {
			label = fmt.Sprintf("%d.%s-%s", model, names[0], names[len(names)-1])
		}
		name := "learned-" + allow + "-" + label
		point := strNode(names[0])
		if len(names) > 1 {
			point = &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
			for _, n := range names {
				point.Content = append(point.Content, strNode(n))
			}
		}
		ref := mapping("model", intNode(int(model)), "point", point)
		ref.Style = yaml.FlowStyle
		r := mapping("name", strNode(name), "allow", strNode(allow), "functions", flowInts(functionInts(st.functions)...),
			"units", unitsNode(st.units), "sunspec", ref)
		r.HeadComment = describe(st)
		return r
	}
	for _, k := range keys {
		lp := pts[k]
		if k.fc != 0 {
			reads = append(reads, l.pointReads(k.model, lp.spansOff, rule)...)
			continue
		}
		r := rule("write", k.model, lp.names, lp.st)
		switch {
		case lp.eng && !lp.noEng:
			vals := lp.lo.String() + ".." + lp.hi.String()
			if lp.lo == lp.hi {
				vals = lp.lo.String()
			}
			r.Content = append(r.Content, strNode("values"), strNode(vals+" "+lp.unit))
			r.HeadComment += fmt.Sprintf("; values written %s %s (raw %s)", vals, lp.unit, lp.st.valueRange())
		case lp.st.values && !lp.st.unchecked:
			r.Content = append(r.Content, strNode("values"), strNode(lp.st.valueRange()))
			r.HeadComment += "; values written " + lp.st.valueRange()
		case lp.st.unchecked:
			r.HeadComment += "; mask writes with a non-zero AND mask were seen, so no value range"
		}
		requires(r)
		writes = append(writes, r)
	}
	return reads, writes
}

// pointReads builds the read rules of a model's points from the registers
// read (offsets from its ID register), merged as address reads are; reads
// that name the same points share a rule.
func (l *Learner) pointReads(id uint16, spansOff map[addrSpan]*seen, rule func(string, uint16, []string, *seen) *yaml.Node) []*yaml.Node {
	model := sunspec.Lookup(id)
	var order [][]string
	byNames := map[string]*seen{}
	add := func(ps []*sunspec.Point, st *seen) {
		names := pointNames(ps)
		k := strings.Join(names, ",")
		if byNames[k] == nil {
			byNames[k] = &seen{}
			order = append(order, names)
		}
		byNames[k].merge(st)
	}
	spans, stats := merged(spansOff, l.opts.Gap)
	for i, s := range spans {
		if ps := modelPoints(model, s.lo, s.hi); ps != nil {
			add(ps, stats[i])
			continue
		}
		// A register between the reads is no point's: name them apart.
		for _, o := range slices.SortedFunc(maps.Keys(spansOff), func(a, b addrSpan) int { return cmp.Compare(a.lo, b.lo) }) {
			if o.lo >= s.lo && o.hi <= s.hi {
				add(modelPoints(model, o.lo, o.hi), spansOff[o])
			}
		}
	}
	out := make([]*yaml.Node, 0, len(order))
	for _, names := range order {
		out = append(out, rule("read", id, names, byNames[strings.Join(names, ",")]))
	}
	return out
}

func pointNames(ps []*sunspec.Point) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Name
	}
	return out
}
