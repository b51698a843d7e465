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

	mu     sync.Mutex // serializes service when Serial
	wg     sync.WaitGroup
	cmu    sync.Mutex
	ln     net.Listener
	closed bool
	conns  map[net.Conn]struct{}
}

// Serve answers on ln until Close.
func (d *Device) Serve(ln net.Listener) {
	d.cmu.Lock()
	d.ln, d.conns = ln, map[net.Conn]struct{}{}
	if d.closed {
		_ = ln.Close()
	}
	d.cmu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		d.cmu.Lock()
		if d.closed {
			d.cmu.Unlock()
			_ = c.Close()
			return
		}
		d.conns[c] = struct{}{}
		d.wg.Add(1)
		d.cmu.Unlock()
		go func() {
			defer d.wg.Done()
			d.serve(c)
			d.cmu.Lock()
			delete(d.conns, c)
			d.cmu.Unlock()
		}()
	}
}

// Close stops the device and its connections.
func (d *Device) Close() {
	d.cmu.Lock()
	d.closed = true
	if d.ln != nil {
		_ = d.ln.Close()
	}
	for c := range d.conns {
		_ = c.Close()
	}
	d.cmu.Unlock()
	d.wg.Wait()
}

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
		resp := answer(f.PDU, pdu[:0])
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
	wg       sync.WaitGroup
	mu       sync.Mutex
	ln       net.Listener
	closed   bool
	conns    map[net.Conn]struct{}
}

// Serve relays connections from ln to Upstream until Close.
func (r *Relay) Serve(ln net.Listener) {
	r.mu.Lock()
	r.ln, r.conns = ln, map[net.Conn]struct{}{}
	if r.closed {
		_ = ln.Close()
	}
	r.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", r.Upstream)
		if err != nil {
			_ = c.Close()
			continue
		}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			_ = c.Close()
			_ = up.Close()
			return
		}
		r.conns[c], r.conns[up] = struct{}{}, struct{}{}
		r.wg.Add(2)
		r.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			defer r.wg.Done()
			_, _ = io.Copy(dst, src)
			_ = dst.Close()
			_ = src.Close()
		}
		go pipe(up, c)
		go pipe(c, up)
	}
}

// Close stops the relay.
func (r *Relay) Close() {
	r.mu.Lock()
	r.closed = true
	if r.ln != nil {
		_ = r.ln.Close()
	}
	for c := range r.conns {
		_ = c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}
