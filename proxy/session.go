package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/policy/decision"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// session is one client connection. Its reader goroutine decides and
// dispatches requests in arrival order; replies are written by whichever
// goroutine completes them, under wmu.
type session struct {
	s        *Server
	conn     net.Conn
	client   netip.AddrPort
	listener string
	route    *Route
	rd       *modbus.Reader
	limiter  *rate.Limiter
	slots    chan struct{} // one per outstanding request
	pin      uint32        // upstream pool member, so one client's requests stay in order
	role     string        // Modbus/TCP Security role from the client certificate
	closed   atomic.Bool
	rdl      deadline // the read deadline; only serve reads and sets it

	wmu  sync.Mutex
	wbuf []byte
	wdl  deadline // the write deadline, under wmu
}

func newSession(s *Server, conn net.Conn, client netip.AddrPort, local string, rt *Route) *session {
	l := s.cfg.Limits
	return &session{
		s:        s,
		conn:     conn,
		client:   client,
		listener: local,
		route:    rt,
		rd:       modbus.NewReader(conn),
		limiter:  rate.NewLimiter(rate.Limit(l.RequestsPerSecond), l.Burst),
		slots:    make(chan struct{}, l.MaxPipeline),
		pin:      s.pinSeq.Add(1),
		wbuf:     make([]byte, 0, modbus.MaxFrameLen),
	}
}

func (ss *session) close() {
	if ss.closed.CompareAndSwap(false, true) {
		_ = ss.conn.Close()
	}
}

// serve runs the session's read loop until the client leaves, misbehaves,
// or the proxy closes. It waits for the session's outstanding requests.
func (ss *session) serve() {
	defer func() {
		ss.close()
		for i := 0; i < cap(ss.slots); i++ { // wait for in-flight requests to finish
			ss.slots <- struct{}{}
		}
	}()
	lim := ss.s.cfg.Limits
	if tc, ok := ss.conn.(*tls.Conn); ok && !ss.handshake(tc) {
		return
	}
	// now is the newest time the session read from the clock: a request
	// reads it once as its frame is whole, and handle returns a newer one
	// if it waited (a write's durable record, a full device queue).
	now := time.Now()
	for {
		if ss.rd.Buffered() == 0 {
			if ss.rdl.due(now, lim.IdleTimeout) {
				_ = ss.conn.SetReadDeadline(ss.rdl.at)
			}
			if err := ss.rd.WaitByte(); err != nil {
				if !errors.Is(err, io.EOF) && !ss.closed.Load() {
					ss.s.log.Debug("client idle or gone", zap.String("client", ss.client.String()), zap.Error(err))
				}
				return
			}
		}
		// A frame that has begun must be whole within the read timeout;
		// one that arrived whole needs no deadline for its rest.
		now = time.Now()
		ready := ss.rd.FrameReady()
		if !ready && ss.rdl.due(now, lim.ReadTimeout) {
			_ = ss.conn.SetReadDeadline(ss.rdl.at)
		}
		f, err := ss.rd.ReadFrame()
		if err != nil {
			if !ss.closed.Load() {
				ss.malformed(f, err)
			}
			return
		}
		if !ready {
			now = time.Now() // the frame is whole only now
		}
		select {
		case ss.slots <- struct{}{}:
		default: // the client's pipeline is full: its request starts once a slot frees
			select {
			case ss.slots <- struct{}{}:
				now = time.Now()
			case <-ss.s.ctx.Done():
				return
			}
		}
		c := ss.s.calls.Get().(*call)
		c.reset(ss, f, now)
		ok, after := ss.handle(c)
		if !ok {
			return
		}
		now = after
	}
}

// handshake completes Modbus/TCP Security's mutual TLS within the read
// timeout and takes the client's role from its certificate. A client that
// fails it is recorded and disconnected.
func (ss *session) handshake(tc *tls.Conn) bool {
	ctx, cancel := context.WithTimeout(ss.s.ctx, ss.s.cfg.Limits.ReadTimeout)
	defer cancel()
	err := tc.HandshakeContext(ctx)
	if err == nil {
		ss.role, err = peerRole(tc)
	}
	if err != nil {
		ev := audit.Event{Time: time.Now(), Op: ss.s.opSeq.Add(1), Phase: audit.PhaseComplete,
			Client: ss.client, Listener: ss.listener, Verdict: audit.Malformed,
			Reason: "TLS: " + err.Error(), Closed: true}
		ss.s.record(&ev, false)
		return false
	}
	return true
}

// malformed records a frame that could not be read and closes the connection.
func (ss *session) malformed(f modbus.Frame, err error) {
	reason := err.Error()
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		reason = "frame not completed within read timeout"
	}
	ev := audit.Event{
		Time: time.Now(), Op: ss.s.opSeq.Add(1), Phase: audit.PhaseComplete,
		Client: ss.client, Listener: ss.listener, Unit: f.Unit,
		Verdict: audit.Malformed, Reason: reason, Closed: true,
	}
	ss.s.record(&ev, false)
}

// handle decides one request and forwards or answers it. It returns false
// when the connection must close, and the time it last read from the
// clock (the request's arrival if it read none).
func (ss *session) handle(c *call) (bool, time.Time) {
	s, arrived := ss.s, c.start
	req, err := modbus.ParseRequest(c.pdu())
	c.in.Request = req
	if err != nil {
		var me *modbus.Error
		errors.As(err, &me)
		c.ev.Verdict, c.ev.Reason = audit.Malformed, err.Error()
		if me == nil || me.Exception == 0 {
			c.ev.Closed = true
			return false, c.done(nil, 0)
		}
		// A request answered with the specification's exception costs the
		// proxy a record like any other: it counts against the rate.
		if !ss.limiter.AllowN(arrived, 1) {
			c.ev.Reason = "client over its request rate limit; the request also breaks the specification: " + err.Error()
			return true, c.done(nil, s.cfg.Exceptions.RateLimit)
		}
		return true, c.done(nil, me.Exception)
	}
	c.ev.Class = req.Class().String()
	c.ev.Address, c.ev.Quantity = req.Address, req.Quantity
	if !ss.limiter.AllowN(arrived, 1) {
		c.ev.Verdict, c.ev.Reason = audit.Deny, "client over its request rate limit"
		return true, c.done(nil, s.cfg.Exceptions.RateLimit)
	}
	if err := s.recorderAdmits(); err != nil {
		c.ev.Verdict, c.ev.Reason = audit.Deny, "refused: the record cannot keep it ("+err.Error()+")"
		return true, c.done(nil, s.cfg.Exceptions.Unrecorded)
	}
	name := ss.route.lookup(c.in.Unit)
	up := s.upstreams[name]
	if up == nil {
		c.ev.Verdict, c.ev.Reason = audit.Deny, "no device routed for this unit id"
		return true, c.done(nil, s.cfg.Exceptions.Unrouted)
	}
	c.in.Device, c.ev.Device, c.in.Op = name, name, c.ev.Op
	v := s.dec.Decide(s.ctx, &c.in)
	c.ev.Rule, c.ev.Reason, c.ev.Policy, c.ev.Approval = v.Rule, v.Reason, v.Policy, v.Approval
	c.ev.BreakGlass = v.BreakGlass && v.Allowed()
	// Observe mode: the rules deny it, the policy forwards it, the record
	// says so (and a write is still durable before it moves).
	c.ev.Observed = v.Observed && v.Allowed()
	c.ev.CandidateDiffers = v.CandidateDiffers
	if !v.Allowed() {
		c.ev.Verdict = audit.Deny
		return true, c.done(nil, s.exceptionFor(v.Denial))
	}
	c.ev.Verdict = audit.Allow
	if req.StateChanging() || s.cfg.DurableReads {
		// A state-changing request is durable in the record before it moves.
		c.ev.Phase = audit.PhaseRequest
		err := s.rec.Record(s.ctx, &c.ev, true)
		c.ev.Phase = audit.PhaseComplete
		if err != nil {
			s.log.Error("request refused: cannot record it", zap.String("device", name),
				zap.String("client", ss.client.String()), zap.Error(err))
			c.ev.Verdict, c.ev.Reason = audit.Deny, "refused: the record is unavailable ("+err.Error()+")"
			return true, c.done(nil, s.cfg.Exceptions.Unrecorded)
		}
	}
	return true, up.send(c, ss.pin)
}

// recorderAdmits reports why the recorder could not keep the record of a
// request (it stopped for good, or its spool is nearly full while the
// chain cannot take blocks): then nothing, reads included, may pass. A
// recorder that has neither Admit nor Failed admits everything.
func (s *Server) recorderAdmits() error {
	switch r := s.rec.(type) {
	case interface{ Admit() error }:
		return r.Admit()
	case interface{ Failed() error }:
		return r.Failed()
	}
	return nil
}

func (s *Server) exceptionFor(d decision.Denial) modbus.ExceptionCode {
	switch d {
	case decision.DenyAddress:
		return s.cfg.Exceptions.Address
	case decision.DenyValue:
		return s.cfg.Exceptions.Value
	case decision.DenyDevice:
		return s.cfg.Exceptions.Unrouted
	case decision.DenyApproval:
		return s.cfg.Exceptions.Approval
	}
	return s.cfg.Exceptions.Function
}

// reply writes one frame to the client, at now. A client that does not
// take its reply within the write timeout is disconnected.
func (ss *session) reply(tid uint16, unit byte, pdu []byte, now time.Time) {
	ss.wmu.Lock()
	defer ss.wmu.Unlock()
	if ss.closed.Load() {
		return
	}
	ss.wbuf = modbus.AppendFrame(ss.wbuf[:0], tid, unit, pdu)
	if ss.wdl.due(now, ss.s.cfg.Limits.WriteTimeout) {
		_ = ss.conn.SetWriteDeadline(ss.wdl.at)
	}
	if _, err := ss.conn.Write(ss.wbuf); err != nil {
		ss.s.log.Debug("client write failed", zap.String("client", ss.client.String()), zap.Error(err))
		ss.close()
	}
}

// record hands an event to the recorder and logs a failure; the caller has
// already answered the client.
func (s *Server) record(ev *audit.Event, durable bool) {
	if err := s.rec.Record(s.ctx, ev, durable); err != nil {
		s.log.Error("event not recorded", zap.Uint64("op", ev.Op), zap.Error(err))
	}
}
