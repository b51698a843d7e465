package chain_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/internal/testwait"
)

// TestFullSpoolFailsFastAndRecordsAGap: while the chain is unreachable the
// spool fills; then Admit refuses, Record fails at once instead of holding
// its caller, and once the chain is back a gap event counts what was lost.
func TestFullSpoolFailsFastAndRecordsAGap(t *testing.T) {
	e := newChain(t)
	r, err := chain.Open(t.Context(), e.nc, chain.Config{Writer: "gw-1", Signer: e.signer, SpoolBytes: 16 << 10,
		LeaseTTL: -1, PublishTimeout: 300 * time.Millisecond}, nopLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close(time.Second) })
	e.srv.Stop()
	var spooled, refused, lost int
	for i := uint64(1); i <= 400; i++ {
		if r.Admit() != nil {
			refused++
		}
		start := time.Now()
		err := r.Record(t.Context(), event(i, audit.Allow), false)
		if took := time.Since(start); took > time.Second {
			t.Fatalf("record %d waited %v with the spool full", i, took)
		}
		switch {
		case err == nil:
			spooled++
		case errors.Is(err, chain.ErrSpoolFull):
			lost++
		default:
			t.Fatal(err)
		}
	}
	if refused == 0 || lost == 0 || refused <= lost {
		t.Fatalf("spooled %d, admit refused %d, lost %d: Admit must refuse before the spool is full", spooled, refused, lost)
	}
	e.srv.Restart()
	testwait.For(t, "the spool to drain and the gap to be recorded", func() bool { return r.Pending() == 0 && r.Available() })
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	evs, err := verify(e.trust(), readAll(t, natstest.Connect(t, e.srv.URL())))
	if err != nil {
		t.Fatal(err)
	}
	var gaps []audit.Event
	for _, ev := range evs {
		if ev.Phase == audit.PhaseGap {
			gaps = append(gaps, ev)
		}
	}
	if len(evs) != spooled+1 || len(gaps) != 1 || !strings.HasPrefix(gaps[0].Reason, itoa(lost)+" operations not recorded") {
		t.Fatalf("chain holds %d events (%d spooled) and gaps %+v; want every spooled event and one gap of %d", len(evs), spooled, gaps, lost)
	}
}

// TestSpoolSurvivesARestart: what a recorder could not commit before it
// stopped is kept in the head directory and recorded by the next one.
func TestSpoolSurvivesARestart(t *testing.T) {
	srv := natstest.RunJetStream(t)
	signer, wk := newKey(t)
	heads := t.TempDir()
	cfg := chain.Config{Writer: "gw-1", Signer: signer, HeadDir: heads, LeaseTTL: -1, PublishTimeout: 300 * time.Millisecond}
	r, err := chain.Open(t.Context(), natstest.Connect(t, srv.URL()), cfg, nopLog())
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Record(t.Context(), event(1, audit.Allow), true); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	for i := uint64(2); i <= 50; i++ {
		if err := r.Record(t.Context(), event(i, audit.Allow), false); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Close(200 * time.Millisecond); err != nil {
		t.Fatalf("close with events kept for the next start: %v", err)
	}
	spool := filepath.Join(heads, "gw-1.spool")
	if _, err := os.Stat(spool); err != nil {
		t.Fatalf("no spool file: %v", err)
	}
	srv.Restart()
	r2, err := chain.Open(t.Context(), natstest.Connect(t, srv.URL()), cfg, nopLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r2.Close(time.Second) })
	if err := r2.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	evs, err := verify(chain.Trust{Writers: map[string]chain.WriterKeys{"gw-1": wk}}, readAll(t, natstest.Connect(t, srv.URL())))
	if err != nil {
		t.Fatal(err)
	}
	want := ""
	for i := 1; i <= 50; i++ {
		want += itoa(i) + " "
	}
	if ops(evs) != want {
		t.Fatalf("chain holds ops %s\nwant %s", ops(evs), want)
	}
	testwait.For(t, "the spool file to go once its events are committed", func() bool {
		_, err := os.Stat(spool)
		return errors.Is(err, os.ErrNotExist)
	})
}

// TestOperationNumbersAreNotReused: a restarted writer hands out operation
// numbers above every one it used, even when it crashed.
func TestOperationNumbersAreNotReused(t *testing.T) {
	srv := natstest.RunJetStream(t)
	signer, _ := newKey(t)
	heads := t.TempDir()
	cfg := chain.Config{Writer: "gw-1", Signer: signer, HeadDir: heads, LeaseTTL: -1}
	open := func() *chain.Recorder {
		r, err := chain.Open(t.Context(), natstest.Connect(t, srv.URL()), cfg, nopLog())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Close(time.Second) })
		return r
	}
	r := open()
	first, err := r.ReserveOps(1000)
	if err != nil || first != 0 {
		t.Fatalf("first run: ops from %d (%v), want 0", first, err)
	}
	if err := r.Record(t.Context(), event(first+7, audit.Allow), true); err != nil {
		t.Fatal(err)
	}
	// A crash: no Close. The next run starts above the reservation.
	if first, err = open().ReserveOps(1000); err != nil || first != 1000 {
		t.Fatalf("after a crash: ops from %d (%v), want 1000", first, err)
	}
	// Without the reservation file, the chain's last block still says.
	if err := os.Remove(filepath.Join(heads, "gw-1.ops")); err != nil {
		t.Fatal(err)
	}
	if first, err = open().ReserveOps(1000); err != nil || first < 7 {
		t.Fatalf("without the reservation file: ops from %d (%v), want above 7", first, err)
	}
}
