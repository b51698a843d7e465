package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/policy/decision"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// remap forgets the device's map after its connection was lost (the device
// may come back with another layout) and has it read again.
func (u *upstream) remap() {
	if u.res == nil || !u.res.NeedsResolve(u.name) {
		return
	}
	u.res.Unresolve(u.name)
	select {
	case u.kick <- struct{}{}:
	default: // a read is already due
	}
}

// maxRemapWait bounds the doubling wait between attempts to read the map of
// a device that cannot be reached (each attempt is recorded).
const maxRemapWait = 30 * time.Second

// resolveLoop reads the device's map when kicked: at start and after each
// lost connection, off the path of client requests. A read that fails for
// want of the device is retried after the retry backoff, doubling up to
// maxRemapWait; a device that
// answers but has no usable map is logged, and its rules stay refused until
// the next connection.
func (u *upstream) resolveLoop() {
	defer u.s.wg.Done()
	ctx := u.s.ctx
	for {
		select {
		case <-ctx.Done():
			return
		case <-u.kick:
		}
		wait := u.s.cfg.Upstream.RetryBackoff
		for ctx.Err() == nil && u.res.NeedsResolve(u.name) {
			unreachable := false
			read := func(unit byte, addr, n uint16) ([]uint16, error) {
				regs, err := u.read(unit, addr, n)
				var ex deviceException
				if err != nil && !errors.As(err, &ex) {
					unreachable = true
				}
				return regs, err
			}
			err := u.res.Resolve(ctx, u.name, read)
			if err == nil {
				break
			}
			if !unreachable {
				u.s.log.Warn("device map not usable: its SunSpec rules allow nothing", zap.String("device", u.name), zap.Error(err))
				break
			}
			u.s.log.Debug("device map not read; retrying", zap.String("device", u.name), zap.Error(err))
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			wait = min(2*wait, maxRemapWait)
		}
	}
}

// deviceException is the device's exception answer to the proxy's own read.
type deviceException modbus.ExceptionCode

func (e deviceException) Error() string {
	return fmt.Sprintf("device answered exception %d (%s)", byte(e), modbus.ExceptionCode(e))
}

// Exception returns the code, so the caller can tell the device's answer
// from a failure to reach it.
func (e deviceException) Exception() byte { return byte(e) }

// read sends the proxy's own function 3 request on the first pool
// connection and waits for its outcome (a reply, an exception, or the
// response timeout). It is recorded like a client's read, with no client.
func (u *upstream) read(unit byte, addr, n uint16) ([]uint16, error) {
	pdu := modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, addr, n)
	req, err := modbus.ParseRequest(pdu)
	if err != nil {
		return nil, err
	}
	c := &call{start: time.Now()}
	c.n = len(modbus.AppendFrame(c.frame[:0], 0, unit, pdu))
	c.in = decision.Input{Device: u.name, Unit: unit, Request: req}
	c.ev = audit.Event{Time: c.start, Op: u.s.opSeq.Add(1), Phase: audit.PhaseComplete, Device: u.name, Unit: unit,
		Function: byte(modbus.ReadHoldingRegisters), Class: req.Class().String(), Address: addr, Quantity: n,
		PDU: pdu, Verdict: audit.Allow, Reason: audit.MapReadReason}
	type outcome struct {
		pdu []byte
		ex  modbus.ExceptionCode
	}
	ch := make(chan outcome, 1)
	c.own = func(p []byte, ex modbus.ExceptionCode) { ch <- outcome{append([]byte(nil), p...), ex} }
	u.send(c, 0)
	o := <-ch // every call completes: reply, exception, loss or timeout
	c.ev.Response = o.pdu
	if !c.sent.IsZero() { // not sent: no device time
		c.ev.Upstream = c.ev.Done.Sub(c.sent)
	}
	switch {
	case len(o.pdu) == 2 && o.pdu[0]&0x80 != 0:
		c.ev.Exception = o.pdu[1]
		err = deviceException(o.pdu[1])
	case o.pdu == nil:
		c.ev.Exception = byte(o.ex)
		err = errors.New(c.ev.Reason)
	}
	u.s.record(&c.ev, false)
	if err != nil {
		return nil, err
	}
	regs := make([]uint16, n)
	for i := range regs {
		regs[i] = binary.BigEndian.Uint16(o.pdu[2+2*i:])
	}
	return regs, nil
}
