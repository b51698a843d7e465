package proxy_test

import (
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/protocols/modbus"
	"github.com/gridseal/gridseal/proxy"
)

// TestFlushUnderDrops: many clients pipeline reads and force listen-only
// commands on one device connection that the device keeps closing; every
// request completes (recorded), and afterwards the connection has all its
// slots again.
func TestFlushUnderDrops(t *testing.T) {
	var flaky atomic.Bool
	flaky.Store(true)
	ln := acceptEach(t, func(c net.Conn) {
		rd := modbus.NewReader(c)
		left := 1 + rand.IntN(30)
		for {
			f, err := rd.ReadFrame()
			if err != nil {
				return
			}
			if left--; flaky.Load() && left == 0 {
				return
			}
			if f.PDU[0] == 8 {
				continue
			}
			if _, err := c.Write(modbus.AppendFrame(nil, f.Transaction, f.Unit, registerEcho(f))); err != nil {
				return
			}
		}
	})
	fx := listenOnlyProxy(t, ln.Addr().String())
	const clients, each = 8, 400
	for range clients {
		c := dial(t, fx.addr)
		go drain(c)
		go func() {
			var b []byte
			for i := range each {
				pdu := modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, uint16(i%100), 1)
				if i%5 == 0 {
					pdu = []byte{8, 0, 4, 0, 0}
				}
				b = modbus.AppendFrame(b, uint16(i), 1, pdu)
				if i%16 == 15 || i == each-1 {
					if _, err := c.c.Write(b); err != nil {
						return
					}
					b = b[:0]
				}
			}
		}()
	}
	testwait.For(t, "every request to complete", func() bool { return len(fx.events.completed()) >= clients*each })
	if n := len(fx.events.completed()); n != clients*each {
		t.Fatalf("%d completions for %d requests", n, clients*each)
	}
	// Every slot is free again: 16 reads at once all pass.
	flaky.Store(false)
	time.Sleep(50 * time.Millisecond)
	var rw sync.WaitGroup
	for i := range 16 {
		rw.Add(1)
		go func() {
			defer rw.Done()
			c := dial(t, fx.addr)
			c.send(uint16(i), 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 1, 1))
			f, err := c.recv()
			if err != nil || len(f.PDU) != 4 {
				t.Errorf("read %d after the storm: %x %v", i, f.PDU, err)
			}
		}()
	}
	rw.Wait()
	for _, e := range fx.events.completed() {
		if e.Function == 8 && e.Exception == 0 && e.Verdict == audit.Allow && e.Reason == "" {
			t.Errorf("listen-only completed without a reason: %+v", e)
		}
	}
}

// TestCloseMidFlush: the proxy closes while clients pipeline into a device
// connection that keeps dropping; Close returns and every request taken
// completes.
func TestCloseMidFlush(t *testing.T) {
	ln := acceptEach(t, func(c net.Conn) {
		rd := modbus.NewReader(c)
		for left := 1 + rand.IntN(30); left > 0; left-- {
			f, err := rd.ReadFrame()
			if err != nil {
				return
			}
			if f.PDU[0] != 8 {
				time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
				_, _ = c.Write(modbus.AppendFrame(nil, f.Transaction, f.Unit, registerEcho(f)))
			}
		}
	})
	fx := listenOnlyProxy(t, ln.Addr().String())
	for range 8 {
		c := dial(t, fx.addr)
		go drain(c)
		go func() {
			for i := 0; ; i++ {
				pdu := modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, uint16(i%100), 1)
				if i%5 == 0 {
					pdu = []byte{8, 0, 4, 0, 0}
				}
				if _, err := c.c.Write(modbus.AppendFrame(nil, uint16(i), 1, pdu)); err != nil {
					return
				}
			}
		}()
	}
	time.Sleep(time.Duration(50+rand.IntN(100)) * time.Millisecond)
	closed := make(chan struct{})
	go func() { _ = fx.srv.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hangs")
	}
}

// listenOnlyProxy runs a proxy in front of the device at addr whose policy
// allows reads and force listen-only mode, with a short response timeout
// and retry backoff.
func listenOnlyProxy(t *testing.T, addr string) *fixture {
	t.Helper()
	pol := fmt.Sprintf(openPolicy, addr) + "      - {name: listen-only, allow: diagnostic, functions: [8], subfunctions: [4]}\n"
	cfg := proxy.Config{Upstream: proxy.UpstreamConfig{MaxInflight: 16, RetryBackoff: time.Millisecond, ResponseTimeout: time.Second}}
	return startProxy(t, cfg, pol, plcRoute(), proxy.Device{Name: "plc", Upstream: addr})
}

// drain reads and discards c's replies until it fails.
func drain(c *conn) {
	for {
		if _, err := c.recv(); err != nil {
			return
		}
	}
}
