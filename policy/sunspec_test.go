package policy

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	mbclient "github.com/simonvetter/modbus"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/policy/decision"
	"github.com/gridseal/gridseal/protocols/modbus"
	"github.com/gridseal/gridseal/protocols/sunspec"
	"github.com/gridseal/gridseal/simulators"
	"github.com/gridseal/gridseal/simulators/simtest"
)

const sunspecPolicy = `id: sunspec-plant
devices:
  - name: inverter-1
    upstream: 127.0.0.1:15020
    units: [1]
    rules:
      - name: power-limit
        allow: write
        sunspec: {model: 123, point: WMaxLimPct}
        values: 0..60 %
      - name: limit-switches
        allow: write
        functions: [16]
        sunspec: {model: 123, point: [WMaxLimPct, WMaxLimPct_WinTms]}
  - name: battery-1
    upstream: 127.0.0.1:15020
    units: [2]
    rules:
      - name: discharge-limit
        allow: write
        sunspec: {model: 124, point: OutWRte}
        values: 0..50 %
  - name: breaker-1
    upstream: 127.0.0.1:15020
    units: [3]
    rules:
      - name: no-map
        allow: write
        sunspec: {model: 123, point: Conn}
`

// simReader reads holding registers of the simulators over TCP, as the
// proxy does over its upstream connection.
func simReader(t *testing.T, addr string) func(unit byte, a, n uint16) ([]uint16, error) {
	t.Helper()
	c := simtest.Client(t, addr, 1, 2*time.Second)
	return func(unit byte, a, n uint16) ([]uint16, error) {
		if err := c.SetUnitId(unit); err != nil {
			return nil, err
		}
		regs, err := c.ReadRegisters(a, n, mbclient.HOLDING_REGISTER)
		if errors.Is(err, mbclient.ErrIllegalDataAddress) {
			return nil, sunspec.Exception(modbus.IllegalDataAddress)
		}
		return regs, err
	}
}

func decideWrite(t *testing.T, e *Engine, device string, unit byte, addr, v uint16) decision.Result {
	t.Helper()
	return e.Decide(context.Background(), input(t, device, unit, modbus.AppendWriteSingleRegister(nil, addr, v)))
}

func TestSunSpecRulesResolveOnSimulators(t *testing.T) {
	p, e := engine(t, "sunspec.yaml", sunspecPolicy)
	addr, _ := simtest.Start(t, simulators.Options{})

	v := decideWrite(t, e, "inverter-1", 1, simulators.InverterLimitPct, 30)
	if v.Allowed() || v.Denial != decision.DenyAddress || !strings.Contains(v.Reason, "123.WMaxLimPct not resolved") {
		t.Fatalf("before the map is read: %+v; want an address denial saying the point is not resolved", v)
	}
	read := simReader(t, addr)
	for _, dev := range []string{"inverter-1", "battery-1"} {
		if err := e.Resolve(context.Background(), dev, read); err != nil {
			t.Fatalf("resolve %s: %v", dev, err)
		}
	}
	err := e.Resolve(context.Background(), "breaker-1", read)
	if err == nil || !strings.Contains(err.Error(), "no SunSpec map") {
		t.Fatalf("resolve the breaker: %v; want no SunSpec map", err)
	}

	tests := []struct {
		name   string
		device string
		unit   byte
		addr   uint16
		value  uint16
		denial decision.Denial
		reason string
	}{
		{"limit 30 %", "inverter-1", 1, 40127, 30, 0, "power-limit: 123.WMaxLimPct = 30 % WMax"},
		{"limit 60 %", "inverter-1", 1, 40127, 60, 0, "123.WMaxLimPct = 60 % WMax"},
		{"limit 61 %", "inverter-1", 1, 40127, 61, decision.DenyValue, "123.WMaxLimPct = 61 % WMax: register 40127 value 61 outside 0..60"},
		{"Conn is not named", "inverter-1", 1, 40126, 0, decision.DenyAddress, "40126"},
		{"unit 4 is not in the rule", "inverter-1", 4, 40127, 30, decision.DenyAddress, "unit 4 not allowed"},
		// OutWRte_SF is -1 on the battery: 50 % is 500.
		{"discharge 50.0 %", "battery-1", 2, 40082, 500, 0, "124.OutWRte = 50 % WDisChaMax"},
		{"discharge 50.1 %", "battery-1", 2, 40082, 501, decision.DenyValue, "outside 0..500"},
		{"no map", "breaker-1", 3, 40126, 1, decision.DenyAddress, `123.Conn not resolved on unit 3: no SunSpec map: no "SunS" marker`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := decideWrite(t, e, tc.device, tc.unit, tc.addr, tc.value)
			if tc.denial == 0 && !v.Allowed() || tc.denial != 0 && (v.Allowed() || v.Denial != tc.denial) {
				t.Fatalf("%+v; want denial %v", v, tc.denial)
			}
			if !strings.Contains(v.Reason, tc.reason) {
				t.Fatalf("reason %q; want it to contain %q", v.Reason, tc.reason)
			}
		})
	}
	t.Run("a list of points", func(t *testing.T) {
		pdu := modbus.AppendWriteMultipleRegisters(nil, 40127, []uint16{40, 10})
		v := e.Decide(context.Background(), input(t, "inverter-1", 1, pdu))
		if !v.Allowed() || v.Reason != "limit-switches: 123.WMaxLimPct = 40 % WMax, 123.WMaxLimPct_WinTms = 10 Secs" {
			t.Fatalf("%+v", v)
		}
	})

	e.Unresolve("inverter-1")
	if v := decideWrite(t, e, "inverter-1", 1, 40127, 30); v.Allowed() || !strings.Contains(v.Reason, "not resolved") {
		t.Fatalf("after Unresolve: %+v; want denied until the map is read again", v)
	}
	if v := decideWrite(t, e, "battery-1", 2, 40082, 500); !v.Allowed() {
		t.Fatalf("another device stays resolved: %+v", v)
	}
	// A reloaded policy is compiled against the maps already read.
	e.Swap(p)
	if v := decideWrite(t, e, "battery-1", 2, 40082, 500); !v.Allowed() {
		t.Fatalf("after Swap: %+v", v)
	}
}

// A device whose firmware puts its models elsewhere: the point is found
// where that layout has it, and its old place is no longer allowed.
func TestSunSpecPointMovedByLayout(t *testing.T) {
	_, e := engine(t, "sunspec.yaml", sunspecPolicy)
	moved := simulators.Layout{Base: 50000, Models: []uint16{120, 121, 103, 123}}
	addr, _ := simtest.Start(t, simulators.Options{InverterLayout: &moved})
	if err := e.Resolve(context.Background(), "inverter-1", simReader(t, addr)); err != nil {
		t.Fatal(err)
	}
	const at = 50000 + 2 + 68 + 28 + 32 + 52 + 5 // SunS, 1, 120, 121, 103, then WMaxLimPct in 123
	if v := decideWrite(t, e, "inverter-1", 1, at, 30); !v.Allowed() {
		t.Fatalf("WMaxLimPct at %d: %+v", at, v)
	}
	if v := decideWrite(t, e, "inverter-1", 1, 40127, 30); v.Allowed() {
		t.Fatalf("40127 on a map at 50000: %+v; want denied", v)
	}
}

func TestSunSpecRuleErrors(t *testing.T) {
	rule := func(body string) string {
		return "id: x\ndevices:\n  - name: inv\n    upstream: 127.0.0.1:1\n    units: [1]\n    rules:\n      - name: r\n" + body
	}
	tests := []struct {
		name, policy, want string
	}{
		{"unknown model", rule("        allow: write\n        sunspec: {model: 999, point: W}\n"), `x.yaml:9: device "inv" rule "r": sunspec model "999" is not one gridseal has a table for`},
		{"unknown point", rule("        allow: write\n        sunspec: {model: 123, point: WMaxLim}\n"), `has no point "WMaxLim" (its points: Conn_WinTms`},
		{"read-only point", rule("        allow: write\n        sunspec: {model: 103, point: W}\n"), "point 103.W is read-only"},
		{"both", rule("        allow: write\n        addresses: 40127\n        sunspec: {model: 123, point: WMaxLimPct}\n"), "either addresses or sunspec points"},
		{"wrong units", rule("        allow: write\n        sunspec: {model: 123, point: WMaxLimPct}\n        values: 0..60 W\n"), `point 123.WMaxLimPct is in "% WMax", not W`},
		{"mixed values", rule("        allow: write\n        sunspec: {model: 123, point: WMaxLimPct}\n        values: [0..60 %, 70]\n"), "give every value range in %"},
		{"coils", rule("        allow: write\n        table: coils\n        sunspec: {model: 123, point: Conn}\n"), "sunspec points are holding registers"},
		{"requires", rule("        allow: write\n        sunspec: {model: 123, point: Conn}\n        requires: {m: 1, of: ops}\n"), "requires is not supported with sunspec points"},
		{"no units", "id: x\ndevices:\n  - name: inv\n    upstream: 127.0.0.1:1\n    rules:\n      - name: r\n        allow: write\n        sunspec: {model: 123, point: Conn}\n", "a sunspec rule needs units"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("x.yaml", []byte(tc.policy))
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v; want one containing %q", err, tc.want)
			}
		})
	}
}

// Deciding a write a resolved SunSpec rule allows: finding the compiled
// rule does not allocate; naming the point in the reason does.
func BenchmarkDecideSunSpecWrite(b *testing.B) {
	_, e := engine(b, "sunspec.yaml", sunspecPolicy)
	addr, _ := simtest.Start(b, simulators.Options{})
	c := simtest.Client(b, addr, 1, 2*time.Second)
	read := func(unit byte, a, n uint16) ([]uint16, error) {
		_ = c.SetUnitId(unit)
		return c.ReadRegisters(a, n, mbclient.HOLDING_REGISTER)
	}
	if err := e.Resolve(context.Background(), "inverter-1", read); err != nil {
		b.Fatal(err)
	}
	req, _ := modbus.ParseRequest(modbus.AppendWriteSingleRegister(nil, 40127, 30))
	in := &decision.Input{Device: "inverter-1", Unit: 1, Request: req}
	b.ReportAllocs()
	for b.Loop() {
		if v := e.Decide(context.Background(), in); v.Verdict != audit.Allow {
			b.Fatal(v.Reason)
		}
	}
}
