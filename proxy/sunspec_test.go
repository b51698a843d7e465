package proxy_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/protocols/modbus"
	"github.com/gridseal/gridseal/proxy"
	"github.com/gridseal/gridseal/simulators"
)

const sunspecProxyPolicy = `id: sunspec
devices:
  - name: inverter-1
    upstream: %[1]s
    units: [1]
    rules:
      - name: power-limit
        allow: write
        functions: [6]
        sunspec: {model: 123, point: WMaxLimPct}
        values: 0..60 %%
  - name: breaker-1
    upstream: %[1]s
    units: [3]
    rules:
      - name: breaker-conn
        allow: write
        sunspec: {model: 123, point: Conn}
`

// startSim serves the standard plant with opts on addr ("127.0.0.1:0" for
// a free port) until stopped or the test ends.
func startSim(t *testing.T, addr string, opts simulators.Options) *simulators.Server {
	t.Helper()
	plant, err := simulators.NewStandardPlant("all", opts)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := simulators.Start(addr, plant)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	return srv
}

// SunSpec rules are resolved by the proxy over its own connection when it
// connects, refused until then and for a device without a map, and resolved
// again after the device comes back — here with another layout, where the
// point has moved.
func TestSunSpecRulesThroughProxy(t *testing.T) {
	sim := startSim(t, "127.0.0.1:0", simulators.Options{})
	fx := startProxy(t, proxy.Config{}, fmt.Sprintf(sunspecProxyPolicy, sim.Addr),
		proxy.Route{Units: map[byte]string{1: "inverter-1", 3: "breaker-1"}},
		proxy.Device{Name: "inverter-1", Upstream: sim.Addr},
		proxy.Device{Name: "breaker-1", Upstream: sim.Addr})
	c := dial(t, fx.addr)
	tid := uint16(0)
	write := func(unit byte, addr, v uint16) []byte {
		tid++
		return c.roundTrip(tid, unit, modbus.AppendWriteSingleRegister(nil, addr, v))
	}
	lastReason := func() string {
		ev := fx.events.completed()
		for i := len(ev) - 1; i >= 0; i-- {
			if ev[i].Function == byte(modbus.WriteSingleRegister) {
				return ev[i].Reason
			}
		}
		return ""
	}
	resolvedAt := func(addr uint16) func() bool {
		return func() bool {
			return bytes.Equal(write(1, addr, 30), modbus.AppendWriteSingleRegister(nil, addr, 30))
		}
	}

	testwait.For(t, "the proxy to resolve 123.WMaxLimPct at 40127", resolvedAt(simulators.InverterLimitPct))
	if r := lastReason(); r != "power-limit: 123.WMaxLimPct = 30 % WMax" {
		t.Fatalf("allowed write's reason %q; want it to name the point", r)
	}
	var own int
	for _, ev := range fx.events.completed() {
		if ev.IsMapRead() && ev.Verdict == audit.Allow && ev.Device == "inverter-1" {
			own++
		}
	}
	if own < 3 {
		t.Fatalf("%d map reads recorded; want the marker, model headers and scale factors", own)
	}
	if resp := write(1, simulators.InverterLimitPct, 61); !bytes.Equal(resp, exception(modbus.WriteSingleRegister, modbus.IllegalDataValue)) {
		t.Fatalf("61 %%: %x, want exception 3", resp)
	}
	if r := lastReason(); !strings.Contains(r, "123.WMaxLimPct = 61 % WMax") {
		t.Fatalf("denied write's reason %q; want it to name the point", r)
	}

	t.Run("device without a map", func(t *testing.T) {
		testwait.For(t, "the breaker's map walk to fail", func() bool {
			write(3, 40126, 1)
			return strings.Contains(lastReason(), `no SunSpec map: no "SunS" marker at 40000`)
		})
		if resp := write(3, 40126, 1); !bytes.Equal(resp, exception(modbus.WriteSingleRegister, modbus.IllegalDataAddress)) {
			t.Fatalf("breaker write: %x, want exception 2", resp)
		}
	})

	t.Run("reconnect to another layout", func(t *testing.T) {
		if err := sim.Stop(); err != nil {
			t.Fatal(err)
		}
		testwait.For(t, "the proxy to forget the map with the connection", func() bool {
			write(1, simulators.InverterLimitPct, 30)
			return strings.Contains(lastReason(), "123.WMaxLimPct not resolved")
		})
		moved := simulators.Layout{Base: 50000, Models: []uint16{120, 121, 103, 123}}
		startSim(t, sim.Addr, simulators.Options{InverterLayout: &moved})
		const at = 50000 + 2 + 68 + 28 + 32 + 52 + 5 // SunS, 1, 120, 121, 103, then WMaxLimPct in 123
		testwait.For(t, "the proxy to resolve the point at its new address", resolvedAt(at))
		if resp := write(1, simulators.InverterLimitPct, 30); !bytes.Equal(resp, exception(modbus.WriteSingleRegister, modbus.IllegalDataAddress)) {
			t.Fatalf("write to 40127 on the moved map: %x, want exception 2", resp)
		}
	})

	// Each operation's device time is the device's: none for one never
	// sent (the device was away: the proxy's own map reads too), a sane
	// one for the others.
	unsent := 0
	for _, ev := range fx.events.completed() {
		if ev.Upstream < 0 || ev.Upstream > 10*time.Second {
			t.Errorf("operation (exception %#x, %s) recorded with device time %v", ev.Exception, ev.Reason, ev.Upstream)
		}
		if !ev.Client.IsValid() && ev.Exception == byte(modbus.GatewayPathUnavailable) {
			unsent++
		}
	}
	if unsent == 0 {
		t.Error("no map read of the away device recorded")
	}
}
