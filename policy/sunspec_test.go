package policy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	mbclient "github.com/simonvetter/modbus"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/internal/keys/keystest"
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

// sunspecQuorumPolicy: inverter-1, in observe mode when observe is set,
// may have its power limit (123.WMaxLimPct) set to 0..60 % with 2 of 3
// operators' approval, or (standing) without one.
func sunspecQuorumPolicy(t *testing.T, version int, observe, standing bool) *Policy {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "id: plant\nversion: %d\napprovers:\n", version)
	for _, name := range []string{"alice", "bob", "carol"} {
		WriteKeysetEntry(&b, name, []string{"operators"}, keystest.NewPerson(t, name).PublicJSON(t))
	}
	b.WriteString("devices:\n  - name: inverter-1\n    upstream: 127.0.0.1:1\n    units: [1]\n")
	if observe {
		b.WriteString("    mode: observe\n")
	}
	b.WriteString("    rules:\n      - name: power-limit\n        allow: write\n        sunspec: {model: 123, point: WMaxLimPct}\n        values: 0..60 %\n")
	if !standing {
		b.WriteString("        requires: {group: operators, m: 2}\n")
	}
	p, err := Parse("plant.yaml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A SunSpec rule that requires a quorum, on a device in observe mode and
// beside a shadow candidate: observe mode forwards what it would deny,
// saying why (the map not read; then the approval missing, naming the
// point; a value out of range), and the candidate's SunSpec rules are
// compiled for the device's map like those in force, so the candidate is
// flagged only where it decides otherwise.
func TestSunSpecQuorumRuleObservedAndShadowed(t *testing.T) {
	e := NewEngine(sunspecQuorumPolicy(t, 1, true, false), zap.NewNop())
	e.SetCandidate(sunspecQuorumPolicy(t, 2, false, true)) // the same point, standing
	v := decideWrite(t, e, "inverter-1", 1, simulators.InverterLimitPct, 30)
	if !v.Observed || !strings.HasPrefix(v.Reason, "OBSERVE would deny: rule power-limit: 123.WMaxLimPct not resolved") || v.CandidateDiffers {
		t.Fatalf("before the map is read: %+v", v)
	}
	addr, _ := simtest.Start(t, simulators.Options{})
	if err := e.Resolve(context.Background(), "inverter-1", simReader(t, addr)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		value   uint16
		reason  string
		differs bool
	}{
		{30, "OBSERVE would deny: rule power-limit: needs 2 of operators, and this proxy has no approval store; 123.WMaxLimPct = 30 % WMax" +
			" | candidate plant v2 would allow (rule power-limit)", true},
		{61, "OBSERVE would deny: rule power-limit: 123.WMaxLimPct = 61 % WMax: register 40127 value 61 outside 0..60", false},
	} {
		v := decideWrite(t, e, "inverter-1", 1, simulators.InverterLimitPct, tc.value)
		if !v.Allowed() || !v.Observed || v.Reason != tc.reason || v.CandidateDiffers != tc.differs {
			t.Errorf("%d %%: %+v\nwant reason %q, candidate differs %v", tc.value, v, tc.reason, tc.differs)
		}
	}
	// Enforced, the candidate agrees with the standing rule it is.
	e.Swap(sunspecQuorumPolicy(t, 1, false, true))
	if v := decideWrite(t, e, "inverter-1", 1, simulators.InverterLimitPct, 30); !v.Allowed() || v.Observed || v.CandidateDiffers {
		t.Fatalf("the same standing rule in force and in the candidate: %+v", v)
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

// observedPlant: the simulated inverter (unit 1) and battery (unit 2) at
// addr, both in observe mode with no rules, and three operators.
func observedPlant(t *testing.T, addr string) *Policy {
	t.Helper()
	var b strings.Builder
	b.WriteString("id: plant\nversion: 1\napprovers:\n")
	for _, name := range []string{"alice", "bob", "carol"} {
		WriteKeysetEntry(&b, name, []string{"operators"}, keystest.NewPerson(t, name).PublicJSON(t))
	}
	fmt.Fprintf(&b, "devices:\n  - {name: inverter-1, upstream: %[1]s, units: [1], mode: observe}\n  - {name: battery-1, upstream: %[1]s, units: [2], mode: observe}\n", addr)
	p, err := Parse("plant.yaml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// walkRecorded has an engine enforcing p walk device's map on the
// simulators at addr, as the proxy does when it connects, and returns the
// events the proxy records for those reads, at time at.
func walkRecorded(t *testing.T, p *Policy, device, addr string, at time.Time) []*audit.Event {
	t.Helper()
	read := simReader(t, addr)
	var evs []*audit.Event
	record := func(unit byte, a, n uint16) ([]uint16, error) {
		regs, err := read(unit, a, n)
		ev := &audit.Event{Time: at, Phase: audit.PhaseComplete, Verdict: audit.Allow, Device: device, Unit: unit, Function: 3,
			Class: "read", Address: a, Quantity: n, PDU: modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, a, n), Reason: audit.MapReadReason}
		var ex sunspec.Exception
		switch {
		case err == nil:
			ev.Response = []byte{3, byte(2 * n)}
			for _, v := range regs {
				ev.Response = binary.BigEndian.AppendUint16(ev.Response, v)
			}
		case errors.As(err, &ex):
			ev.Response = []byte{0x83, byte(ex)}
		}
		evs = append(evs, ev)
		return regs, err
	}
	if err := NewEngine(p, zap.NewNop()).Resolve(t.Context(), device, record); err != nil {
		t.Fatal(err)
	}
	return evs
}

// TestLearnNamesSunSpecPoints: on the simulated inverter and battery, in
// their standard layouts and with the inverter's map moved, policy learn
// names what the recorded traffic read and wrote of their SunSpec maps by
// model and point — values in the point's units, through its scale factor
// — and leaves addresses outside the models and model headers as
// addresses. Judged for the maps recorded in the chain, the candidate
// allows the traffic it was learned from (writes with an approval) and
// denies a value past those written and a point nobody wrote; what-if
// replaying the same chain sees it deny nothing it was learned from.
func TestLearnNamesSunSpecPoints(t *testing.T) {
	moved := simulators.Layout{Base: 50000, Models: []uint16{120, 121, 103, 123}}
	for _, layout := range []*simulators.Layout{nil, &moved} {
		t.Run(fmt.Sprintf("inverter layout %v", layout), func(t *testing.T) {
			addr, _ := simtest.Start(t, simulators.Options{InverterLayout: layout})
			base := observedPlant(t, addr)
			inv, err := sunspec.Walk(func(a, n uint16) ([]uint16, error) { return simReader(t, addr)(1, a, n) })
			if err != nil {
				t.Fatal(err)
			}
			point := func(model uint16, name string) uint16 {
				a, _, err := inv.Locate(model, name)
				if err != nil {
					t.Fatal(err)
				}
				return a
			}
			limit, current, state := point(123, "WMaxLimPct"), point(103, "A"), point(103, "St")
			const outWRte = 40082 // battery 124.OutWRte, InOutWRte_SF -1
			t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
			client := netip.MustParseAddrPort("10.0.0.5:4000")
			type req struct {
				device string
				unit   byte
				pdu    []byte
			}
			traffic := []req{
				{"inverter-1", 1, modbus.AppendWriteSingleRegister(nil, limit, 40)}, // before the proxy read the map
				{"inverter-1", 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, current, 16)},
				{"inverter-1", 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, state, 1)},
				{"inverter-1", 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, current-2, 2)}, // 103's header
				{"inverter-1", 1, modbus.AppendWriteSingleRegister(nil, limit, 80)},
				{"inverter-1", 1, modbus.AppendWriteMultipleRegisters(nil, limit, []uint16{50, 10})}, // WMaxLimPct and its window
				{"inverter-1", 1, modbus.AppendWriteSingleRegister(nil, 3, 7)},                       // outside the map
				{"battery-1", 2, modbus.AppendWriteSingleRegister(nil, outWRte, 505)},                // 50.5 %
				{"battery-1", 2, modbus.AppendWriteSingleRegister(nil, outWRte, 250)},
				{"battery-1", 2, modbus.AppendReadRequest(nil, modbus.ReadInputRegisters, 0, 3)},
			}
			var events []*audit.Event
			add := func(r req, sec int) {
				events = append(events, &audit.Event{Time: t0.Add(time.Duration(sec) * time.Second), Phase: audit.PhaseComplete, Verdict: audit.Allow,
					Observed: true, Device: r.device, Unit: r.unit, Function: r.pdu[0], PDU: r.pdu, Client: client})
			}
			add(traffic[0], 0)
			events = append(events, walkRecorded(t, base, "inverter-1", addr, t0.Add(time.Second))...)
			events = append(events, walkRecorded(t, base, "battery-1", addr, t0.Add(time.Second))...)
			for i, r := range traffic[1:] {
				add(r, 2+i)
			}

			l, err := NewLearner(base, LearnOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for _, ev := range events {
				l.Add(ev)
			}
			out, err := l.Policy()
			if err != nil {
				t.Fatal(err)
			}
			cand, err := Parse("candidate.yaml", out)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			named := map[string]string{} // rule → its points, or its addresses
			for _, d := range cand.Devices {
				for _, r := range d.Rules {
					named[r.Name] = r.addresses.String()
					if r.SunSpec != nil {
						named[r.Name] = r.SunSpec.Label()
					}
				}
			}
			for rule, what := range map[string]string{
				"learned-write-123.WMaxLimPct":                   "123.WMaxLimPct",
				"learned-write-123.WMaxLimPct-WMaxLimPct_WinTms": "123.{WMaxLimPct,WMaxLimPct_WinTms}",
				"learned-write-124.OutWRte":                      "124.OutWRte",
				"learned-read-103.A-Hz_SF":                       "103.{A,AphA,AphB,AphC,A_SF,PPVphAB,PPVphBC,PPVphCA,PhVphA,PhVphB,PhVphC,V_SF,W,W_SF,Hz,Hz_SF}",
				"learned-read-103.St":                            "103.St",
				"learned-write-holding-registers-3":              "3",
				"learned-read-3-holding-registers":               fmt.Sprintf("%d..%d", current-2, current-1),
			} {
				if named[rule] != what {
					t.Errorf("rule %s names %q, want %q; rules %v\n%s", rule, named[rule], what, named, out)
				}
			}

			var maps RecordedMaps
			for _, ev := range events {
				if ev.IsMapRead() {
					maps.Add(ev.Device, ev.Unit, ev.Address, ev.Quantity, ev.Response)
				}
			}
			judged := maps.Resolve(cand)
			for _, r := range traffic {
				if _, d := judged.Judge(&decision.Input{Device: r.device, Unit: r.unit, Request: mustParse(t, r.pdu)}, true); d != 0 {
					t.Errorf("%s unit %d %x: %v, want allowed as learned: %s", r.device, r.unit, r.pdu, d, judged.Explain(&decision.Input{Device: r.device, Unit: r.unit, Request: mustParse(t, r.pdu)}, true))
				}
			}
			for _, tc := range []struct {
				name   string
				device string
				unit   byte
				pdu    []byte
				denial decision.Denial
				reason string
			}{
				{"a limit past those written", "inverter-1", 1, modbus.AppendWriteSingleRegister(nil, limit, 81), decision.DenyValue, "123.WMaxLimPct = 81 % WMax"},
				{"50.6 % discharge", "battery-1", 2, modbus.AppendWriteSingleRegister(nil, outWRte, 506), decision.DenyValue, "outside 250..505"},
				{"a point nobody wrote", "inverter-1", 1, modbus.AppendWriteSingleRegister(nil, point(123, "Conn"), 0), decision.DenyAddress, ""},
			} {
				in := &decision.Input{Device: tc.device, Unit: tc.unit, Request: mustParse(t, tc.pdu)}
				if _, d := judged.Judge(in, true); d != tc.denial || !strings.Contains(judged.Explain(in, true), tc.reason) {
					t.Errorf("%s: %v (%s), want %v with %q", tc.name, d, judged.Explain(in, true), tc.denial, tc.reason)
				}
			}
			if _, d := judged.Judge(&decision.Input{Device: "inverter-1", Unit: 1, Request: mustParse(t, traffic[4].pdu)}, false); d != decision.DenyApproval {
				t.Errorf("a learned write without an approval: %v, want it to need one", d)
			}

			w := &WhatIf{Baseline: base, Candidate: cand}
			for _, ev := range events {
				if ev.IsMapRead() {
					w.MapRead(ev.Device, ev.Unit, ev.Address, ev.Quantity, ev.Response)
				} else {
					w.Add(&Recorded{In: decision.Input{Device: ev.Device, Unit: ev.Unit, Request: mustParse(t, ev.PDU)}, Approved: true, Time: ev.Time})
				}
			}
			if r := w.Report(); r.NewlyDenied != 0 || r.NewlyAllowed != len(traffic) {
				t.Errorf("what-if of the candidate on its own traffic: %d newly denied, %d newly allowed; want 0 and %d", r.NewlyDenied, r.NewlyAllowed, len(traffic))
			}
		})
	}
}

func mustParse(t *testing.T, pdu []byte) modbus.Request {
	t.Helper()
	req, err := modbus.ParseRequest(pdu)
	if err != nil {
		t.Fatal(err)
	}
	return req
}
