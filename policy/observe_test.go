package policy

import (
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/policy/decision"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// observePolicy is testdata/plant.yaml with inverter-1 in observe mode.
func observePolicy(t testing.TB) *Policy {
	t.Helper()
	b := strings.Replace(string(examplePolicy(t).Bytes()), "    kind: pv-inverter\n", "    kind: pv-inverter\n    mode: observe\n", 1)
	p, err := Parse("observe.yaml", []byte(b))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestObserveMode(t *testing.T) {
	p := observePolicy(t)
	if got := p.ObservedDevices(); len(got) != 1 || got[0] != "inverter-1" {
		t.Fatalf("observed devices = %v", got)
	}
	e := NewEngine(p, zap.NewNop())
	cases := []struct {
		name     string
		device   string
		unit     byte
		pdu      []byte
		want     audit.Verdict
		observed bool
		denial   decision.Denial
		rule     string
		reason   string
	}{
		{"allowed read stays a plain allow", "inverter-1", 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 40072, 50),
			audit.Allow, false, 0, "inverter-telemetry", "inverter-telemetry"},
		{"read past the range is forwarded, would deny", "inverter-1", 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 40100, 60),
			audit.Allow, true, decision.DenyAddress, "inverter-telemetry", "OBSERVE would deny: rule inverter-telemetry: holding-registers 40100+60 outside 40000..40149"},
		{"disconnect write is forwarded, would deny", "inverter-1", 1, modbus.AppendWriteSingleRegister(nil, 40126, 0),
			audit.Allow, true, decision.DenyAddress, "power-limit-setpoint", "OBSERVE would deny: rule power-limit-setpoint: holding-registers 40126+1 outside 40127"},
		{"no rule for the function, would deny", "inverter-1", 1, []byte{8, 0, 0, 0xA5, 0x37},
			audit.Allow, true, decision.DenyFunction, "", "OBSERVE would deny: no rule of device inverter-1 allows function 8"},
		{"a device that enforces still denies", "battery-1", 2, modbus.AppendWriteSingleRegister(nil, 0, 80),
			audit.Deny, false, decision.DenyValue, "battery-dispatch", "rule battery-dispatch: register 0 value 80 outside -50..50"},
		{"a device not in the policy is denied", "pump-7", 1, modbus.AppendReadRequest(nil, modbus.ReadCoils, 0, 1),
			audit.Deny, false, decision.DenyDevice, "", `device "pump-7" is not in policy`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := e.Decide(t.Context(), input(t, tc.device, tc.unit, tc.pdu))
			if v.Verdict != tc.want || v.Observed != tc.observed || v.Denial != tc.denial || v.Rule != tc.rule ||
				!strings.HasPrefix(v.Reason, tc.reason) || v.Policy != p.Digest {
				t.Fatalf("result = %+v\nwant %v observed=%v denial %v rule %q reason %q…", v, tc.want, tc.observed, tc.denial, tc.rule, tc.reason)
			}
		})
	}
}

func TestDeviceMode(t *testing.T) {
	base := string(examplePolicy(t).Bytes())
	cases := []struct {
		name, mode string
		observe    bool
		err        string
	}{
		{"enforce named", "enforce", false, ""},
		{"observe", "observe", true, ""},
		{"anything else", "audit", false, `observe.yaml:9: device "inverter-1": mode must be enforce or observe, not "audit"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := strings.Replace(base, "    kind: pv-inverter\n", "    kind: pv-inverter\n    mode: "+tc.mode+"\n", 1)
			p, err := Parse("observe.yaml", []byte(b))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Device("inverter-1").Observe != tc.observe || p.Device("battery-1").Observe {
				t.Fatalf("observe = %v, want %v", p.Device("inverter-1").Observe, tc.observe)
			}
		})
	}
}

// judgeCases are requests on every kind of denial of testdata/plant.yaml
// and rulesPolicy.
func judgeCases(t testing.TB) []*decision.Input {
	neg := func(v int16) uint16 { return uint16(v) }
	return []*decision.Input{
		input(t, "inverter-1", 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 40072, 50)),
		input(t, "inverter-1", 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 40100, 60)),
		input(t, "inverter-1", 1, modbus.AppendReadRequest(nil, modbus.ReadInputRegisters, 40072, 1)),
		input(t, "inverter-1", 1, modbus.AppendWriteSingleRegister(nil, 40127, 30)),
		input(t, "inverter-1", 1, modbus.AppendWriteSingleRegister(nil, 40127, 101)),
		input(t, "inverter-1", 1, modbus.AppendWriteMultipleRegisters(nil, 40127, []uint16{50, 0})),
		input(t, "inverter-1", 1, []byte{22, 0x9C, 0xBF, 0, 0, 0, 30}),
		input(t, "inverter-1", 1, []byte{8, 0, 0, 0xA5, 0x37}),
		input(t, "inverter-1", 0, modbus.AppendWriteSingleRegister(nil, 40127, 30)),
		input(t, "battery-1", 2, modbus.AppendWriteSingleRegister(nil, 0, neg(-51))),
		input(t, "battery-1", 2, modbus.AppendWriteMultipleRegisters(nil, 0, []uint16{neg(-20), 1})),
		input(t, "breaker-1", 3, modbus.AppendWriteSingleCoil(nil, 1, true)),
		input(t, "breaker-1", 3, modbus.AppendReadRequest(nil, modbus.ReadDiscreteInputs, 0, 6)),
		input(t, "pump-7", 1, modbus.AppendReadRequest(nil, modbus.ReadCoils, 0, 1)),
	}
}

// TestJudgeAgreesWithDecide: replaying a request (Judge, Explain) gives
// the rule, denial and reason that deciding it live gives.
func TestJudgeAgreesWithDecide(t *testing.T) {
	p := examplePolicy(t)
	e := NewEngine(p, zap.NewNop())
	for _, in := range judgeCases(t) {
		t.Run(in.Device+"/"+in.Request.Function.String(), func(t *testing.T) {
			v := e.Decide(t.Context(), in)
			r, denial := p.Judge(in, false)
			name := ""
			if r != nil {
				name = r.Name
			}
			if denial != v.Denial || name != v.Rule {
				t.Fatalf("Judge = %q/%v, Decide = %q/%v", name, denial, v.Rule, v.Denial)
			}
			if why := p.Explain(in, false); (v.Allowed() && why != "") || (!v.Allowed() && why != v.Reason) {
				t.Fatalf("Explain = %q, Decide's reason %q", why, v.Reason)
			}
		})
	}
}

func TestJudgeDoesNotAllocate(t *testing.T) {
	p := examplePolicy(t)
	ins := judgeCases(t)
	if n := testing.AllocsPerRun(100, func() {
		for _, in := range ins {
			p.Judge(in, false)
		}
	}); n != 0 {
		t.Fatalf("Judge allocates %.1f times per %d requests", n, len(ins))
	}
}

func BenchmarkJudge(b *testing.B) {
	p := examplePolicy(b)
	ins := judgeCases(b)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		p.Judge(ins[i%len(ins)], false)
	}
}
