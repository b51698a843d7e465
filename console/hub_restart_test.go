package console

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/chaintest"
	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// failOnce is JetStream whose second Stream lookup (the live view's
// follow scan, after its backlog) runs before and then fails once.
type failOnce struct {
	jetstream.JetStream
	calls  atomic.Int32
	before func()
}

func (f *failOnce) Stream(ctx context.Context, name string) (jetstream.Stream, error) {
	if f.calls.Add(1) == 2 {
		f.before()
		return nil, errors.New("injected: NATS went away")
	}
	return f.JetStream.Stream(ctx, name)
}

// readEvent is the read the live-view tests record, op by op.
func readEvent() audit.Event {
	return audit.Event{Phase: audit.PhaseComplete, Client: netip.MustParseAddrPort("10.0.0.1:50000"),
		Listener: "127.0.0.1:502", Device: "plc", Unit: 1, Function: 3, Class: "read", Address: 1, Quantity: 1,
		Verdict: audit.Allow, PDU: modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 1, 1)}
}

// recordOps records ev as ops from..to, each durable (a block each). It
// may run on any goroutine: a failure is reported with t.Error.
func recordOps(t *testing.T, rec *chain.Recorder, ev audit.Event, from, to uint64) {
	for op := from; op <= to; op++ {
		ev.Op, ev.Time = op, time.Now()
		if err := rec.Record(t.Context(), &ev, true); err != nil {
			t.Error(err)
			return
		}
	}
}

// runLive runs h's live view of js until the test ends.
func runLive(t *testing.T, h *hub, js jetstream.JetStream, trust chain.Trust) {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); h.retry(ctx, func() error { return h.live(ctx, js, trust) }) }()
	t.Cleanup(func() { cancel(); <-done })
}

// TestLiveRestartResumes: a viewer connected while the live view's scan
// fails and restarts sees every event once, in order — neither the newest
// 500 a second time, nor a gap where more than 500 were recorded while the
// scan was down.
func TestLiveRestartResumes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		during int // events recorded while the scan is down
	}{{"duplicates", 5}, {"gap", 600}} {
		t.Run(tc.name, func(t *testing.T) {
			ns := natstest.RunJetStream(t)
			nc := natstest.Connect(t, ns.URL())
			rec := chaintest.Open(t, nc, chain.Config{})
			recordOps(t, rec, readEvent(), 1, 10)
			total := uint64(10 + tc.during)
			js := &failOnce{JetStream: natstest.JetStream(t, nc), before: func() { recordOps(t, rec, readEvent(), 11, total) }}
			h := newHub(zap.NewNop())
			_, ch, _ := h.subscribe()
			runLive(t, h, js, chain.Trust{})
			var got []uint64
			timeout := time.After(15 * time.Second)
		collect:
			for len(got) == 0 || got[len(got)-1] != total {
				select {
				case items := <-ch:
					got = append(got, itemOps(t, items)...)
				case <-timeout:
					break collect
				}
			}
			// Anything more (a second copy) arrives at once; give it a moment.
			time.Sleep(200 * time.Millisecond)
		more:
			for {
				select {
				case items := <-ch:
					got = append(got, itemOps(t, items)...)
				default:
					break more
				}
			}
			if uint64(len(got)) != total {
				t.Errorf("the viewer got %d events for %d", len(got), total)
			}
			for i, o := range got {
				if o != uint64(i+1) {
					t.Fatalf("event %d the viewer got is op %d, want %d (ops %v ... %v)", i, o, i+1, got[:min(len(got), 12)], got[max(0, len(got)-3):])
				}
			}
		})
	}
}

// itemOps decodes the operation numbers of live-view items.
func itemOps(t *testing.T, items []item) []uint64 {
	t.Helper()
	var ops []uint64
	for _, it := range items {
		var r chain.Record
		if err := json.Unmarshal(it.msg[len("data: "):], &r); err != nil {
			t.Fatal(err)
		}
		ops = append(ops, r.Op)
	}
	return ops
}

// TestUnwatchedBlocksReachTheNextViewer: while nobody watches, the live
// view keeps the blocks that come without reading or encoding them; the
// next viewer gets them as its backlog, in order and checked against the
// pinned keys (a forged block among them is not shown), and what comes
// after it live.
func TestUnwatchedBlocksReachTheNextViewer(t *testing.T) {
	ns := natstest.RunJetStream(t)
	nc := natstest.Connect(t, ns.URL())
	k := keystest.New(t)
	rec := chaintest.Open(t, nc, chain.Config{Signer: k.Signer})
	pinned := chain.WriterKeys{Verifier: k.Verifier, KeyIDs: k.Verifier.KeyIDs}
	trust := chain.Trust{Writers: map[string]chain.WriterKeys{"gw-1": pinned, "gw-2": pinned}}
	ev := readEvent()
	recordOps(t, rec, ev, 1, 10)
	js := natstest.JetStream(t, nc)
	h := newHub(zap.NewNop())
	runLive(t, h, js, trust)
	kept := func() (unwatched, encoded int) {
		h.mu.Lock()
		defer h.mu.Unlock()
		return len(h.unwatched), len(h.recent)
	}
	testwait.For(t, "the live view's backlog", func() bool { _, n := kept(); return n == 10 })
	recordOps(t, rec, ev, 11, 30)
	forgedEv := ev
	forgedEv.Op = 1000
	// gw-2's, signed by a key the trust file does not pin for it.
	forged, hash, err := chain.EncodeBlock("gw-2", keystest.New(t).Signer, 0, chain.GenesisPrev("gw-2"), time.Now(), [][]byte{chain.AppendEvent(nil, &forgedEv)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(t.Context(), chain.Subject("gw-2"), forged, jetstream.WithMsgID(hash.String())); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "the live view to keep the 21 blocks after its backlog", func() bool { n, _ := kept(); return n == 21 })
	if _, encoded := kept(); encoded != 10 {
		t.Fatalf("%d events encoded while nobody watched; want only the 10 of the backlog", encoded)
	}
	backlog, ch, ok := h.subscribe()
	if !ok {
		t.Fatal("subscribe refused")
	}
	got := itemOps(t, backlog)
	if len(got) != 30 || got[0] != 1 || got[29] != 30 || slices.Contains(got, 1000) || !slices.IsSorted(got) {
		t.Fatalf("the viewer's backlog is ops %v; want 1..30 without the forged 1000", got)
	}
	recordOps(t, rec, ev, 31, 31)
	select {
	case items := <-ch:
		if ops := itemOps(t, items); len(ops) != 1 || ops[0] != 31 {
			t.Fatalf("live after the backlog: ops %v, want [31]", ops)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no live event after the backlog")
	}
}

// TestUnwatchedBacklogHasNoGap: when more blocks came unwatched than the
// live view keeps, the next viewer's backlog is the newest events without
// a hole: not the older events it had encoded, then a jump to the kept ones.
func TestUnwatchedBacklogHasNoGap(t *testing.T) {
	ns := natstest.RunJetStream(t)
	nc := natstest.Connect(t, ns.URL())
	rec := chaintest.Open(t, nc, chain.Config{})
	ev := readEvent()
	recordOps(t, rec, ev, 1, 10)
	h := newHub(zap.NewNop())
	runLive(t, h, natstest.JetStream(t, nc), chain.Trust{})
	testwait.For(t, "the live view's backlog", func() bool { h.mu.Lock(); defer h.mu.Unlock(); return len(h.recent) == 10 })
	// Blocks of 60 KiB: more bytes than the live view keeps unwatched, so
	// it keeps fewer than recentEvents events.
	ev.Reason = strings.Repeat("x", 60<<10)
	last := uint64(10 + 300)
	recordOps(t, rec, ev, 11, last)
	testwait.For(t, "the live view to reach the last block", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		n := len(h.unwatched)
		return n > 0 && len(blockRecords(h.unwatched[n-1], nil)) == 1 && blockRecords(h.unwatched[n-1], nil)[0].Op == last
	})
	backlog, _, _ := h.subscribe()
	got := itemOps(t, backlog)
	if len(got) == 0 || len(got) >= 300 || got[len(got)-1] != last {
		t.Fatalf("backlog of %d events ending at op %v; want the newest ones the live view kept, ending at %d", len(got), got[max(0, len(got)-1):], last)
	}
	for i := 1; i < len(got); i++ {
		if got[i] != got[i-1]+1 {
			t.Fatalf("the backlog jumps from op %d to %d", got[i-1], got[i])
		}
	}
}
