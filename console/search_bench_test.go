package console

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/chaintest"
	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// BenchmarkSearchScan is what bounds a search: the events per second it
// reads from the tiles, decodes and filters (searchMaxScan of them at
// most), over 100 000 events tiled in blocks of 50.
func BenchmarkSearchScan(b *testing.B) {
	dir := b.TempDir()
	tl := chaintest.OpenTiler(b, dir)
	k := keystest.New(b)
	const n, per = 100_000, 50
	base := time.Now().Add(-time.Hour)
	prev := chain.GenesisPrev("gw-1")
	for blk := range n / per {
		evs := make([][]byte, per)
		for i := range evs {
			op := blk*per + i
			ev := audit.Event{Time: base.Add(time.Duration(op) * 10 * time.Millisecond), Op: uint64(op + 1), Phase: audit.PhaseComplete,
				Client: netip.MustParseAddrPort(fmt.Sprintf("10.0.0.%d:502", op%9)), Device: fmt.Sprintf("plc-%d", op%5), Unit: 1, Function: 3,
				Class: "read", Address: uint16(op % 100), Quantity: 2, PDU: modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, uint16(op%100), 2),
				Verdict: audit.Allow, Reason: "rule reads"}
			evs[i] = chain.AppendEvent(nil, &ev)
		}
		msg, hash, err := chain.EncodeBlock("gw-1", k.Signer, uint64(blk), prev, time.Now(), evs)
		if err != nil {
			b.Fatal(err)
		}
		prev = hash
		if err := tl.Append(uint64(blk+1), msg); err != nil {
			b.Fatal(err)
		}
	}
	if err := tl.Close(); err != nil {
		b.Fatal(err)
	}
	ts := chaintest.OpenTiles(b, dir)
	q := query{device: "plc-3", client: "10.0.0.4", fc: -1, address: -1}
	b.ResetTimer()
	matched := 0
	for b.Loop() {
		l := newLeaves(ts)
		for i := l.size - 1; i >= 0; i-- {
			_, ev, err := l.event(i)
			if err != nil {
				b.Fatal(err)
			}
			if q.match(&ev) {
				matched++
			}
		}
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
	if matched == 0 {
		b.Fatal("nothing matched")
	}
}
