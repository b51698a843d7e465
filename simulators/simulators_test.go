package simulators_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	mbclient "github.com/simonvetter/modbus"

	"github.com/gridseal/gridseal/simulators"
	"github.com/gridseal/gridseal/simulators/simtest"
)

// fakeClock is a clock tests advance by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func client(t *testing.T, addr string, unit uint8) *mbclient.ModbusClient {
	t.Helper()
	return simtest.Client(t, addr, unit, 2*time.Second)
}

func TestInverterFollowsPowerLimit(t *testing.T) {
	clk := &fakeClock{now: time.Unix(0, 0)}
	addr, _ := simtest.Start(t, simulators.Options{Clock: clk.Now})
	c := client(t, addr, simulators.UnitInverter)

	marker, err := c.ReadRegisters(simulators.InverterBase, 2, mbclient.HOLDING_REGISTER)
	if err != nil || marker[0] != 0x5375 || marker[1] != 0x6e53 {
		t.Fatalf("SunSpec marker = %x, %v", marker, err)
	}
	power := func() float64 {
		v, err := c.ReadRegister(simulators.InverterPower, mbclient.HOLDING_REGISTER)
		if err != nil {
			t.Fatal(err)
		}
		return float64(v) * 10
	}
	before := power()
	if before < 50_000 {
		t.Fatalf("morning output = %.0f W, want the daylight curve above 50 kW", before)
	}
	if err := c.WriteRegister(simulators.InverterLimitPct, 30); err != nil {
		t.Fatal(err)
	}
	clk.Advance(500 * time.Millisecond)
	mid := power()
	if mid >= before || mid <= 30_000 {
		t.Fatalf("after 0.5 s output = %.0f W; want a ramp between 30 kW and %.0f W", mid, before)
	}
	clk.Advance(10 * time.Second)
	if got := power(); got != 30_000 {
		t.Fatalf("settled output = %.0f W, want the 30 kW limit", got)
	}
	st, _ := c.ReadRegister(simulators.InverterState, mbclient.HOLDING_REGISTER)
	if st != simulators.StateThrottled {
		t.Fatalf("state = %d, want throttled", st)
	}
	if err := c.WriteRegister(simulators.InverterLimitPct, 101); !errors.Is(err, mbclient.ErrIllegalDataValue) {
		t.Fatalf("limit 101 %%: err = %v, want illegal data value", err)
	}
	if err := c.WriteRegister(simulators.InverterPower, 1); !errors.Is(err, mbclient.ErrIllegalDataAddress) {
		t.Fatalf("write to a measurement: err = %v, want illegal data address", err)
	}
	if err := c.WriteRegister(simulators.InverterConn, 0); err != nil {
		t.Fatal(err)
	}
	clk.Advance(5 * time.Second)
	if got := power(); got != 0 {
		t.Fatalf("disconnected output = %.0f W", got)
	}
}

func TestBatteryIntegratesSetpoint(t *testing.T) {
	clk := &fakeClock{now: time.Unix(0, 0)}
	addr, _ := simtest.Start(t, simulators.Options{Clock: clk.Now})
	c := client(t, addr, simulators.UnitBattery)
	soc := func() uint16 {
		v, err := c.ReadRegister(simulators.BatterySoC, mbclient.INPUT_REGISTER)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if got := soc(); got != 500 {
		t.Fatalf("initial SoC = %d ‰, want 500", got)
	}
	if err := c.WriteRegisters(simulators.BatterySetpoint, []uint16{100, 1}); err != nil { // discharge 100 kW, run
		t.Fatal(err)
	}
	clk.Advance(36 * time.Minute) // 100 kW for ~0.6 h from 200 kWh: 50 % → ~20 %
	got := soc()
	if got < 190 || got > 215 {
		t.Fatalf("SoC after 36 min at 100 kW = %d ‰, want about 200", got)
	}
	clk.Advance(20 * time.Minute) // runs into the 10 % floor
	regs, err := c.ReadRegisters(0, 3, mbclient.INPUT_REGISTER)
	if err != nil {
		t.Fatal(err)
	}
	if regs[0] > 101 || regs[1] != 0 || regs[2]&simulators.AlarmSoCFloor == 0 {
		t.Fatalf("at the floor: SoC %d ‰, power %d kW, alarms %b; want ≤10 %%, 0 kW, floor alarm", regs[0], int16(regs[1]), regs[2])
	}
	charge := uint16(0xFFB0) // -80 kW
	if err := c.WriteRegister(simulators.BatterySetpoint, charge); err != nil {
		t.Fatal(err)
	}
	clk.Advance(30 * time.Minute)
	if got := soc(); got <= regs[0] {
		t.Fatalf("charging did not raise SoC: %d → %d", regs[0], got)
	}
}

func TestBreakerRecloserAndInterlock(t *testing.T) {
	clk := &fakeClock{now: time.Unix(0, 0)}
	addr, _ := simtest.Start(t, simulators.Options{Clock: clk.Now})
	c := client(t, addr, simulators.UnitBreaker)
	status := func() []bool {
		v, err := c.ReadDiscreteInputs(0, 5)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if s := status(); !s[simulators.BreakerInClosed] {
		t.Fatal("breaker should start closed")
	}
	if err := c.WriteCoil(simulators.BreakerCoilOpen, true); err != nil {
		t.Fatal(err)
	}
	if s := status(); !s[simulators.BreakerInOpen] {
		t.Fatal("open command did not open the breaker")
	}
	if err := c.WriteCoil(simulators.BreakerCoilClose, true); err != nil {
		t.Fatal(err)
	}
	// A persistent fault: trip, three reclose attempts 2 s apart, then lockout.
	if err := c.WriteRegister(simulators.BreakerHoldFault, 1); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		clk.Advance(2100 * time.Millisecond)
		_ = status()
	}
	s := status()
	if s[simulators.BreakerInClosed] || !s[simulators.BreakerInLockout] {
		t.Fatalf("after a persistent fault: %v, want open and locked out", s)
	}
	trips, _ := c.ReadRegister(simulators.BreakerRegTrips, mbclient.INPUT_REGISTER)
	if trips != 4 {
		t.Fatalf("trip count = %d, want 4 (first trip + 3 failed recloses)", trips)
	}
	if err := c.WriteCoil(simulators.BreakerCoilClose, true); !errors.Is(err, mbclient.ErrServerDeviceFailure) {
		t.Fatalf("close under fault: err = %v, want the interlock's exception 4", err)
	}
	if err := c.WriteRegister(simulators.BreakerHoldFault, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteCoil(simulators.BreakerCoilReset, true); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteCoil(simulators.BreakerCoilClose, true); err != nil {
		t.Fatalf("close after reset: %v", err)
	}
	if s := status(); !s[simulators.BreakerInClosed] {
		t.Fatal("breaker did not close after the fault cleared and lockout reset")
	}
}

func TestUnknownUnit(t *testing.T) {
	addr, _ := simtest.Start(t, simulators.Options{})
	c := client(t, addr, 42)
	if _, err := c.ReadRegister(0, mbclient.HOLDING_REGISTER); !errors.Is(err, mbclient.ErrGWPathUnavailable) {
		t.Fatalf("unit 42: err = %v, want gateway path unavailable", err)
	}
}

// Model 124 of the battery's SunSpec map limits what its setpoint asks:
// with StorCtl_Mod's discharge bit, to OutWRte per cent of its rating; and
// ChaState and MinRsvPct show the same state as the native registers.
func TestBatteryStorageModel(t *testing.T) {
	clk := &fakeClock{now: time.Unix(0, 0)}
	addr, _ := simtest.Start(t, simulators.Options{Clock: clk.Now})
	c := client(t, addr, simulators.UnitBattery)
	const m124 = 40070 // after "SunS" and the common model
	hdr, err := c.ReadRegisters(m124, 2, mbclient.HOLDING_REGISTER)
	if err != nil || hdr[0] != 124 || hdr[1] != 24 {
		t.Fatalf("model 124 header = %v, %v", hdr, err)
	}
	if err := c.WriteRegisters(m124+12, []uint16{300}); err != nil { // OutWRte 30.0 %
		t.Fatal(err)
	}
	if err := c.WriteRegister(m124+5, simulators.StorCtlDischarge); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteRegisters(simulators.BatterySetpoint, []uint16{80, 1}); err != nil { // discharge 80 kW, run
		t.Fatal(err)
	}
	clk.Advance(10 * time.Second)
	kw, err := c.ReadRegister(simulators.BatteryPower, mbclient.INPUT_REGISTER)
	if err != nil || kw != 30 {
		t.Fatalf("power = %d kW, %v; want the 30 kW limit of OutWRte", int16(kw), err)
	}
	if err := c.WriteRegister(m124+5, 0); err != nil { // limits off
		t.Fatal(err)
	}
	clk.Advance(10 * time.Second)
	if kw, _ := c.ReadRegister(simulators.BatteryPower, mbclient.INPUT_REGISTER); kw != 80 {
		t.Fatalf("power without the limit = %d kW, want the 80 kW setpoint", int16(kw))
	}
	if err := c.WriteRegister(m124+7, 20); err != nil { // MinRsvPct 20 %
		t.Fatal(err)
	}
	floor, _ := c.ReadRegister(simulators.BatterySoCMin, mbclient.HOLDING_REGISTER)
	native, _ := c.ReadRegister(simulators.BatterySoC, mbclient.INPUT_REGISTER)
	chaState, _ := c.ReadRegister(m124+8, mbclient.HOLDING_REGISTER)
	if floor != 20 || chaState != native {
		t.Fatalf("SoC floor %d (want 20 from MinRsvPct), ChaState %d vs native SoC %d", floor, chaState, native)
	}
	for name, w := range map[string]struct {
		addr, v uint16
		want    error
	}{
		"StorCtl_Mod bit 2": {m124 + 5, 4, mbclient.ErrIllegalDataValue},
		"OutWRte 100.1 %":   {m124 + 12, 1001, mbclient.ErrIllegalDataValue},
		"ChaState":          {m124 + 8, 1, mbclient.ErrIllegalDataAddress},
	} {
		if err := c.WriteRegister(w.addr, w.v); !errors.Is(err, w.want) {
			t.Errorf("%s: err = %v, want %v", name, err, w.want)
		}
	}
}

// Another layout moves the inverter's controls with their model, and they
// still work there; the old place is then no control.
func TestInverterMovedLayout(t *testing.T) {
	clk := &fakeClock{now: time.Unix(0, 0)}
	moved := simulators.Layout{Base: 50000, Models: []uint16{120, 123, 103}}
	addr, _ := simtest.Start(t, simulators.Options{Clock: clk.Now, InverterLayout: &moved})
	c := client(t, addr, simulators.UnitInverter)
	const m123 = 50000 + 2 + 68 + 28 // "SunS", model 1, model 120
	const m103 = m123 + 26
	if err := c.WriteRegister(m123+5, 30); err != nil { // WMaxLimPct
		t.Fatal(err)
	}
	clk.Advance(10 * time.Second)
	w, err := c.ReadRegister(m103+14, mbclient.HOLDING_REGISTER)
	if err != nil || w != 3000 {
		t.Fatalf("W = %d (×10 W), %v; want the 30 kW limit", w, err)
	}
	if err := c.WriteRegister(simulators.InverterLimitPct, 30); !errors.Is(err, mbclient.ErrIllegalDataAddress) {
		t.Fatalf("write to 40127 with the map at 50000: %v, want illegal data address", err)
	}
}
