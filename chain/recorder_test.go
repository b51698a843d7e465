package chain_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/internal/testwait"
)

func TestRecordAndVerify(t *testing.T) {
	e := newChain(t)
	heads := t.TempDir()
	r := e.recorder(t, heads)
	const n = 2000
	var wg sync.WaitGroup
	for i := uint64(1); i <= n; i++ {
		durable := i%10 == 0
		if durable {
			// Durable records from many goroutines at once: group commit.
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := r.Record(t.Context(), event(i, audit.Allow), true); err != nil {
					t.Error(err)
				}
			}()
			continue
		}
		if err := r.Record(t.Context(), event(i, audit.Deny), false); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(time.Second); err != nil {
		t.Fatal(err)
	}
	msgs := readAll(t, e.nc)
	evs, err := verify(e.trustHead(t, heads), msgs)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != n {
		t.Fatalf("%d events in the chain, want %d", len(evs), n)
	}
	seen := map[uint64]bool{}
	for _, ev := range evs {
		if seen[ev.Op] {
			t.Fatalf("op %d recorded twice", ev.Op)
		}
		seen[ev.Op] = true
		if want := event(ev.Op, ev.Verdict); ev.Device != want.Device || string(ev.PDU) != string(want.PDU) || (ev.Op%10 == 0) != (ev.Verdict == audit.Allow) {
			t.Fatalf("event %d decoded as %+v", ev.Op, ev)
		}
	}
	if len(msgs) >= n/4 {
		t.Fatalf("%d blocks for %d events: group commit did not batch", len(msgs), n)
	}
	// Non-durable events from one goroutine keep their order.
	last := uint64(0)
	for _, ev := range evs {
		if ev.Op%10 != 0 {
			if ev.Op < last {
				t.Fatalf("op %d after op %d: order lost", ev.Op, last)
			}
			last = ev.Op
		}
	}
}

func TestOutageSpoolsReadsAndRefusesDurable(t *testing.T) {
	e := newChain(t)
	r := e.recorder(t, "")
	if err := r.Record(t.Context(), event(1, audit.Allow), true); err != nil {
		t.Fatal(err)
	}
	e.srv.Stop()
	// The first durable record after the outage waits for its block, which
	// cannot be acknowledged; after that the recorder knows and fails fast.
	if err := r.Record(t.Context(), event(2, audit.Allow), true); !errors.Is(err, chain.ErrUnavailable) {
		t.Fatalf("durable record during outage: %v, want ErrUnavailable", err)
	}
	start := time.Now()
	if err := r.Record(t.Context(), event(3, audit.Allow), true); !errors.Is(err, chain.ErrUnavailable) || time.Since(start) > 100*time.Millisecond {
		t.Fatalf("second durable record during outage: %v after %v, want an immediate ErrUnavailable", err, time.Since(start))
	}
	for i := uint64(4); i <= 50; i++ {
		if err := r.Record(t.Context(), event(i, audit.Deny), false); err != nil {
			t.Fatalf("read during outage: %v", err)
		}
	}
	e.srv.Restart()
	testwait.For(t, "the spool to drain", func() bool { return r.Pending() == 0 })
	if err := r.Record(t.Context(), event(51, audit.Allow), true); err != nil {
		t.Fatalf("durable record after NATS returned: %v", err)
	}
	evs, err := verify(e.trust(), readAll(t, e.nc))
	if err != nil {
		t.Fatal(err)
	}
	// Event 2 was spooled before the refusal and lands too: its completion
	// (recorded by the proxy) says the write was refused.
	want := "1 2 "
	for i := 4; i <= 51; i++ {
		want += itoa(i) + " "
	}
	if got := ops(evs); got != want {
		t.Fatalf("chain holds ops %s\nwant %s", got, want)
	}
}

func itoa(i int) string { return string(appendInt(nil, i)) }

func appendInt(b []byte, i int) []byte {
	if i >= 10 {
		b = appendInt(b, i/10)
	}
	return append(b, byte('0'+i%10))
}

func TestRestartedRecorderContinuesTheChain(t *testing.T) {
	e := newChain(t)
	heads := t.TempDir()
	for round := 0; round < 3; round++ {
		nc := natstest.Connect(t, e.srv.URL())
		r := openRecorder(t, nc, "gw-1", e.signer, heads)
		for i := 0; i < 100; i++ {
			if err := r.Record(t.Context(), event(uint64(round*100+i), audit.Allow), i == 99); err != nil {
				t.Fatal(err)
			}
		}
		// Kill: the connection goes away with no Close and no flush beyond
		// the last durable record.
		nc.Close()
	}
	evs, err := verify(e.trust(), readAll(t, e.nc))
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 300 {
		t.Fatalf("%d events after three killed recorders, want 300", len(evs))
	}
}

// TestStreamRebuiltUnderARunningWriter: someone deletes the chain stream
// and creates an empty one while the proxy runs. The writer's next block
// expects its last sequence; the leader has nothing of it: the recorder
// stops (truncated) instead of retrying forever, so writes fail closed and
// readiness says why.
func TestStreamRebuiltUnderARunningWriter(t *testing.T) {
	e := newChain(t)
	r := e.recorder(t, "")
	for i := uint64(1); i <= 3; i++ {
		if err := r.Record(t.Context(), event(i, audit.Allow), true); err != nil {
			t.Fatal(err)
		}
	}
	js := e.js
	if err := js.DeleteStream(t.Context(), chain.StreamName); err != nil {
		t.Fatal(err)
	}
	if _, err := chain.EnsureStream(t.Context(), js, 1); err != nil {
		t.Fatal(err)
	}
	err := r.Record(t.Context(), event(4, audit.Allow), true)
	if !errors.Is(err, chain.ErrTruncated) || !errors.Is(r.Failed(), chain.ErrTruncated) {
		t.Fatalf("write after the stream was rebuilt: %v (recorder: %v), want truncated", err, r.Failed())
	}
}

func TestSecondWriterWithSameIDIsFenced(t *testing.T) {
	e := newChain(t)
	a := e.recorder(t, "")
	b := openRecorder(t, natstest.Connect(t, e.srv.URL()), "gw-1", e.signer, "")
	// Both read the same (empty) head; the first to append wins.
	if err := a.Record(t.Context(), event(1, audit.Allow), true); err != nil {
		t.Fatal(err)
	}
	err := b.Record(t.Context(), event(2, audit.Allow), true)
	if !errors.Is(err, chain.ErrFenced) {
		t.Fatalf("second writer: %v, want ErrFenced", err)
	}
	if err := b.Record(t.Context(), event(3, audit.Deny), false); !errors.Is(err, chain.ErrFenced) {
		t.Fatalf("fenced writer keeps accepting events: %v", err)
	}
	if err := a.Record(t.Context(), event(4, audit.Allow), true); err != nil {
		t.Fatalf("first writer after the fence: %v", err)
	}
	evs, err := verify(e.trust(), readAll(t, e.nc))
	if err != nil || ops(evs) != "1 4 " {
		t.Fatalf("chain = %q, %v; want ops 1 4", ops(evs), err)
	}
}

// TestFlushAndCloseDoNotWaitOutTheLinger: reads spooled into a block that
// would linger (here an hour) go out as soon as Flush or Close asks, not
// when the linger ends: a proxy that stops keeps its last reads.
func TestFlushAndCloseDoNotWaitOutTheLinger(t *testing.T) {
	e := newChain(t)
	r, err := chain.Open(t.Context(), e.nc, chain.Config{Writer: "gw-1", Signer: e.signer, LeaseTTL: -1, Linger: time.Hour}, nopLog())
	if err != nil {
		t.Fatal(err)
	}
	record := func(from, to uint64) {
		for i := from; i < to; i++ {
			if err := r.Record(t.Context(), event(i, audit.Allow), false); err != nil {
				t.Fatal(err)
			}
		}
	}
	record(0, 3)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if err := r.Flush(ctx); err != nil {
		t.Fatalf("flush of a lingering block: %v", err)
	}
	record(3, 5)
	if err := r.Close(2 * time.Second); err != nil {
		t.Fatalf("close with a lingering block: %v", err)
	}
	events := 0
	for _, m := range readAll(t, e.nc) {
		b, err := chain.ParseBlock(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		events += len(b.Events)
	}
	if events != 5 {
		t.Fatalf("the stream holds %d events, want the 5 recorded", events)
	}
}

// TestReadsMillisecondsApartShareABlock: with the default linger, reads that
// arrive a few milliseconds apart (a poller, a light load) go out as one
// block rather than a block each: every block costs a signature, a store
// and an fsync, which at 2 ms took a quarter of a core under load.
func TestReadsMillisecondsApartShareABlock(t *testing.T) {
	e := newChain(t)
	r, err := chain.Open(t.Context(), e.nc, chain.Config{Writer: "gw-1", Signer: e.signer, LeaseTTL: -1}, nopLog())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(2 * time.Second)
	const n = 5
	start := time.Now()
	for i := range uint64(n) {
		if err := r.Record(t.Context(), event(i, audit.Allow), false); err != nil {
			t.Fatal(err)
		}
		if i < n-1 {
			time.Sleep(2 * time.Millisecond)
		}
	}
	if span := time.Since(start); span > 15*time.Millisecond {
		t.Skipf("the five reads took %v on this loaded machine, not the ~8 ms the test needs", span)
	}
	deadline := time.Now().Add(5 * time.Second)
	for r.Pending() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	msgs := readAll(t, e.nc)
	events := 0
	for _, m := range msgs {
		b, err := chain.ParseBlock(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		events += len(b.Events)
	}
	if events != n || len(msgs) != 1 {
		t.Fatalf("%d events in %d blocks, want %d in one", events, len(msgs), n)
	}
}
