package proxy_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/protocols/modbus"
	"github.com/gridseal/gridseal/proxy"
)

// observePolicy allows reads only, on a device in observe mode.
const observePolicy = `id: test
devices:
  - name: plc
    upstream: %s
    mode: observe
    rules:
      - {name: reads, allow: read, functions: [3], addresses: 0-9}
`

// TestObserveModeForwardsWhatTheRulesDeny: a request the rules deny is
// forwarded and recorded as would-deny, a write durably before it moves;
// a malformed frame is still never forwarded, and a write that cannot be
// recorded still does not move.
func TestObserveModeForwardsWhatTheRulesDeny(t *testing.T) {
	up := startUpstream(t, nil)
	fx := startProxy(t, proxy.Config{}, fmt.Sprintf(observePolicy, up.addr()), plcRoute(),
		proxy.Device{Name: "plc", Upstream: up.addr()})
	c := dial(t, fx.addr)
	write := modbus.AppendWriteSingleRegister(nil, 7, 42)
	if resp := c.roundTrip(1, 1, write); !bytes.Equal(resp, write) {
		t.Fatalf("write the rules deny, in observe mode: reply %x, want the device's echo", resp)
	}
	if resp := c.roundTrip(2, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 50, 1)); resp[0] != 3 {
		t.Fatalf("read outside the rule, in observe mode: reply %x", resp)
	}
	if resp := c.roundTrip(3, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0, 1)); resp[0] != 3 {
		t.Fatalf("allowed read: reply %x", resp)
	}
	if got := up.received(); len(got) != 3 {
		t.Fatalf("device received %d requests, want 3", len(got))
	}
	req := fx.events.inPhase(audit.PhaseRequest)
	if len(req) != 1 || !req[0].Observed || req[0].Verdict != audit.Allow || !bytes.Equal(req[0].PDU, write) {
		t.Fatalf("durable record before the observed write moved: %+v", req)
	}
	done := fx.events.completed()
	if len(done) != 3 {
		t.Fatalf("%d completed events, want 3", len(done))
	}
	for i, want := range []struct {
		observed bool
		reason   string
	}{
		{true, "OBSERVE would deny: no rule of device plc allows function 6"},
		{true, "OBSERVE would deny: rule reads: holding-registers 50+1 outside 0..9"},
		{false, "reads"},
	} {
		ev := done[i]
		if ev.Verdict != audit.Allow || ev.Observed != want.observed || !strings.HasPrefix(ev.Reason, want.reason) || ev.Exception != 0 {
			t.Fatalf("event %d: verdict %v observed %v reason %q exception %d, want observed=%v %q",
				i, ev.Verdict, ev.Observed, ev.Reason, ev.Exception, want.observed, want.reason)
		}
	}

	t.Run("malformed frames are still not forwarded", func(t *testing.T) {
		bad := dial(t, fx.addr)
		bad.write([]byte{0, 9, 0, 1, 0, 6, 1, 6, 0, 7, 0, 1}) // protocol id 1
		if !bad.closed() {
			t.Fatal("a frame with protocol id 1 did not close the connection")
		}
		if got := up.received(); len(got) != 3 {
			t.Fatalf("device received %d requests after a malformed frame, want 3", len(got))
		}
	})
	t.Run("a write that cannot be recorded does not move", func(t *testing.T) {
		fx.events.mu.Lock()
		fx.events.refuseDurable = true
		fx.events.mu.Unlock()
		defer func() {
			fx.events.mu.Lock()
			fx.events.refuseDurable = false
			fx.events.mu.Unlock()
		}()
		if resp := c.roundTrip(4, 1, write); !bytes.Equal(resp, exception(modbus.WriteSingleRegister, modbus.ServerDeviceBusy)) {
			t.Fatalf("unrecordable observed write: reply %x, want exception 6", resp)
		}
		if got := up.received(); len(got) != 3 {
			t.Fatalf("device received %d requests, want 3: the write must not move", len(got))
		}
	})
}
