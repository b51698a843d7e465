package policy

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"
	"gopkg.in/yaml.v3"

	"github.com/gridseal/gridseal/protocols/modbus"
	"github.com/gridseal/gridseal/protocols/sunspec"
)

// SunSpecRef is what a rule names instead of addresses: points of a SunSpec
// model, found on each device unit by walking its model chain (Resolve).
type SunSpecRef struct {
	Model  uint16
	Points []string
	units  []byte    // the units whose maps the rule needs
	eng    []engSpan // values in engineering units; nil: r.values (raw) or any
	unit   string    // the unit eng is written in
}

type engSpan struct{ lo, hi float64 }

// Label names the rule's points: "123.WMaxLimPct" or "123.{Conn,WMaxLimPct}".
func (s *SunSpecRef) Label() string {
	if len(s.Points) == 1 {
		return fmt.Sprintf("%d.%s", s.Model, s.Points[0])
	}
	return fmt.Sprintf("%d.{%s}", s.Model, strings.Join(s.Points, ","))
}

// parseSunSpec reads a rule's sunspec: {model: 123, point: WMaxLimPct}
// (point may be a list) and its values, raw or in the points' units
// ("0..60 %").
func parseSunSpec(r *Rule, n *yaml.Node, f map[string]*yaml.Node, d *Device, where string) error {
	sf, err := fields(n, "sunspec", "model", "point")
	if err != nil {
		return err
	}
	if f["addresses"] != nil {
		return lineErr(f["addresses"], "%s: name either addresses or sunspec points, not both", where)
	}
	if r.Table != modbus.SpaceNone && r.Table != modbus.SpaceHoldingRegisters {
		return lineErr(f["table"], "%s: sunspec points are holding registers", where)
	}
	r.Table = modbus.SpaceHoldingRegisters
	ref := &SunSpecRef{}
	mn := sf["model"]
	if mn == nil {
		return lineErr(n, "%s: sunspec needs a model (e.g. model: 123)", where)
	}
	id, err := strconv.ParseUint(mn.Value, 10, 16)
	model := sunspec.Lookup(uint16(id))
	if err != nil || model == nil {
		return lineErr(mn, "%s: sunspec model %q is not one gridseal has a table for (known: %v)", where, mn.Value, sunspec.Known())
	}
	ref.Model = uint16(id)
	pn := sf["point"]
	if pn == nil {
		return lineErr(n, "%s: sunspec needs a point or a list of points of model %d", where, id)
	}
	switch pn.Kind {
	case yaml.ScalarNode:
		ref.Points = []string{pn.Value}
	case yaml.SequenceNode:
		for _, it := range pn.Content {
			ref.Points = append(ref.Points, it.Value)
		}
	}
	if len(ref.Points) == 0 {
		return lineErr(pn, "%s: sunspec point must be a point name or a list of them", where)
	}
	for _, name := range ref.Points {
		p := model.Point(name)
		if p == nil {
			return lineErr(pn, "%s: sunspec model %d (%s) has no point %q (its points: %s)", where, id, model.Name, name, strings.Join(model.PointNames(), ", "))
		}
		if r.Class == modbus.ClassWrite && !p.RW {
			return lineErr(pn, "%s: point %d.%s is read-only", where, id, name)
		}
	}
	ref.units = r.units
	if len(ref.units) == 0 {
		ref.units = d.Units
	}
	if len(ref.units) == 0 {
		return lineErr(n, "%s: a sunspec rule needs units (the device's or its own) to know whose map to read", where)
	}
	if vn := f["values"]; vn != nil {
		if r.Class != modbus.ClassWrite {
			return lineErr(vn, "%s: values apply to write rules only", where)
		}
		if err := parseSunSpecValues(r, ref, model, vn, where); err != nil {
			return err
		}
	}
	r.SunSpec = ref
	return nil
}

var numberish = regexp.MustCompile(`^[-+.0-9]`)

func parseSunSpecValues(r *Rule, ref *SunSpecRef, model *sunspec.Model, vn *yaml.Node, where string) error {
	items := []*yaml.Node{vn}
	if vn.Kind == yaml.SequenceNode {
		items = vn.Content
	}
	var withUnit, raw bool
	for _, it := range items {
		words := strings.Fields(it.Value)
		if it.Kind != yaml.ScalarNode || len(words) == 0 {
			return lineErr(it, "%s: want a value range such as 0..60 %%", where)
		}
		if last := words[len(words)-1]; len(words) > 1 && !numberish.MatchString(last) {
			withUnit = true
			if ref.unit != "" && ref.unit != last {
				return lineErr(it, "%s: values in %s and %s", where, ref.unit, last)
			}
			ref.unit = last
			for _, s := range strings.Split(strings.Join(words[:len(words)-1], ""), ",") {
				sp, err := parseEngSpan(s)
				if err != nil {
					return lineErr(it, "%s: %v", where, err)
				}
				ref.eng = append(ref.eng, sp)
			}
		} else {
			raw = true
		}
	}
	if withUnit && raw {
		return lineErr(vn, "%s: give every value range in %s, or none in units", where, ref.unit)
	}
	if raw {
		var err error
		r.values, err = parseRanges(vn, -32768, 65535, map[string]int32{"on": 1, "off": 0, "true": 1, "false": 0})
		return err
	}
	for _, name := range ref.Points {
		p := model.Point(name)
		if p.Size != 1 {
			return lineErr(vn, "%s: point %d.%s is %d registers: values in units apply to one-register points", where, ref.Model, name, p.Size)
		}
		if !p.UnitsMatch(ref.unit) {
			return lineErr(vn, "%s: point %d.%s is in %q, not %s", where, ref.Model, name, p.Units, ref.unit)
		}
	}
	return nil
}

func parseEngSpan(s string) (engSpan, error) {
	lo, hi, ok := strings.Cut(s, "..")
	if !ok {
		hi = lo
	}
	a, err1 := strconv.ParseFloat(lo, 64)
	b, err2 := strconv.ParseFloat(hi, 64)
	if err1 != nil || err2 != nil {
		return engSpan{}, fmt.Errorf("%q is not a number or a range such as 0..60", s)
	}
	if a > b {
		return engSpan{}, fmt.Errorf("range %q runs backwards", s)
	}
	return engSpan{a, b}, nil
}

// The engine's SunSpec state --------------------------------------------------

// sunspecMap is what Resolve learnt of a device unit: its model chain and
// the values of the scale factors of the models gridseal knows.
type sunspecMap struct {
	m   *sunspec.Map
	sfs map[string]int16 // "model.SF_point" → exponent
	err error            // the walk failed: why
}

// resolvedRule is a SunSpec rule compiled for one unit's map: a copy of the
// rule with its addresses and values in registers, and what names them.
type resolvedRule struct {
	*Rule
	points []resolvedPoint
}

type resolvedPoint struct {
	name  string // "123.WMaxLimPct"
	addr  uint16
	size  uint16
	sf    int16
	typ   sunspec.Type
	units string
}

type unitRule struct {
	r    *Rule
	unit byte
}

// sunspecState is one policy's SunSpec rules compiled for a set of maps;
// judging reads it without locking.
type sunspecState struct {
	pol      *Policy
	resolved map[unitRule]*resolvedRule
	why      map[unitRule]string // not resolved: why
}

// deviceMaps are the maps known: device → unit → map; a unit absent has
// not been read.
type deviceMaps map[string]map[byte]*sunspecMap

type sunspecEngine struct {
	mu    sync.Mutex
	maps  deviceMaps
	state atomic.Pointer[sunspecState] // the policy in force's
	cand  atomic.Pointer[sunspecState] // the shadow candidate's; nil: none
}

// notReadYet is why a rule is not resolved on a unit the engine has not
// read the map of.
const notReadYet = "the SunSpec map of unit %d has not been read yet (the proxy reads it when it connects to the device)"

// compileLocked puts the SunSpec rules of p and of the candidate cand (nil:
// none) in force for the maps known. Callers hold mu.
func (s *sunspecEngine) compileLocked(p, cand *Policy) {
	s.state.Store(compileState(p, s.maps, notReadYet))
	s.cand.Store(compileState(cand, s.maps, notReadYet))
}

// compileState compiles p's SunSpec rules for maps; absent (a format with
// the unit) says why a rule is not resolved on a unit with no map. Nil p:
// nil.
func compileState(p *Policy, maps deviceMaps, absent string) *sunspecState {
	if p == nil {
		return nil
	}
	st := &sunspecState{pol: p, resolved: map[unitRule]*resolvedRule{}, why: map[unitRule]string{}}
	for _, d := range p.Devices {
		for _, r := range d.Rules {
			if r.SunSpec == nil {
				continue
			}
			for _, u := range r.SunSpec.units {
				k := unitRule{r, u}
				sm := maps[d.Name][u]
				switch {
				case sm == nil:
					st.why[k] = fmt.Sprintf("%s not resolved: "+absent, r.SunSpec.Label(), u)
				case sm.err != nil:
					st.why[k] = fmt.Sprintf("%s not resolved on unit %d: %v", r.SunSpec.Label(), u, sm.err)
				default:
					rr, err := compileRule(r, sm)
					if err != nil {
						st.why[k] = fmt.Sprintf("%s not resolved on unit %d: %v", r.SunSpec.Label(), u, err)
					} else {
						st.resolved[k] = rr
					}
				}
			}
		}
	}
	return st
}

func compileRule(r *Rule, sm *sunspecMap) (*resolvedRule, error) {
	ref := r.SunSpec
	cp := *r
	cp.addresses, cp.values = nil, r.values
	rr := &resolvedRule{Rule: &cp}
	sfSeen, sfSet := int16(0), false
	for _, name := range ref.Points {
		addr, p, err := sm.m.Locate(ref.Model, name)
		if err != nil {
			return nil, err
		}
		rp := resolvedPoint{name: fmt.Sprintf("%d.%s", ref.Model, name), addr: addr, size: p.Size, typ: p.Type, units: strings.TrimSpace(p.Units)}
		if p.SF != "" {
			sf, ok := sm.sfs[fmt.Sprintf("%d.%s", ref.Model, p.SF)]
			if !ok {
				return nil, fmt.Errorf("scale factor %d.%s of %s is not implemented by the device", ref.Model, p.SF, rp.name)
			}
			rp.sf = sf
		}
		if ref.eng != nil {
			if sfSet && rp.sf != sfSeen {
				return nil, fmt.Errorf("points %s have different scale factors on this device: give them rules of their own", ref.Label())
			}
			sfSeen, sfSet = rp.sf, true
		}
		cp.addresses = append(cp.addresses, span{lo: int32(addr), hi: int32(addr) + int32(p.Size) - 1})
		rr.points = append(rr.points, rp)
	}
	cp.addresses = mergeSpans(cp.addresses)
	if ref.eng != nil {
		cp.values = nil
		typ := rr.points[0].typ
		for _, e := range ref.eng {
			lo, ok1 := sunspec.Raw(e.lo, sfSeen, typ, true)
			hi, ok2 := sunspec.Raw(e.hi, sfSeen, typ, false)
			if !ok1 || !ok2 || lo > hi {
				return nil, fmt.Errorf("values %g..%g %s do not fit %s with scale factor %d", e.lo, e.hi, ref.unit, ref.Label(), sfSeen)
			}
			cp.values = append(cp.values, span{lo: lo, hi: hi, signed: typ.Signed() || lo < 0})
		}
	}
	return rr, nil
}

// mergeSpans sorts address spans and joins those that touch, so a write
// across adjacent points is one range.
func mergeSpans(rs ranges) ranges {
	slices.SortFunc(rs, func(a, b span) int { return int(a.lo - b.lo) })
	var out ranges
	for _, s := range rs {
		if n := len(out); n > 0 && s.lo <= out[n-1].hi+1 {
			out[n-1].hi = max(out[n-1].hi, s.hi)
			continue
		}
		out = append(out, s)
	}
	return out
}

// describe names what a write sets, point by point: "123.WMaxLimPct = 30 %".
func (rr *resolvedRule) describe(req *modbus.Request) string {
	_, addr, qty, ok := req.WriteRange()
	if !ok {
		return ""
	}
	var b strings.Builder
	const most = 8
	for i := 0; i < int(qty) && i < most; i++ {
		a := addr + uint16(i)
		v := req.RegisterValue(i)
		if req.Function == modbus.MaskWriteRegister {
			v = req.OrMask
		}
		if i > 0 {
			b.WriteString(", ")
		}
		named := false
		for _, p := range rr.points {
			if p.size == 1 && a == p.addr {
				fmt.Fprintf(&b, "%s = %s", p.name, strconv.FormatFloat(sunspec.Eng(v, p.sf, p.typ), 'f', -1, 64))
				if p.units != "" {
					b.WriteString(" " + p.units)
				}
				named = true
			} else if a >= p.addr && a < p.addr+p.size {
				fmt.Fprintf(&b, "%s[%d] = %d", p.name, a-p.addr, v)
				named = true
			}
		}
		if !named {
			fmt.Fprintf(&b, "register %d = %d", a, v)
		}
	}
	if int(qty) > most {
		fmt.Fprintf(&b, ", … (%d registers)", qty)
	}
	return b.String()
}

// NeedsResolve reports whether the proxy should walk device's SunSpec map
// (Resolve) when it connects: rules of the policy in force or of the
// candidate name its SunSpec points, or it is in observe mode (so that
// policy learn can name the points of what it was asked).
func (e *Engine) NeedsResolve(device string) bool {
	ruled, observed := e.mapUnits(device)
	return len(ruled)+len(observed) > 0
}

// mapUnits lists the units of device whose maps the SunSpec rules of the
// policy in force and of the candidate name, and, apart, the other units
// of a device in observe mode.
func (e *Engine) mapUnits(device string) (ruled, observed []byte) {
	for _, p := range []*Policy{e.cur.Load(), e.Candidate()} {
		if p == nil {
			continue
		}
		if d := p.Device(device); d != nil {
			for _, r := range d.Rules {
				if r.SunSpec == nil {
					continue
				}
				for _, u := range r.SunSpec.units {
					if !hasUnit(ruled, u) {
						ruled = append(ruled, u)
					}
				}
			}
		}
	}
	if d := e.cur.Load().Device(device); d != nil && d.Observe {
		for _, u := range d.Units {
			if !hasUnit(ruled, u) {
				observed = append(observed, u)
			}
		}
	}
	return ruled, observed
}

// Resolve walks the SunSpec map of each unit of device that SunSpec rules
// name (and of each unit of a device in observe mode), reading holding
// registers through read (the proxy's connection to the device), and puts
// the rules in force for the maps found. Until then, and for a unit whose
// map cannot be read, the rules allow nothing and their denials say why.
// The error joins the units that failed (a unit read only because its
// device observes fails silently when it has no map); a read error (the
// connection, not the device's answer) leaves the unit unread, to be read
// on the next connection.
func (e *Engine) Resolve(ctx context.Context, device string, read func(unit byte, addr, n uint16) ([]uint16, error)) error {
	p := e.cur.Load()
	if p.byName[device] == nil {
		return fmt.Errorf("device %q is not in policy %s", device, p.ID)
	}
	ruled, observed := e.mapUnits(device)
	found := map[byte]*sunspecMap{}
	var errs []string
	for _, u := range append(ruled, observed...) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		sm, err := readMap(func(a, n uint16) ([]uint16, error) { return read(u, a, n) })
		if err != nil && (hasUnit(ruled, u) || sm == nil) {
			errs = append(errs, fmt.Sprintf("unit %d: %v", u, err))
		}
		if sm != nil {
			found[u] = sm
		}
	}
	e.ss.mu.Lock()
	if e.ss.maps == nil { // the zero Engine of tests
		e.ss.maps = deviceMaps{}
	}
	e.ss.maps[device] = found
	e.ss.compileLocked(e.cur.Load(), e.Candidate())
	e.ss.mu.Unlock()
	for u, sm := range found {
		if sm.err == nil {
			e.log.Info("sunspec map resolved", zap.String("device", device), zap.Uint8("unit", u),
				zap.Uint16("base", sm.m.Base), zap.String("models", sm.m.IDs()))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("device %s: %s", device, strings.Join(errs, "; "))
	}
	return nil
}

// Unresolve forgets device's SunSpec maps (its connection was lost, and the
// device may come back with another layout): its SunSpec rules allow
// nothing until the next Resolve.
func (e *Engine) Unresolve(device string) {
	e.ss.mu.Lock()
	defer e.ss.mu.Unlock()
	if _, ok := e.ss.maps[device]; !ok {
		return
	}
	delete(e.ss.maps, device)
	e.ss.compileLocked(e.cur.Load(), e.Candidate())
}

// readMap walks one unit's chain and reads the scale factors of the models
// gridseal knows. A device without a map gets a sunspecMap holding the
// error (its rules are then refused with that reason); a read that fails
// otherwise returns no map.
func readMap(read sunspec.ReadFunc) (*sunspecMap, error) {
	m, err := sunspec.Walk(read)
	if err != nil {
		if errors.Is(err, sunspec.ErrNoMap) {
			return &sunspecMap{err: err}, err
		}
		return nil, err
	}
	sm := &sunspecMap{m: m, sfs: map[string]int16{}}
	seen := map[uint16]bool{}
	for _, b := range m.Blocks {
		k := sunspec.Lookup(b.ID)
		if k == nil || seen[b.ID] { // a second instance: rules name the first
			continue
		}
		seen[b.ID] = true
		for i := range k.Points {
			p := &k.Points[i]
			if p.Type != sunspec.ScaleFactor {
				continue
			}
			v, err := read(b.Addr+p.Offset, 1)
			if err != nil {
				return nil, fmt.Errorf("read scale factor %d.%s at %d: %w", b.ID, p.Name, b.Addr+p.Offset, err)
			}
			if sf := int16(v[0]); sf >= -10 && sf <= 10 {
				sm.sfs[fmt.Sprintf("%d.%s", b.ID, p.Name)] = sf
			}
		}
	}
	return sm, nil
}

// rule returns the rule to check a request on unit against: r itself, or
// for a SunSpec rule its copy compiled for the unit's map (and that); nil
// and why if the rule is not resolved for the unit. st is what p's rules
// were compiled to; nil: no maps (judging without a device).
func (st *sunspecState) rule(p *Policy, r *Rule, unit byte) (*Rule, *resolvedRule, string) {
	if r.SunSpec == nil {
		return r, nil, ""
	}
	if st == nil {
		return nil, nil, r.SunSpec.Label() + " not resolved: no device map to resolve it against here"
	}
	if st.pol != p {
		return nil, nil, r.SunSpec.Label() + " not resolved: the policy changed while deciding"
	}
	k := unitRule{r, unit}
	if rr := st.resolved[k]; rr != nil {
		return rr.Rule, rr, ""
	}
	if why, ok := st.why[k]; ok {
		return nil, nil, why
	}
	return nil, nil, fmt.Sprintf("unit %d not allowed (%s is resolved for units %v)", unit, r.SunSpec.Label(), r.SunSpec.units)
}
