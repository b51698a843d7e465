package policy

import (
	"os"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/policy/decision"
	"github.com/gridseal/gridseal/protocols/modbus"
)

func examplePolicy(t testing.TB) *Policy {
	t.Helper()
	p, err := Load("testdata/plant.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func input(t testing.TB, device string, unit byte, pdu []byte) *decision.Input {
	t.Helper()
	req, err := modbus.ParseRequest(pdu)
	if err != nil {
		t.Fatalf("test PDU %x: %v", pdu, err)
	}
	return &decision.Input{Device: device, Unit: unit, Request: req}
}

func TestDecideExamplePolicy(t *testing.T) {
	e := NewEngine(examplePolicy(t), zap.NewNop())
	neg := func(v int16) uint16 { return uint16(v) }
	cases := []struct {
		name   string
		device string
		unit   byte
		pdu    []byte
		want   audit.Verdict
		denial decision.Denial
		rule   string
	}{
		{"inverter telemetry read", "inverter-1", 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 40072, 50), audit.Allow, 0, "inverter-telemetry"},
		{"read past the mapped range", "inverter-1", 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 40100, 60), audit.Deny, decision.DenyAddress, "inverter-telemetry"},
		{"input registers not in table", "inverter-1", 1, modbus.AppendReadRequest(nil, modbus.ReadInputRegisters, 40072, 1), audit.Deny, decision.DenyAddress, "inverter-telemetry"},
		{"power limit 30", "inverter-1", 1, modbus.AppendWriteSingleRegister(nil, 40127, 30), audit.Allow, 0, "power-limit-setpoint"},
		{"power limit 100 via fc16", "inverter-1", 1, modbus.AppendWriteMultipleRegisters(nil, 40127, []uint16{100}), audit.Allow, 0, "power-limit-setpoint"},
		{"power limit 101", "inverter-1", 1, modbus.AppendWriteSingleRegister(nil, 40127, 101), audit.Deny, decision.DenyValue, "power-limit-setpoint"},
		{"fc16 wider than the rule", "inverter-1", 1, modbus.AppendWriteMultipleRegisters(nil, 40127, []uint16{50, 0}), audit.Deny, decision.DenyAddress, "power-limit-setpoint"},
		{"disconnect", "inverter-1", 1, modbus.AppendWriteSingleRegister(nil, 40126, 0), audit.Deny, decision.DenyAddress, "power-limit-setpoint"},
		{"fc22 not named", "inverter-1", 1, []byte{22, 0x9C, 0xBF, 0, 0, 0, 30}, audit.Deny, decision.DenyFunction, ""},
		{"diagnostics denied by default", "inverter-1", 1, []byte{8, 0, 0, 0xA5, 0x37}, audit.Deny, decision.DenyFunction, ""},
		{"device id named", "inverter-1", 1, []byte{43, 14, 1, 0}, audit.Allow, 0, "inverter-identity"},
		{"battery discharge 50", "battery-1", 2, modbus.AppendWriteSingleRegister(nil, 0, 50), audit.Allow, 0, "battery-dispatch"},
		{"battery charge -50 (signed)", "battery-1", 2, modbus.AppendWriteSingleRegister(nil, 0, neg(-50)), audit.Allow, 0, "battery-dispatch"},
		{"battery charge -51", "battery-1", 2, modbus.AppendWriteSingleRegister(nil, 0, neg(-51)), audit.Deny, decision.DenyValue, "battery-dispatch"},
		{"battery setpoint and mode together", "battery-1", 2, modbus.AppendWriteMultipleRegisters(nil, 0, []uint16{neg(-20), 1}), audit.Allow, 0, "battery-dispatch"},
		{"breaker open denied", "breaker-1", 3, modbus.AppendWriteSingleCoil(nil, 1, true), audit.Deny, decision.DenyFunction, ""},
		{"breaker status read", "breaker-1", 3, modbus.AppendReadRequest(nil, modbus.ReadDiscreteInputs, 0, 6), audit.Allow, 0, "breaker-status"},
		{"unknown device", "pump-7", 1, modbus.AppendReadRequest(nil, modbus.ReadCoils, 0, 1), audit.Deny, decision.DenyDevice, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := e.Decide(t.Context(), input(t, tc.device, tc.unit, tc.pdu))
			if v.Verdict != tc.want || v.Denial != tc.denial || v.Rule != tc.rule {
				t.Fatalf("verdict = %+v; want %v/%v rule %q", v, tc.want, tc.denial, tc.rule)
			}
			if v.Policy != e.Policy().Digest || v.Reason == "" {
				t.Fatalf("verdict must name the policy digest and a reason: %+v", v)
			}
		})
	}
}

const rulesPolicy = `id: t
devices:
  - name: d
    upstream: 127.0.0.1:1
    units: [1, 2]
    rules:
      - {name: rw, allow: write, functions: [23], addresses: 100-109, values: 0-10}
      - {name: r, allow: read, functions: [3], addresses: 0-9}
      - {name: mask, allow: write, functions: [22], addresses: 50, values: 0-7}
      - {name: coils, allow: write, functions: [5, 15], addresses: 0-3, values: "off", units: [2]}
      - {name: fifo, allow: read, functions: [24], addresses: 7}
      - {name: points, allow: read, functions: [3], units: [2], sunspec: {model: 103, point: W}}
`

// engine parses the policy src, named name, and starts an engine on it.
func engine(t testing.TB, name, src string) (*Policy, *Engine) {
	t.Helper()
	p, err := Parse(name, []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return p, NewEngine(p, zap.NewNop())
}

func TestDecideFunctionVariants(t *testing.T) {
	_, e := engine(t, "rules.yaml", rulesPolicy)
	fc23 := func(raddr, rqty, waddr uint16, vals ...uint16) []byte {
		b := []byte{23, byte(raddr >> 8), byte(raddr), byte(rqty >> 8), byte(rqty), byte(waddr >> 8), byte(waddr), 0, byte(len(vals)), byte(2 * len(vals))}
		for _, v := range vals {
			b = append(b, byte(v>>8), byte(v))
		}
		return b
	}
	cases := []struct {
		name   string
		unit   byte
		pdu    []byte
		denial decision.Denial // 0: allowed
	}{
		{"fc23 in range", 1, fc23(0, 5, 100, 1, 2), 0},
		{"fc23 value out of range", 1, fc23(0, 5, 100, 1, 11), decision.DenyValue},
		{"fc23 read part not allowed", 1, fc23(20, 5, 100, 1), decision.DenyAddress},
		{"fc23 read part beside a sunspec read rule", 2, fc23(20, 5, 100, 1), decision.DenyAddress},
		{"fc23 write past range", 1, fc23(0, 5, 109, 1, 1), decision.DenyAddress},
		{"fc22 set exact value", 1, []byte{22, 0, 50, 0, 0, 0, 5}, 0},
		{"fc22 value out of range", 1, []byte{22, 0, 50, 0, 0, 0, 9}, decision.DenyValue},
		{"fc22 partial mask", 1, []byte{22, 0, 50, 0xFF, 0, 0, 1}, decision.DenyValue},
		{"coil off on unit 2", 2, modbus.AppendWriteSingleCoil(nil, 3, false), 0},
		{"coil on", 2, modbus.AppendWriteSingleCoil(nil, 3, true), decision.DenyValue},
		{"coil off on unit 1", 1, modbus.AppendWriteSingleCoil(nil, 3, false), decision.DenyAddress},
		{"fc15 mixed values", 2, modbus.AppendWriteMultipleCoils(nil, 0, []bool{false, true}), decision.DenyValue},
		{"fc15 all off", 2, modbus.AppendWriteMultipleCoils(nil, 0, []bool{false, false, false, false}), 0},
		{"fifo named", 1, []byte{24, 0, 7}, 0},
		{"fifo other pointer", 1, []byte{24, 0, 8}, decision.DenyAddress},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := e.Decide(t.Context(), input(t, "d", tc.unit, tc.pdu))
			if tc.denial == 0 && !v.Allowed() || tc.denial != 0 && (v.Allowed() || v.Denial != tc.denial) {
				t.Fatalf("verdict = %+v (%s), want denial %v", v, v.Reason, tc.denial)
			}
		})
	}
}

// broadcastPolicy has a device that takes every unit id, and rules for it
// that do and do not name unit 0.
const broadcastPolicy = `id: t
devices:
  - name: d
    upstream: 127.0.0.1:1
    rules:
      - {name: w, allow: write, functions: [6], addresses: 0-99, values: 0-100}
      - {name: r, allow: read, functions: [3], addresses: 0-99}
      - {name: diag, allow: diagnostic, functions: [8], subfunctions: [0, 1]}
      - {name: all-units, allow: write, functions: [5], addresses: 0-9, units: 0-255}
      - {name: broadcast, allow: write, functions: [6], addresses: 200-209, values: 0-100, units: [0]}
`

// TestDecideUnitZeroIsABroadcast: unit 0 is the broadcast address, on a
// gateway a write to every device behind it; a state-changing request to
// it passes only a rule that names unit 0, however the device is routed.
func TestDecideUnitZeroIsABroadcast(t *testing.T) {
	p, e := engine(t, "broadcast.yaml", broadcastPolicy)
	cases := []struct {
		name   string
		unit   byte
		pdu    []byte
		denial decision.Denial // 0: allowed
		rule   string
	}{
		{"write to unit 1", 1, modbus.AppendWriteSingleRegister(nil, 5, 50), 0, "w"},
		{"write to unit 0, rule names no unit", 0, modbus.AppendWriteSingleRegister(nil, 5, 50), decision.DenyAddress, "w"},
		{"read of unit 0", 0, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 5, 1), 0, "r"},
		{"restart communications on unit 0", 0, []byte{8, 0, 1, 0, 0}, decision.DenyAddress, "diag"},
		{"echo on unit 0", 0, []byte{8, 0, 0, 0xA5, 0x37}, 0, "diag"},
		{"restart communications on unit 1", 1, []byte{8, 0, 1, 0, 0}, 0, "diag"},
		{"coil on unit 0, rule names units 0-255", 0, modbus.AppendWriteSingleCoil(nil, 1, true), 0, "all-units"},
		{"write to unit 0, rule names unit 0", 0, modbus.AppendWriteSingleRegister(nil, 200, 50), 0, "broadcast"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := input(t, "d", tc.unit, tc.pdu)
			v := e.Decide(t.Context(), in)
			if tc.denial == 0 && !v.Allowed() || tc.denial != 0 && (v.Allowed() || v.Denial != tc.denial) || v.Rule != tc.rule {
				t.Fatalf("verdict = %+v (%s), want denial %v by rule %q", v, v.Reason, tc.denial, tc.rule)
			}
			if tc.denial != 0 && tc.unit == 0 && !strings.Contains(v.Reason, "broadcast") {
				t.Fatalf("reason %q does not say unit 0 is a broadcast", v.Reason)
			}
			// An approval is judged under the rule Match finds: none for a
			// broadcast no rule names.
			if m := p.Match(in); (m != nil) != (tc.denial == 0) {
				t.Fatalf("Match = %v, want a rule only when allowed", m)
			}
		})
	}
}

func TestParseErrorsNameFileAndLine(t *testing.T) {
	cases := []struct {
		name, yaml, want string
	}{
		{"syntax", "id: x\ndevices:\n  - name: a\n   bad: [", "p.yaml:2: did not find expected"},
		{"unknown field", "id: x\ndevices:\n  - name: a\n    upstream: h:1\n    rulez: []\n", `p.yaml:5: device: unknown field "rulez"`},
		{"bad allow", "id: x\ndevices:\n  - name: a\n    upstream: h:1\n    rules:\n      - name: r\n        allow: wirte\n", `p.yaml:7: device "a" rule "r": allow must be read, write or diagnostic, not "wirte"`},
		{"write without addresses", "id: x\ndevices:\n  - name: a\n    upstream: h:1\n    rules:\n      - name: w\n        allow: write\n", `p.yaml:6: device "a" rule "w": a write rule must name its addresses`},
		{"read function in write rule", "id: x\ndevices:\n  - name: a\n    upstream: h:1\n    rules:\n      - {name: w, allow: write, functions: [3], addresses: 1}\n", "function 3 (read holding registers) is a read, not a write"},
		{"unknown function", "id: x\ndevices:\n  - name: a\n    upstream: h:1\n    rules:\n      - {name: w, allow: read, functions: [65]}\n", "function 65 is not a public Modbus function"},
		{"backwards range", "id: x\ndevices:\n  - name: a\n    upstream: h:1\n    rules:\n      - {name: r, allow: read, addresses: 10-2}\n", `p.yaml:6: range "10-2" runs backwards`},
		{"address too large", "id: x\ndevices:\n  - name: a\n    upstream: h:1\n    rules:\n      - {name: r, allow: read, addresses: 70000}\n", "70000 is outside 0..65535"},
		{"bad upstream", "id: x\ndevices:\n  - name: a\n    upstream: nowhere\n", `p.yaml:4: device "a": upstream "nowhere" is not host:port`},
		{"duplicate device", "id: x\ndevices:\n  - {name: a, upstream: 'h:1'}\n  - {name: a, upstream: 'h:1'}\n", `p.yaml:4: device "a" defined twice`},
		{"no id", "devices:\n  - {name: a, upstream: 'h:1'}\n", "p.yaml:1: policy: missing id"},
		{"empty", "", "p.yaml: "},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestDigestCoversBytes(t *testing.T) {
	a, err := Parse("a", []byte(rulesPolicy))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Parse("b", []byte(rulesPolicy+"# a comment\n"))
	if err != nil {
		t.Fatal(err)
	}
	if a.Digest == b.Digest || len(a.Digest) != 64 {
		t.Fatalf("digests %s %s: must be distinct SHA-256 of the file bytes", a.Digest, b.Digest)
	}
}

func TestSwapIsAtomic(t *testing.T) {
	a := examplePolicy(t)
	b, err := Parse("deny-all.yaml", []byte("id: lockdown\ndevices:\n  - {name: inverter-1, upstream: '127.0.0.1:1'}\n"))
	if err != nil {
		t.Fatal(err)
	}
	e := NewEngine(a, zap.NewNop())
	in := input(t, "inverter-1", 1, modbus.AppendWriteSingleRegister(nil, 40127, 30))
	if v := e.Decide(t.Context(), in); !v.Allowed() {
		t.Fatalf("before swap: %+v", v)
	}
	e.Swap(b)
	if v := e.Decide(t.Context(), in); v.Allowed() || v.Policy != b.Digest {
		t.Fatalf("after swap: %+v", v)
	}
}

func FuzzParse(f *testing.F) {
	seed, err := os.ReadFile("testdata/plant.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add([]byte(rulesPolicy))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("fuzz.yaml", data)
		if err != nil {
			return
		}
		e := NewEngine(p, zap.NewNop())
		for _, d := range p.Devices {
			for _, pdu := range [][]byte{
				modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0, 125),
				modbus.AppendWriteSingleRegister(nil, 65535, 65535),
				modbus.AppendWriteMultipleCoils(nil, 65530, []bool{true, false, true}),
			} {
				req, _ := modbus.ParseRequest(pdu)
				_ = e.Decide(t.Context(), &decision.Input{Device: d.Name, Unit: 1, Request: req})
			}
		}
	})
}

func BenchmarkDecideAllowedRead(b *testing.B) {
	e := NewEngine(examplePolicy(b), zap.NewNop())
	in := input(b, "inverter-1", 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 40072, 50))
	b.ReportAllocs()
	for b.Loop() {
		if v := e.Decide(b.Context(), in); !v.Allowed() {
			b.Fatal(v.Reason)
		}
	}
}

func TestDiagnosticSubfunctions(t *testing.T) {
	_, e := engine(t, "d.yaml", `id: d
devices:
  - name: plc
    upstream: 127.0.0.1:1
    rules:
      - {name: echo, allow: diagnostic, functions: [8]}
  - name: gw
    upstream: 127.0.0.1:1
    rules:
      - {name: counters, allow: diagnostic, functions: [8], subfunctions: "0,10-14"}
`)
	cases := []struct {
		device string
		sub    uint16
		allow  bool
	}{
		{"plc", 0, true},  // return query data: the health check
		{"plc", 4, false}, // force listen only: silences the device
		{"plc", 1, false}, // restart communications
		{"gw", 11, true},  // bus message count
		{"gw", 10, true},  // clear counters, named
		{"gw", 4, false},
	}
	for _, tc := range cases {
		v := e.Decide(t.Context(), input(t, tc.device, 1, []byte{8, 0, byte(tc.sub), 0, 0}))
		if v.Allowed() != tc.allow {
			t.Errorf("%s sub %d: %v (%s)", tc.device, tc.sub, v.Verdict, v.Reason)
		}
	}
	req, _ := modbus.ParseRequest([]byte{8, 0, 4, 0, 0})
	echo, _ := modbus.ParseRequest([]byte{8, 0, 0, 0xA5, 0x37})
	if !req.StateChanging() || echo.StateChanging() {
		t.Fatal("force listen only must count as state-changing, the echo must not")
	}
}
