package proxy

import (
	"time"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/policy/decision"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// call is one request on its way through the proxy. Calls are pooled: the
// frame buffers and the decision input live here so the hot path does not
// allocate.
type call struct {
	ss        *session
	frame     [modbus.MaxFrameLen]byte
	n         int // frame length
	clientTID uint16
	upTID     uint16
	in        decision.Input
	ev        audit.Event
	start     time.Time // when the request's frame was whole
	sent      time.Time // when it was queued for the device
	deadline  time.Time // upstream response deadline
	silent    bool      // the device sends no reply, so neither does the proxy
	// own completes a request the proxy itself sent (a SunSpec map read):
	// there is no client to answer.
	own func(pdu []byte, ex modbus.ExceptionCode)
}

// reset readies c for frame f from ss, which arrived at now.
func (c *call) reset(ss *session, f modbus.Frame, now time.Time) {
	c.ss = ss
	c.n = copy(c.frame[:], f.Raw)
	c.clientTID = f.Transaction
	c.start = now
	c.in = decision.Input{Client: ss.client, Unit: f.Unit, Role: ss.role}
	c.ev = audit.Event{
		Time:     c.start,
		Op:       ss.s.opSeq.Add(1),
		Phase:    audit.PhaseComplete,
		Client:   ss.client,
		Listener: ss.listener,
		Role:     ss.role,
		Unit:     f.Unit,
		Function: f.PDU[0],
		PDU:      c.pdu(),
	}
}

func (c *call) pdu() []byte { return c.frame[modbus.HeaderLen:c.n] }

// done records the completed operation, then answers the client — with pdu
// from the device, or with exception ex, or not at all when the connection
// is closing — and returns the call to the pool. It runs exactly once per
// call, and returns when the operation completed (c.ev.Done, read from the
// clock if the caller did not set it).
func (c *call) done(pdu []byte, ex modbus.ExceptionCode) time.Time {
	if c.ev.Done.IsZero() {
		c.ev.Done = time.Now()
	}
	at := c.ev.Done
	if c.own != nil {
		c.own(pdu, ex)
		return at
	}
	ss := c.ss
	var buf [2]byte
	reply := pdu
	switch {
	case c.ev.Closed, c.silent:
		reply = nil
	case pdu != nil:
		c.ev.Response = pdu
		if len(pdu) == 2 && pdu[0]&0x80 != 0 {
			c.ev.Exception = pdu[1]
		}
	default:
		reply = modbus.AppendException(buf[:0], modbus.Function(c.ev.Function&0x7F), ex)
		c.ev.Exception = byte(ex)
	}
	// Record before answering: once the client has its reply it may send
	// the next request, and the chain must hold this operation first.
	ss.s.record(&c.ev, false)
	switch {
	case reply != nil:
		ss.reply(c.clientTID, c.in.Unit, reply, at)
	case !c.silent:
		ss.close()
	}
	c.silent = false
	c.ev = audit.Event{}
	c.in = decision.Input{}
	c.ss = nil
	ss.s.calls.Put(c)
	<-ss.slots
	return at
}
