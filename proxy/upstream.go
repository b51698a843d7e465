package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// upstream is one device: a small pool of connections to its PLC.
type upstream struct {
	s     *Server
	name  string
	addr  string
	tls   *tls.Config
	conns []*upconn
	res   Resolver      // nil: the Decider needs no device map
	kick  chan struct{} // the map is to be read (again)
}

func newUpstream(s *Server, d Device) *upstream {
	u := &upstream{s: s, name: d.Name, addr: d.Upstream, tls: d.TLS}
	for i := 0; i < s.cfg.Upstream.PoolSize; i++ {
		uc := &upconn{
			up:         u,
			pending:    make(map[uint16]*call),
			quarantine: make(map[uint16]*audit.Event),
			slots:      make(chan struct{}, s.cfg.Upstream.MaxInflight),
			stop:       make(chan struct{}),
		}
		u.conns = append(u.conns, uc)
		go uc.reap()
	}
	if r, ok := s.dec.(Resolver); ok {
		u.res, u.kick = r, make(chan struct{}, 1)
		u.kick <- struct{}{}
		s.wg.Add(1)
		go u.resolveLoop()
	}
	return u
}

// send forwards c on the pool member pin selects. The call completes
// asynchronously: with the device's reply, or with 0x0A (unreachable),
// 0x0B (no reply in time) or the busy exception. It returns the time it
// last read from the clock (the caller's, after all it waited for).
func (u *upstream) send(c *call, pin uint32) time.Time {
	return u.conns[int(pin)%len(u.conns)].send(c)
}

func (u *upstream) close() {
	for _, uc := range u.conns {
		uc.shutdown()
	}
}

// upconn is one upstream TCP connection, dialled on demand and redialled
// after a failure. Requests are pipelined on it with rewritten transaction
// ids; pending maps those ids back to calls.
type upconn struct {
	up    *upstream
	slots chan struct{} // one per outstanding request
	stop  chan struct{}

	mu      sync.Mutex
	closed  bool
	conn    net.Conn
	wdl     *deadline // conn's write deadline, the flusher's alone
	pending map[uint16]*call
	// Requests are written by one sender at a time, the flusher: others
	// append their frames to out meanwhile, and the flusher writes them all
	// with its next write (one syscall for several requests under load, as
	// many as before with one client). silent are the calls in out that no
	// reply completes (force listen-only mode): the flusher completes them
	// once written.
	out, spare []byte
	silent     []*call
	flushing   bool
	nextTID    uint16
	downUntil  time.Time
	dialing    chan struct{} // closed when the dial in progress ends
	// What the console shows of this connection: the last failure, and
	// when a reply or a timeout was last seen.
	lastErr     string
	lastErrAt   time.Time
	lastReply   time.Time
	lastTimeout time.Time
	// idleClosed is when the device last closed this connection with no
	// request in flight: idle, not down, since the next request redials.
	idleClosed time.Time
	// Replies to no request in the current window (see readLoop).
	strays      int
	strayWindow time.Time
	// quarantine holds transaction ids whose calls timed out: they are not
	// reused on this connection, so a late reply can never be taken for the
	// answer to a new request. Each keeps what identifies its request, so a
	// late reply is recorded against it.
	quarantine map[uint16]*audit.Event
}

// maxQuarantine bounds timed-out ids per connection; past it the
// connection is replaced, which forgets them all.
const maxQuarantine = 4096

// A device may send maxStrays replies matching no request per
// strayWindowLen on one connection; the next closes it.
const (
	maxStrays      = 100
	strayWindowLen = 10 * time.Second
)

func (uc *upconn) send(c *call) time.Time {
	cfg := uc.up.s.cfg
	select {
	case uc.slots <- struct{}{}:
	default:
		t := time.NewTimer(cfg.Upstream.ResponseTimeout)
		select {
		case uc.slots <- struct{}{}:
			t.Stop()
		case <-t.C:
			c.ev.Reason = "upstream queue full past the response timeout"
			return c.done(nil, cfg.Exceptions.Busy)
		case <-uc.stop:
			t.Stop()
			return c.done(nil, modbus.GatewayPathUnavailable)
		}
	}
	uc.mu.Lock()
	if uc.closed {
		uc.mu.Unlock()
		<-uc.slots
		c.ev.Reason = "proxy closing"
		return c.done(nil, modbus.GatewayPathUnavailable)
	}
	for uc.conn == nil {
		if err := uc.dialLocked(); err != nil {
			uc.mu.Unlock()
			<-uc.slots
			c.ev.Reason = "upstream unreachable: " + err.Error()
			return c.done(nil, modbus.GatewayPathUnavailable)
		}
	}
	tid := uc.nextTID
	for {
		if _, q := uc.quarantine[tid]; uc.pending[tid] == nil && !q {
			break
		}
		tid++
	}
	uc.nextTID = tid + 1
	c.upTID = tid
	now := time.Now()
	c.sent, c.deadline = now, now.Add(cfg.Upstream.ResponseTimeout)
	// Force listen-only mode (function 8, sub-function 4) is never
	// answered (Modbus Application Protocol 6.8.1): done once sent.
	silent := c.in.Request.Function == modbus.Diagnostics && c.in.Request.Sub == 4
	if silent {
		// Should the device answer anyway, the reply is recorded
		// against this request, and the id is not reused meanwhile.
		uc.quarantine[tid] = lateRecord(c, "reply to force listen-only mode, which a device does not send; dropped")
	} else {
		uc.pending[tid] = c
	}
	c.frame[0], c.frame[1] = byte(tid>>8), byte(tid)
	uc.out = append(uc.out, c.frame[:c.n]...)
	if silent {
		uc.silent = append(uc.silent, c)
	}
	if uc.flushing {
		uc.mu.Unlock()
		return now
	}
	uc.flush(now, cfg.Upstream.ResponseTimeout)
	return now
}

// flush writes what senders queued in out until there is nothing left,
// as the flusher; mu is held on entry and released on return. now is the
// time of the first write. A write error drops the connection, which fails
// every pending call.
func (uc *upconn) flush(now time.Time, timeout time.Duration) {
	uc.flushing = true
	conn, wdl := uc.conn, uc.wdl
	for first := true; len(uc.out) > 0; first = false {
		buf, silent := uc.out, uc.silent
		uc.out, uc.silent, uc.spare = uc.spare[:0], nil, nil
		uc.mu.Unlock()
		if !first {
			now = time.Now()
		}
		if wdl.due(now, timeout) {
			_ = conn.SetWriteDeadline(wdl.at)
		}
		_, err := conn.Write(buf)
		for _, c := range silent {
			<-uc.slots
			if err != nil {
				c.ev.Reason += "; not sent: " + err.Error()
				c.done(nil, modbus.GatewayTargetDeviceFailedToRespond)
			} else {
				c.ev.Reason += "; sent, and a device forced into listen-only mode does not answer"
				c.silent = true
				c.done(nil, 0)
			}
		}
		uc.mu.Lock()
		if uc.conn != conn {
			// Dropped meanwhile (drop failed what was queued): the next
			// connection has a flusher of its own.
			uc.mu.Unlock()
			return
		}
		uc.spare = buf[:0]
		if err != nil {
			uc.flushing = false
			uc.mu.Unlock()
			uc.drop(conn, err)
			return
		}
	}
	uc.flushing = false
	uc.mu.Unlock()
}

var errBackoff = errors.New("recent dial failed; retrying after backoff")

// dialLocked connects to the PLC. Callers hold mu; it is released while
// dialling, so replies and timeouts on this connection's calls are not held
// up, and only one caller dials while the others wait for its outcome.
// After a failure, calls within the retry backoff fail at once instead of
// piling up dials. On return mu is held; uc.conn may still be nil if the
// connection was lost again meanwhile (callers loop).
func (uc *upconn) dialLocked() error {
	cfg := uc.up.s.cfg.Upstream
	if time.Now().Before(uc.downUntil) {
		return errBackoff
	}
	if uc.closed {
		return errors.New("proxy closing")
	}
	if uc.dialing != nil {
		wait := uc.dialing
		uc.mu.Unlock()
		<-wait
		uc.mu.Lock()
		if uc.conn == nil && time.Now().Before(uc.downUntil) {
			return errBackoff
		}
		return nil
	}
	uc.dialing = make(chan struct{})
	uc.mu.Unlock()
	d := net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 15 * time.Second}
	var conn net.Conn
	var err error
	if uc.up.tls != nil {
		td := tls.Dialer{NetDialer: &d, Config: uc.up.tls}
		conn, err = td.DialContext(uc.up.s.ctx, "tcp", uc.up.addr)
	} else {
		conn, err = d.DialContext(uc.up.s.ctx, "tcp", uc.up.addr)
	}
	uc.mu.Lock()
	close(uc.dialing)
	uc.dialing = nil
	if err != nil {
		uc.downUntil = time.Now().Add(cfg.RetryBackoff)
		uc.lastErr, uc.lastErrAt = "unreachable: "+err.Error(), time.Now()
		uc.up.s.log.Warn("upstream unreachable", zap.String("device", uc.up.name),
			zap.String("addr", uc.up.addr), zap.Error(err))
		return err
	}
	if uc.closed {
		_ = conn.Close()
		return errors.New("proxy closing")
	}
	uc.conn, uc.wdl = conn, &deadline{}
	go uc.readLoop(conn)
	uc.up.s.log.Info("upstream connected", zap.String("device", uc.up.name), zap.String("addr", uc.up.addr))
	return nil
}

// readLoop matches the device's replies to pending calls until conn fails.
func (uc *upconn) readLoop(conn net.Conn) {
	rd := modbus.NewReader(conn)
	log := uc.up.s.log
	for {
		f, err := rd.ReadFrame()
		if err != nil {
			uc.drop(conn, err)
			return
		}
		uc.mu.Lock()
		c := uc.pending[f.Transaction]
		late := uc.quarantine[f.Transaction]
		if late != nil && late.Unit != f.Unit {
			late = nil
		}
		var now time.Time
		if c != nil && c.in.Unit == f.Unit {
			delete(uc.pending, f.Transaction)
			now = time.Now()
			uc.lastReply = now
		} else {
			c = nil
		}
		if late != nil {
			delete(uc.quarantine, f.Transaction)
		}
		// Replies to no request: each is recorded, up to maxStrays in
		// strayWindowLen per device connection slot (kept across
		// reconnects); a device that sends more is cut off, and not
		// redialled before the retry backoff, so it cannot fill the chain,
		// which never deletes.
		cutOff := false
		if c == nil && late == nil {
			if now := time.Now(); now.Sub(uc.strayWindow) > strayWindowLen {
				uc.strays, uc.strayWindow = 0, now
			}
			uc.strays++
			if cutOff = uc.strays > maxStrays; cutOff {
				uc.downUntil = time.Now().Add(uc.up.s.cfg.Upstream.RetryBackoff)
			}
		}
		uc.mu.Unlock()
		if late != nil {
			log.Info("late upstream reply after its timeout; dropped", zap.String("device", uc.up.name),
				zap.Uint16("tid", f.Transaction), zap.Uint64("op", late.Op))
			uc.recordDropped(late, f, late.Reason)
			continue
		}
		if c == nil {
			// The frame's source is the device: its address stands where a
			// client's would, and the proxy's end of the connection where the
			// listener's would.
			ev := &audit.Event{Op: uc.up.s.opSeq.Add(1), Device: uc.up.name, Unit: f.Unit,
				Client: addrPort(conn.RemoteAddr()), Listener: conn.LocalAddr().String()}
			if cutOff {
				why := fmt.Sprintf("device sent more than %d replies matching no request within %v; connection closed", maxStrays, strayWindowLen)
				log.Warn(why, zap.String("device", uc.up.name))
				uc.recordDropped(ev, f, why)
				uc.drop(conn, errors.New(why))
				return
			}
			log.Warn("upstream reply matches no request; dropped", zap.String("device", uc.up.name),
				zap.Uint16("tid", f.Transaction), zap.Uint8("unit", f.Unit))
			uc.recordDropped(ev, f, fmt.Sprintf("device reply (transaction %d, unit %d) matches no request; dropped", f.Transaction, f.Unit))
			continue
		}
		<-uc.slots
		c.ev.Upstream, c.ev.Done = now.Sub(c.sent), now
		if _, err := modbus.ParseResponse(&c.in.Request, f.PDU); err != nil {
			// The frame was whole, so the stream is still in step: only
			// this request failed. The client gets the configured
			// exception, the record keeps what the device sent, and the
			// other calls on the connection wait for their own replies.
			uc.up.s.warns.Warn("device reply does not fit its request", zap.String("device", uc.up.name),
				zap.Uint64("op", c.ev.Op), zap.Error(err))
			c.ev.Reason = "device reply does not fit the request: " + err.Error()
			c.ev.Response = f.PDU
			c.done(nil, uc.up.s.cfg.Exceptions.BadReply)
			continue
		}
		c.done(f.PDU, 0)
	}
}

// recordDropped records a device reply passed to no client, against the
// request ev identifies (its Op, device, unit and request fields).
func (uc *upconn) recordDropped(ev *audit.Event, f modbus.Frame, reason string) {
	ev.Time = time.Now()
	ev.Phase = audit.PhaseDroppedReply
	ev.Verdict = audit.Deny
	ev.Reason = reason
	ev.Response = f.PDU
	ev.Exception = 0
	if len(f.PDU) > 0 {
		fn := f.PDU[0]
		if ev.Function == 0 {
			ev.Function = fn &^ 0x80
		}
		if fn&0x80 != 0 && len(f.PDU) >= 2 {
			ev.Exception = f.PDU[1]
		}
	}
	uc.up.s.record(ev, false)
}

// lateRecord keeps what identifies a request no reply is awaited for, and
// the reason to record should one come anyway (the call itself is reused).
func lateRecord(c *call, reason string) *audit.Event {
	return &audit.Event{Op: c.ev.Op, Client: c.ev.Client, Listener: c.ev.Listener, Role: c.ev.Role,
		Device: c.ev.Device, Unit: c.ev.Unit, Function: c.ev.Function, Class: c.ev.Class,
		Address: c.ev.Address, Quantity: c.ev.Quantity, PDU: append([]byte(nil), c.ev.PDU...),
		Rule: c.ev.Rule, Policy: c.ev.Policy, Approval: c.ev.Approval, Reason: reason}
}

// drop closes conn if it is still current and fails its pending calls with
// 0x0B: they were sent, and their outcome on the device is unknown.
func (uc *upconn) drop(conn net.Conn, cause error) {
	uc.mu.Lock()
	var failed, unsent []*call
	idle := false
	if uc.conn == conn {
		uc.conn = nil
		// What was queued for conn goes nowhere: its calls are pending
		// (failed below) or silent (failed here).
		unsent = uc.silent
		uc.out, uc.silent, uc.flushing = uc.out[:0], nil, false
		idle = len(uc.pending) == 0 && (errors.Is(cause, io.EOF) || errors.Is(cause, syscall.ECONNRESET))
		switch {
		case uc.closed:
		case idle:
			uc.lastErr, uc.idleClosed = "", time.Now()
		default:
			uc.lastErr, uc.lastErrAt = "connection lost: "+cause.Error(), time.Now()
		}
		clear(uc.quarantine)
		for tid, c := range uc.pending {
			failed = append(failed, c)
			delete(uc.pending, tid)
		}
	}
	closing := uc.closed
	uc.mu.Unlock()
	_ = conn.Close()
	if !closing {
		uc.up.remap()
	}
	switch {
	case idle:
		uc.up.s.log.Debug("device closed the idle upstream connection", zap.String("device", uc.up.name))
	case len(failed) > 0 || !closing:
		uc.up.s.log.Warn("upstream connection lost", zap.String("device", uc.up.name),
			zap.Int("pending", len(failed)), zap.Error(cause))
	}
	for _, c := range failed {
		<-uc.slots
		c.ev.Reason = "upstream connection lost before the reply"
		c.done(nil, modbus.GatewayTargetDeviceFailedToRespond)
	}
	for _, c := range unsent {
		<-uc.slots
		c.ev.Reason += "; not sent: " + cause.Error()
		c.done(nil, modbus.GatewayTargetDeviceFailedToRespond)
	}
}

// reap fails calls whose device did not answer within the response timeout.
// Their transaction ids are quarantined on the connection, so a late reply
// is dropped and never matched to a new request.
func (uc *upconn) reap() {
	timeout := uc.up.s.cfg.Upstream.ResponseTimeout
	tick := max(timeout/20, 5*time.Millisecond)
	t := time.NewTicker(tick)
	defer t.Stop()
	var expired []*call
	for {
		select {
		case <-uc.stop:
			return
		case now := <-t.C:
			uc.mu.Lock()
			for tid, c := range uc.pending {
				if now.After(c.deadline) {
					expired = append(expired, c)
					uc.lastTimeout = now
					delete(uc.pending, tid)
					uc.quarantine[tid] = lateRecord(c, "late reply from the device, after the request timed out and was answered 0x0B; dropped")
				}
			}
			recycle := len(uc.quarantine) > maxQuarantine
			conn := uc.conn
			uc.mu.Unlock()
			if recycle && conn != nil {
				uc.drop(conn, errors.New("too many requests timed out on this connection"))
			}
			for i, c := range expired {
				<-uc.slots
				c.ev.Upstream, c.ev.Done = now.Sub(c.sent), now
				c.ev.Reason = "device did not answer within the response timeout"
				c.done(nil, modbus.GatewayTargetDeviceFailedToRespond)
				expired[i] = nil
			}
			expired = expired[:0]
		}
	}
}

func (uc *upconn) shutdown() {
	uc.mu.Lock()
	if uc.closed {
		uc.mu.Unlock()
		return
	}
	uc.closed = true
	conn := uc.conn
	close(uc.stop)
	uc.mu.Unlock()
	if conn != nil {
		uc.drop(conn, errors.New("proxy closing"))
	}
}

// UpstreamState is what the proxy knows of a device's reachability.
type UpstreamState struct {
	// State is "up" (connected, and the last request was answered),
	// "not answering" (connected, but the last request timed out), "down"
	// (the last dial failed or the connection was lost with requests in
	// flight) or "idle" (not connected: no request has needed it yet, or
	// the device closed the idle connection, which the next request
	// redials).
	State  string
	Detail string    // the error, for down; why, for an idle device that closed
	Since  time.Time // when the state was last confirmed
}

// state decides per device: connected if any pool connection is, and then
// answering if the newest reply on any connection is newer than the newest
// timeout (an idle connection's old replies do not hide the timeouts of the
// one in use).
func (u *upstream) state() UpstreamState {
	var connected bool
	var lastReply, lastTimeout, errAt, idleAt time.Time
	var lastErr string
	for _, uc := range u.conns {
		uc.mu.Lock()
		connected = connected || uc.conn != nil
		if uc.idleClosed.After(idleAt) {
			idleAt = uc.idleClosed
		}
		if uc.lastReply.After(lastReply) {
			lastReply = uc.lastReply
		}
		if uc.lastTimeout.After(lastTimeout) {
			lastTimeout = uc.lastTimeout
		}
		if uc.lastErr != "" && uc.lastErrAt.After(errAt) {
			lastErr, errAt = uc.lastErr, uc.lastErrAt
		}
		uc.mu.Unlock()
	}
	switch {
	case connected && !lastTimeout.After(lastReply):
		return UpstreamState{State: "up", Since: lastReply}
	case connected:
		return UpstreamState{State: "not answering", Since: lastTimeout}
	case lastErr != "" && errAt.After(idleAt):
		return UpstreamState{State: "down", Detail: lastErr, Since: errAt}
	case !idleAt.IsZero():
		return UpstreamState{State: "idle", Detail: "the device closed the idle connection; the next request reconnects", Since: idleAt}
	}
	return UpstreamState{State: "idle"}
}

// Upstreams reports each device's reachability, by device name.
func (s *Server) Upstreams() map[string]UpstreamState {
	out := make(map[string]UpstreamState, len(s.upstreams))
	for name, u := range s.upstreams {
		out[name] = u.state()
	}
	return out
}
