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

// Battery simulates a 100 kW / 200 kWh battery energy storage system.
type Battery struct {
	mu          sync.Mutex
	ph          physics
	hold        [4]uint16
	input       [12]uint16
	soc         float64 // 0..1
	kw          float64 // + discharging
	charged     float64 // kWh
	discharged  float64 // kWh
	temperature float64
}

// NewBattery returns a battery at 50 % state of charge, in standby.
func NewBattery(o Options) *Battery {
	b := &Battery{ph: newPhysics(o), soc: 0.5, temperature: 22}
	b.hold[BatterySoCMin], b.hold[BatterySoCMax] = 10, 90
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
