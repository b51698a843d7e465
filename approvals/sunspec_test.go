package approvals_test

import (
	"strings"
	"testing"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// gridseal propose and the console know the policy, not the device's
// SunSpec map: a write a SunSpec quorum rule may cover is proposed under
// that rule (the proxy checks the point and the value when the write
// comes); one whose function or unit the rule does not take is refused.
func TestApprovalRuleOfSunSpecPoints(t *testing.T) {
	people := []*keystest.Person{keystest.NewPerson(t, "alice"), keystest.NewPerson(t, "bob")}
	pol, err := policy.Parse("plant.yaml", approvalPolicy(t, people, nil, `  - name: pv-2
    upstream: 127.0.0.1:1
    units: [1, 2]
    rules:
      - name: pv-limit
        allow: write
        functions: [6]
        units: [1]
        sunspec: {model: 123, point: WMaxLimPct}
        values: 0..60 %
        requires: {group: operators, m: 2}
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		unit byte
		pdu  []byte
		rule string // "": refused with want
		want string
	}{
		{"a write the rule may cover", 1, modbus.AppendWriteSingleRegister(nil, 40127, 30), "pv-limit", ""},
		{"another unit", 2, modbus.AppendWriteSingleRegister(nil, 40127, 30), "", "no rule of device pv-2 allows"},
		{"another function", 1, modbus.AppendWriteMultipleRegisters(nil, 40127, []uint16{30}), "", "even with approvals"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := approvals.ApprovalRule(pol, "pv-2", tc.unit, tc.pdu)
			switch {
			case tc.rule != "" && (err != nil || r.Name != tc.rule):
				t.Fatalf("rule %v, err %v; want rule %s", r, err, tc.rule)
			case tc.rule == "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("rule %v, err %v; want an error with %q", r, err, tc.want)
			}
		})
	}
}
