package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	mbclient "github.com/simonvetter/modbus"

	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/simulators"
	"github.com/gridseal/gridseal/simulators/simtest"
)

// commissioning is a site with one policy admin, whose proxy serves the
// simulators; start and stop run `gridseal proxy` on its data directory.
type commissioning struct {
	t                          *testing.T
	dir, data, listen, cfgPath string
	stop                       func()
}

func newCommissioning(t *testing.T) *commissioning {
	t.Helper()
	c := &commissioning{t: t, dir: t.TempDir(), data: t.TempDir(), listen: freeAddr(t)}
	keyDir := filepath.Join(c.dir, "keys")
	for _, k := range []string{"gw-1", "admin-1"} {
		if code, _, stderr := runCLI(t, t.Context(), "keys", "new", k, "--dir", keyDir); code != 0 {
			t.Fatal(stderr)
		}
	}
	code, root, stderr := runCLI(t, t.Context(), "policy", "root", "--threshold", "1", filepath.Join(keyDir, "admin-1.public.json"))
	if code != 0 {
		t.Fatal(stderr)
	}
	c.write("policy-root.yaml", root)
	c.write("gridseal.yaml", fmt.Sprintf("policy: policy.yaml\npolicy_root: policy-root.yaml\nlisteners:\n  - listen: %s\n"+
		"    devices: [inverter-1, battery-1]\nchain: {writer: gw-1, key: keys/gw-1.private.json}\nconsole: {listen: \"off\"}\n", c.listen))
	c.cfgPath = filepath.Join(c.dir, "gridseal.yaml")
	return c
}

func (c *commissioning) write(name, body string) {
	c.t.Helper()
	if err := os.WriteFile(filepath.Join(c.dir, name), []byte(body), 0o600); err != nil {
		c.t.Fatal(err)
	}
}

// sign puts body in force at the next start, signed by the admin.
func (c *commissioning) sign(body string) {
	c.t.Helper()
	c.write("policy.yaml", body)
	_ = os.Remove(filepath.Join(c.dir, "policy.yaml.sig"))
	if code, _, stderr := runCLI(c.t, c.t.Context(), "policy", "sign", filepath.Join(c.dir, "policy.yaml"),
		"--key", filepath.Join(c.dir, "keys", "admin-1.private.json")); code != 0 {
		c.t.Fatal(stderr)
	}
}

func (c *commissioning) start() {
	c.t.Helper()
	ctx, cancel := context.WithCancel(c.t.Context())
	done := make(chan struct{})
	var stderr string
	var code int
	go func() {
		defer close(done)
		code, _, stderr = runCLI(c.t, ctx, "proxy", "--config", c.cfgPath, "--data-dir", c.data, "--log-format", "json")
	}()
	c.stop = func() {
		cancel()
		<-done
		if code != 0 {
			c.t.Fatalf("proxy exited %d: %s", code, stderr)
		}
	}
	c.t.Cleanup(func() { // the test's context ends it, if the test failed first
		<-done
		if c.t.Failed() {
			lines := strings.Split(stderr, "\n")
			c.t.Logf("the proxy's log, last lines:\n%s", strings.Join(lines[max(0, len(lines)-40):], "\n"))
		}
	})
	waitListening(c.t, "the proxy", c.listen)
}

// cli runs a gridseal command on the site's data directory, in its folder.
func (c *commissioning) cli(args ...string) (int, string, string) {
	c.t.Helper()
	return runCLI(c.t, c.t.Context(), append(args, "--data-dir", c.data)...)
}

// master is the scripted SCADA master: telemetry reads and setpoint writes
// to the inverter and the battery, rounds times over. It fails the test on
// any exception.
func master(t *testing.T, addr string, rounds int) {
	t.Helper()
	inv, bat := modbusClient(t, addr, simulators.UnitInverter), modbusClient(t, addr, simulators.UnitBattery)
	for i := 0; i < rounds; i++ {
		if _, err := inv.ReadRegisters(simulators.InverterCurrent, 16, mbclient.HOLDING_REGISTER); err != nil {
			t.Fatalf("round %d: inverter telemetry: %v", i, err)
		}
		if _, err := inv.ReadRegisters(simulators.InverterState, 1, mbclient.HOLDING_REGISTER); err != nil {
			t.Fatalf("round %d: inverter state: %v", i, err)
		}
		if err := inv.WriteRegister(simulators.InverterLimitPct, uint16(40+10*(i%5))); err != nil {
			t.Fatalf("round %d: inverter limit: %v", i, err)
		}
		if _, err := bat.ReadRegisters(simulators.BatterySoC, 3, mbclient.INPUT_REGISTER); err != nil {
			t.Fatalf("round %d: battery telemetry: %v", i, err)
		}
		kw := int16(20 - 10*(i%4)) // discharge 20 … charge 10
		if err := bat.WriteRegisters(simulators.BatterySetpoint, []uint16{uint16(kw), 1}); err != nil {
			t.Fatalf("round %d: battery dispatch: %v", i, err)
		}
	}
}

// observing is the policy a new site starts commissioning with: both
// devices observe, with a first guess at the inverter's telemetry.
const observing = `id: plant
version: 1
devices:
  - name: inverter-1
    upstream: %[1]s
    units: [1]
    mode: observe
    rules:
      - {name: telemetry, allow: read, table: holding-registers, addresses: 40070-40100}
  - name: battery-1
    upstream: %[1]s
    units: [2]
    mode: observe
`

// TestCommissioningObserveLearnWhatIfEnforce is the commissioning of a
// live plant: a scripted SCADA master runs over minutes of simulated time
// against devices in observe mode; policy learn builds a candidate from the
// chain, naming the inverter's power limit 123.WMaxLimPct by the SunSpec
// map the observing proxy read and recorded; what-if (judging SunSpec
// rules for that map) shows it denies nothing the policy in force allows; the
// candidate, signed and enforced, lets the same script through and denies
// one write the script never made. Then a candidate without the
// inverter's write rule reports exactly the writes that rule allowed.
func TestCommissioningObserveLearnWhatIfEnforce(t *testing.T) {
	simAddr, plant := simtest.Start(t, simulators.Options{Speed: 600}) // a second is ten minutes
	inv := plant.Device(simulators.UnitInverter).(*simulators.Inverter)
	c := newCommissioning(t)
	c.sign(fmt.Sprintf(observing, simAddr))
	c.start()
	master(t, c.listen, 20)
	c.stop()

	if code, tail, _ := c.cli("chain", "tail", "-n", "3"); code != 0 || !strings.Contains(tail, "WOULD-DENY") {
		t.Fatalf("chain tail of observed writes: exit %d\n%s", code, tail)
	}
	code, candidate, stderr := c.cli("policy", "learn", "--standing-writes")
	if code != 0 {
		t.Fatalf("learn: exit %d: %s", code, stderr)
	}
	if !strings.Contains(stderr, "100 forwarded requests learned") {
		t.Fatalf("learn's summary: %s", stderr)
	}
	learned, err := policy.Parse("candidate.yaml", []byte(candidate))
	if err != nil {
		t.Fatal(err)
	}
	var points []string
	for _, r := range learned.Device("inverter-1").Rules {
		if r.SunSpec != nil && r.Class.String() == "write" {
			points = append(points, r.SunSpec.Label())
		}
	}
	if len(points) != 1 || points[0] != "123.WMaxLimPct" { // from the map the observing proxy read
		t.Fatalf("the inverter's learned write rules name points %v, want 123.WMaxLimPct\n%s", points, candidate)
	}
	c.write("candidate.yaml", candidate)
	code, out, stderr := c.cli("policy", "what-if", filepath.Join(c.dir, "candidate.yaml"), "--json")
	var rep policy.WhatIfReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("what-if --json: %v\n%s%s", err, out, stderr)
	}
	// In force (observe, one telemetry rule): the rules allow only the
	// inverter telemetry reads; the candidate allows all the script did.
	if code != 0 || rep.Replayed != 100 || rep.NewlyDenied != 0 || rep.NewlyAllowed != 80 || rep.InForce.Version != 1 || rep.Candidate.Version != 2 {
		t.Fatalf("what-if: exit %d, %+v\n%s", code, rep, stderr)
	}

	c.sign(candidate)
	c.start()
	telemetry := modbusClient(t, c.listen, simulators.UnitInverter)
	testwait.For(t, "the proxy to read the inverter's SunSpec map", func() bool {
		_, err := telemetry.ReadRegisters(simulators.InverterCurrent, 16, mbclient.HOLDING_REGISTER)
		return err == nil
	})
	master(t, c.listen, 20)
	before := inv.Watts()
	err = modbusClient(t, c.listen, simulators.UnitInverter).WriteRegister(simulators.InverterConn, 0)
	if !errors.Is(err, mbclient.ErrIllegalFunction) && !errors.Is(err, mbclient.ErrIllegalDataAddress) {
		t.Fatalf("disconnecting the inverter under the learned policy: %v, want a refusal", err)
	}
	if inv.Watts() == 0 && before > 0 {
		t.Fatal("the refused disconnect reached the inverter")
	}
	c.stop()
	code, tail, _ := c.cli("chain", "tail", "-n", "1", "--verdict", "deny")
	if code != 0 || !strings.Contains(tail, "inverter-1") || !strings.Contains(tail, "40126") {
		t.Fatalf("the refused write in the chain: %s", tail)
	}

	t.Run("bad requests", func(t *testing.T) {
		c.write("broken.yaml", "id: x\ndevices:\n  - name: a\n    upstream: 127.0.0.1:1\n    mode: watch\n")
		for _, tc := range []struct {
			name string
			args []string
			code int
			want string
		}{
			{"learn for a device not in the policy", []string{"policy", "learn", "--device", "pump-7"}, 2, `device "pump-7" is not in policy plant`},
			{"learn since a bad time", []string{"policy", "learn", "--since", "yesterday"}, 2, `--since: "yesterday" is neither RFC 3339 nor a duration`},
			{"learn with a negative gap", []string{"policy", "learn", "--gap", "-1"}, 2, "gap must not be negative"},
			{"learn quorum rules from an unknown group", []string{"policy", "learn", "--group", "nobody"}, 1, `approver group "nobody" is not in policy plant`},
			{"what-if without a candidate", []string{"policy", "what-if"}, 2, "accepts 1 arg"},
			{"what-if with a missing candidate", []string{"policy", "what-if", filepath.Join(c.dir, "nope.yaml")}, 1, "no such file"},
			{"what-if with a broken candidate", []string{"policy", "what-if", filepath.Join(c.dir, "broken.yaml")}, 1,
				`broken.yaml:5: device "a": mode must be enforce or observe, not "watch"`},
		} {
			t.Run(tc.name, func(t *testing.T) {
				code, out, stderr := c.cli(tc.args...)
				if code != tc.code || !strings.Contains(stderr, tc.want) || strings.Count(stderr, "\n") != 1 {
					t.Fatalf("exit %d, stderr %q (stdout %.200q); want exit %d and one line with %q", code, stderr, out, tc.code, tc.want)
				}
			})
		}
	})

	t.Run("a candidate that drops one rule reports exactly what that rule allowed", func(t *testing.T) {
		var drop string
		for _, r := range learned.Device("inverter-1").Rules {
			if r.Class.String() == "write" {
				drop = r.Name
			}
		}
		lines := strings.Split(candidate, "\n")
		var kept []string
		for i := 0; i < len(lines); i++ {
			if strings.Contains(lines[i], "- name: "+drop) {
				for i+1 < len(lines) && strings.HasPrefix(lines[i+1], "        ") && !strings.HasPrefix(strings.TrimSpace(lines[i+1]), "-") &&
					!strings.HasPrefix(strings.TrimSpace(lines[i+1]), "#") {
					i++
				}
				continue
			}
			kept = append(kept, lines[i])
		}
		c.write("fewer.yaml", strings.Join(kept, "\n"))
		code, out, stderr := c.cli("policy", "what-if", filepath.Join(c.dir, "fewer.yaml"), "--json")
		var rep policy.WhatIfReport
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("what-if --json: %v\n%s%s", err, out, stderr)
		}
		// 40 inverter limit writes: 20 observed, 20 enforced.
		if code != 1 || rep.NewlyDenied != 40 || rep.NewlyAllowed != 0 || !strings.Contains(stderr, "denies 40 recorded requests the policy in force allows") {
			t.Fatalf("what-if without %s: exit %d, %d newly denied, %d newly allowed\n%s", drop, code, rep.NewlyDenied, rep.NewlyAllowed, stderr)
		}
		for _, g := range rep.Groups {
			if g.RuleInForce != drop || g.CandidateRule != "" || g.Device != "inverter-1" || g.Function != 6 || g.Address != simulators.InverterLimitPct || len(g.Examples) == 0 {
				t.Fatalf("group %+v, want only inverter-1's fc 6 writes to %d that rule %s allowed", g, simulators.InverterLimitPct, drop)
			}
		}
		code, text, _ := c.cli("policy", "what-if", filepath.Join(c.dir, "fewer.yaml"))
		if code != 1 || !strings.Contains(text, "NEWLY DENIED (40 requests the policy in force allows)") ||
			!strings.Contains(text, "rule in force "+drop+", candidate none") {
			t.Fatalf("what-if's text: exit %d\n%s", code, text)
		}
	})
}
