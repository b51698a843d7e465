// Package proxy is gridseal's inline Modbus/TCP firewall: it accepts client
// connections, parses every request strictly, asks a Decider whether it may
// pass, has a Recorder log it, and forwards allowed requests to the device
// over a small pool of upstream connections, rewriting transaction ids so
// that many pipelining clients can share one PLC connection.
//
// The proxy owns sockets, ordering and timeouts. It knows nothing about
// keys, hashes or NATS: the Decider and Recorder it is given do. It imports
// only protocols/modbus, audit and policy/decision of gridseal, and must not
// (even transitively) import NATS, Tink or YAML; deps_test.go checks.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/policy/decision"
)

// Decider decides one request. Anything but an audit.Allow verdict is a
// deny. It must be safe for concurrent use; *policy.Engine is one.
type Decider interface {
	Decide(ctx context.Context, in *decision.Input) decision.Result
}

// Resolver is implemented by a Decider whose rules name a device's
// registers by the device's own map (SunSpec points; *policy.Engine is
// one). The proxy walks the map over its own connection to the device when
// it connects, and again after every reconnect; until then the Decider
// refuses what those rules would allow, and says why.
type Resolver interface {
	// NeedsResolve reports whether device's rules need its map.
	NeedsResolve(device string) bool
	// Resolve reads device's map through read (holding registers of a
	// unit). An exception from the device comes back as an error with a
	// method Exception() byte.
	Resolve(ctx context.Context, device string, read func(unit byte, addr, n uint16) ([]uint16, error)) error
	// Unresolve forgets device's map: its connection was lost.
	Unresolve(device string)
}

// Recorder records one event. With durable set it returns only once the
// event is durable, or an error; the proxy then refuses the request. It must
// not keep ev or its slices after returning, and must be safe for
// concurrent use.
type Recorder interface {
	Record(ctx context.Context, ev *audit.Event, durable bool) error
}

// Device is one upstream PLC the proxy forwards to.
type Device struct {
	Name     string
	Upstream string      // host:port
	TLS      *tls.Config // Modbus/TCP Security toward the PLC; nil: plain TCP
}

// Route maps the unit ids arriving on one listener to devices.
type Route struct {
	Units   map[byte]string // unit id → device name
	Default string          // device for units not in Units; "" leaves them unrouted
}

func (r *Route) lookup(unit byte) string {
	if d, ok := r.Units[unit]; ok {
		return d
	}
	return r.Default
}

// Server is the proxy. Create it with New, serve listeners with Serve, stop
// it with Close.
type Server struct {
	cfg       Config
	dec       Decider
	rec       Recorder
	log       *zap.Logger
	warns     *audit.LogThrottle // warnings a peer can cause at will
	upstreams map[string]*upstream
	ctx       context.Context
	cancel    context.CancelFunc
	opSeq     atomic.Uint64
	pinSeq    atomic.Uint32 // spreads sessions over the upstream pool
	calls     sync.Pool

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{}
	perIP     map[netip.Addr]int
	wg        sync.WaitGroup
}

// New returns a proxy for devices. It dials nothing until the first request,
// except to read the map of a device whose rules need one (see Resolver).
func New(cfg Config, devices []Device, dec Decider, rec Recorder, log *zap.Logger) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:       cfg,
		dec:       dec,
		rec:       rec,
		log:       log,
		warns:     audit.NewLogThrottle(log, cfg.LogInterval),
		upstreams: map[string]*upstream{},
		ctx:       ctx,
		cancel:    cancel,
		listeners: map[net.Listener]struct{}{},
		sessions:  map[*session]struct{}{},
		perIP:     map[netip.Addr]int{},
	}
	s.opSeq.Store(cfg.FirstOp)
	s.calls.New = func() any { return new(call) }
	for _, d := range devices {
		if _, dup := s.upstreams[d.Name]; dup {
			cancel()
			return nil, fmt.Errorf("device %q listed twice", d.Name)
		}
		s.upstreams[d.Name] = newUpstream(s, d)
	}
	return s, nil
}

// ErrClosed is returned by Serve after Close.
var ErrClosed = errors.New("proxy closed")

// Serve accepts connections on ln and routes their requests by rt until
// Close is called or ln fails. It returns ErrClosed after Close.
func (s *Server) Serve(ln net.Listener, rt Route) error {
	for unit, name := range rt.Units {
		if s.upstreams[name] == nil {
			return fmt.Errorf("route unit %d: unknown device %q", unit, name)
		}
	}
	if rt.Default != "" && s.upstreams[rt.Default] == nil {
		return fmt.Errorf("route default: unknown device %q", rt.Default)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	local := ln.Addr().String()
	s.log.Info("listening", zap.String("addr", local))
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil {
				return ErrClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("accept on %s: %w", local, err)
			}
			// Out of file descriptors, a connection reset before accept...:
			// back off and keep serving, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed; retrying", zap.String("addr", local), zap.Duration("in", backoff), zap.Error(err))
			select {
			case <-time.After(backoff):
			case <-s.ctx.Done():
				return ErrClosed
			}
			continue
		}
		backoff = 0
		ss, ok := s.admit(conn, local, &rt)
		if !ok {
			continue
		}
		go func() {
			defer s.wg.Done()
			ss.serve()
			s.release(ss)
		}()
	}
}

// admit applies the connection limits and registers a new session.
func (s *Server) admit(conn net.Conn, local string, rt *Route) (*session, bool) {
	client := addrPort(conn.RemoteAddr())
	ip := client.Addr()
	s.mu.Lock()
	var why string
	switch {
	case s.closed:
		why = "proxy closing"
	case len(s.sessions) >= s.cfg.Limits.MaxConnections:
		why = "connection limit reached"
	case s.perIP[ip] >= s.cfg.Limits.MaxConnectionsPerClient:
		why = "per-client connection limit reached"
	}
	if why != "" {
		s.mu.Unlock()
		s.warns.Warn("connection refused", zap.String("reason", why), zap.String("client", client.String()))
		_ = conn.Close()
		return nil, false
	}
	ss := newSession(s, conn, client, local, rt)
	s.sessions[ss] = struct{}{}
	s.perIP[ip]++
	s.wg.Add(1)
	s.mu.Unlock()
	return ss, true
}

func (s *Server) release(ss *session) {
	s.mu.Lock()
	delete(s.sessions, ss)
	ip := ss.client.Addr()
	if s.perIP[ip]--; s.perIP[ip] <= 0 {
		delete(s.perIP, ip)
	}
	s.mu.Unlock()
}

// Connections returns the number of open client connections.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// Close stops every listener, client session and upstream connection and
// waits for the sessions to end. Requests in flight are answered or
// recorded as failed before Close returns, and the counts of repeated
// warnings not yet logged are logged.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.cancel()
	for ln := range s.listeners {
		_ = ln.Close()
	}
	for ss := range s.sessions {
		ss.close()
	}
	s.mu.Unlock()
	for _, u := range s.upstreams {
		u.close()
	}
	s.wg.Wait()
	s.warns.Close()
	return nil
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// RegisterMetrics adds the proxy's own gauges (open client connections) to reg.
func (s *Server) RegisterMetrics(reg prometheus.Registerer) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "gridseal_connections", Help: "Open client connections.",
	}, func() float64 { return float64(s.Connections()) }))
}
