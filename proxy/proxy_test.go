package proxy_test

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/internal/testtool"
	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/protocols/modbus"
	"github.com/gridseal/gridseal/proxy"
	"github.com/gridseal/gridseal/simulators"
	"github.com/gridseal/gridseal/simulators/simtest"
)

func plcRoute() proxy.Route { return proxy.Route{Default: "plc"} }

func TestSimulatorsThroughProxy(t *testing.T) {
	simAddr, plant := simtest.Start(t, simulators.Options{})
	pol, err := readExamplePolicy(simAddr)
	if err != nil {
		t.Fatal(err)
	}
	fx := startProxy(t, proxy.Config{}, pol,
		proxy.Route{Units: map[byte]string{1: "inverter-1", 2: "battery-1", 3: "breaker-1"}},
		proxy.Device{Name: "inverter-1", Upstream: simAddr},
		proxy.Device{Name: "battery-1", Upstream: simAddr},
		proxy.Device{Name: "breaker-1", Upstream: simAddr})
	c := dial(t, fx.addr)
	inv := plant.Device(simulators.UnitInverter).(*simulators.Inverter)
	bat := plant.Device(simulators.UnitBattery).(*simulators.Battery)
	brk := plant.Device(simulators.UnitBreaker).(*simulators.Breaker)

	t.Run("inverter read", func(t *testing.T) {
		resp := c.roundTrip(1, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, simulators.InverterBase, 4))
		if !bytes.Equal(resp, []byte{3, 8, 0x53, 0x75, 0x6e, 0x53, 0, 1, 0, 66}) {
			t.Fatalf("SunSpec header through proxy = %x", resp)
		}
	})
	t.Run("inverter allowed write moves the physics", func(t *testing.T) {
		pdu := modbus.AppendWriteSingleRegister(nil, simulators.InverterLimitPct, 20)
		if resp := c.roundTrip(2, 1, pdu); !bytes.Equal(resp, pdu) {
			t.Fatalf("write echo = %x", resp)
		}
		testwait.For(t, "inverter output to fall to its 20 kW limit", func() bool { return inv.Watts() <= 20_000 })
	})
	t.Run("inverter forbidden write", func(t *testing.T) {
		resp := c.roundTrip(3, 1, modbus.AppendWriteSingleRegister(nil, simulators.InverterConn, 0))
		if !bytes.Equal(resp, exception(modbus.WriteSingleRegister, modbus.IllegalDataAddress)) {
			t.Fatalf("disconnect reply = %x, want exception 2", resp)
		}
		if inv.Watts() == 0 {
			t.Fatal("a denied disconnect reached the inverter")
		}
	})
	t.Run("battery allowed and denied setpoints", func(t *testing.T) {
		ok := modbus.AppendWriteMultipleRegisters(nil, simulators.BatterySetpoint, []uint16{40, 1})
		if resp := c.roundTrip(4, 2, ok); resp[0] != 16 {
			t.Fatalf("dispatch 40 kW reply = %x", resp)
		}
		too := modbus.AppendWriteSingleRegister(nil, simulators.BatterySetpoint, 80)
		if resp := c.roundTrip(5, 2, too); !bytes.Equal(resp, exception(modbus.WriteSingleRegister, modbus.IllegalDataValue)) {
			t.Fatalf("dispatch 80 kW reply = %x, want exception 3", resp)
		}
		tid := uint16(100)
		testwait.For(t, "battery to discharge at up to 40 kW", func() bool {
			tid++
			resp := c.roundTrip(tid, 2, modbus.AppendReadRequest(nil, modbus.ReadInputRegisters, simulators.BatteryPower, 1))
			kw := int16(binary.BigEndian.Uint16(resp[2:]))
			if kw > 40 {
				t.Fatalf("battery power %d kW above the 40 kW setpoint", kw)
			}
			return kw > 0 && bat.SoC() < 0.5
		})
	})
	t.Run("breaker read allowed, open denied", func(t *testing.T) {
		resp := c.roundTrip(7, 3, modbus.AppendReadRequest(nil, modbus.ReadDiscreteInputs, 0, 2))
		if !bytes.Equal(resp, []byte{2, 1, 0b01}) {
			t.Fatalf("breaker status = %x, want closed", resp)
		}
		resp = c.roundTrip(8, 3, modbus.AppendWriteSingleCoil(nil, simulators.BreakerCoilOpen, true))
		if !bytes.Equal(resp, exception(modbus.WriteSingleCoil, modbus.IllegalFunction)) {
			t.Fatalf("open reply = %x, want exception 1", resp)
		}
		if !brk.Closed() {
			t.Fatal("a denied open reached the breaker")
		}
	})
	t.Run("every operation recorded once with its verdict", func(t *testing.T) {
		testwait.For(t, "the breaker deny to be recorded", func() bool {
			ev := fx.events.completed()
			return len(ev) > 0 && ev[len(ev)-1].Device == "breaker-1" && ev[len(ev)-1].Function == 5
		})
		var got []string
		for _, e := range fx.events.completed() {
			s := fmt.Sprintf("%s/%d/%s", e.Device, e.Function, e.Verdict)
			if len(got) > 0 && got[len(got)-1] == s && e.Function == 4 {
				continue // the battery poll repeats until it sees the discharge
			}
			got = append(got, s)
		}
		want := []string{
			"inverter-1/3/allow", "inverter-1/6/allow", "inverter-1/6/deny", "battery-1/16/allow",
			"battery-1/6/deny", "battery-1/4/allow", "breaker-1/2/allow", "breaker-1/5/deny",
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("recorded\n %v\nwant\n %v", got, want)
		}
		var durable int
		for _, e := range fx.events.all() {
			if e.Phase == audit.PhaseRequest {
				durable++
				if e.Verdict != audit.Allow || e.Class != "write" {
					t.Errorf("durable pre-forward record for a non-write: %+v", e)
				}
			}
		}
		if durable != 2 {
			t.Fatalf("%d writes recorded before forwarding, want 2", durable)
		}
	})
}

func readExamplePolicy(simAddr string) (string, error) {
	b, err := readFile("../policy/testdata/plant.yaml")
	if err != nil {
		return "", err
	}
	return strings.ReplaceAll(b, "127.0.0.1:15020", simAddr), nil
}

func readFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}

func TestPipeliningClientsShareOneUpstreamConnection(t *testing.T) {
	up := startUpstream(t, nil)
	fx := startProxy(t, proxy.Config{}, fmt.Sprintf(openPolicy, up.addr()), plcRoute(),
		proxy.Device{Name: "plc", Upstream: up.addr()})
	const clients, depth, rounds = 50, 8, 5
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := dial(t, fx.addr)
			unit := byte(1 + i%4)
			for r := 0; r < rounds; r++ {
				// Pipeline depth requests, each asking for a distinct address,
				// with transaction ids that collide across clients.
				for k := 0; k < depth; k++ {
					addr := uint16(i*100 + r*10 + k)
					c.send(uint16(k), unit, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, addr, 2))
				}
				seen := map[uint16]bool{}
				for k := 0; k < depth; k++ {
					f, err := c.recv()
					if err != nil {
						errs <- fmt.Errorf("client %d: %v", i, err)
						return
					}
					tid := f.Transaction
					want := uint16(i*100+r*10+int(tid)) + uint16(unit)
					if seen[tid] || f.Unit != unit || len(f.PDU) != 6 || binary.BigEndian.Uint16(f.PDU[2:]) != want {
						errs <- fmt.Errorf("client %d: reply tid %d unit %d pdu %x, want value %d", i, tid, f.Unit, f.PDU, want)
						return
					}
					seen[tid] = true
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := up.connections(); n != 1 {
		t.Fatalf("upstream saw %d connections, want the pool's 1", n)
	}
	if n := len(up.received()); n != clients*depth*rounds {
		t.Fatalf("upstream received %d requests, want %d", n, clients*depth*rounds)
	}
}

func TestUpstreamUnreachable(t *testing.T) {
	up := startUpstream(t, nil)
	dead := up.addr()
	_ = up.ln.Close() // nothing listens there now
	fx := startProxy(t, proxy.Config{}, fmt.Sprintf(openPolicy, dead), plcRoute(),
		proxy.Device{Name: "plc", Upstream: dead})
	c := dial(t, fx.addr)
	for tid := uint16(1); tid <= 3; tid++ { // the second and third fail fast during the retry backoff
		resp := c.roundTrip(tid, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0, 1))
		if !bytes.Equal(resp, exception(modbus.ReadHoldingRegisters, modbus.GatewayPathUnavailable)) {
			t.Fatalf("reply = %x, want exception 0x0A", resp)
		}
	}
	testwait.For(t, "three recorded operations", func() bool { return len(fx.events.completed()) == 3 })
	ev := fx.events.completed()
	if len(ev) != 3 || ev[0].Exception != 0x0A || !strings.Contains(ev[0].Reason, "unreachable") {
		t.Fatalf("events = %+v", ev)
	}
}

// TestUpstreamStates: what the console shows of each device — idle before
// any request, up once answered, not answering after a timeout, and down,
// with the reason, when it cannot be reached.
func TestUpstreamStates(t *testing.T) {
	up := startUpstream(t, func(f modbus.Frame) []byte {
		if binary.BigEndian.Uint16(f.PDU[1:3]) == 0x63 { // address 0x63: the device stalls
			return nil
		}
		return registerEcho(f)
	})
	dead := startUpstream(t, nil)
	deadAddr := dead.addr()
	_ = dead.ln.Close()
	pol := fmt.Sprintf(openPolicy, up.addr()) + fmt.Sprintf("  - name: gone\n    upstream: %s\n    rules:\n      - {name: reads, allow: read, functions: [3]}\n", deadAddr)
	cfg := proxy.Config{Upstream: proxy.UpstreamConfig{ResponseTimeout: 200 * time.Millisecond}}
	fx := startProxy(t, cfg, pol, proxy.Route{Units: map[byte]string{1: "plc", 2: "gone"}},
		proxy.Device{Name: "plc", Upstream: up.addr()}, proxy.Device{Name: "gone", Upstream: deadAddr})
	state := func(d string) proxy.UpstreamState { return fx.srv.Upstreams()[d] }
	if state("plc").State != "idle" || state("gone").State != "idle" {
		t.Fatalf("before any request: %+v", fx.srv.Upstreams())
	}
	c := dial(t, fx.addr)
	c.roundTrip(1, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 5, 1))
	if st := state("plc"); st.State != "up" || st.Since.IsZero() {
		t.Fatalf("after a reply: %+v", st)
	}
	c.roundTrip(2, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0x63, 1))
	if st := state("plc"); st.State != "not answering" {
		t.Fatalf("after a timeout: %+v", st)
	}
	c.roundTrip(3, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 5, 1))
	if st := state("plc"); st.State != "up" {
		t.Fatalf("answering again: %+v", st)
	}
	c.roundTrip(4, 2, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 5, 1))
	if st := state("gone"); st.State != "down" || !strings.Contains(st.Detail, "unreachable") {
		t.Fatalf("a device nothing listens for: %+v", st)
	}
}

func TestDeadUnitDoesNotBlockOthers(t *testing.T) {
	up := startUpstream(t, func(f modbus.Frame) []byte {
		if f.Unit == 2 {
			return nil // unit 2 behind this gateway never answers
		}
		return registerEcho(f)
	})
	cfg := proxy.Config{Upstream: proxy.UpstreamConfig{ResponseTimeout: 400 * time.Millisecond}}
	fx := startProxy(t, cfg, fmt.Sprintf(openPolicy, up.addr()), plcRoute(),
		proxy.Device{Name: "plc", Upstream: up.addr()})
	dead, alive := dial(t, fx.addr), dial(t, fx.addr)
	start := time.Now()
	dead.send(1, 2, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0, 1))
	for i := uint16(0); i < 20; i++ {
		resp := alive.roundTrip(i, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, i, 1))
		if binary.BigEndian.Uint16(resp[2:]) != i+1 {
			t.Fatalf("unit 1 reply %x", resp)
		}
	}
	if time.Since(start) >= 400*time.Millisecond {
		t.Fatal("unit 1 waited for the dead unit's timeout")
	}
	f, err := dead.recv()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(f.PDU, exception(modbus.ReadHoldingRegisters, modbus.GatewayTargetDeviceFailedToRespond)) {
		t.Fatalf("dead unit reply = %x, want exception 0x0B", f.PDU)
	}
	if el := time.Since(start); el < 400*time.Millisecond {
		t.Fatalf("0x0B after %v, before the response timeout", el)
	}
}

func TestUnmatchedUpstreamReplyIsDropped(t *testing.T) {
	up := startUpstream(t, nil)
	up.stray = func(f modbus.Frame) []byte {
		// A reply for a transaction the proxy never sent, then one for the
		// right transaction but another unit: both must be dropped.
		b := modbus.AppendFrame(nil, f.Transaction+1000, f.Unit, []byte{3, 2, 0xde, 0xad})
		return modbus.AppendFrame(b, f.Transaction, f.Unit+1, []byte{3, 2, 0xbe, 0xef})
	}
	fx := startProxy(t, proxy.Config{}, fmt.Sprintf(openPolicy, up.addr()), plcRoute(),
		proxy.Device{Name: "plc", Upstream: up.addr()})
	c := dial(t, fx.addr)
	for tid := uint16(1); tid <= 5; tid++ {
		resp := c.roundTrip(tid, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 10*tid, 1))
		if got := binary.BigEndian.Uint16(resp[2:]); got != 10*tid+1 {
			t.Fatalf("request %d got value %#x: a stray reply was delivered", tid, got)
		}
	}
	// Each stray reply is in the record, as the device sent it, with its
	// own operation id: a SOC sees a second master or a spoofed device.
	dropped := fx.events.inPhase(audit.PhaseDroppedReply)
	if len(dropped) != 10 {
		t.Fatalf("%d dropped replies recorded, want 10", len(dropped))
	}
	for i, e := range dropped {
		want, unit := []byte{3, 2, 0xde, 0xad}, byte(1)
		if i%2 == 1 {
			want, unit = []byte{3, 2, 0xbe, 0xef}, 2
		}
		if !bytes.Equal(e.Response, want) || e.Unit != unit || e.Device != "plc" || e.Verdict != audit.Deny ||
			len(e.PDU) != 0 || !strings.Contains(e.Reason, "matches no request") || e.Client.String() != up.addr() {
			t.Fatalf("dropped reply %d: %+v", i, e)
		}
	}
}

// TestReplyThatDoesNotFitKeepsTheConnection: a device that answers one
// request with a well-framed reply that does not fit it (one register for a
// two-register read, as libmodbus's unit tests do on purpose) gets that one
// request answered with exception 4 and recorded with the reply's bytes;
// the write in flight beside it on the same connection gets the device's
// real answer, and the connection is kept.
func TestReplyThatDoesNotFitKeepsTheConnection(t *testing.T) {
	var mu sync.Mutex
	var write *modbus.Frame
	up := startUpstream(t, func(f modbus.Frame) []byte {
		mu.Lock()
		defer mu.Unlock()
		if f.PDU[0] == byte(modbus.WriteSingleRegister) && write == nil {
			cp := f
			cp.PDU = append([]byte(nil), f.PDU...)
			write = &cp // answered after the bad reply, below
			return nil
		}
		if f.PDU[0] == byte(modbus.ReadHoldingRegisters) && f.PDU[4] == 2 {
			return nil
		}
		return registerEcho(f)
	})
	up.stray = func(f modbus.Frame) []byte {
		mu.Lock()
		defer mu.Unlock()
		if f.PDU[0] != byte(modbus.ReadHoldingRegisters) || f.PDU[4] != 2 || write == nil {
			return nil
		}
		out := modbus.AppendFrame(nil, f.Transaction, f.Unit, []byte{3, 2, 0, 1}) // one register, not two
		return modbus.AppendFrame(out, write.Transaction, write.Unit, write.PDU)
	}
	fx := startProxy(t, proxy.Config{}, fmt.Sprintf(openPolicy, up.addr()), plcRoute(),
		proxy.Device{Name: "plc", Upstream: up.addr()})
	c := dial(t, fx.addr)
	wr := modbus.AppendWriteSingleRegister(nil, 7, 42)
	c.send(1, 1, wr)
	testwait.For(t, "the write to reach the device", func() bool { return len(up.received()) == 1 })
	c.send(2, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 10, 2))
	got := map[uint16][]byte{}
	for range 2 {
		f, err := c.recv()
		if err != nil {
			t.Fatalf("reply %d: %v", len(got)+1, err)
		}
		got[f.Transaction] = f.PDU
	}
	if !bytes.Equal(got[1], wr) {
		t.Fatalf("the write in flight beside the bad reply got %x, want the device's echo %x", got[1], wr)
	}
	if want := exception(modbus.ReadHoldingRegisters, modbus.ServerDeviceFailure); !bytes.Equal(got[2], want) {
		t.Fatalf("the read answered with one register got %x, want %x", got[2], want)
	}
	if resp := c.roundTrip(3, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 20, 1)); !bytes.Equal(resp, []byte{3, 2, 0, 21}) {
		t.Fatalf("the next read: %x", resp)
	}
	if n := up.connections(); n != 1 {
		t.Fatalf("the device was dialled %d times; the connection must be kept", n)
	}
	var bad, written *audit.Event
	for _, e := range fx.events.completed() {
		switch e.Function {
		case byte(modbus.ReadHoldingRegisters):
			if e.Quantity == 2 {
				bad = &e
			}
		case byte(modbus.WriteSingleRegister):
			written = &e
		}
	}
	if bad == nil || bad.Exception != byte(modbus.ServerDeviceFailure) || !bytes.Equal(bad.Response, []byte{3, 2, 0, 1}) ||
		!strings.Contains(bad.Reason, "does not fit the request") {
		t.Fatalf("the bad reply recorded as %+v", bad)
	}
	if written == nil || written.Exception != 0 || !bytes.Equal(written.Response, wr) || written.Verdict != audit.Allow {
		t.Fatalf("the write recorded as %+v", written)
	}
}

// TestDeviceFloodingRepliesIsCutOff: a device that answers with a stream
// of replies to nothing gets 100 of them recorded, then one record saying
// it was cut off, and its connection closed; the pending request fails
// with 0x0B and the next one is answered on a new connection.
func TestDeviceFloodingRepliesIsCutOff(t *testing.T) {
	up := startUpstream(t, nil)
	var once sync.Once
	up.stray = func(f modbus.Frame) []byte {
		var flood []byte
		once.Do(func() {
			for i := 0; i < 150; i++ {
				flood = modbus.AppendFrame(flood, f.Transaction+1000+uint16(i), f.Unit, []byte{3, 2, 0, byte(i)})
			}
		})
		return flood
	}
	cfg := proxy.Config{Upstream: proxy.UpstreamConfig{RetryBackoff: 300 * time.Millisecond}}
	fx := startProxy(t, cfg, fmt.Sprintf(openPolicy, up.addr()), plcRoute(),
		proxy.Device{Name: "plc", Upstream: up.addr()})
	c := dial(t, fx.addr)
	first := c.roundTrip(1, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 10, 1))
	if !bytes.Equal(first, exception(modbus.ReadHoldingRegisters, modbus.GatewayTargetDeviceFailedToRespond)) {
		t.Fatalf("the request pending while the device flooded: %x, want exception 0x0B", first)
	}
	dropped := fx.events.inPhase(audit.PhaseDroppedReply)
	if len(dropped) != 101 || !strings.Contains(dropped[100].Reason, "more than 100 replies matching no request") {
		t.Fatalf("%d dropped replies recorded; want 100 and one cut-off record", len(dropped))
	}
	// Not redialled at once (a reconnect would buy the device another 100
	// records), but after the retry backoff.
	if resp := c.roundTrip(2, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 20, 1)); !bytes.Equal(resp,
		exception(modbus.ReadHoldingRegisters, modbus.GatewayPathUnavailable)) {
		t.Fatalf("right after the cut-off: %x, want exception 0x0A", resp)
	}
	time.Sleep(400 * time.Millisecond)
	resp := c.roundTrip(3, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 20, 1))
	if len(resp) < 4 || binary.BigEndian.Uint16(resp[2:]) != 21 {
		t.Fatalf("after the backoff: %x", resp)
	}
}

// TestForceListenOnlyIsNotAnswered: a device forced into listen-only mode
// (function 8, sub-function 4) never answers, by the specification; the
// proxy sends it, records it, answers the client nothing (as the device
// would), keeps the connection and holds no transaction id waiting.
func TestForceListenOnlyIsNotAnswered(t *testing.T) {
	up := startUpstream(t, registerEcho) // it would answer 0x01 to function 8 if asked to reply
	pol := fmt.Sprintf(openPolicy, up.addr()) + "      - {name: listen-only, allow: diagnostic, functions: [8], subfunctions: [4]}\n"
	fx := startProxy(t, proxy.Config{}, pol, plcRoute(), proxy.Device{Name: "plc", Upstream: up.addr()})
	c := dial(t, fx.addr)
	c.send(1, 1, []byte{8, 0, 4, 0, 0})
	resp := c.roundTrip(2, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 5, 1))
	if got := binary.BigEndian.Uint16(resp[2:]); got != 6 {
		t.Fatalf("the read after listen-only got %x (a reply to the diagnostic?)", resp)
	}
	testwait.For(t, "the device to receive the command", func() bool {
		for _, f := range up.received() {
			if len(f) > modbus.HeaderLen && f[modbus.HeaderLen] == 8 {
				return true
			}
		}
		return false
	})
	var diag *audit.Event
	for _, e := range fx.events.completed() {
		if e.Function == 8 {
			diag = &e
		}
	}
	if diag == nil || diag.Verdict != audit.Allow || diag.Exception != 0 || len(diag.Response) != 0 ||
		!strings.Contains(diag.Reason, "does not answer") {
		t.Fatalf("listen-only recorded as %+v", diag)
	}
	// This device answers anyway (exception 1): that reply is recorded
	// against the listen-only request, not as a reply to nothing.
	testwait.For(t, "the unexpected reply recorded", func() bool { return len(fx.events.inPhase(audit.PhaseDroppedReply)) == 1 })
	if e := fx.events.inPhase(audit.PhaseDroppedReply)[0]; e.Op != diag.Op || !strings.Contains(e.Reason, "force listen-only") || e.Exception != 1 {
		t.Fatalf("the device's reply to listen-only recorded as %+v", e)
	}
}

func TestMalformedFramesAreNeverForwarded(t *testing.T) {
	up := startUpstream(t, nil)
	fx := startProxy(t, proxy.Config{Limits: proxy.Limits{ReadTimeout: 300 * time.Millisecond}},
		fmt.Sprintf(openPolicy, up.addr()), plcRoute(), proxy.Device{Name: "plc", Upstream: up.addr()})
	h := func(s string) []byte {
		b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := []struct {
		name  string
		frame []byte
		reply []byte // nil: the connection must close
	}{
		{"bad protocol id", h("0001 0001 0006 01 03 0000 0001"), nil},
		{"length 0", h("0001 0000 0000 01"), nil},
		{"length 1", h("0001 0000 0001 01"), nil},
		{"length 255", append(h("0001 0000 00FF 01"), make([]byte, 254)...), nil},
		{"truncated then silent", h("0001 0000 0006 01 03 00"), nil},
		{"pdu shorter than its function", h("0001 0000 0004 01 03 0000"), nil},
		{"pdu longer than its function", h("0001 0000 0007 01 03 0000 0001 00"), nil},
		{"fc16 byte count not 2x quantity", h("0001 0000 000A 01 10 0001 0002 03 000A 01"), h("90 03")},
		{"fc3 quantity 0", h("0001 0000 0006 01 03 0000 0000"), h("83 03")},
		{"fc3 quantity 126", h("0001 0000 0006 01 03 0000 007E"), h("83 03")},
		{"fc5 value not 0 or FF00", h("0001 0000 0006 01 05 0001 1234"), h("85 03")},
		{"unknown function 0x41", h("0001 0000 0002 01 41"), h("C1 01")},
	}
	for _, tc := range cases {
		if tc.frame == nil {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, fx.addr)
			c.write(tc.frame)
			if tc.reply == nil {
				if !c.closed() {
					t.Fatal("connection not closed")
				}
				return
			}
			f, err := c.recv()
			if err != nil || !bytes.Equal(f.PDU, tc.reply) || f.Transaction != 1 {
				t.Fatalf("reply %x tid %d err %v, want %x", f.PDU, f.Transaction, err, tc.reply)
			}
			// The connection stays usable after a per-spec exception.
			if resp := c.roundTrip(2, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 5, 1)); resp[0] != 3 {
				t.Fatalf("next request after exception: %x", resp)
			}
		})
	}
	for _, f := range up.received() {
		if req, err := modbus.ParseRequest(f[modbus.HeaderLen:]); err != nil || req.Address != 5 {
			t.Fatalf("upstream received %x: a malformed frame was forwarded", f)
		}
	}
	count := func() int {
		n := 0
		for _, e := range fx.events.completed() {
			if e.Verdict == audit.Malformed {
				n++
			}
		}
		return n
	}
	testwait.For(t, "12 malformed operations recorded", func() bool { return count() >= 12 })
	if malformed := count(); malformed != 12 {
		t.Fatalf("%d malformed operations recorded, want 12", malformed)
	}
}

func TestWriteFailsClosedWhenItCannotBeRecorded(t *testing.T) {
	up := startUpstream(t, nil)
	fx := startProxy(t, proxy.Config{}, fmt.Sprintf(openPolicy, up.addr()), plcRoute(),
		proxy.Device{Name: "plc", Upstream: up.addr()})
	fx.events.mu.Lock()
	fx.events.refuseDurable = true
	fx.events.mu.Unlock()
	c := dial(t, fx.addr)
	resp := c.roundTrip(1, 1, modbus.AppendWriteSingleRegister(nil, 7, 42))
	if !bytes.Equal(resp, exception(modbus.WriteSingleRegister, modbus.ServerDeviceBusy)) {
		t.Fatalf("unrecordable write reply = %x, want exception 6", resp)
	}
	if resp := c.roundTrip(2, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 7, 1)); resp[0] != 3 {
		t.Fatalf("read while the record is down: %x", resp)
	}
	if got := up.received(); len(got) != 1 || got[0][modbus.HeaderLen] != 3 {
		t.Fatalf("upstream received %x; the write must not be forwarded", got)
	}
	fx.events.mu.Lock()
	fx.events.refuseDurable = false
	fx.events.mu.Unlock()
	pdu := modbus.AppendWriteSingleRegister(nil, 7, 42)
	if resp := c.roundTrip(3, 1, pdu); !bytes.Equal(resp, pdu) {
		t.Fatalf("write after the record is back: %x", resp)
	}
}

// The device's time in a write's record (Upstream) is the device's alone:
// the wait for the write's own durable record is the proxy's, as the
// console's added-latency histogram shows it.
func TestDeviceTimeLeavesOutTheDurableWait(t *testing.T) {
	up := startUpstream(t, nil)
	fx := startProxy(t, proxy.Config{}, fmt.Sprintf(openPolicy, up.addr()), plcRoute(),
		proxy.Device{Name: "plc", Upstream: up.addr()})
	const wait = 300 * time.Millisecond
	fx.events.mu.Lock()
	fx.events.durableDelay = wait
	fx.events.mu.Unlock()
	c := dial(t, fx.addr)
	start := time.Now()
	pdu := modbus.AppendWriteSingleRegister(nil, 7, 42)
	if resp := c.roundTrip(1, 1, pdu); !bytes.Equal(resp, pdu) {
		t.Fatalf("write reply %x", resp)
	}
	if took := time.Since(start); took < wait {
		t.Fatalf("the write was answered in %v, before its durable record (%v)", took, wait)
	}
	var done []audit.Event
	testwait.For(t, "the write's completion recorded", func() bool { done = fx.events.completed(); return len(done) == 1 })
	ev := done[0]
	if ev.Upstream <= 0 || ev.Upstream >= wait {
		t.Fatalf("device time %v recorded; the device answers at once and the durable record took %v", ev.Upstream, wait)
	}
	if total := ev.Done.Sub(ev.Time); total < wait+ev.Upstream {
		t.Fatalf("operation %v from arrival to completion, want at least the durable wait %v plus the device's %v", total, wait, ev.Upstream)
	}
}

func TestConnectionLimits(t *testing.T) {
	up := startUpstream(t, nil)
	cfg := proxy.Config{Limits: proxy.Limits{MaxConnectionsPerClient: 2}}
	fx := startProxy(t, cfg, fmt.Sprintf(openPolicy, up.addr()), plcRoute(),
		proxy.Device{Name: "plc", Upstream: up.addr()})
	a, b := dial(t, fx.addr), dial(t, fx.addr)
	a.roundTrip(1, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0, 1))
	b.roundTrip(1, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0, 1))
	third := dial(t, fx.addr)
	if !third.closed() {
		t.Fatal("a third connection from one address was accepted")
	}
	_ = a.c.Close()
	testwait.For(t, "the first connection to be released", func() bool { return fx.srv.Connections() == 1 })
	d := dial(t, fx.addr)
	d.roundTrip(1, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0, 1))
}

// rateLimited is a proxy that allows each client a burst of 3 requests
// and then rps a second, and the device behind it.
func rateLimited(t *testing.T, rps float64) (*fixture, *upstream) {
	t.Helper()
	up := startUpstream(t, nil)
	cfg := proxy.Config{Limits: proxy.Limits{RequestsPerSecond: rps, Burst: 3}}
	fx := startProxy(t, cfg, fmt.Sprintf(openPolicy, up.addr()), plcRoute(),
		proxy.Device{Name: "plc", Upstream: up.addr()})
	return fx, up
}

func TestRateLimit(t *testing.T) {
	fx, up := rateLimited(t, 0.5)
	c := dial(t, fx.addr)
	for tid := uint16(0); tid < 3; tid++ {
		if resp := c.roundTrip(tid, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0, 1)); resp[0] != 3 {
			t.Fatalf("request %d within burst: %x", tid, resp)
		}
	}
	resp := c.roundTrip(9, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0, 1))
	if !bytes.Equal(resp, exception(modbus.ReadHoldingRegisters, modbus.ServerDeviceBusy)) {
		t.Fatalf("request over the rate = %x, want exception 6", resp)
	}
	if n := len(up.received()); n != 3 {
		t.Fatalf("upstream received %d requests, want 3", n)
	}
}

// TestRateLimitCountsMalformedRequests: requests that break the
// specification's value limits count against the client's rate like any
// other; past the burst they get the rate-limit exception, and a valid
// request after them is refused too.
func TestRateLimitCountsMalformedRequests(t *testing.T) {
	fx, up := rateLimited(t, 0.001)
	c := dial(t, fx.addr)
	cases := []struct {
		name string
		pdu  []byte
	}{
		{"quantity 0", []byte{3, 0, 0, 0, 0}},
		{"byte count not 2x quantity", []byte{16, 0, 1, 0, 2, 3, 0, 10, 1}},
	}
	counts := map[modbus.ExceptionCode]int{}
	for i := range 10 {
		tc := cases[i%len(cases)]
		resp := c.roundTrip(uint16(i), 1, tc.pdu)
		if len(resp) != 2 || resp[0] != tc.pdu[0]|0x80 {
			t.Fatalf("%s: reply %x, want an exception", tc.name, resp)
		}
		counts[modbus.ExceptionCode(resp[1])]++
	}
	if counts[modbus.IllegalDataValue] != 3 || counts[modbus.ServerDeviceBusy] != 7 {
		t.Fatalf("exceptions by code %v; want 3 (the burst) of 0x03 and 7 of 0x06", counts)
	}
	if resp := c.roundTrip(10, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0, 1)); !bytes.Equal(resp,
		exception(modbus.ReadHoldingRegisters, modbus.ServerDeviceBusy)) {
		t.Fatalf("a valid request after the malformed flood: %x, want exception 6", resp)
	}
	if n := len(up.received()); n != 0 {
		t.Fatalf("upstream received %d requests", n)
	}
	limited := 0
	for _, e := range fx.events.completed() {
		if strings.Contains(e.Reason, "rate limit") {
			limited++
		}
	}
	if limited != 8 {
		t.Fatalf("%d rate-limit refusals recorded, want 8", limited)
	}
}

func TestIdleAndSlowClientsAreDisconnected(t *testing.T) {
	up := startUpstream(t, nil)
	cfg := proxy.Config{Limits: proxy.Limits{IdleTimeout: 200 * time.Millisecond, ReadTimeout: 200 * time.Millisecond}}
	fx := startProxy(t, cfg, fmt.Sprintf(openPolicy, up.addr()), plcRoute(),
		proxy.Device{Name: "plc", Upstream: up.addr()})
	idle := dial(t, fx.addr)
	idle.roundTrip(1, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0, 1))
	if !idle.closed() {
		t.Fatal("idle connection not closed")
	}
	slow := dial(t, fx.addr)
	slow.write([]byte{0, 1, 0, 0, 0, 6, 1, 3}) // half a frame, then nothing
	if !slow.closed() {
		t.Fatal("a client that never finished its frame was not disconnected")
	}
	testwait.For(t, "the slow frame to be recorded", func() bool {
		for _, e := range fx.events.completed() {
			if e.Verdict == audit.Malformed && strings.Contains(e.Reason, "read timeout") {
				return true
			}
		}
		return false
	})
}

func TestUnroutedUnit(t *testing.T) {
	up := startUpstream(t, nil)
	fx := startProxy(t, proxy.Config{}, fmt.Sprintf(openPolicy, up.addr()),
		proxy.Route{Units: map[byte]string{1: "plc"}}, proxy.Device{Name: "plc", Upstream: up.addr()})
	c := dial(t, fx.addr)
	resp := c.roundTrip(1, 7, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0, 1))
	if !bytes.Equal(resp, exception(modbus.ReadHoldingRegisters, modbus.GatewayPathUnavailable)) {
		t.Fatalf("unit 7 reply = %x, want 0x0A", resp)
	}
	if len(up.received()) != 0 {
		t.Fatal("an unrouted request was forwarded")
	}
}

// TestMbpollThroughProxy drives the proxy with mbpoll, an independent Modbus
// client (libmodbus), against the real simulators. `make test` installs it.
func TestMbpollThroughProxy(t *testing.T) {
	mbpoll := testtool.Path(t, "mbpoll")
	simAddr, plant := simtest.Start(t, simulators.Options{})
	pol, err := readExamplePolicy(simAddr)
	if err != nil {
		t.Fatal(err)
	}
	fx := startProxy(t, proxy.Config{}, pol, proxy.Route{Units: map[byte]string{1: "inverter-1"}},
		proxy.Device{Name: "inverter-1", Upstream: simAddr})
	host, port, _ := strings.Cut(fx.addr, ":")
	run := func(args ...string) (string, error) {
		// args: options, then the value to write ("" to read).
		argv := []string{"-m", "tcp", "-p", port, "-a", "1", "-0", "-t", "4", "-1", "-o", "2"}
		argv = append(append(argv, args[:len(args)-1]...), host)
		if v := args[len(args)-1]; v != "" {
			argv = append(argv, v)
		}
		out, err := exec.CommandContext(t.Context(), mbpoll, argv...).CombinedOutput()
		return string(out), err
	}
	out, err := run("-r", "40002", "-c", "2", "")
	if err != nil || !strings.Contains(out, "[40002]: \t1") || !strings.Contains(out, "[40003]: \t66") {
		t.Fatalf("mbpoll read of the SunSpec header: %v\n%s", err, out)
	}
	if out, err := run("-r", "40127", "25"); err != nil || !strings.Contains(out, "Written 1 references") {
		t.Fatalf("mbpoll allowed write: %v\n%s", err, out)
	}
	testwait.For(t, "the inverter to follow the 25 % limit", func() bool {
		return plant.Device(1).(*simulators.Inverter).Watts() <= 25_000
	})
	if out, err := run("-r", "40126", "0"); err == nil || !strings.Contains(out, "Illegal data address") {
		t.Fatalf("mbpoll forbidden write: want exception 2, got %v\n%s", err, out)
	}
}

// A device that answers late: after the client got 0x0B, the late reply
// must not be taken for the answer to the next request with that id.
func TestLateReplyIsNotMatchedToANewRequest(t *testing.T) {
	var mu sync.Mutex
	var held []modbus.Frame
	up := startUpstream(t, func(f modbus.Frame) []byte {
		mu.Lock()
		defer mu.Unlock()
		if binary.BigEndian.Uint16(f.PDU[1:3]) == 0x63 { // address 0x63: the device stalls
			cp := f
			cp.PDU = append([]byte(nil), f.PDU...)
			held = append(held, cp)
			return nil
		}
		return registerEcho(f)
	})
	up.stray = func(modbus.Frame) []byte {
		// With the next request after the stall, release the stalled reply:
		// same transaction id space, same function, same length.
		mu.Lock()
		defer mu.Unlock()
		var out []byte
		for _, h := range held {
			out = modbus.AppendFrame(out, h.Transaction, h.Unit, []byte{3, 2, 0xde, 0xad})
		}
		held = nil
		return out
	}
	cfg := proxy.Config{Upstream: proxy.UpstreamConfig{ResponseTimeout: 200 * time.Millisecond}}
	fx := startProxy(t, cfg, fmt.Sprintf(openPolicy, up.addr()), plcRoute(), proxy.Device{Name: "plc", Upstream: up.addr()})
	c := dial(t, fx.addr)
	resp := c.roundTrip(1, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0x63, 1))
	if !bytes.Equal(resp, exception(modbus.ReadHoldingRegisters, modbus.GatewayTargetDeviceFailedToRespond)) {
		t.Fatalf("stalled read: %x", resp)
	}
	for tid := uint16(2); tid < 10; tid++ {
		resp := c.roundTrip(tid, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0x10, 1))
		if got := binary.BigEndian.Uint16(resp[2:]); got != 0x11 {
			t.Fatalf("request %d got %#x: a late reply was delivered as its answer", tid, got)
		}
	}
	// The late reply is recorded against the request that timed out: same
	// operation id, its request PDU, and what the device finally said.
	var timedOut *audit.Event
	for _, e := range fx.events.completed() {
		if e.Exception == byte(modbus.GatewayTargetDeviceFailedToRespond) {
			timedOut = &e
		}
	}
	if timedOut == nil {
		t.Fatal("the timed-out read is not recorded")
	}
	late := fx.events.inPhase(audit.PhaseDroppedReply)
	if len(late) != 1 {
		t.Fatalf("%d dropped replies recorded, want the one late reply", len(late))
	}
	if e := late[0]; e.Op != timedOut.Op || !bytes.Equal(e.PDU, timedOut.PDU) || !bytes.Equal(e.Response, []byte{3, 2, 0xde, 0xad}) ||
		!strings.Contains(e.Reason, "after the request timed out") || e.Client != timedOut.Client {
		t.Fatalf("late reply recorded as %+v; the timed-out request was %+v", e, *timedOut)
	}
}

// A client that pipelines requests and never reads its replies is cut off
// after the write timeout; the device's other clients keep being answered.
func TestClientThatDoesNotReadIsDisconnected(t *testing.T) {
	up := startUpstream(t, nil)
	up.forget = true
	cfg := proxy.Config{Limits: proxy.Limits{WriteTimeout: 200 * time.Millisecond, RequestsPerSecond: 1e6, Burst: 1 << 20}}
	fx := startProxy(t, cfg, fmt.Sprintf(openPolicy, up.addr()), plcRoute(), proxy.Device{Name: "plc", Upstream: up.addr()})
	greedy := dial(t, fx.addr)
	req := modbus.AppendFrame(nil, 1, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0, 125))
	go func() {
		for i := 0; i < 20000; i++ { // ~5 MB of replies it will never read
			if _, err := greedy.c.Write(req); err != nil {
				return
			}
		}
	}()
	good := dial(t, fx.addr)
	start := time.Now()
	for tid := uint16(1); time.Since(start) < time.Second; tid++ {
		t0 := time.Now()
		good.roundTrip(tid, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 5, 1))
		if d := time.Since(t0); d > 2*time.Second {
			t.Fatalf("a well-behaved client waited %v", d)
		}
	}
	testwait.For(t, "the greedy client to be disconnected", func() bool { return fx.srv.Connections() == 1 })
}
