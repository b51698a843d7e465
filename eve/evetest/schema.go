// Package evetest checks EVE JSON lines against Suricata's own EVE schema
// (an excerpt of OISF/suricata's etc/schema.json in testdata, GPL-2.0
// data, its source named in its $comment). The checker is written here,
// from the schema's keywords: type, properties, additionalProperties,
// required, enum, items, minItems, pattern, oneOf and $ref. A keyword it
// does not implement is reported as a problem, never skipped, so a newer
// schema cannot pass by being misunderstood.
package evetest

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

//go:embed testdata/suricata-schema.json
var schemaJSON []byte

// annotations are keywords that constrain nothing.
var annotations = map[string]bool{"description": true, "suricata": true, "$comment": true, "$defs": true}

// Schema is a loaded JSON schema.
type Schema struct {
	root map[string]any
}

// Load parses the embedded Suricata schema excerpt.
func Load() (*Schema, error) {
	var root map[string]any
	if err := json.Unmarshal(schemaJSON, &root); err != nil {
		return nil, fmt.Errorf("suricata schema: %w", err)
	}
	return &Schema{root: root}, nil
}

// Validate returns what is wrong with one EVE line, nothing if it validates.
func (s *Schema) Validate(line []byte) []string {
	d := json.NewDecoder(bytes.NewReader(line))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return []string{"not JSON: " + err.Error()}
	}
	if d.More() {
		return []string{"more than one JSON value on the line"}
	}
	var out []string
	s.check(s.root, v, "", &out)
	return out
}

// Check validates every non-empty line of lines, reports each problem with
// t.Errorf and returns how many lines it checked.
func Check(t testing.TB, lines []byte) int {
	t.Helper()
	s, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for l := range bytes.Lines(lines) {
		l = bytes.TrimSpace(l)
		if len(l) == 0 {
			continue
		}
		n++
		for _, p := range s.Validate(l) {
			t.Errorf("EVE line %d does not validate against Suricata's schema: %s\n%s", n, p, l)
		}
	}
	return n
}

func (s *Schema) check(sch map[string]any, v any, path string, out *[]string) {
	bad := func(format string, args ...any) {
		where := path
		if where == "" {
			where = "(top level)"
		}
		*out = append(*out, where+": "+fmt.Sprintf(format, args...))
	}
	obj, isObj := v.(map[string]any)
	arr, isArr := v.([]any)
	str, isStr := v.(string)
	for _, kw := range sortedKeys(sch) {
		arg := sch[kw]
		switch kw {
		case "type":
			if !hasType(arg, v) {
				bad("want %v, have %s", arg, kind(v))
			}
		case "properties":
			if !isObj {
				continue
			}
			props, _ := arg.(map[string]any)
			for _, name := range sortedKeys(obj) {
				if ps, ok := props[name].(map[string]any); ok {
					s.check(ps, obj[name], path+"."+name, out)
				}
			}
		case "additionalProperties":
			if !isObj {
				continue
			}
			props, _ := sch["properties"].(map[string]any)
			for _, name := range sortedKeys(obj) {
				if _, ok := props[name]; ok {
					continue
				}
				switch a := arg.(type) {
				case bool:
					if !a {
						bad("property %q is not allowed", name)
					}
				case map[string]any:
					s.check(a, obj[name], path+"."+name, out)
				}
			}
		case "required":
			if !isObj {
				continue
			}
			for _, r := range arg.([]any) {
				if _, ok := obj[r.(string)]; !ok {
					bad("required property %q is missing", r)
				}
			}
		case "enum":
			if !slices.ContainsFunc(arg.([]any), func(e any) bool { return equal(e, v) }) {
				bad("%v is not one of %v", v, arg)
			}
		case "items":
			if isArr {
				for i, it := range arr {
					s.check(arg.(map[string]any), it, fmt.Sprintf("%s[%d]", path, i), out)
				}
			}
		case "minItems":
			if n, _ := strconv.Atoi(fmt.Sprint(arg)); isArr && len(arr) < n {
				bad("%d items, want at least %d", len(arr), n)
			}
		case "pattern":
			if isStr && !regexp.MustCompile(arg.(string)).MatchString(str) {
				bad("%q does not match %s", str, arg)
			}
		case "oneOf":
			matched := 0
			for _, sub := range arg.([]any) {
				var p []string
				s.check(sub.(map[string]any), v, path, &p)
				if len(p) == 0 {
					matched++
				}
			}
			if matched != 1 {
				bad("%v matches %d of oneOf's schemas, want exactly 1", v, matched)
			}
		case "$ref":
			ref := arg.(string)
			name, ok := strings.CutPrefix(ref, "#/$defs/")
			defs, _ := s.root["$defs"].(map[string]any)
			def, found := defs[name].(map[string]any)
			if !ok || !found {
				bad("unresolved $ref %s", ref)
				continue
			}
			s.check(def, v, path, out)
		default:
			if !annotations[kw] {
				bad("schema keyword %q is not implemented by this checker", kw)
			}
		}
	}
}

func hasType(arg, v any) bool {
	switch a := arg.(type) {
	case string:
		return isType(a, v)
	case []any:
		return slices.ContainsFunc(a, func(t any) bool { s, _ := t.(string); return isType(s, v) })
	}
	return false
}

func isType(t string, v any) bool {
	switch t {
	case "object":
		_, ok := v.(map[string]any)
		return ok
	case "array":
		_, ok := v.([]any)
		return ok
	case "string":
		_, ok := v.(string)
		return ok
	case "boolean":
		_, ok := v.(bool)
		return ok
	case "null":
		return v == nil
	case "number":
		_, ok := v.(json.Number)
		return ok
	case "integer":
		n, ok := v.(json.Number)
		if !ok {
			return false
		}
		if _, err := strconv.ParseInt(n.String(), 10, 64); err == nil {
			return true
		}
		_, err := strconv.ParseUint(n.String(), 10, 64)
		return err == nil
	}
	return false
}

func kind(v any) string {
	switch v := v.(type) {
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case json.Number:
		return "the number " + v.String()
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}

func equal(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
