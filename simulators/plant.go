package simulators

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"sync"
	"time"

	mbserver "github.com/simonvetter/modbus"
)

// Clock returns the current time. Tests may pass a clock they advance.
type Clock func() time.Time

// Options tune the simulated physics.
type Options struct {
	Clock     Clock         // default time.Now
	Speed     float64       // physics runs this many times faster than Clock; default 1
	DayLength time.Duration // length of the inverter's compressed day; default 20 min
	// InverterLayout and BatteryLayout move the devices' SunSpec maps, as
	// another firmware would; nil: DefaultInverterLayout, DefaultBatteryLayout.
	InverterLayout, BatteryLayout *Layout
}

func (o Options) withDefaults() Options {
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Speed <= 0 {
		o.Speed = 1
	}
	if o.DayLength <= 0 {
		o.DayLength = 20 * time.Minute
	}
	return o
}

// Device is one simulated controller.
type Device interface {
	mbserver.RequestHandler
	// Kind names the device: inverter, battery or breaker.
	Kind() string
}

// Plant routes requests by unit id to devices, as a Modbus gateway does.
// Its handlers are safe for concurrent use.
type Plant struct {
	mu    sync.Mutex
	units map[uint8]Device
}

// NewPlant returns a plant with the given devices by unit id.
func NewPlant(units map[uint8]Device) *Plant {
	return &Plant{units: units}
}

// DefaultUnits are the unit ids of the standard plant.
const (
	UnitInverter uint8 = 1
	UnitBattery  uint8 = 2
	UnitBreaker  uint8 = 3
)

// NewStandardPlant returns a plant holding the named kind of device
// ("inverter", "battery", "breaker") or all three ("all") on their default units.
func NewStandardPlant(kind string, o Options) (*Plant, error) {
	units := map[uint8]Device{}
	if kind == "all" || kind == "inverter" {
		units[UnitInverter] = NewInverter(o)
	}
	if kind == "all" || kind == "battery" {
		units[UnitBattery] = NewBattery(o)
	}
	if kind == "all" || kind == "breaker" {
		units[UnitBreaker] = NewBreaker(o)
	}
	if len(units) == 0 {
		return nil, fmt.Errorf("unknown device %q: want inverter, battery, breaker or all", kind)
	}
	return NewPlant(units), nil
}

// Device returns the device on unit u, or nil.
func (p *Plant) Device(u uint8) Device {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.units[u]
}

// forward hands req to the device at unit with handle, or answers
// gateway path unavailable when there is none.
func forward[Req, Resp any](p *Plant, unit uint8, req Req, handle func(Device, Req) (Resp, error)) (Resp, error) {
	d := p.Device(unit)
	if d == nil {
		var none Resp
		return none, mbserver.ErrGWPathUnavailable
	}
	return handle(d, req)
}

// HandleCoils implements mbserver.RequestHandler.
func (p *Plant) HandleCoils(req *mbserver.CoilsRequest) ([]bool, error) {
	return forward(p, req.UnitId, req, Device.HandleCoils)
}

// HandleDiscreteInputs implements mbserver.RequestHandler.
func (p *Plant) HandleDiscreteInputs(req *mbserver.DiscreteInputsRequest) ([]bool, error) {
	return forward(p, req.UnitId, req, Device.HandleDiscreteInputs)
}

// HandleHoldingRegisters implements mbserver.RequestHandler.
func (p *Plant) HandleHoldingRegisters(req *mbserver.HoldingRegistersRequest) ([]uint16, error) {
	return forward(p, req.UnitId, req, Device.HandleHoldingRegisters)
}

// HandleInputRegisters implements mbserver.RequestHandler.
func (p *Plant) HandleInputRegisters(req *mbserver.InputRegistersRequest) ([]uint16, error) {
	return forward(p, req.UnitId, req, Device.HandleInputRegisters)
}

// Server is a running simulator endpoint.
type Server struct {
	Addr string
	srv  *mbserver.ModbusServer
}

// Limits of a simulator's listener.
const (
	maxSimClients = 64
	simIdle       = 5 * time.Minute
)

// Start serves the plant on addr (host:port; port 0 picks a free port).
func Start(addr string, p *Plant) (*Server, error) {
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		bind := addr
		if _, port, err := net.SplitHostPort(addr); err == nil && port == "0" {
			free, err := freePort(addr)
			if err != nil {
				return nil, err
			}
			bind = free
		}
		srv, err := mbserver.NewServer(&mbserver.ServerConfiguration{
			URL:        "tcp://" + bind,
			Timeout:    simIdle,
			MaxClients: maxSimClients,
			Logger:     log.New(io.Discard, "", 0),
		}, p)
		if err != nil {
			return nil, fmt.Errorf("simulator on %s: %w", bind, err)
		}
		if err := srv.Start(); err != nil {
			lastErr = fmt.Errorf("simulator on %s: %w", bind, err)
			if bind != addr { // a picked port was taken meanwhile: pick again
				continue
			}
			return nil, lastErr
		}
		return &Server{Addr: bind, srv: srv}, nil
	}
	return nil, lastErr
}

// Stop closes the listener and every client connection.
func (s *Server) Stop() error { return s.srv.Stop() }

// freePort asks the kernel for a free port on addr's host. The library binds
// by address, not by listener, so the port is released before it binds.
func freePort(addr string) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("pick a port on %s: %w", addr, err)
	}
	a := ln.Addr().String()
	if err := ln.Close(); err != nil {
		return "", errors.Join(fmt.Errorf("release port %s", a), err)
	}
	return a, nil
}

// physics keeps simulated time for one device.
type physics struct {
	opts Options
	last time.Time
}

func newPhysics(o Options) physics {
	o = o.withDefaults()
	return physics{opts: o, last: o.Clock()}
}

// step returns the simulated seconds elapsed since the previous call.
func (ph *physics) step() float64 {
	now := ph.opts.Clock()
	dt := now.Sub(ph.last).Seconds() * ph.opts.Speed
	ph.last = now
	if dt < 0 {
		return 0
	}
	return dt
}

// register helpers -----------------------------------------------------------

func ascii(dst []uint16, s string) {
	for i := range dst {
		var hi, lo byte
		if 2*i < len(s) {
			hi = s[2*i]
		}
		if 2*i+1 < len(s) {
			lo = s[2*i+1]
		}
		dst[i] = uint16(hi)<<8 | uint16(lo)
	}
}

func clamp(v, lo, hi float64) float64 {
	if v < lo {
		return lo
	}
	if v > hi {
		return hi
	}
	return v
}

func approach(cur, target, maxStep float64) float64 {
	if target > cur {
		return min(target, cur+maxStep)
	}
	return max(target, cur-maxStep)
}

// readRange returns regs[addr-base : addr-base+qty], or an address error.
func readRange(regs []uint16, base, addr, qty uint16) ([]uint16, error) {
	if addr < base || int(addr-base)+int(qty) > len(regs) {
		return nil, mbserver.ErrIllegalDataAddress
	}
	out := make([]uint16, qty)
	copy(out, regs[addr-base:])
	return out, nil
}
