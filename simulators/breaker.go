package simulators

import (
	"sync"

	mbserver "github.com/simonvetter/modbus"
)

// Breaker addresses (see the package documentation).
const (
	BreakerCoilClose   uint16 = 0
	BreakerCoilOpen    uint16 = 1
	BreakerCoilReset   uint16 = 2
	BreakerCoilReclose uint16 = 3

	BreakerInClosed    uint16 = 0
	BreakerInOpen      uint16 = 1
	BreakerInFault     uint16 = 2
	BreakerInLockout   uint16 = 3
	BreakerInInterlock uint16 = 4

	BreakerRegTrips    uint16 = 0 // input
	BreakerRegOps      uint16 = 1 // input
	BreakerRegCurrent  uint16 = 2 // input
	BreakerRegAttempts uint16 = 3 // input

	BreakerHoldFault        uint16 = 0
	BreakerHoldRecloseDelay uint16 = 1 // 0.1 s
	BreakerHoldMaxAttempts  uint16 = 2
)

// Breaker simulates a feeder breaker with an auto-recloser and a close
// interlock.
type Breaker struct {
	mu        sync.Mutex
	ph        physics
	simNow    float64 // simulated seconds since start
	closed    bool
	lockout   bool
	reclose   bool
	trips     uint16
	ops       uint16
	attempts  uint16
	reclAt    float64 // simulated time of the pending reclose; 0 if none
	hold      [3]uint16
	interlock bool // last close was refused
}

// NewBreaker returns a closed breaker with reclosing enabled (3 attempts, 2 s apart).
func NewBreaker(o Options) *Breaker {
	br := &Breaker{ph: newPhysics(o), closed: true, reclose: true}
	br.hold[BreakerHoldRecloseDelay] = 20
	br.hold[BreakerHoldMaxAttempts] = 3
	return br
}

// Kind implements Device.
func (br *Breaker) Kind() string { return "breaker" }

func (br *Breaker) fault() bool { return br.hold[BreakerHoldFault] != 0 }

// update runs protection and reclosing up to now. Callers hold mu.
func (br *Breaker) update() {
	br.simNow += br.ph.step()
	for i := 0; i < 16; i++ { // bounded: each pass is a trip or a reclose
		switch {
		case br.closed && br.fault():
			br.closed = false
			br.trips++
			br.ops++
			if br.reclose && br.attempts < br.hold[BreakerHoldMaxAttempts] {
				br.reclAt = br.simNow + float64(br.hold[BreakerHoldRecloseDelay])/10
			} else {
				br.lockout, br.reclAt = true, 0
			}
		case !br.closed && br.reclAt > 0 && br.simNow >= br.reclAt:
			br.reclAt = 0
			br.attempts++
			br.closed = true
			br.ops++
		default:
			return
		}
	}
}

func (br *Breaker) current() uint16 {
	switch {
	case !br.closed:
		return 0
	case br.fault():
		return 2400
	}
	return 120
}

// Closed reports whether the breaker is closed now.
func (br *Breaker) Closed() bool {
	br.mu.Lock()
	defer br.mu.Unlock()
	br.update()
	return br.closed
}

// HandleCoils implements mbserver.RequestHandler.
func (br *Breaker) HandleCoils(req *mbserver.CoilsRequest) ([]bool, error) {
	br.mu.Lock()
	defer br.mu.Unlock()
	br.update()
	if int(req.Addr)+int(req.Quantity) > 4 {
		return nil, mbserver.ErrIllegalDataAddress
	}
	if !req.IsWrite {
		coils := []bool{false, false, false, br.reclose}
		return coils[req.Addr : req.Addr+req.Quantity], nil
	}
	for i, on := range req.Args {
		switch req.Addr + uint16(i) {
		case BreakerCoilClose:
			if !on {
				continue
			}
			if br.fault() || br.lockout {
				br.interlock = true
				return nil, mbserver.ErrServerDeviceFailure
			}
			if !br.closed {
				br.closed, br.ops, br.interlock = true, br.ops+1, false
			}
		case BreakerCoilOpen:
			if on && br.closed {
				br.closed, br.ops, br.reclAt = false, br.ops+1, 0
			}
		case BreakerCoilReset:
			if on && !br.fault() {
				br.lockout, br.attempts, br.interlock = false, 0, false
			}
		case BreakerCoilReclose:
			br.reclose = on
		}
	}
	return nil, nil
}

// HandleDiscreteInputs implements mbserver.RequestHandler.
func (br *Breaker) HandleDiscreteInputs(req *mbserver.DiscreteInputsRequest) ([]bool, error) {
	br.mu.Lock()
	defer br.mu.Unlock()
	br.update()
	in := []bool{br.closed, !br.closed, br.fault(), br.lockout, br.interlock, br.reclose}
	if int(req.Addr)+int(req.Quantity) > len(in) {
		return nil, mbserver.ErrIllegalDataAddress
	}
	return in[req.Addr : req.Addr+req.Quantity], nil
}

// HandleInputRegisters implements mbserver.RequestHandler.
func (br *Breaker) HandleInputRegisters(req *mbserver.InputRegistersRequest) ([]uint16, error) {
	br.mu.Lock()
	defer br.mu.Unlock()
	br.update()
	regs := []uint16{br.trips, br.ops, br.current(), br.attempts}
	return readRange(regs, 0, req.Addr, req.Quantity)
}

// HandleHoldingRegisters implements mbserver.RequestHandler.
func (br *Breaker) HandleHoldingRegisters(req *mbserver.HoldingRegistersRequest) ([]uint16, error) {
	br.mu.Lock()
	defer br.mu.Unlock()
	br.update()
	if !req.IsWrite {
		return readRange(br.hold[:], 0, req.Addr, req.Quantity)
	}
	if int(req.Addr)+len(req.Args) > len(br.hold) {
		return nil, mbserver.ErrIllegalDataAddress
	}
	next := br.hold
	copy(next[req.Addr:], req.Args)
	if next[BreakerHoldFault] > 1 || next[BreakerHoldMaxAttempts] > 10 || next[BreakerHoldRecloseDelay] > 600 {
		return nil, mbserver.ErrIllegalDataValue
	}
	if next[BreakerHoldFault] == 0 && br.fault() {
		br.attempts = 0 // fault cleared: the next fault starts a fresh reclose cycle
	}
	br.hold = next
	br.update()
	return nil, nil
}
