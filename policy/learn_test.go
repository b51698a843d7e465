package policy_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/policy/decision"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// learnBase is a policy with three operators, inverter-1 in observe mode
// with no rules, and battery-1 with a telemetry rule.
func learnBase(t *testing.T) *policy.Policy {
	t.Helper()
	var b strings.Builder
	b.WriteString("id: plant\nversion: 4\napprovers:\n")
	for _, name := range []string{"alice", "bob", "carol"} {
		policy.WriteKeysetEntry(&b, name, []string{"operators"}, keystest.NewPerson(t, name).PublicJSON(t))
	}
	b.WriteString(`devices:
  - name: inverter-1
    upstream: 127.0.0.1:1
    units: [1]
    mode: observe
  - name: battery-1
    upstream: 127.0.0.1:1
    units: [2]
    rules:
      - {name: battery-telemetry, allow: read, functions: [4], addresses: 0-11}
`)
	p, err := policy.Parse("base.yaml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

// rec is the completed record of pdu on device/unit from client at t0+sec.
func rec(device string, unit byte, pdu []byte, v audit.Verdict, client string, sec int) *audit.Event {
	ev := &audit.Event{Time: t0.Add(time.Duration(sec) * time.Second), Phase: audit.PhaseComplete, Verdict: v,
		Device: device, Unit: unit, Function: pdu[0], PDU: pdu, Client: netip.MustParseAddrPort(client)}
	return ev
}

func learnedTraffic() []*audit.Event {
	neg := func(v int16) uint16 { return uint16(v) }
	return []*audit.Event{
		rec("inverter-1", 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 40000, 10), audit.Allow, "10.0.0.5:4000", 0),
		rec("inverter-1", 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 40010, 5), audit.Allow, "10.0.0.5:4000", 1),
		rec("inverter-1", 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 40020, 2), audit.Allow, "10.0.0.6:4001", 2),
		rec("inverter-1", 1, modbus.AppendWriteSingleRegister(nil, 40127, 20), audit.Allow, "10.0.0.5:4000", 3),
		rec("inverter-1", 1, modbus.AppendWriteMultipleRegisters(nil, 40127, []uint16{60}), audit.Allow, "10.0.0.5:4000", 4),
		rec("inverter-1", 1, []byte{8, 0, 0, 0xA5, 0x37}, audit.Allow, "10.0.0.5:4000", 5),
		rec("inverter-1", 1, []byte{8, 0, 10, 0, 0}, audit.Allow, "10.0.0.5:4000", 6),
		// Not learned: refused, malformed, not completed.
		rec("inverter-1", 1, modbus.AppendWriteSingleRegister(nil, 40126, 0), audit.Deny, "10.0.0.9:4000", 7),
		rec("inverter-1", 1, []byte{0x41, 1, 2}, audit.Malformed, "10.0.0.9:4000", 8),
		{Time: t0, Phase: audit.PhaseRequest, Verdict: audit.Allow, Device: "inverter-1", Unit: 1, PDU: modbus.AppendWriteSingleRegister(nil, 40200, 1)},
		rec("battery-1", 2, modbus.AppendWriteSingleRegister(nil, 0, neg(-20)), audit.Allow, "10.0.0.5:4000", 9),
		rec("battery-1", 2, modbus.AppendWriteSingleRegister(nil, 0, 35), audit.Allow, "10.0.0.5:4000", 10),
	}
}

// learnedYAML is what a learner from base learns of learnedTraffic.
func learnedYAML(t *testing.T, base *policy.Policy, o policy.LearnOptions) []byte {
	t.Helper()
	l, err := policy.NewLearner(base, o)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range learnedTraffic() {
		l.Add(ev)
	}
	out, err := l.Policy()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func learn(t *testing.T, base *policy.Policy, o policy.LearnOptions) *policy.Policy {
	t.Helper()
	out := learnedYAML(t, base, o)
	p, err := policy.Parse("candidate.yaml", out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return p
}

func judge(t *testing.T, p *policy.Policy, device string, unit byte, pdu []byte, approved bool) (string, decision.Denial) {
	t.Helper()
	req, err := modbus.ParseRequest(pdu)
	if err != nil {
		t.Fatal(err)
	}
	r, d := p.Judge(&decision.Input{Device: device, Unit: unit, Request: req}, approved)
	if r == nil {
		return "", d
	}
	return r.Name, d
}

// TestLearnBuildsThePolicyTheTrafficNeeds: the candidate allows what was
// forwarded and nothing nearby; writes need a quorum unless standing;
// refused and malformed requests teach nothing; the rest of the base
// policy stays.
func TestLearnBuildsThePolicyTheTrafficNeeds(t *testing.T) {
	base := learnBase(t)
	type check struct {
		name     string
		device   string
		unit     byte
		pdu      []byte
		approved bool
		denial   decision.Denial
	}
	read := func(addr, qty uint16) []byte {
		return modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, addr, qty)
	}
	cases := []struct {
		name   string
		opts   policy.LearnOptions
		checks []check
	}{
		{"defaults", policy.LearnOptions{}, []check{
			{"a read seen", "inverter-1", 1, read(40000, 10), false, 0},
			{"reads merged where they touch", "inverter-1", 1, read(40005, 10), false, 0},
			{"not across a gap", "inverter-1", 1, read(40015, 1), false, decision.DenyAddress},
			{"another unit", "inverter-1", 2, read(40000, 1), false, decision.DenyAddress},
			{"a write seen needs a quorum", "inverter-1", 1, modbus.AppendWriteSingleRegister(nil, 40127, 60), false, decision.DenyApproval},
			{"with an approval it passes", "inverter-1", 1, modbus.AppendWriteSingleRegister(nil, 40127, 40), true, 0},
			{"a value past those written", "inverter-1", 1, modbus.AppendWriteSingleRegister(nil, 40127, 61), true, decision.DenyValue},
			{"a refused write is not learned", "inverter-1", 1, modbus.AppendWriteSingleRegister(nil, 40126, 0), true, decision.DenyAddress},
			{"a pre-forward record is not learned", "inverter-1", 1, modbus.AppendWriteSingleRegister(nil, 40200, 1), true, decision.DenyAddress},
			{"diagnostic echo seen", "inverter-1", 1, []byte{8, 0, 0, 0, 1}, false, 0},
			{"clear counters needs a quorum", "inverter-1", 1, []byte{8, 0, 10, 0, 0}, false, decision.DenyApproval},
			{"restart was never seen", "inverter-1", 1, []byte{8, 0, 1, 0, 0}, true, decision.DenyFunction},
			{"signed values learned as signed", "battery-1", 2, modbus.AppendWriteSingleRegister(nil, 0, uint16(0xFFF0)), true, 0},
			{"below them", "battery-1", 2, modbus.AppendWriteSingleRegister(nil, 0, uint16(0xFFEB)), true, decision.DenyValue},
			{"the battery's telemetry rule was replaced", "battery-1", 2, modbus.AppendReadRequest(nil, modbus.ReadInputRegisters, 0, 1), false, decision.DenyFunction},
		}},
		{"gap and standing writes", policy.LearnOptions{Gap: 5, StandingWrites: true}, []check{
			{"reads merged across the gap", "inverter-1", 1, read(40000, 22), false, 0},
			{"a write seen stands", "inverter-1", 1, modbus.AppendWriteSingleRegister(nil, 40127, 60), false, 0},
			{"clear counters stands", "inverter-1", 1, []byte{8, 0, 10, 0, 0}, false, 0},
		}},
		{"one device", policy.LearnOptions{Device: "inverter-1"}, []check{
			{"its reads", "inverter-1", 1, read(40000, 10), false, 0},
			{"the other device's rules stay", "battery-1", 2, modbus.AppendReadRequest(nil, modbus.ReadInputRegisters, 0, 1), false, 0},
			{"and learn nothing", "battery-1", 2, modbus.AppendWriteSingleRegister(nil, 0, 35), true, decision.DenyFunction},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := learn(t, base, tc.opts)
			if p.ID != base.ID || p.Version != base.Version+1 || len(p.Approvers) != 3 || p.Device("inverter-1").Observe {
				t.Fatalf("candidate %s v%d, %d approvers, observe %v", p.ID, p.Version, len(p.Approvers), p.Device("inverter-1").Observe)
			}
			for _, c := range tc.checks {
				if rule, d := judge(t, p, c.device, c.unit, c.pdu, c.approved); d != c.denial {
					t.Errorf("%s: rule %q denial %v, want %v\n%s", c.name, rule, d, c.denial, p.Bytes())
				}
			}
		})
	}
}

func TestLearnedPolicySaysWhatItLearnedFrom(t *testing.T) {
	out := learnedYAML(t, learnBase(t), policy.LearnOptions{})
	for _, want := range []string{
		"# 9 forwarded requests learned, 2026-11-30T12:00:00Z to 2026-11-30T12:00:10Z; 1 denied and 1 malformed not learned",
		"# 2 requests, 2026-11-30T12:00:00Z to 2026-11-30T12:00:01Z, from 10.0.0.5",
		"# 3 requests, 2026-11-30T12:00:00Z to 2026-11-30T12:00:02Z, from 10.0.0.5, 10.0.0.6",
		"# 2 requests, 2026-11-30T12:00:03Z to 2026-11-30T12:00:04Z, from 10.0.0.5; values written 20-60",
		"values: -20..35",
		"requires: {group: operators, m: 2}",
		"# was mode: observe; the learned rules enforce",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("learned policy lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "\n    mode:") {
		t.Errorf("learned policy keeps a mode line:\n%s", out)
	}
}

func TestLearnNeedsApproversForQuorumRules(t *testing.T) {
	base, err := policy.Parse("base.yaml", []byte("id: p\ndevices:\n  - name: d\n    upstream: 127.0.0.1:1\n"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := policy.NewLearner(base, policy.LearnOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l.Add(rec("d", 1, modbus.AppendWriteSingleRegister(nil, 1, 1), audit.Allow, "10.0.0.5:1", 0))
	if _, err := l.Policy(); err == nil || !strings.Contains(err.Error(), "--standing-writes") {
		t.Fatalf("err = %v, want advice to add approvers or use --standing-writes", err)
	}
	if _, err := policy.NewLearner(base, policy.LearnOptions{Device: "nope"}); err == nil {
		t.Fatal("a device not in the policy was accepted")
	}
}
