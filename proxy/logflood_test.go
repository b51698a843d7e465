package proxy_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/protocols/modbus"
	"github.com/gridseal/gridseal/proxy"
)

// warnings counts the lines of logs whose message contains msg, and the
// warnings they stand for: one each, or the count a summary line carries.
func warnings(logs *observer.ObservedLogs, msg string) (lines, stand int) {
	for _, e := range logs.FilterMessageSnippet(msg).AllUntimed() {
		lines++
		if c, ok := e.ContextMap()["count"].(int64); ok {
			stand += int(c)
		} else {
			stand++
		}
	}
	return lines, stand
}

// TestFloodsOfWarningsAreSummarised: 500 refused connections, or 500
// malformed requests, make a few log lines whose counts add up to 500,
// while the record still gets every malformed operation.
func TestFloodsOfWarningsAreSummarised(t *testing.T) {
	up := startUpstream(t, nil)
	cases := []struct {
		name  string
		limit proxy.Limits
		flood func(t *testing.T, addr string)
		log   string // the proxy's log or the operations log
		msg   string
		// malformed operations recorded: each, whatever the log says
		recorded int
	}{
		{"refused connections", proxy.Limits{MaxConnectionsPerClient: 1}, func(t *testing.T, addr string) {
			dial(t, addr).roundTrip(1, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0, 1))
			for i := range 500 {
				c := dial(t, addr)
				if !c.closed() {
					t.Fatalf("connection %d was not refused", i)
				}
				_ = c.c.Close()
			}
		}, "proxy", "connection refused", 0},
		{"malformed requests", proxy.Limits{}, func(t *testing.T, addr string) {
			c := dial(t, addr)
			for i := range 500 {
				c.roundTrip(uint16(i), 1, []byte{3, 0, 0, 0, 0}) // quantity 0: exception 3
			}
		}, "ops", "modbus operation", 500},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pol, err := policy.Parse("test.yaml", fmt.Appendf(nil, openPolicy, up.addr()))
			if err != nil {
				t.Fatal(err)
			}
			proxyCore, proxyLogs := observer.New(zapcore.InfoLevel)
			opsCore, opsLogs := observer.New(zapcore.InfoLevel)
			ops := audit.NewLogRecorder(zap.New(opsCore), time.Hour)
			events := &eventLog{}
			srv, err := proxy.New(proxy.Config{Limits: tc.limit, LogInterval: time.Hour},
				[]proxy.Device{{Name: "plc", Upstream: up.addr()}}, policy.NewEngine(pol, zap.NewNop()),
				audit.Tee{events, ops}, zap.New(proxyCore))
			if err != nil {
				t.Fatal(err)
			}
			addr, done := serve(t, srv, plcRoute())
			tc.flood(t, addr)
			_ = srv.Close()
			if err := <-done; !errors.Is(err, proxy.ErrClosed) {
				t.Fatalf("Serve returned %v", err)
			}
			ops.Close()
			logs := proxyLogs
			if tc.log == "ops" {
				logs = opsLogs
			}
			lines, stand := warnings(logs, tc.msg)
			if lines > 3 || stand != 500 {
				t.Fatalf("%d %q lines standing for %d, want at most 3 for 500", lines, tc.msg, stand)
			}
			malformed := 0
			for _, e := range events.completed() {
				if e.Verdict == audit.Malformed {
					malformed++
				}
			}
			if malformed != tc.recorded {
				t.Fatalf("%d malformed operations recorded, want %d", malformed, tc.recorded)
			}
		})
	}
}
