package simulators

import (
	"math"
	"slices"
	"sync"

	mbserver "github.com/simonvetter/modbus"
)

// Inverter register addresses in the default layout (see the package
// documentation). With Options.Layout the controls and measurements move
// with their models; these constants name the default places.
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

// Layout places a simulator's SunSpec map: the address of its "SunS"
// marker (0, 40000 or 50000) and the models after the common model, in
// chain order. The inverter knows models 103, 120, 121 and 123 and always
// has 103 and 123 (appended if not listed); the battery 124 and 713 (always
// both). Other ids are left out.
type Layout struct {
	Base   uint16
	Models []uint16
}

// DefaultInverterLayout is the inverter's standard map: models 1, 103, 123,
// 120 and 121 from 40000, so the controls stay where they always were.
func DefaultInverterLayout() Layout { return Layout{Base: 40000, Models: []uint16{103, 123, 120, 121}} }

// SunSpec model lengths (registers after ID and L), from the public model
// definitions.
var modelLen = map[uint16]uint16{1: 66, 103: 50, 120: 26, 121: 30, 123: 24, 124: 24, 713: 7}

// Not-implemented values of SunSpec points.
const (
	naUint16 uint16 = 0xFFFF
	naInt16  uint16 = 0x8000
)

// chain lays out a SunSpec map: "SunS", the common model, then each model
// of l in order, then the end marker. It returns the registers from l.Base
// and the address of each model's ID register. Models not in known are left
// out; those in required are appended if l does not list them.
func chain(l Layout, known, required []uint16, common func(regs []uint16)) ([]uint16, map[uint16]uint16) {
	ids := []uint16{1}
	for _, id := range l.Models {
		if slices.Contains(known, id) && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	for _, id := range required {
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	n := 2 + 2
	for _, id := range ids {
		n += 2 + int(modelLen[id])
	}
	regs := make([]uint16, n)
	regs[0], regs[1] = 0x5375, 0x6e53 // "SunS"
	at := map[uint16]uint16{}
	off := 2
	for _, id := range ids {
		at[id] = l.Base + uint16(off)
		regs[off], regs[off+1] = id, modelLen[id]
		off += 2 + int(modelLen[id])
	}
	regs[off], regs[off+1] = 0xFFFF, 0
	common(regs[at[1]-l.Base:])
	return regs, at
}

// Inverter simulates a 100 kW three-phase PV inverter.
type Inverter struct {
	mu       sync.Mutex
	ph       physics
	base     uint16
	regs     []uint16
	m103     uint16 // address of model 103's ID register
	conn     uint16 // model 123's Conn, WMaxLimPct and WMaxLim_Ena
	limPct   uint16
	limEna   uint16
	dayPhase float64 // 0..1 position in the compressed day
	watts    float64
	energyWh float64
}

// NewInverter returns an inverter in the morning of its compressed day,
// connected, with the power limit enabled at 100 %.
func NewInverter(o Options) *Inverter {
	l := DefaultInverterLayout()
	if o.InverterLayout != nil {
		l = *o.InverterLayout
	}
	inv := &Inverter{ph: newPhysics(o), dayPhase: 0.2, base: l.Base}
	var at map[uint16]uint16
	inv.regs, at = chain(l, []uint16{103, 120, 121, 123}, []uint16{103, 123}, func(c []uint16) {
		ascii(c[2:18], "gridseal")
		ascii(c[18:34], "SIM-PV-100K")
		ascii(c[42:50], "1.0.0")
		ascii(c[50:66], "GS-PV-000001")
		c[66] = uint16(UnitInverter) // DA
	})
	m := func(id, off uint16) *uint16 { return inv.reg(at[id] + off) }
	inv.m103 = at[103]
	*m(103, 6) = uint16(0xFFFF)  // A_SF -1
	*m(103, 13) = uint16(0xFFFF) // V_SF -1
	*m(103, 15) = 1              // W_SF
	*m(103, 17) = uint16(0xFFFE) // Hz_SF -2
	*m(103, 32) = 1              // DCW_SF
	*m(103, 37) = uint16(0xFFFF) // Tmp_SF -1
	inv.conn, inv.limPct, inv.limEna = at[123]+4, at[123]+5, at[123]+9
	*inv.reg(inv.conn) = 1
	*inv.reg(inv.limPct) = 100 // WMaxLimPct_SF (offset 23) 0: whole per cent
	*inv.reg(inv.limEna) = 1
	if a, ok := at[120]; ok { // nameplate
		r := inv.regs[a-l.Base:]
		r[2] = 4                                                                                   // DERTyp: PV
		r[3], r[4] = 100, 3                                                                        // WRtg 100 kW (WRtg_SF 3)
		r[5], r[6] = 100, 3                                                                        // VARtg 100 kVA
		r[7], r[8], r[9], r[10], r[11] = 44, 44, uint16(0xFFD4), uint16(0xFFD4), 3                 // VArRtgQ1..4 ±44 kvar
		r[12], r[13] = 145, 0                                                                      // ARtg 145 A
		r[14], r[15], r[16], r[17], r[18] = uint16(0xFFB0), uint16(0xFFB0), 80, 80, uint16(0xFFFE) // PFRtgQ1..4 ∓0.80
		for i := 19; i <= 25; i += 2 {                                                             // no storage: WHRtg, AhrRtg, MaxChaRte, MaxDisChaRte
			r[i], r[i+1] = naUint16, naInt16
		}
	}
	if a, ok := at[121]; ok { // settings
		r := inv.regs[a-l.Base:]
		r[2] = 100                                                                     // WMax 100 kW (WMax_SF 3)
		r[3], r[4], r[5], r[6] = 230, 0, 253, 207                                      // VRef, VRefOfs, VMax, VMin (V, SF 0)
		r[7] = 100                                                                     // VAMax 100 kVA
		r[8], r[9], r[10], r[11] = 44, 44, uint16(0xFFD4), uint16(0xFFD4)              // VArMaxQ1..4 kvar
		r[12] = 20                                                                     // WGra: 20 % WMax per second, the simulated ramp
		r[13], r[14], r[15], r[16] = uint16(0xFFB0), uint16(0xFFB0), 80, 80            // PFMinQ1..4 (SF -2)
		r[17], r[18], r[19], r[20], r[21] = naUint16, naUint16, naUint16, 50, naUint16 // VArAct, ClcTotVA, MaxRmpRte, ECPNomHz 50 Hz, ConnPh
		r[22], r[23], r[24], r[25], r[26], r[27], r[28], r[29], r[30], r[31] =
			3, 0, 0, 0, 3, 3, 0, uint16(0xFFFE), naInt16, 0 // the scale factors
	}
	inv.watts = InverterRatedW * inv.irradiance() // start in steady state
	inv.update()
	return inv
}

// Kind implements Device.
func (inv *Inverter) Kind() string { return "inverter" }

func (inv *Inverter) reg(a uint16) *uint16 { return &inv.regs[a-inv.base] }

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
	if limit := InverterRatedW * float64(*inv.reg(inv.limPct)) / 100; *inv.reg(inv.limEna) == 1 && limit < avail {
		target, state = limit, StateThrottled
	}
	if *inv.reg(inv.conn) == 0 {
		target, state = 0, StateStandby
	} else if avail == 0 {
		state = StateSleeping
	}
	inv.watts = approach(inv.watts, target, inverterRampW*dt)
	inv.energyWh += inv.watts * dt / 3600
	w := inv.watts
	m := func(off uint16) *uint16 { return inv.reg(inv.m103 + off) }
	*m(2) = uint16(math.Round(w / (3 * 230) * 10)) // A
	for i := uint16(0); i < 3; i++ {
		*m(10 + i) = 2300 + i // PhVphA..C
	}
	*m(14) = uint16(math.Round(w / 10)) // W
	*m(16) = 5000                       // Hz
	e := uint32(inv.energyWh)
	*m(24), *m(25) = uint16(e>>16), uint16(e)   // WH
	*m(31) = uint16(math.Round(w * 1.03 / 10))  // DCW
	*m(33) = uint16(250 + w/InverterRatedW*200) // TmpCab
	*m(38) = state                              // St
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
		return readRange(inv.regs, inv.base, req.Addr, req.Quantity)
	}
	for i, v := range req.Args {
		a := req.Addr + uint16(i)
		switch a {
		case inv.conn, inv.limEna:
			if v > 1 {
				return nil, mbserver.ErrIllegalDataValue
			}
		case inv.limPct:
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
