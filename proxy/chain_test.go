package proxy_test

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/protocols/modbus"
	"github.com/gridseal/gridseal/proxy"
)

// chainFixture is a proxy recording into a real chain on an embedded
// JetStream server.
type chainFixture struct {
	addr   string
	srv    *natstest.Server
	nc     *nats.Conn
	rec    *chain.Recorder
	signer *keys.Signer // the proxy's writer key
	trust  chain.Trust
}

func startChainProxy(t *testing.T, up *upstream) *chainFixture {
	t.Helper()
	return startChainProxyWith(t, up, chain.Config{})
}

// startChainProxyWith records with cfg's spool and timeouts.
func startChainProxyWith(t *testing.T, up *upstream, cfg chain.Config) *chainFixture {
	t.Helper()
	js := natstest.RunJetStream(t)
	nc := natstest.Connect(t, js.URL())
	k := keystest.New(t)
	signer, ver := k.Signer, k.Verifier
	cfg.Writer, cfg.Signer = "gw-1", signer
	if cfg.DurableTimeout == 0 {
		cfg.DurableTimeout = time.Second
	}
	rec, err := chain.Open(t.Context(), nc, cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rec.Close(time.Second) })
	pol, err := policy.Parse("t.yaml", fmt.Appendf(nil, openPolicy, up.addr()))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := proxy.New(proxy.Config{}, []proxy.Device{{Name: "plc", Upstream: up.addr()}},
		policy.NewEngine(pol, zap.NewNop()), rec, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := serve(t, srv, plcRoute())
	return &chainFixture{addr: addr, srv: js, nc: nc, rec: rec, signer: signer,
		trust: chain.Trust{Writers: map[string]chain.WriterKeys{"gw-1": {Verifier: ver, KeyIDs: ver.KeyIDs}}}}
}

// chainEvents verifies the whole chain and returns its events in order.
func (f *chainFixture) chainEvents(t *testing.T) []audit.Event {
	t.Helper()
	if err := f.rec.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	v := chain.NewVerifier(f.trust)
	var evs []audit.Event
	v.OnEvent = func(_ *chain.Msg, _ *chain.Block, _ int, e []byte) error {
		ev, err := chain.DecodeEvent(e)
		evs = append(evs, ev)
		return err
	}
	if err := chain.Scan(t.Context(), natstest.JetStream(t, f.nc), 1, false, v.Add); err != nil {
		t.Fatalf("chain does not verify: %v", err)
	}
	return evs
}

func describe(evs []audit.Event) string {
	var parts []string
	for _, e := range evs {
		parts = append(parts, fmt.Sprintf("%s:%d:%s:%d", e.Phase, e.Function, e.Verdict, e.Exception))
	}
	return strings.Join(parts, " ")
}

func TestChainRecordsEveryOperationOnceInOrder(t *testing.T) {
	up := startUpstream(t, nil)
	f := startChainProxy(t, up)
	c := dial(t, f.addr)
	c.roundTrip(1, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0, 2))
	c.roundTrip(2, 1, modbus.AppendWriteSingleRegister(nil, 5, 500))
	c.roundTrip(3, 1, modbus.AppendWriteSingleRegister(nil, 5, 5000)) // value denied
	c.roundTrip(4, 1, modbus.AppendWriteSingleCoil(nil, 1, true))     // function denied
	c.roundTrip(5, 1, []byte{3, 0, 0, 0, 0})                          // quantity 0: malformed, exception 3
	c.write(modbus.AppendFrame(nil, 6, 1, []byte{3, 0, 0}))           // truncated PDU: closed
	if !c.closed() {
		t.Fatal("malformed frame did not close the connection")
	}
	want := "complete:3:allow:0 request:6:allow:0 complete:6:allow:0 complete:6:deny:3 complete:5:deny:1 complete:3:malformed:3 complete:3:malformed:0"
	testwait.For(t, "all operations in the chain", func() bool { return len(f.chainEvents(t)) == 7 })
	evs := f.chainEvents(t)
	if got := describe(evs); got != want {
		t.Fatalf("chain holds\n %s\nwant\n %s", got, want)
	}
	if !bytes.Equal(evs[1].PDU, modbus.AppendWriteSingleRegister(nil, 5, 500)) || evs[1].Op != evs[2].Op {
		t.Fatalf("write request/complete events: %+v / %+v", evs[1], evs[2])
	}
	if !evs[6].Closed || evs[3].Policy == "" || evs[3].Rule != "writes" {
		t.Fatalf("events lack the detail an auditor needs: %+v %+v", evs[6], evs[3])
	}
}

func TestWritesFailClosedWhileNATSIsDown(t *testing.T) {
	up := startUpstream(t, nil)
	f := startChainProxy(t, up)
	c := dial(t, f.addr)
	c.roundTrip(1, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0, 1))
	f.srv.Stop()

	write := modbus.AppendWriteSingleRegister(nil, 7, 70)
	for tid := uint16(2); tid <= 3; tid++ {
		resp := c.roundTrip(tid, 1, write)
		if !bytes.Equal(resp, exception(modbus.WriteSingleRegister, modbus.ServerDeviceBusy)) {
			t.Fatalf("write while NATS is down: reply %x, want exception 6", resp)
		}
	}
	for tid := uint16(10); tid < 20; tid++ { // reads keep flowing, their records spooled
		if resp := c.roundTrip(tid, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, tid, 1)); resp[0] != 3 {
			t.Fatalf("read during the outage: %x", resp)
		}
	}
	for _, fr := range up.received() {
		if fr[modbus.HeaderLen] == byte(modbus.WriteSingleRegister) {
			t.Fatal("a write reached the device while its record could not be made")
		}
	}
	f.srv.Restart()
	testwait.For(t, "the chain to accept writes again", func() bool {
		resp := c.roundTrip(30, 1, write)
		return bytes.Equal(resp, write)
	})
	// The forwarded write's completion is recorded just after its reply.
	var evs []audit.Event
	testwait.For(t, "the forwarded write's completion in the chain", func() bool {
		evs = f.chainEvents(t)
		for _, e := range evs {
			if e.Function == 6 && e.Phase == audit.PhaseComplete && e.Verdict == audit.Allow {
				return true
			}
		}
		return false
	})
	var reads []uint16
	for _, e := range evs {
		if e.Function == 3 && e.Verdict == audit.Allow {
			reads = append(reads, e.Address)
		}
	}
	if fmt.Sprint(reads) != "[0 10 11 12 13 14 15 16 17 18 19]" {
		t.Fatalf("reads in the chain: %v; every read of the outage must land, in order", reads)
	}
	var refused, forwarded int
	for _, e := range evs {
		if e.Function == 6 && e.Phase == audit.PhaseComplete {
			switch {
			case e.Verdict == audit.Deny && e.Exception == 6:
				refused++
			case e.Verdict == audit.Allow && e.Exception == 0:
				forwarded++
			}
		}
	}
	if refused < 2 || forwarded != 1 {
		t.Fatalf("writes in the chain: %d refused, %d forwarded; want ≥2 and 1:\n%s", refused, forwarded, describe(evs))
	}
}

// TestFencedRecorderStopsAllForwarding: another process appends as this
// proxy's writer; from then on nothing passes unrecorded, reads included.
func TestFencedRecorderStopsAllForwarding(t *testing.T) {
	up := startUpstream(t, nil)
	f := startChainProxy(t, up)
	c := dial(t, f.addr)
	c.roundTrip(1, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0, 1))
	if err := f.rec.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	// The impostor takes no lease, as one that ignores it (or runs while a
	// partition hid the lease) would: fencing by sequence still stops the proxy.
	impostor, err := chain.Open(t.Context(), f.nc, chain.Config{Writer: "gw-1", Signer: f.signer, LeaseTTL: -1}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if err := impostor.Record(t.Context(), &audit.Event{Time: time.Now(), Phase: audit.PhaseComplete, Verdict: audit.Deny}, true); err != nil {
		t.Fatal(err)
	}
	_ = impostor.Close(time.Second)
	write := modbus.AppendWriteSingleRegister(nil, 7, 70)
	if resp := c.roundTrip(2, 1, write); !bytes.Equal(resp, exception(modbus.WriteSingleRegister, modbus.ServerDeviceBusy)) {
		t.Fatalf("write after the fence: %x", resp)
	}
	testwait.For(t, "the recorder to stop", func() bool { return f.rec.Failed() != nil })
	if resp := c.roundTrip(3, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0, 1)); !bytes.Equal(resp, exception(modbus.ReadHoldingRegisters, modbus.ServerDeviceBusy)) {
		t.Fatalf("read after the recorder stopped: %x, want exception 6", resp)
	}
	for _, fr := range up.received()[1:] {
		t.Fatalf("forwarded after the fence: %x", fr)
	}
}

// TestReadsRefusedWhileTheSpoolIsFull: with the chain away long enough for
// the read spool to fill, reads are answered promptly with exception 6
// instead of hanging, and once the chain is back every refusal is in it
// (or counted in a gap event): nothing passed unrecorded or vanished.
func TestReadsRefusedWhileTheSpoolIsFull(t *testing.T) {
	up := startUpstream(t, nil)
	f := startChainProxyWith(t, up, chain.Config{SpoolBytes: 16 << 10, PublishTimeout: 200 * time.Millisecond})
	c := dial(t, f.addr)
	read := modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0, 1)
	c.roundTrip(1, 1, read)
	f.srv.Stop()
	refusedAnswers := 0
	for i := uint16(2); i < 400; i++ {
		resp := c.roundTrip(i, 1, read)
		if bytes.Equal(resp, exception(modbus.ReadHoldingRegisters, modbus.ServerDeviceBusy)) {
			refusedAnswers++
		}
	}
	if refusedAnswers == 0 {
		t.Fatal("every read was forwarded although the spool was full: they cannot all be recorded")
	}
	f.srv.Restart()
	testwait.For(t, "the recorder to drain its spool", func() bool { return f.rec.Available() && f.rec.Pending() == 0 })
	resp := c.roundTrip(500, 1, read)
	if bytes.Equal(resp, exception(modbus.ReadHoldingRegisters, modbus.ServerDeviceBusy)) {
		t.Fatal("reads still refused once the chain is back")
	}
	recorded, lost := 0, 0
	for _, e := range f.chainEvents(t) {
		switch {
		case e.Phase == audit.PhaseGap:
			n, _ := strconv.Atoi(strings.Fields(e.Reason)[0])
			lost += n
		case strings.HasPrefix(e.Reason, "refused: the record cannot keep it"):
			recorded++
		}
	}
	if recorded+lost != refusedAnswers {
		t.Fatalf("%d reads refused; the chain holds %d refusals and a gap of %d", refusedAnswers, recorded, lost)
	}
}
