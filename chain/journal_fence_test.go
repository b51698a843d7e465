package chain_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/internal/testwait"
)

// Crash and failure cases a second reading of the journal's fixes found
// (each failed before its fix: a doubled block, a panic, a lost gap event).

// A block lands while keepLease fences the writer (its publish in flight):
// commit advances lastSeq/height but not r.base, Close saves a head whose
// Seq includes the block and whose Journal index does not, and the next
// start replays (and records again) the block's events.
func TestJournalOfABlockThatLandedAsTheWriterWasFenced(t *testing.T) {
	e := newChain(t)
	heads := t.TempDir()
	nc := natstest.Connect(t, e.srv.URL())
	var r *chain.Recorder
	var blocks atomic.Int32
	fence := func() {
		kv, err := e.js.KeyValue(t.Context(), chain.LeaseBucket)
		if err != nil {
			t.Error(err)
			return
		}
		if _, err := kv.Put(t.Context(), "gw-1", holder(t, "another-host", 1)); err != nil {
			t.Error(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for r.Failed() == nil && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	r, err := chain.Open(t.Context(), nc, chain.Config{Writer: "gw-1", Signer: e.signer, HeadDir: heads,
		Journal: true, LeaseTTL: 3 * time.Second, Linger: time.Hour, DurableTimeout: 3 * time.Second,
		Observe: func(int, time.Duration) {
			if blocks.Add(1) == 2 {
				fence() // the block has landed; its commit comes after the fence
			}
		}}, nopLog())
	if err != nil {
		t.Fatal(err)
	}
	recordOps(t, r, 1, 1, func(int) bool { return true })
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	recordOps(t, r, 2, 5, func(int) bool { return true })
	go func() { _ = r.Flush(t.Context()) }()
	testwait.For(t, "fenced", func() bool { return errors.Is(r.Failed(), chain.ErrFenced) })
	e.reopenAfterFence(t, r, heads, "0", 5)
}

// Journal events past a stale head, NATS away at Open (syncHead not done),
// then the recorder fails (keepLease: lease taken): fail empties the spool
// but leaves r.journaled-r.base > 0; run retries syncHead, whose
// dropJournaled slices r.spool[:r.journaled-r.base] of a nil spool.
func TestJournalFailedBeforeItsHeadWasRead(t *testing.T) {
	e := newChain(t)
	heads := t.TempDir()
	rec := func(from, to int) {
		r := e.openJournaled(t, natstest.Connect(t, e.srv.URL()), heads)
		recordOps(t, r, from, to, func(i int) bool { return i == to })
		if err := r.Close(5 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	rec(1, 5)
	head := filepath.Join(heads, "gw-1.head.json")
	stale, _ := os.ReadFile(head)
	rec(6, 10)
	if err := os.WriteFile(head, stale, 0o600); err != nil {
		t.Fatal(err)
	}
	nc := natstest.Connect(t, e.srv.URL())
	e.srv.Stop()
	r, err := chain.Open(t.Context(), nc, chain.Config{Writer: "gw-1", Signer: e.signer, HeadDir: heads,
		Journal: true, LeaseTTL: -1, PublishTimeout: 200 * time.Millisecond}, nopLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pending (restored from the journal): %d", r.Pending())
	chain.FailForTest(r, chain.ErrFenced)
	e.srv.Restart()
	time.Sleep(time.Second) // run retries syncHead: it must stop, not panic
	_ = r.Close(time.Second)
}

// Records refused for a full spool are counted; Close keeps a gap event for
// them (saveSpool), except when Close journals the spool instead.
func TestGapKeptAtClose(t *testing.T) {
	for _, journal := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "journal"}[journal], func(t *testing.T) {
			e := newChain(t)
			heads := t.TempDir()
			cfg := chain.Config{Writer: "gw-1", Signer: e.signer, HeadDir: heads, Journal: journal,
				LeaseTTL: -1, Linger: time.Hour, SpoolBytes: 4 << 10}
			nc := natstest.Connect(t, e.srv.URL())
			r, err := chain.Open(t.Context(), nc, cfg, nopLog())
			if err != nil {
				t.Fatal(err)
			}
			nc.Close() // NATS away
			lost := 0
			big := event(999, audit.Allow)
			big.Reason = strings.Repeat("x", 2000)
			bigSize := len(chain.AppendEvent(nil, big))
			used := 0
			for i := 1; used+bigSize <= 4<<10; i++ {
				ev := event(uint64(i), audit.Allow)
				if err := r.Record(t.Context(), ev, false); err != nil {
					t.Fatal(err)
				}
				used += len(chain.AppendEvent(nil, ev))
			}
			berr := r.Record(t.Context(), big, false)
			t.Logf("used %d big %d pending %d: %v", used, bigSize, r.Pending(), berr)
			if errors.Is(berr, chain.ErrSpoolFull) {
				lost++
			}
			t.Logf("close: %v", r.Close(300*time.Millisecond))
			r2, err := chain.Open(t.Context(), natstest.Connect(t, e.srv.URL()), cfg, nopLog())
			if err != nil {
				t.Fatal(err)
			}
			if err := r2.Close(5 * time.Second); err != nil {
				t.Fatal(err)
			}
			evs, err := verify(e.trust(), readAll(t, e.nc))
			if err != nil {
				t.Fatal(err)
			}
			for _, ev := range evs {
				if ev.Phase == audit.PhaseGap {
					return
				}
			}
			t.Fatalf("%d events in the chain, no gap event for the %d refused", len(evs), lost)
		})
	}
}
