package simulators

import (
	"math"
	"sync"

	mbserver "github.com/simonvetter/modbus"
)

// Inverter register addresses (see the package documentation).
const (
	InverterBase      uint16 = 40000
	InverterCurrent   uint16 = 40072
	InverterPower     uint16 = 40084 // W, scale factor 1 (10 W steps)
	InverterFrequency uint16 = 40086
	InverterEnergy    uint16 = 40094
	InverterState     uint16 = 40108
	InverterConn      uint16 = 40126
	InverterLimitPct  uint16 = 40127
	InverterLimitEna  uint16 = 40131
	inverterEnd       uint16 = 40150

	// InverterRatedW is the inverter's rated AC power.
	InverterRatedW = 100_000.0
	inverterRampW  = 0.2 * InverterRatedW // per second
)

// Inverter operating states (SunSpec St).
const (
	StateOff       = 1
	StateSleeping  = 3
	StateMPPT      = 4
	StateThrottled = 5
	StateStandby   = 8
)

// Inverter simulates a 100 kW three-phase PV inverter.
type Inverter struct {
	mu       sync.Mutex
	ph       physics
	regs     [inverterEnd - InverterBase]uint16
	dayPhase float64 // 0..1 position in the compressed day
	watts    float64
	energyWh float64
}

// NewInverter returns an inverter in the morning of its compressed day,
// connected, with the power limit enabled at 100 %.
func NewInverter(o Options) *Inverter {
	inv := &Inverter{ph: newPhysics(o), dayPhase: 0.2}
	r := func(a uint16) *uint16 { return &inv.regs[a-InverterBase] }
	*r(40000), *r(40001) = 0x5375, 0x6e53 // "SunS"
	*r(40002), *r(40003) = 1, 66
	ascii(inv.regs[4:20], "gridseal")
	ascii(inv.regs[20:36], "SIM-PV-100K")
	ascii(inv.regs[44:52], "1.0.0")
	ascii(inv.regs[52:68], "GS-PV-000001")
	*r(40068) = 1
	*r(40070), *r(40071) = 103, 50
	*r(40076) = uint16(0xFFFF) // A_SF -1
	*r(40083) = uint16(0xFFFF) // V_SF -1
	*r(40085) = 1              // W_SF
	*r(40087) = uint16(0xFFFE) // Hz_SF -2
	*r(40102) = 1              // DCW_SF
	*r(40107) = uint16(0xFFFF) // Tmp_SF -1
	*r(40122), *r(40123) = 123, 24
	*r(InverterConn) = 1
	*r(InverterLimitPct) = 100
	*r(InverterLimitEna) = 1
	*r(40148), *r(40149) = 0xFFFF, 0
	inv.watts = InverterRatedW * inv.irradiance() // start in steady state
	inv.update()
	return inv
}

// Kind implements Device.
func (inv *Inverter) Kind() string { return "inverter" }

func (inv *Inverter) reg(a uint16) *uint16 { return &inv.regs[a-InverterBase] }

// Irradiance returns the available fraction of rated power at this moment of
// the compressed day: a sine over daylight, zero at night.
func (inv *Inverter) irradiance() float64 {
	return math.Max(0, math.Sin(2*math.Pi*inv.dayPhase))
}

// update advances the physics to now and refreshes the measured registers.
// Callers hold mu.
func (inv *Inverter) update() {
	dt := inv.ph.step()
	inv.dayPhase = math.Mod(inv.dayPhase+dt/inv.ph.opts.DayLength.Seconds(), 1)
	avail := InverterRatedW * inv.irradiance()
	target := avail
	state := uint16(StateMPPT)
	if limit := InverterRatedW * float64(*inv.reg(InverterLimitPct)) / 100; *inv.reg(InverterLimitEna) == 1 && limit < avail {
		target, state = limit, StateThrottled
	}
	if *inv.reg(InverterConn) == 0 {
		target, state = 0, StateStandby
	} else if avail == 0 {
		state = StateSleeping
	}
	inv.watts = approach(inv.watts, target, inverterRampW*dt)
	inv.energyWh += inv.watts * dt / 3600
	w := inv.watts
	*inv.reg(InverterCurrent) = uint16(math.Round(w / (3 * 230) * 10))
	for i := uint16(0); i < 3; i++ {
		*inv.reg(40080 + i) = 2300 + i
	}
	*inv.reg(InverterPower) = uint16(math.Round(w / 10))
	*inv.reg(InverterFrequency) = 5000
	e := uint32(inv.energyWh)
	*inv.reg(InverterEnergy), *inv.reg(InverterEnergy + 1) = uint16(e>>16), uint16(e)
	*inv.reg(40101) = uint16(math.Round(w * 1.03 / 10))
	*inv.reg(40103) = uint16(250 + w/InverterRatedW*200)
	*inv.reg(InverterState) = state
}

// Watts returns the inverter's AC output now.
func (inv *Inverter) Watts() float64 {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.update()
	return inv.watts
}

// HandleHoldingRegisters implements mbserver.RequestHandler.
func (inv *Inverter) HandleHoldingRegisters(req *mbserver.HoldingRegistersRequest) ([]uint16, error) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.update()
	if !req.IsWrite {
		return readRange(inv.regs[:], InverterBase, req.Addr, req.Quantity)
	}
	for i, v := range req.Args {
		a := req.Addr + uint16(i)
		switch a {
		case InverterConn, InverterLimitEna:
			if v > 1 {
				return nil, mbserver.ErrIllegalDataValue
			}
		case InverterLimitPct:
			if v > 100 {
				return nil, mbserver.ErrIllegalDataValue
			}
		default:
			return nil, mbserver.ErrIllegalDataAddress
		}
	}
	for i, v := range req.Args {
		*inv.reg(req.Addr + uint16(i)) = v
	}
	return nil, nil
}

// HandleInputRegisters implements mbserver.RequestHandler: the inverter
// has none.
func (inv *Inverter) HandleInputRegisters(*mbserver.InputRegistersRequest) ([]uint16, error) {
	return nil, mbserver.ErrIllegalDataAddress
}

// HandleCoils implements mbserver.RequestHandler: the inverter has none.
func (inv *Inverter) HandleCoils(*mbserver.CoilsRequest) ([]bool, error) {
	return nil, mbserver.ErrIllegalDataAddress
}

// HandleDiscreteInputs implements mbserver.RequestHandler: the inverter has none.
func (inv *Inverter) HandleDiscreteInputs(*mbserver.DiscreteInputsRequest) ([]bool, error) {
	return nil, mbserver.ErrIllegalDataAddress
}
