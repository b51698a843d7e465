package simulators

import (
	"math"
	"sync"

	mbserver "github.com/simonvetter/modbus"
)

// Battery register addresses (see the package documentation).
const (
	BatterySetpoint uint16 = 0 // holding: kW, int16, + discharge
	BatteryMode     uint16 = 1 // holding: 0 standby, 1 run
	BatterySoCMin   uint16 = 2 // holding: %
	BatterySoCMax   uint16 = 3 // holding: %

	BatterySoC    uint16 = 0 // input: 0.1 %
	BatteryPower  uint16 = 1 // input: kW, int16
	BatteryAlarms uint16 = 2 // input: bit field
	BatteryState  uint16 = 11

	// BatteryCapacityKWh and BatteryRatedKW size the simulated system.
	BatteryCapacityKWh = 200.0
	BatteryRatedKW     = 100.0
	batteryRampKW      = 50.0 // per second
)

// Battery alarm bits (input register 2).
const (
	AlarmSoCFloor   = 1 << 0
	AlarmSoCCeiling = 1 << 1
	AlarmOverRating = 1 << 2
)

// DefaultBatteryLayout is the battery's standard SunSpec map: models 1, 124
// (basic storage controls) and 713 (DER storage capacity) from 40000.
func DefaultBatteryLayout() Layout { return Layout{Base: 40000, Models: []uint16{124, 713}} }

// Model 124 StorCtl_Mod bits: the charge and discharge limits in force.
const (
	StorCtlCharge    = 1 << 0
	StorCtlDischarge = 1 << 1
)

// Battery simulates a 100 kW / 200 kWh battery energy storage system.
type Battery struct {
	mu          sync.Mutex
	ph          physics
	hold        [4]uint16
	input       [12]uint16
	ssBase      uint16
	ss          []uint16 // the SunSpec map from ssBase
	m124, m713  uint16   // addresses of the models' ID registers
	soc         float64  // 0..1
	kw          float64  // + discharging
	charged     float64  // kWh
	discharged  float64  // kWh
	temperature float64
}

// NewBattery returns a battery at 50 % state of charge, in standby.
func NewBattery(o Options) *Battery {
	b := &Battery{ph: newPhysics(o), soc: 0.5, temperature: 22}
	b.hold[BatterySoCMin], b.hold[BatterySoCMax] = 10, 90
	l := DefaultBatteryLayout()
	if o.BatteryLayout != nil {
		l = *o.BatteryLayout
	}
	var at map[uint16]uint16
	b.ssBase = l.Base
	b.ss, at = chain(l, []uint16{124, 713}, []uint16{124, 713}, func(c []uint16) {
		ascii(c[2:18], "gridseal")
		ascii(c[18:34], "SIM-BESS-100K")
		ascii(c[42:50], "1.0.0")
		ascii(c[50:66], "GS-BESS-000001")
		c[66] = uint16(UnitBattery) // DA
	})
	b.m124, b.m713 = at[124], at[713]
	r := b.ss[b.m124-l.Base:]
	r[2] = uint16(BatteryRatedKW)                                                  // WChaMax, kW (WChaMax_SF 3)
	r[3], r[4] = 50, 50                                                            // WChaGra, WDisChaGra: % WChaMax per second (the ramp)
	r[6] = naUint16                                                                // VAChaMax
	r[12], r[13] = 1000, 1000                                                      // OutWRte, InWRte: 100.0 % (InOutWRte_SF -1)
	r[14], r[15], r[16] = 0, 0, 0                                                  // InOutWRte_WinTms, _RvrtTms, _RmpTms
	r[17] = 1                                                                      // ChaGriSet: GRID
	r[18], r[19], r[20], r[21] = 3, 0, naInt16, 0                                  // WChaMax_SF, WChaDisChaGra_SF, VAChaMax_SF, MinRsvPct_SF
	r[22], r[23], r[24], r[25] = uint16(0xFFFF), 0, uint16(0xFFFF), uint16(0xFFFF) // ChaState_SF -1, StorAval_SF 0, InBatV_SF -1, InOutWRte_SF -1
	r = b.ss[b.m713-l.Base:]
	r[7], r[8] = 2, uint16(0xFFFF) // WH_SF 2, Pct_SF -1
	b.update()
	return b
}

// Kind implements Device.
func (b *Battery) Kind() string { return "battery" }

// update integrates state of charge to now in steps of at most a second
// (at most 10 000 steps), so limits are met where they are crossed. Callers hold mu.
func (b *Battery) update() {
	dt := b.ph.step()
	n := int(math.Ceil(dt))
	if n > 10_000 {
		n = 10_000
	}
	alarms := b.input[BatteryAlarms]
	for i := 0; i < n; i++ {
		alarms = b.advance(dt / float64(n))
	}
	b.publish(alarms)
}

// advance integrates dt seconds and returns the alarms in force.
func (b *Battery) advance(dt float64) uint16 {
	var alarms uint16
	target := 0.0
	if b.hold[BatteryMode] == 1 {
		target = float64(int16(b.hold[BatterySetpoint]))
	}
	if math.Abs(target) > BatteryRatedKW {
		alarms |= AlarmOverRating
		target = math.Copysign(BatteryRatedKW, target)
	}
	// Model 124's rate limits, when StorCtl_Mod puts them in force.
	ctl := b.ss[b.m124-b.ssBase:]
	if out := float64(int16(ctl[12])) / 1000 * BatteryRatedKW; ctl[5]&StorCtlDischarge != 0 && target > out {
		target = max(out, 0)
	}
	if in := float64(int16(ctl[13])) / 1000 * BatteryRatedKW; ctl[5]&StorCtlCharge != 0 && -target > in {
		target = -max(in, 0)
	}
	floor, ceil := float64(b.hold[BatterySoCMin])/100, float64(b.hold[BatterySoCMax])/100
	if target > 0 && b.soc <= floor {
		target, alarms = 0, alarms|AlarmSoCFloor
	}
	if target < 0 && b.soc >= ceil {
		target, alarms = 0, alarms|AlarmSoCCeiling
	}
	b.kw = approach(b.kw, target, batteryRampKW*dt)
	kwh := b.kw * dt / 3600
	b.soc = clamp(b.soc-kwh/BatteryCapacityKWh, 0, 1)
	if kwh > 0 {
		b.discharged += kwh
	} else {
		b.charged -= kwh
	}
	b.temperature = approach(b.temperature, 22+math.Abs(b.kw)*0.1, 0.05*dt)
	return alarms
}

// publish refreshes the input registers from the state.
func (b *Battery) publish(alarms uint16) {
	state := uint16(0)
	switch {
	case b.kw < -0.05:
		state = 1
	case b.kw > 0.05:
		state = 2
	case alarms&(AlarmSoCFloor|AlarmSoCCeiling) != 0:
		state = 3
	}
	in := &b.input
	in[BatterySoC] = uint16(math.Round(b.soc * 1000))
	in[BatteryPower] = uint16(int16(math.Round(b.kw)))
	in[BatteryAlarms] = alarms
	in[3], in[4] = uint16(BatteryCapacityKWh), uint16(BatteryRatedKW)
	in[5] = uint16(7000 + b.soc*1200)
	in[6] = uint16(b.temperature * 10)
	c, d := uint32(b.charged), uint32(b.discharged)
	in[7], in[8], in[9], in[10] = uint16(c>>16), uint16(c), uint16(d>>16), uint16(d)
	in[BatteryState] = state
	// The SunSpec view of the same state.
	r := b.ss[b.m124-b.ssBase:]
	r[7] = b.hold[BatterySoCMin]                                       // MinRsvPct
	r[8] = in[BatterySoC]                                              // ChaState, 0.1 %
	r[9] = uint16(math.Round(b.soc * BatteryCapacityKWh * 1000 / 760)) // StorAval, Ah at a nominal 760 V
	r[10] = in[5]                                                      // InBatV, 0.1 V
	r[11] = chaSt(b.hold[BatteryMode], state, alarms)                  // ChaSt
	r = b.ss[b.m713-b.ssBase:]
	r[2] = uint16(BatteryCapacityKWh * 10)                     // WHRtg, in 100 Wh (WH_SF 2)
	r[3] = uint16(math.Round(b.soc * BatteryCapacityKWh * 10)) // WHAvail
	r[4], r[5], r[6] = in[BatterySoC], 1000, 0                 // SoC 0.1 %, SoH 100.0 %, Sta OK
}

// chaSt is model 124's ChaSt: 1 off, 2 empty, 3 discharging, 4 charging,
// 5 full, 6 holding.
func chaSt(mode, state, alarms uint16) uint16 {
	switch {
	case state == 1:
		return 4
	case state == 2:
		return 3
	case alarms&AlarmSoCFloor != 0:
		return 2
	case alarms&AlarmSoCCeiling != 0:
		return 5
	case mode == 0:
		return 1
	}
	return 6
}

// SoC returns the state of charge, 0..1.
func (b *Battery) SoC() float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.update()
	return b.soc
}

// HandleHoldingRegisters implements mbserver.RequestHandler.
func (b *Battery) HandleHoldingRegisters(req *mbserver.HoldingRegistersRequest) ([]uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.update()
	if req.Addr >= b.ssBase && b.ssBase >= uint16(len(b.hold)) {
		return b.sunspec(req)
	}
	if !req.IsWrite {
		return readRange(b.hold[:], 0, req.Addr, req.Quantity)
	}
	if int(req.Addr)+len(req.Args) > len(b.hold) {
		return nil, mbserver.ErrIllegalDataAddress
	}
	next := b.hold
	copy(next[req.Addr:], req.Args)
	if sp := int16(next[BatterySetpoint]); sp < -2*BatteryRatedKW || sp > 2*BatteryRatedKW ||
		next[BatteryMode] > 1 || next[BatterySoCMin] >= next[BatterySoCMax] || next[BatterySoCMax] > 100 {
		return nil, mbserver.ErrIllegalDataValue
	}
	b.hold = next
	return nil, nil
}

// sunspec serves the SunSpec map. Writable: model 124's StorCtl_Mod (bits
// 0 and 1), MinRsvPct (the SoC floor, below the ceiling), OutWRte and InWRte
// (0..100.0 %) and their three timings. Callers hold mu.
func (b *Battery) sunspec(req *mbserver.HoldingRegistersRequest) ([]uint16, error) {
	if !req.IsWrite {
		return readRange(b.ss, b.ssBase, req.Addr, req.Quantity)
	}
	if int(req.Addr)+len(req.Args) > int(b.m124)+2+24 || req.Addr < b.m124 {
		return nil, mbserver.ErrIllegalDataAddress
	}
	floor := b.hold[BatterySoCMin]
	for i, v := range req.Args {
		switch off := req.Addr + uint16(i) - b.m124; off {
		case 5: // StorCtl_Mod
			if v > StorCtlCharge|StorCtlDischarge {
				return nil, mbserver.ErrIllegalDataValue
			}
		case 7: // MinRsvPct
			if v >= b.hold[BatterySoCMax] {
				return nil, mbserver.ErrIllegalDataValue
			}
			floor = v
		case 12, 13: // OutWRte, InWRte
			if v > 1000 {
				return nil, mbserver.ErrIllegalDataValue
			}
		case 14, 15, 16:
		default:
			return nil, mbserver.ErrIllegalDataAddress
		}
	}
	copy(b.ss[req.Addr-b.ssBase:], req.Args)
	b.hold[BatterySoCMin] = floor
	return nil, nil
}

// HandleInputRegisters implements mbserver.RequestHandler.
func (b *Battery) HandleInputRegisters(req *mbserver.InputRegistersRequest) ([]uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.update()
	return readRange(b.input[:], 0, req.Addr, req.Quantity)
}

// HandleCoils implements mbserver.RequestHandler: the battery has none.
func (b *Battery) HandleCoils(*mbserver.CoilsRequest) ([]bool, error) {
	return nil, mbserver.ErrIllegalDataAddress
}

// HandleDiscreteInputs implements mbserver.RequestHandler: the battery has none.
func (b *Battery) HandleDiscreteInputs(*mbserver.DiscreteInputsRequest) ([]bool, error) {
	return nil, mbserver.ErrIllegalDataAddress
}
