package policy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/policy/decision"
	"github.com/gridseal/gridseal/protocols/modbus"
	"github.com/gridseal/gridseal/protocols/sunspec"
	"github.com/gridseal/gridseal/simulators"
	"github.com/gridseal/gridseal/simulators/simtest"
)

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
