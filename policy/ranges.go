package policy

import (
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// span is an inclusive range. Signed spans compare a register as int16.
type span struct {
	lo, hi int32
	signed bool
}

// ranges is a set of inclusive spans written in YAML as a number, a string
// such as "40000-40149" or "-500..500", or a list of those.
type ranges []span

func (rs ranges) containsRange(addr, qty uint16) bool {
	lo, hi := int32(addr), int32(addr)+int32(qty)-1
	for _, s := range rs {
		if lo >= s.lo && hi <= s.hi {
			return true
		}
	}
	return false
}

func (rs ranges) containsValue(v uint16) bool {
	for _, s := range rs {
		x := int32(v)
		if s.signed {
			x = int32(int16(v))
		}
		if x >= s.lo && x <= s.hi {
			return true
		}
	}
	return false
}

func (rs ranges) String() string {
	var b strings.Builder
	for i, s := range rs {
		if i > 0 {
			b.WriteString(",")
		}
		if s.lo == s.hi {
			fmt.Fprintf(&b, "%d", s.lo)
		} else {
			fmt.Fprintf(&b, "%d..%d", s.lo, s.hi)
		}
	}
	return b.String()
}

// parseRanges reads a ranges node. floor and ceil bound every number; words
// maps names such as "on" to numbers.
func parseRanges(n *yaml.Node, floor, ceil int32, words map[string]int32) (ranges, error) {
	var items []*yaml.Node
	switch n.Kind {
	case yaml.ScalarNode:
		items = []*yaml.Node{n}
	case yaml.SequenceNode:
		items = n.Content
	default:
		return nil, lineErr(n, "want a number, a range such as 10-20, or a list of them")
	}
	var out ranges
	for _, it := range items {
		if it.Kind != yaml.ScalarNode {
			return nil, lineErr(it, "want a number or a range such as 10-20")
		}
		for _, part := range strings.Split(it.Value, ",") {
			s, err := parseSpan(strings.TrimSpace(part), floor, ceil, words)
			if err != nil {
				return nil, lineErr(it, "%v", err)
			}
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil, lineErr(n, "empty range list")
	}
	return out, nil
}

func parseSpan(s string, floor, ceil int32, words map[string]int32) (span, error) {
	lo, hi, ok := strings.Cut(s, "..")
	if !ok && !strings.HasPrefix(s, "-") {
		lo, hi, ok = strings.Cut(s, "-")
	}
	if !ok {
		hi = lo
	}
	a, err := parseBound(strings.TrimSpace(lo), floor, ceil, words)
	if err != nil {
		return span{}, err
	}
	b, err := parseBound(strings.TrimSpace(hi), floor, ceil, words)
	if err != nil {
		return span{}, err
	}
	if a > b {
		return span{}, fmt.Errorf("range %q runs backwards", s)
	}
	return span{lo: a, hi: b, signed: a < 0}, nil
}

func parseBound(s string, floor, ceil int32, words map[string]int32) (int32, error) {
	if v, ok := words[strings.ToLower(s)]; ok {
		return v, nil
	}
	v, err := strconv.ParseInt(s, 0, 32)
	if err != nil {
		return 0, fmt.Errorf("%q is not a number", s)
	}
	if int32(v) < floor || int32(v) > ceil {
		return 0, fmt.Errorf("%d is outside %d..%d", v, floor, ceil)
	}
	return int32(v), nil
}

// lineError is an error at a line of a YAML file; File is filled in by Parse.
type lineError struct {
	Line int
	Msg  string
}

func (e *lineError) Error() string { return fmt.Sprintf("%d: %s", e.Line, e.Msg) }

func lineErr(n *yaml.Node, format string, args ...any) error {
	return &lineError{Line: n.Line, Msg: fmt.Sprintf(format, args...)}
}
