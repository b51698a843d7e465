package chain_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/chaintest"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// BenchmarkStreamBytesPerEvent measures what the chain stream stores per
// event (docs/RETENTION.md): a telemetry read of 10 registers with its
// answer, as the proxy records it, each in a block of its own (a quiet
// plant: every block is acknowledged before the next event) or group
// committed (a busy one). It reports the stream's bytes over the events.
//
//	go test -run '^$' -bench StreamBytesPerEvent -benchtime 20000x ./chain
func BenchmarkStreamBytesPerEvent(b *testing.B) {
	for _, tc := range []struct {
		name    string
		durable bool
	}{{"block-per-event", true}, {"group-commit", false}} {
		b.Run(tc.name, func(b *testing.B) {
			srv := natstest.RunJetStream(b)
			nc := natstest.Connect(b, srv.URL())
			rec := chaintest.Open(b, nc, chain.Config{DurableTimeout: 10 * time.Second, HeadDir: b.TempDir()})
			resp := append([]byte{3, 20}, make([]byte, 20)...)
			ev := audit.Event{Phase: audit.PhaseComplete, Client: netip.MustParseAddrPort("10.20.1.15:50312"),
				Listener: "0.0.0.0:502", Device: "inverter-1", Unit: 1, Function: 3, Class: "read", Address: 40070,
				Quantity: 10, PDU: modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 40070, 10), Verdict: audit.Allow,
				Rule: "inverter-telemetry", Reason: "inverter-telemetry", Policy: strings.Repeat("ab", 32),
				Response: resp, Upstream: 2 * time.Millisecond}
			b.ResetTimer()
			for i := range b.N {
				e := ev
				e.Time, e.Op = time.Now(), uint64(i+1)
				if err := rec.Record(b.Context(), &e, tc.durable); err != nil {
					b.Fatal(err)
				}
			}
			if err := rec.Close(30 * time.Second); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			info := chaintest.StreamInfo(b, natstest.JetStream(b, nc), chain.StreamName)
			b.ReportMetric(float64(info.State.Bytes)/float64(b.N), "stream-B/event")
			b.ReportMetric(float64(b.N)/float64(info.State.Msgs), "events/block")
		})
	}
}
