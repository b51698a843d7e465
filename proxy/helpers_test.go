package proxy_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/protocols/modbus"
	"github.com/gridseal/gridseal/proxy"
)

// eventLog is a recorder that keeps copies of every event in memory, and can
// be told to refuse durable records, as a chain that lost its quorum does,
// or to take durableDelay over each, as a slow disk's fsync would.
type eventLog struct {
	mu            sync.Mutex
	events        []audit.Event
	refuseDurable bool
	durableDelay  time.Duration
}

var errUnavailable = errors.New("record unavailable")

func (l *eventLog) Record(_ context.Context, ev *audit.Event, durable bool) error {
	l.mu.Lock()
	refuse, delay := l.refuseDurable, l.durableDelay
	l.mu.Unlock()
	if durable && refuse {
		return errUnavailable
	}
	if durable {
		time.Sleep(delay)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	cp := *ev
	cp.PDU = append([]byte(nil), ev.PDU...)
	cp.Response = append([]byte(nil), ev.Response...)
	l.events = append(l.events, cp)
	return nil
}

func (l *eventLog) all() []audit.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]audit.Event(nil), l.events...)
}

// completed returns the events of finished operations.
func (l *eventLog) completed() []audit.Event { return l.inPhase(audit.PhaseComplete) }

// inPhase returns the events of phase p.
func (l *eventLog) inPhase(p audit.Phase) []audit.Event {
	var out []audit.Event
	for _, e := range l.all() {
		if e.Phase == p {
			out = append(out, e)
		}
	}
	return out
}

// upstream is a minimal Modbus/TCP device built on our codec: it keeps every
// frame it receives and answers one request at a time per connection, as a
// PLC's CPU does. answer returns the response PDU, or nil to stay silent.
type upstream struct {
	ln     net.Listener
	answer func(f modbus.Frame) []byte
	stray  func(f modbus.Frame) []byte // raw bytes written before each answer, if set
	forget bool                        // do not keep received frames (benchmarks)

	mu     sync.Mutex
	frames [][]byte
	conns  int
}

func startUpstream(t testing.TB, answer func(f modbus.Frame) []byte) *upstream {
	t.Helper()
	if answer == nil {
		answer = registerEcho
	}
	u := &upstream{answer: answer}
	u.ln = acceptEach(t, func(c net.Conn) {
		u.mu.Lock()
		u.conns++
		u.mu.Unlock()
		u.serve(c)
	})
	return u
}

// acceptEach listens on a loopback port and serves every connection on a
// goroutine of its own until the test ends; then the listener and every
// connection close, and the goroutines are waited for.
func acceptEach(t testing.TB, serve func(c net.Conn)) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer func() { _ = c.Close() }()
				serve(c)
			})
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln
}

func (u *upstream) addr() string { return u.ln.Addr().String() }

func (u *upstream) serve(c net.Conn) {
	rd := modbus.NewReader(c)
	buf := make([]byte, 0, 2*modbus.MaxFrameLen)
	for {
		f, err := rd.ReadFrame()
		if err != nil {
			return
		}
		if !u.forget {
			u.mu.Lock()
			u.frames = append(u.frames, append([]byte(nil), f.Raw...))
			u.mu.Unlock()
		}
		out := buf[:0]
		if u.stray != nil {
			out = u.stray(f)
		}
		if resp := u.answer(f); resp != nil {
			out = modbus.AppendFrame(out, f.Transaction, f.Unit, resp)
		}
		if len(out) > 0 {
			if _, err := c.Write(out); err != nil {
				return
			}
		}
	}
}

func (u *upstream) received() [][]byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([][]byte(nil), u.frames...)
}

func (u *upstream) connections() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.conns
}

// registerEcho answers function 3 with each register holding its own
// address plus the unit id, and echoes writes.
func registerEcho(f modbus.Frame) []byte {
	req, err := modbus.ParseRequest(f.PDU)
	if err != nil {
		return modbus.AppendException(nil, modbus.Function(f.PDU[0]), modbus.IllegalFunction)
	}
	switch req.Function {
	case modbus.ReadHoldingRegisters:
		out := []byte{3, byte(2 * req.Quantity)}
		for i := uint16(0); i < req.Quantity; i++ {
			out = binary.BigEndian.AppendUint16(out, req.Address+i+uint16(f.Unit))
		}
		return out
	case modbus.WriteSingleRegister, modbus.WriteSingleCoil:
		return append([]byte(nil), f.PDU...)
	}
	return modbus.AppendException(nil, req.Function, modbus.IllegalFunction)
}

// openPolicy allows reads of every holding register and writes of 0..1000
// to registers 0..99 on device "plc".
const openPolicy = `id: test
devices:
  - name: plc
    upstream: %s
    rules:
      - {name: reads, allow: read, functions: [3]}
      - {name: writes, allow: write, functions: [6], addresses: 0-99, values: 0-1000}
`

type fixture struct {
	addr   string
	srv    *proxy.Server
	events *eventLog
}

// startProxy serves a proxy on 127.0.0.1 for devices, routed by rt.
func startProxy(t testing.TB, cfg proxy.Config, policyYAML string, rt proxy.Route, devices ...proxy.Device) *fixture {
	t.Helper()
	pol, err := policy.Parse("test.yaml", []byte(policyYAML))
	if err != nil {
		t.Fatal(err)
	}
	events := &eventLog{}
	srv, err := proxy.New(cfg, devices, policy.NewEngine(pol, zap.NewNop()), events, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	addr, done := serve(t, srv, rt)
	t.Cleanup(func() {
		_ = srv.Close()
		if err := <-done; !errors.Is(err, proxy.ErrClosed) {
			t.Errorf("Serve returned %v, want ErrClosed", err)
		}
	})
	return &fixture{addr: addr, srv: srv, events: events}
}

// serve runs srv on a fresh loopback listener, routed by rt, until the
// caller or the test's end closes it; it returns the listener's address
// and what Serve will return.
func serve(t testing.TB, srv *proxy.Server, rt proxy.Route) (string, <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln, rt) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String(), done
}

// conn is a raw Modbus/TCP client connection for tests.
type conn struct {
	t  *testing.T
	c  net.Conn
	rd *modbus.Reader
}

func dial(t *testing.T, addr string) *conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &conn{t: t, c: c, rd: modbus.NewReader(c)}
}

func (c *conn) send(tid uint16, unit byte, pdu []byte) {
	c.t.Helper()
	c.write(modbus.AppendFrame(nil, tid, unit, pdu))
}

func (c *conn) write(b []byte) {
	c.t.Helper()
	if _, err := c.c.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

// recv reads one reply frame, returning a copy of it.
func (c *conn) recv() (modbus.Frame, error) {
	_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := c.rd.ReadFrame()
	if err != nil {
		return f, err
	}
	f.PDU = append([]byte(nil), f.PDU...)
	return f, nil
}

// roundTrip sends one request and returns the reply PDU.
func (c *conn) roundTrip(tid uint16, unit byte, pdu []byte) []byte {
	c.t.Helper()
	c.send(tid, unit, pdu)
	f, err := c.recv()
	if err != nil {
		c.t.Fatalf("reply to %x: %v", pdu, err)
	}
	if f.Transaction != tid || f.Unit != unit {
		c.t.Fatalf("reply tid %d unit %d, want %d %d", f.Transaction, f.Unit, tid, unit)
	}
	return f.PDU
}

// closed reports whether the proxy closed the connection (EOF or reset)
// without sending anything.
func (c *conn) closed() bool {
	_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	_, err := c.c.Read(b[:])
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err)
}

func isReset(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && !oe.Timeout()
}

func exception(fn modbus.Function, code modbus.ExceptionCode) []byte {
	return modbus.AppendException(nil, fn, code)
}
