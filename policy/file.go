package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/gridseal/gridseal/protocols/modbus"
)

// Policy is a parsed, checked policy file. It is immutable once returned by
// Parse, so one Policy may be shared by any number of goroutines.
type Policy struct {
	ID        string
	Version   int
	Digest    string // hex SHA-256 of the file's bytes, as written
	Devices   []*Device
	Approvers []*Approver
	byName    map[string]*Device
	approvers map[string]*Approver
	keyIndex  map[uint32]*Approver // key id → its approver
	revoked   map[uint32]bool
	raw       []byte
}

// Device is one controller behind the proxy.
type Device struct {
	Name     string
	Kind     string // informational: pv-inverter, battery, breaker, ...
	Upstream string // host:port of the PLC
	Units    []byte // unit ids routed to this device; empty means any
	Rules    []*Rule
	// Observe is mode: observe: every well-formed request is forwarded and
	// recorded with the verdict the rules would have given. For
	// commissioning only; the zero value enforces.
	Observe bool
}

// ObservedDevices lists the devices in observe mode, in policy order.
func (p *Policy) ObservedDevices() []string {
	var out []string
	for _, d := range p.Devices {
		if d.Observe {
			out = append(out, d.Name)
		}
	}
	return out
}

// Rule allows one class of request on a device.
type Rule struct {
	Name      string
	Line      int          // line in the policy file, for messages
	Class     modbus.Class // what the rule allows
	functions [256]bool
	Table     modbus.Space // SpaceNone: any table
	units     []byte       // empty: every unit of the device
	addresses ranges       // nil: any address (reads and diagnostics only)
	values    ranges       // nil: any value
	subs      ranges       // function 8 sub-functions a diagnostic rule allows
	roles     []string     // Modbus/TCP Security roles the rule is for; empty: any client
	// SunSpec names the rule's registers as points of a SunSpec model, in
	// place of addresses: the engine resolves them per device unit.
	SunSpec *SunSpecRef

	Requires   *Quorum       // non-nil: a write needs an m-of-n approval
	BreakGlass *Quorum       // fewer signatures that still pass, flagged loudly
	MaxTTL     time.Duration // longest approval window this rule accepts
}

// Bytes returns the policy file as parsed: the bytes Digest covers. The
// caller must not modify them.
func (p *Policy) Bytes() []byte { return p.raw }

// Device returns the named device, or nil.
func (p *Policy) Device(name string) *Device { return p.byName[name] }

// Load reads and parses the policy file at path.
func Load(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	return Parse(path, data)
}

// ErrInvalid marks every error about the content of a policy file.
var ErrInvalid = errors.New("invalid policy")

// Parse parses and checks a policy. name is used in messages, which read
// "name:line: what is wrong".
func Parse(name string, data []byte) (*Policy, error) {
	p, err := parse(data)
	if err != nil {
		return nil, fileErr(name, err)
	}
	sum := sha256.Sum256(data)
	p.Digest = hex.EncodeToString(sum[:])
	p.raw = append([]byte(nil), data...)
	return p, nil
}

var yamlLine = regexp.MustCompile(`^yaml: (?:unmarshal errors:\s*)?line (\d+): (.*)$`)

func fileErr(name string, err error) error {
	var le *lineError
	if errors.As(err, &le) {
		return fmt.Errorf("%w: %s:%d: %s", ErrInvalid, name, le.Line, le.Msg)
	}
	msg := strings.TrimSpace(strings.SplitN(err.Error(), "\n", 3)[0])
	if full := strings.Join(strings.Fields(err.Error()), " "); yamlLine.MatchString(full) {
		m := yamlLine.FindStringSubmatch(full)
		return fmt.Errorf("%w: %s:%s: %s", ErrInvalid, name, m[1], m[2])
	}
	return fmt.Errorf("%w: %s: %s", ErrInvalid, name, msg)
}

// fields checks that n is a mapping with only the allowed keys and returns
// the value node of each key.
func fields(n *yaml.Node, what string, allowed ...string) (map[string]*yaml.Node, error) {
	if n.Kind != yaml.MappingNode {
		return nil, lineErr(n, "%s must be a mapping", what)
	}
	out := make(map[string]*yaml.Node, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if !contains(allowed, k.Value) {
			return nil, lineErr(k, "%s: unknown field %q (known: %s)", what, k.Value, strings.Join(allowed, ", "))
		}
		if _, dup := out[k.Value]; dup {
			return nil, lineErr(k, "%s: field %q given twice", what, k.Value)
		}
		out[k.Value] = n.Content[i+1]
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func scalar(n *yaml.Node, what string) (string, error) {
	if n.Kind != yaml.ScalarNode {
		return "", lineErr(n, "%s must be a single value", what)
	}
	return n.Value, nil
}

var namePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

func parse(data []byte) (*Policy, error) {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		return nil, err
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return nil, errors.New("empty policy")
	}
	root := doc.Content[0]
	f, err := fields(root, "policy", "id", "version", "approvers", "revoked_keys", "devices")
	if err != nil {
		return nil, err
	}
	p := &Policy{byName: map[string]*Device{}, approvers: map[string]*Approver{},
		keyIndex: map[uint32]*Approver{}, revoked: map[uint32]bool{}}
	if n := f["approvers"]; n != nil {
		if err := parseApprovers(p, n); err != nil {
			return nil, err
		}
	}
	if n := f["revoked_keys"]; n != nil {
		if err := parseRevoked(p, n); err != nil {
			return nil, err
		}
	}
	if n := f["id"]; n != nil {
		if p.ID, err = scalar(n, "id"); err != nil {
			return nil, err
		}
	}
	if p.ID == "" {
		return nil, lineErr(root, "policy: missing id (a name for this policy, e.g. id: plant-north)")
	}
	if n := f["version"]; n != nil {
		if err := n.Decode(&p.Version); err != nil || p.Version < 1 {
			return nil, lineErr(n, "version must be a positive integer")
		}
	}
	devs := f["devices"]
	if devs == nil || devs.Kind != yaml.SequenceNode || len(devs.Content) == 0 {
		return nil, lineErr(root, "policy: devices must list at least one device")
	}
	for _, dn := range devs.Content {
		d, err := parseDevice(dn)
		if err != nil {
			return nil, err
		}
		if _, dup := p.byName[d.Name]; dup {
			return nil, lineErr(dn, "device %q defined twice", d.Name)
		}
		p.byName[d.Name] = d
		p.Devices = append(p.Devices, d)
	}
	if err := checkQuorums(p); err != nil {
		return nil, err
	}
	return p, nil
}

func parseDevice(n *yaml.Node) (*Device, error) {
	f, err := fields(n, "device", "name", "kind", "upstream", "units", "mode", "rules")
	if err != nil {
		return nil, err
	}
	d := &Device{}
	if f["name"] == nil {
		return nil, lineErr(n, "device: missing name")
	}
	if d.Name, err = scalar(f["name"], "name"); err != nil {
		return nil, err
	}
	if !namePattern.MatchString(d.Name) {
		return nil, lineErr(f["name"], "device name %q: use lower-case letters, digits, '.', '_' or '-'", d.Name)
	}
	if k := f["kind"]; k != nil {
		if d.Kind, err = scalar(k, "kind"); err != nil {
			return nil, err
		}
	}
	up := f["upstream"]
	if up == nil {
		return nil, lineErr(n, "device %q: missing upstream (host:port of the PLC)", d.Name)
	}
	if d.Upstream, err = scalar(up, "upstream"); err != nil {
		return nil, err
	}
	if _, port, err := net.SplitHostPort(d.Upstream); err != nil || port == "" {
		return nil, lineErr(up, "device %q: upstream %q is not host:port", d.Name, d.Upstream)
	}
	if u := f["units"]; u != nil {
		if d.Units, err = parseUnits(u); err != nil {
			return nil, err
		}
	}
	if mn := f["mode"]; mn != nil {
		switch mn.Value {
		case "enforce":
		case "observe":
			d.Observe = true
		default:
			return nil, lineErr(mn, "device %q: mode must be enforce or observe, not %q", d.Name, mn.Value)
		}
	}
	if rn := f["rules"]; rn != nil {
		if rn.Kind != yaml.SequenceNode {
			return nil, lineErr(rn, "device %q: rules must be a list", d.Name)
		}
		seen := map[string]bool{}
		for _, r := range rn.Content {
			rule, err := parseRule(r, d)
			if err != nil {
				return nil, err
			}
			if seen[rule.Name] {
				return nil, lineErr(r, "device %q: rule %q defined twice", d.Name, rule.Name)
			}
			seen[rule.Name] = true
			d.Rules = append(d.Rules, rule)
		}
	}
	return d, nil
}

func parseUnits(n *yaml.Node) ([]byte, error) {
	rs, err := parseRanges(n, 0, 255, nil)
	if err != nil {
		return nil, err
	}
	var out []byte
	for _, s := range rs {
		for u := s.lo; u <= s.hi; u++ {
			out = append(out, byte(u))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

var tables = map[string]modbus.Space{
	"coils":             modbus.SpaceCoils,
	"discrete-inputs":   modbus.SpaceDiscreteInputs,
	"holding-registers": modbus.SpaceHoldingRegisters,
	"input-registers":   modbus.SpaceInputRegisters,
}

// Functions a rule allows when it names none. Function 20–24 and 43 and all
// diagnostics must be named explicitly.
var defaultFunctions = map[modbus.Class][]modbus.Function{
	modbus.ClassRead:  {modbus.ReadCoils, modbus.ReadDiscreteInputs, modbus.ReadHoldingRegisters, modbus.ReadInputRegisters},
	modbus.ClassWrite: {modbus.WriteSingleCoil, modbus.WriteSingleRegister, modbus.WriteMultipleCoils, modbus.WriteMultipleRegisters},
}

func parseRule(n *yaml.Node, d *Device) (*Rule, error) {
	f, err := fields(n, "rule", "name", "allow", "functions", "table", "units", "addresses", "values",
		"requires", "break_glass", "max_ttl", "subfunctions", "roles", "sunspec")
	if err != nil {
		return nil, err
	}
	r := &Rule{Line: n.Line}
	if f["name"] == nil {
		return nil, lineErr(n, "device %q: rule without a name", d.Name)
	}
	if r.Name, err = scalar(f["name"], "name"); err != nil {
		return nil, err
	}
	where := fmt.Sprintf("device %q rule %q", d.Name, r.Name)
	an := f["allow"]
	if an == nil {
		return nil, lineErr(n, "%s: missing allow (read, write or diagnostic)", where)
	}
	switch an.Value {
	case "read":
		r.Class = modbus.ClassRead
	case "write":
		r.Class = modbus.ClassWrite
	case "diagnostic":
		r.Class = modbus.ClassDiagnostic
	default:
		return nil, lineErr(an, "%s: allow must be read, write or diagnostic, not %q", where, an.Value)
	}
	if fn := f["functions"]; fn != nil {
		rs, err := parseRanges(fn, 1, 127, nil)
		if err != nil {
			return nil, err
		}
		for _, s := range rs {
			for c := s.lo; c <= s.hi; c++ {
				fc := modbus.Function(c)
				if !fc.Known() {
					return nil, lineErr(fn, "%s: function %d is not a public Modbus function gridseal can check", where, c)
				}
				if fc.Class() != r.Class && !(fc == modbus.EncapsulatedInterface && r.Class == modbus.ClassDiagnostic) {
					return nil, lineErr(fn, "%s: function %d (%s) is a %s, not a %s", where, c, fc, fc.Class(), r.Class)
				}
				r.functions[fc] = true
			}
		}
	} else if defs, ok := defaultFunctions[r.Class]; ok {
		for _, fc := range defs {
			r.functions[fc] = true
		}
	} else {
		return nil, lineErr(n, "%s: a diagnostic rule must name its functions", where)
	}
	if rn := f["roles"]; rn != nil {
		if err := rn.Decode(&r.roles); err != nil || len(r.roles) == 0 {
			return nil, lineErr(rn, "%s: roles must be a list of role names from client certificates", where)
		}
	}
	if sn := f["subfunctions"]; sn != nil {
		if r.Class != modbus.ClassDiagnostic || !r.functions[modbus.Diagnostics] {
			return nil, lineErr(sn, "%s: subfunctions apply to diagnostic rules naming function 8", where)
		}
		if r.subs, err = parseRanges(sn, 0, 65535, nil); err != nil {
			return nil, err
		}
	} else if r.functions[modbus.Diagnostics] {
		r.subs = ranges{{lo: 0, hi: 0}} // return query data (echo) only, unless named
	}
	if tn := f["table"]; tn != nil {
		t, ok := tables[tn.Value]
		if !ok {
			return nil, lineErr(tn, "%s: table must be coils, discrete-inputs, holding-registers or input-registers, not %q", where, tn.Value)
		}
		r.Table = t
	}
	if un := f["units"]; un != nil {
		if r.units, err = parseUnits(un); err != nil {
			return nil, err
		}
	}
	if an := f["addresses"]; an != nil {
		if r.addresses, err = parseRanges(an, 0, 65535, nil); err != nil {
			return nil, err
		}
	} else if r.Class == modbus.ClassWrite && !r.onlyFileRecords() && f["sunspec"] == nil {
		return nil, lineErr(n, "%s: a write rule must name its addresses", where)
	}
	if sn := f["sunspec"]; sn != nil {
		if err := parseSunSpec(r, sn, f, d, where); err != nil {
			return nil, err
		}
	} else if vn := f["values"]; vn != nil {
		if r.Class != modbus.ClassWrite {
			return nil, lineErr(vn, "%s: values apply to write rules only", where)
		}
		if r.values, err = parseRanges(vn, -32768, 65535, map[string]int32{"on": 1, "off": 0, "true": 1, "false": 0}); err != nil {
			return nil, err
		}
	}
	if qn := f["requires"]; qn != nil {
		if r.Class != modbus.ClassWrite && !r.stateChangingDiagnostics() {
			return nil, lineErr(qn, "%s: requires applies to write rules, and to diagnostic rules naming only function 8 and its state-changing sub-functions (1, 3, 4, 10, 20)", where)
		}
		q, err := parseQuorum(qn, where+" requires")
		if err != nil {
			return nil, err
		}
		r.Requires = &q
	}
	if bn := f["break_glass"]; bn != nil {
		if r.Requires == nil {
			return nil, lineErr(bn, "%s: break_glass needs requires", where)
		}
		q, err := parseQuorum(bn, where+" break_glass")
		if err != nil {
			return nil, err
		}
		q.Group = r.Requires.Group
		r.BreakGlass = &q
	}
	r.MaxTTL = defaultMaxTTL
	if tn := f["max_ttl"]; tn != nil {
		d, err := time.ParseDuration(tn.Value)
		if err != nil || d <= 0 || d > 24*time.Hour {
			return nil, lineErr(tn, "%s: max_ttl must be a duration up to 24h, such as 30m", where)
		}
		r.MaxTTL = d
	}
	return r, nil
}

// stateChangingDiagnostics reports whether r allows only function 8 and
// only sub-functions that change the device's state, so an approval can
// stand for exactly such a command.
func (r *Rule) stateChangingDiagnostics() bool {
	if r.Class != modbus.ClassDiagnostic {
		return false
	}
	for fc, on := range r.functions {
		if on && modbus.Function(fc) != modbus.Diagnostics {
			return false
		}
	}
	for _, rg := range r.subs {
		for v := rg.lo; v <= rg.hi; v++ {
			if v < 0 || v > 0xffff || !modbus.DiagnosticChangesState(uint16(v)) {
				return false
			}
		}
	}
	return len(r.subs) > 0
}

func (r *Rule) onlyFileRecords() bool {
	for fc, on := range r.functions {
		if on && modbus.Function(fc) != modbus.WriteFileRecord {
			return false
		}
	}
	return true
}

// Functions lists the function codes the rule allows.
func (r *Rule) Functions() []modbus.Function {
	var out []modbus.Function
	for fc, on := range r.functions {
		if on {
			out = append(out, modbus.Function(fc))
		}
	}
	return out
}
