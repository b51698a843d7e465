// Package loadgen is gridseal's Modbus/TCP load generator and the
// upstreams it measures against: a zero-latency device that answers
// pipelined requests as fast as the machine allows, a PLC-like device that
// serves one request at a time with a fixed service time, and a bare TCP
// byte relay — the physical limit of any proxy.
package loadgen

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/gridseal/gridseal/protocols/modbus"
)

// Device is an in-process Modbus/TCP device for benchmarks. Reads return
// each register's address; writes are echoed.
type Device struct {
	// ServiceTime is how long each request takes; with Serial, requests
	// from all connections are served one at a time, as a PLC's CPU does.
	ServiceTime time.Duration
	Serial      bool
	// Unit, when not 0, is the only unit id the device answers: a request
	// for another gets exception 0x0B (the target did not respond), so a
	// gateway that routes a unit to the wrong device is seen at once.
	Unit byte

	mu    sync.Mutex // serializes service when Serial
	conns conns
}

// Serve answers on ln until Close.
func (d *Device) Serve(ln net.Listener) {
	d.conns.accept(ln, func(c net.Conn) bool {
		if !d.conns.add(c) {
			return false
		}
		go func() {
			defer d.conns.wg.Done()
			d.serve(c)
			d.conns.forget(c)
		}()
		return true
	})
}

// Close stops the device and its connections.
func (d *Device) Close() { d.conns.close() }

func (d *Device) serve(c net.Conn) {
	defer func() { _ = c.Close() }()
	rd := modbus.NewReader(c)
	bw := bufio.NewWriterSize(c, 64<<10)
	var pdu [modbus.MaxPDULen]byte
	var out []byte
	for {
		f, err := rd.ReadFrame()
		if err != nil {
			return
		}
		var resp []byte
		if d.Unit != 0 && f.Unit != d.Unit && len(f.PDU) > 0 {
			resp = modbus.AppendException(pdu[:0], modbus.Function(f.PDU[0]), modbus.GatewayTargetDeviceFailedToRespond)
		} else {
			resp = answer(f.PDU, pdu[:0])
		}
		if d.ServiceTime > 0 {
			if d.Serial {
				d.mu.Lock()
				time.Sleep(d.ServiceTime)
				d.mu.Unlock()
			} else {
				time.Sleep(d.ServiceTime)
			}
		}
		out = modbus.AppendFrame(out[:0], f.Transaction, f.Unit, resp)
		if _, err := bw.Write(out); err != nil {
			return
		}
		// Flush when no further request is already waiting: pipelined
		// replies leave in one write.
		if rd.Buffered() == 0 {
			if err := bw.Flush(); err != nil {
				return
			}
		}
	}
}

// answer builds the response PDU into dst.
func answer(pdu, dst []byte) []byte {
	req, err := modbus.ParseRequest(pdu)
	if err != nil {
		var me *modbus.Error
		if errors.As(err, &me) && me.Exception != 0 {
			return modbus.AppendException(dst, modbus.Function(pdu[0]), me.Exception)
		}
		return modbus.AppendException(dst, modbus.Function(pdu[0]), modbus.IllegalFunction)
	}
	switch req.Function {
	case modbus.ReadHoldingRegisters, modbus.ReadInputRegisters:
		dst = append(dst, byte(req.Function), byte(2*req.Quantity))
		for i := uint16(0); i < req.Quantity; i++ {
			dst = binary.BigEndian.AppendUint16(dst, req.Address+i)
		}
		return dst
	case modbus.ReadCoils, modbus.ReadDiscreteInputs:
		n := (int(req.Quantity) + 7) / 8
		dst = append(dst, byte(req.Function), byte(n))
		for i := 0; i < n; i++ {
			dst = append(dst, 0x55)
		}
		return dst
	case modbus.WriteSingleRegister, modbus.WriteSingleCoil:
		return append(dst, pdu...)
	case modbus.WriteMultipleRegisters, modbus.WriteMultipleCoils:
		return append(dst, pdu[:5]...)
	}
	return modbus.AppendException(dst, req.Function, modbus.IllegalFunction)
}

// Relay is a bare TCP byte relay (io.Copy both ways): what any proxy costs
// at least.
type Relay struct {
	Upstream string
	conns    conns
}

// Serve relays connections from ln to Upstream until Close.
func (r *Relay) Serve(ln net.Listener) {
	r.conns.accept(ln, func(c net.Conn) bool {
		up, err := net.Dial("tcp", r.Upstream)
		if err != nil {
			_ = c.Close()
			return true
		}
		if !r.conns.add(c, up) {
			return false
		}
		pipe := func(dst, src net.Conn) {
			defer r.conns.wg.Done()
			_, _ = io.Copy(dst, src)
			_ = dst.Close()
			_ = src.Close()
		}
		go pipe(up, c)
		go pipe(c, up)
		return true
	})
}

// Close stops the relay.
func (r *Relay) Close() { r.conns.close() }

// conns tracks a server's listener and open connections, and the
// goroutines serving them, so that Close stops them all, even when it
// comes before Serve.
type conns struct {
	wg     sync.WaitGroup
	mu     sync.Mutex
	ln     net.Listener
	closed bool
	open   map[net.Conn]struct{}
}

// accept keeps ln for close (after close it closes ln at once) and hands
// each connection it accepts to handle, until ln is closed or handle
// returns false.
func (t *conns) accept(ln net.Listener, handle func(net.Conn) bool) {
	t.mu.Lock()
	t.ln, t.open = ln, map[net.Conn]struct{}{}
	if t.closed {
		_ = ln.Close()
	}
	t.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil || !handle(c) {
			return
		}
	}
}

// add keeps cs open, with a goroutine each (wg.Done when it ends). After
// close it closes them instead and returns false.
func (t *conns) add(cs ...net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		for _, c := range cs {
			_ = c.Close()
		}
		return false
	}
	for _, c := range cs {
		t.open[c] = struct{}{}
	}
	t.wg.Add(len(cs))
	return true
}

// forget drops c, closed by its goroutine.
func (t *conns) forget(c net.Conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.open, c)
}

// close closes the listener and every connection and waits for their
// goroutines.
func (t *conns) close() {
	t.mu.Lock()
	t.closed = true
	if t.ln != nil {
		_ = t.ln.Close()
	}
	for c := range t.open {
		_ = c.Close()
	}
	t.mu.Unlock()
	t.wg.Wait()
}
