package policy_test

import (
	"context"
	"fmt"

	"go.uber.org/zap"

	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/policy/decision"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// A policy names the devices behind the proxy and the rules that allow
// requests; anything no rule allows is denied. The engine decides one
// parsed request at a time, and every verdict names the rule (or the rule
// that nearly allowed it), a reason and the digest of the policy file.
func Example() {
	p, err := policy.Parse("plant.yaml", []byte(`
id: plant
version: 1
devices:
  - name: inverter-1
    upstream: 127.0.0.1:15020
    units: [1]
    rules:
      - name: telemetry
        allow: read
        table: holding-registers
        addresses: 40000-40149
      - name: curtail
        allow: write
        functions: [6, 16]
        addresses: 40127
        values: 0-100
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	e := policy.NewEngine(p, zap.NewNop())

	decide := func(pdu []byte) {
		req, err := modbus.ParseRequest(pdu)
		if err != nil {
			fmt.Println("malformed:", err)
			return
		}
		v := e.Decide(context.Background(), &decision.Input{Device: "inverter-1", Unit: 1, Request: req})
		if v.Allowed() {
			fmt.Printf("allow by %s\n", v.Rule)
			return
		}
		fmt.Printf("deny (%s): %s\n", v.Denial, v.Reason)
	}
	decide(modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 40084, 2))
	decide(modbus.AppendWriteSingleRegister(nil, 40127, 30))
	decide(modbus.AppendWriteSingleRegister(nil, 40127, 150))
	decide(modbus.AppendWriteSingleRegister(nil, 40126, 0))
	decide(modbus.AppendWriteSingleCoil(nil, 1, true))
	// Output:
	// allow by telemetry
	// allow by curtail
	// deny (value): rule curtail: register 40127 value 150 outside 0..100
	// deny (address): rule curtail: holding-registers 40126+1 outside 40127
	// deny (function): no rule of device inverter-1 allows function 5 (write single coil, a write)
}

// Errors in a policy name the file, the line and what to change.
func ExampleParse_error() {
	_, err := policy.Parse("plant.yaml", []byte(`
id: plant
devices:
  - name: inverter-1
    upstream: 127.0.0.1:15020
    rules:
      - name: setpoint
        allow: wirte
`))
	fmt.Println(err)
	// Output:
	// invalid policy: plant.yaml:8: device "inverter-1" rule "setpoint": allow must be read, write or diagnostic, not "wirte"
}
