package approvals_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/policy/decision"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// BenchmarkDecideWithApproval measures what a proxy does for an approved
// write: find the approval, verify the proposer's and two approvers' Tink
// signatures, check window and policy, and consume it with a compare-and-set
// on the embedded JetStream (fsync always). Proposing and signing happen
// outside the timer.
func BenchmarkDecideWithApproval(b *testing.B) {
	r := newRigB(b)
	timed := &timedConsume{Store: r.store}
	approvals.Use(r.engine, timed, "gw-1")
	var lat []time.Duration
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		pdu := modbus.AppendWriteSingleRegister(nil, 40127, uint16(i%50))
		id := r.propose(r.bob, "inverter-1", 1, pdu, r.now, 15*time.Minute)
		r.sign(id, r.alice.Signer)
		r.sign(id, r.carol.Signer)
		req, _ := modbus.ParseRequest(pdu)
		in := &decision.Input{Device: "inverter-1", Unit: 1, Request: req}
		r.waitIndexed(id)
		b.StartTimer()
		t0 := time.Now()
		v := r.engine.Decide(b.Context(), in)
		lat = append(lat, time.Since(t0))
		if !v.Allowed() {
			b.Fatal(v.Reason)
		}
	}
	slices.Sort(lat)
	slices.Sort(timed.lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(timed.lat[len(timed.lat)/2].Microseconds()), "consume-p50-µs")
	b.ReportMetric(float64(timed.lat[len(timed.lat)*99/100].Microseconds()), "consume-p99-µs")
}

// timedConsume is the real store, with the compare-and-set timed.
type timedConsume struct {
	*approvals.Store
	lat []time.Duration
}

func (t *timedConsume) Consume(ctx context.Context, st *approvals.Stored, by string, op uint64) error {
	t0 := time.Now()
	err := t.Store.Consume(ctx, st, by, op)
	t.lat = append(t.lat, time.Since(t0))
	return err
}
