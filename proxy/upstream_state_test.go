package proxy_test

import (
	"bytes"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/protocols/modbus"
	"github.com/gridseal/gridseal/proxy"
)

// hangUpDevice is a PLC that takes one request per connection and then
// closes it: answering first (a PLC closing its idle connections) or not
// (one that drops a connection with a request in flight).
func hangUpDevice(t *testing.T, answer bool) string {
	t.Helper()
	return acceptEach(t, func(c net.Conn) {
		f, err := modbus.NewReader(c).ReadFrame()
		if err != nil || !answer {
			return
		}
		_, _ = c.Write(modbus.AppendFrame(nil, f.Transaction, f.Unit, registerEcho(f)))
	}).Addr().String()
}

// TestUpstreamStateAfterTheConnectionEnds: a device that closes an idle
// connection is idle — the next request dials again at once — while one
// that cannot be dialled, or drops a request in flight, is down.
func TestUpstreamStateAfterTheConnectionEnds(t *testing.T) {
	deadAddr := func(t *testing.T) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		_ = ln.Close() // nothing listens there now
		return addr
	}
	read := modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 5, 1)
	cases := []struct {
		name       string
		device     func(t *testing.T) string
		reply      []byte // the first request's reply
		state      string
		detail     string
		recovering bool // a second request is answered
	}{
		{"device closes the idle connection", func(t *testing.T) string { return hangUpDevice(t, true) },
			[]byte{3, 2, 0, 6} /* register 5 + unit 1 */, "idle", "device closed the idle connection", true},
		{"dial fails", deadAddr,
			exception(modbus.ReadHoldingRegisters, modbus.GatewayPathUnavailable), "down", "unreachable", false},
		{"connection lost with a request in flight", func(t *testing.T) string { return hangUpDevice(t, false) },
			exception(modbus.ReadHoldingRegisters, modbus.GatewayTargetDeviceFailedToRespond), "down", "connection lost", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			addr := tc.device(t)
			fx := startProxy(t, proxy.Config{}, fmt.Sprintf(openPolicy, addr), plcRoute(), proxy.Device{Name: "plc", Upstream: addr})
			c := dial(t, fx.addr)
			if got := c.roundTrip(1, 1, read); !bytes.Equal(got, tc.reply) {
				t.Fatalf("reply %x, want %x", got, tc.reply)
			}
			var st proxy.UpstreamState
			testwait.For(t, "the connection to end", func() bool {
				st = fx.srv.Upstreams()["plc"]
				return st.State != "up"
			})
			if st.State != tc.state || !strings.Contains(st.Detail, tc.detail) {
				t.Fatalf("state %+v, want %q with detail %q", st, tc.state, tc.detail)
			}
			if tc.recovering {
				if got := c.roundTrip(2, 1, read); !bytes.Equal(got, tc.reply) {
					t.Fatalf("second reply %x, want %x", got, tc.reply)
				}
			}
		})
	}
}
