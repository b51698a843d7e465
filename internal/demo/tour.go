package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"path/filepath"
	"time"

	mbclient "github.com/simonvetter/modbus"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/simulators"
)

// Tour drives the demo through the proxy as operators would.
type Tour struct {
	W      io.Writer        // where the narration goes
	Addr   string           // the proxy's address
	Store  *approvals.Store // the approvals bucket the proxy consumes from
	Keys   string           // the demo's key directory (DATA-DIR/keys)
	Policy *policy.Policy   // the policy in force, which proposals bind
	c      *mbclient.ModbusClient
}

func (t *Tour) step(format string, args ...any) { fmt.Fprintf(t.W, "\n» "+format+"\n", args...) }

func (t *Tour) power() (float64, error) {
	if err := t.c.SetUnitId(simulators.UnitInverter); err != nil {
		return 0, err
	}
	v, err := t.c.ReadRegister(simulators.InverterPower, mbclient.HOLDING_REGISTER)
	return float64(v) * 10 / 1000, err
}

// watch prints the inverter's output for a few seconds.
func (t *Tour) watch(ctx context.Context) error {
	for i := 0; i < 4; i++ {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
		p, err := t.power()
		if err != nil {
			return err
		}
		fmt.Fprintf(t.W, "   t+%ds  inverter output %.1f kW\n", i+1, p)
	}
	return nil
}

func (t *Tour) write(unit uint8, addr, value uint16) error {
	_ = t.c.SetUnitId(unit)
	return t.c.WriteRegister(addr, value)
}

// Run drives the tour through the proxy: allowed and denied commands, then
// one approved by two of the three operators, and its replay refused. It
// fails if the proxy lets through what it should refuse.
func (t *Tour) Run(ctx context.Context) error {
	c, err := mbclient.NewClient(&mbclient.ClientConfiguration{
		URL: "tcp://" + t.Addr, Timeout: 5 * time.Second, Logger: log.New(io.Discard, "", 0),
	})
	if err != nil {
		return err
	}
	if err := c.Open(); err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	t.c = c

	fmt.Fprintln(t.W, "\nGuided tour (each request goes through the proxy):")
	p, err := t.power()
	if err != nil {
		return fmt.Errorf("read inverter power: %w", err)
	}
	t.step("read inverter AC power (allowed by rule inverter-telemetry): %.1f kW", p)

	err = t.write(simulators.UnitInverter, simulators.InverterConn, 0)
	t.step("write 0 to 40126 to disconnect the inverter: %s", outcome(err))
	if !errors.Is(err, mbclient.ErrIllegalDataAddress) {
		return fmt.Errorf("disconnect was not denied: %v", err)
	}
	if err := t.write(simulators.UnitInverter, simulators.InverterLimitPct, 60); err != nil {
		return fmt.Errorf("power limit 60 %%: %w", err)
	}
	t.step("write 60 to 40127, the power limit in %% (standing rule power-limit-setpoint): forwarded")
	if err := t.watch(ctx); err != nil {
		return err
	}
	err = t.write(simulators.UnitInverter, simulators.InverterLimitPct, 150)
	t.step("write 150 to 40127: %s", outcome(err))
	err = t.write(simulators.UnitBattery, simulators.BatterySetpoint, 80)
	t.step("battery: discharge 80 kW (rule allows ±50): %s", outcome(err))
	_ = t.c.SetUnitId(9)
	_, err = t.c.ReadRegister(0, mbclient.HOLDING_REGISTER)
	t.step("read from unit 9, which no device answers for: %s", outcome(err))

	fmt.Fprintln(t.W, "\nMulti-party approval: curtailing below 50 % takes 2 of the 3 operators.")
	err = t.write(simulators.UnitInverter, simulators.InverterLimitPct, 30)
	t.step("write 30 to 40127: %s", outcome(err))
	if !errors.Is(err, mbclient.ErrIllegalFunction) {
		return fmt.Errorf("deep curtailment without approval was not denied: %v", err)
	}
	id, err := t.propose(ctx, "alice", "inverter-1", simulators.UnitInverter, 30)
	if err != nil {
		return err
	}
	t.step("alice proposes it (gridseal propose --device inverter-1 --unit 1 --write-register 40127=30 --key …/alice.private.json)\n   proposal %s", id)
	if err := t.approve(ctx, id, "bob"); err != nil {
		return err
	}
	err = t.write(simulators.UnitInverter, simulators.InverterLimitPct, 30)
	t.step("bob approves (gridseal approve %s… --key …/bob.private.json); write 30 again: %s", id.String()[:12], outcome(err))
	if err == nil {
		return errors.New("one approval was enough: the quorum is broken")
	}
	if err := t.approve(ctx, id, "carol"); err != nil {
		return err
	}
	err = t.write(simulators.UnitInverter, simulators.InverterLimitPct, 30)
	t.step("carol approves too; write 30 again: %s", outcome(err))
	if err != nil {
		return fmt.Errorf("approved write refused: %w", err)
	}
	if err := t.watch(ctx); err != nil {
		return err
	}
	err = t.write(simulators.UnitInverter, simulators.InverterLimitPct, 30)
	t.step("the same write once more (replay): %s", outcome(err))
	if err == nil {
		return errors.New("an approval was used twice")
	}
	_ = t.c.SetUnitId(simulators.UnitBreaker)
	err = t.c.WriteCoil(simulators.BreakerCoilOpen, true)
	t.step("breaker: open the feeder without approval: %s", outcome(err))
	return nil
}

// propose and approve do what gridseal propose and gridseal approve do.
func (t *Tour) propose(ctx context.Context, who, device string, unit uint8, value uint16) (approvals.ID, error) {
	s, err := keys.LoadSigner(filepath.Join(t.Keys, who+".private.json"))
	if err != nil {
		return approvals.ID{}, err
	}
	pdu := []byte{6, byte(simulators.InverterLimitPct >> 8), byte(simulators.InverterLimitPct & 0xFF), byte(value >> 8), byte(value)}
	pr, err := approvals.NewProposal(t.Policy, device, unit, pdu, 15*time.Minute, who, time.Now())
	if err != nil {
		return approvals.ID{}, err
	}
	sig, err := s.Sign(approvals.ProposeInput(pr.ID()))
	if err != nil {
		return approvals.ID{}, err
	}
	id, err := t.Store.Propose(ctx, pr, sig)
	if err != nil {
		return id, err
	}
	return id, t.waitIndexed(ctx, id, 0)
}

func (t *Tour) approve(ctx context.Context, id approvals.ID, who string) error {
	s, err := keys.LoadSigner(filepath.Join(t.Keys, who+".private.json"))
	if err != nil {
		return err
	}
	sig, err := s.Sign(approvals.ApproveInput(id))
	if err != nil {
		return err
	}
	st, err := t.Store.AddSignature(ctx, id, sig)
	if err != nil {
		return err
	}
	return t.waitIndexed(ctx, id, st.Revision)
}

// waitIndexed waits until the proxy's approval index has seen revision rev.
func (t *Tour) waitIndexed(ctx context.Context, id approvals.ID, rev uint64) error {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, st := range t.Store.Pending() {
			if st.ID == id && st.Revision >= rev {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return fmt.Errorf("approval %s never reached the proxy", id)
}

func outcome(err error) string {
	if err == nil {
		return "forwarded"
	}
	return "denied by gridseal: " + err.Error()
}
