package chain_test

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/internal/testwait"
)

// Crash and failure cases of the journal beyond journal_test.go's, found
// by a second reader of the journal's first version (each failed then).

func writeSpoolFile(t *testing.T, heads string, from, to int) {
	var b []byte
	for i := from; i <= to; i++ {
		ev := event(uint64(i), audit.Allow)
		d := chain.AppendEvent(nil, ev)
		b = binary.BigEndian.AppendUint32(b, uint32(len(d)))
		b = append(b, d...)
	}
	if err := os.MkdirAll(heads, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(heads, "gw-1.spool"), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A spool file a non-journal run left is journaled by the next (journal)
// run but stays on disk until its events are committed: a crash (or a
// Close that cannot commit) in between spools its events twice next time.
func TestJournalTakesASpoolFileOnceAcrossACrash(t *testing.T) {
	e := newChain(t)
	heads := t.TempDir()
	writeSpoolFile(t, heads, 1, 5)
	r, nc := e.openKillable(t, heads)
	recordOps(t, r, 6, 10, func(i int) bool { return i == 10 })
	nc.Close() // killed
	r2 := e.openJournaled(t, natstest.Connect(t, e.srv.URL()), heads)
	t.Logf("pending after restart: %d (want 10)", r2.Pending())
	if err := r2.Close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	e.wantOps(t, 1, 10)
}

// Same, without a crash: Close cannot commit (NATS away), journals the
// spool and skips saveSpool, but leaves the old spool file.
func TestJournalTakesASpoolFileOnceAcrossAFailedClose(t *testing.T) {
	e := newChain(t)
	heads := t.TempDir()
	writeSpoolFile(t, heads, 1, 5)
	r, nc := e.openKillable(t, heads)
	nc.Close() // NATS away
	if err := r.Close(300 * time.Millisecond); err != nil {
		t.Logf("close: %v", err)
	}
	r2 := e.openJournaled(t, natstest.Connect(t, e.srv.URL()), heads)
	t.Logf("pending after restart: %d (want 5)", r2.Pending())
	if err := r2.Close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	e.wantOps(t, 1, 5)
}

// (The lease lives 3 s, renewed every second: the other holder written
// below outlives the next renewal, which must find it.)
// A durable record returns nil once journaled; a fence (lease taken) then
// drops it from the spool, Close saves a head past it, and the next start
// does not restore it: a released write with no record.
func TestJournalKeepsReleasedWritesOfAFencedWriter(t *testing.T) {
	e := newChain(t)
	heads := t.TempDir()
	nc := natstest.Connect(t, e.srv.URL())
	r, err := chain.Open(t.Context(), nc, chain.Config{Writer: "gw-1", Signer: e.signer, HeadDir: heads,
		Journal: true, LeaseTTL: 3 * time.Second, Linger: time.Hour, DurableTimeout: 3 * time.Second}, nopLog())
	if err != nil {
		t.Fatal(err)
	}
	// one committed block first, so the recorder has a head to save
	if err := r.Record(t.Context(), event(1, audit.Allow), true); err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	recordOps(t, r, 2, 10, func(int) bool { return true })
	kv, err := e.js.KeyValue(t.Context(), chain.LeaseBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(t.Context(), "gw-1", holder(t, "another-host", 1)); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "fenced", func() bool { return errors.Is(r.Failed(), chain.ErrFenced) })
	e.reopenAfterFence(t, r, heads, "9: ops 2..10 returned nil from Record", 10)
}

// A journal moved away (as the error messages advise) with the head kept:
// the next run starts an empty journal.0 and journal.<head>; a crash
// before its first head save leaves a journal the next Open refuses.
func TestJournalShorterThanItsHead(t *testing.T) {
	e := newChain(t)
	heads := t.TempDir()
	r := e.openJournaled(t, natstest.Connect(t, e.srv.URL()), heads)
	recordOps(t, r, 1, 10, func(i int) bool { return i == 10 })
	if err := r.Close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	// power loss: the journal's last records (reads, written, not fsync'd,
	// but in blocks the stream fsync'd, and below the fsync'd head) are gone
	files := journalFiles(t, heads)
	b, _ := os.ReadFile(files[0])
	if err := os.Truncate(files[0], int64(len(b)/2)); err != nil {
		t.Fatal(err)
	}
	nc := natstest.Connect(t, e.srv.URL())
	r2 := e.openJournaled(t, nc, heads)
	t.Logf("journal files: %v", journalFiles(t, heads))
	if err := r2.Record(t.Context(), event(11, audit.Allow), true); err != nil {
		t.Fatal(err)
	}
	nc.Close() // killed before any block
	_, err := chain.Open(t.Context(), natstest.Connect(t, e.srv.URL()), chain.Config{Writer: "gw-1", Signer: e.signer, HeadDir: heads,
		Journal: true, LeaseTTL: -1}, nopLog())
	if err != nil {
		t.Fatalf("restart refused, with op 11 durable only in the journal: %v", err)
	}
}

// A leftover journal keeps journaling a run that did not ask for it: its
// durable records return before any block is acknowledged (a replicated
// stream's promise downgraded to this disk), and for ever, as the last
// journal file is never removed.
func TestLeftoverJournalKeepsDurableWaitingForBlocks(t *testing.T) {
	e := newChain(t)
	heads := t.TempDir()
	r := e.openJournaled(t, natstest.Connect(t, e.srv.URL()), heads)
	if err := r.Record(t.Context(), event(1, audit.Allow), true); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	r2, err := chain.Open(t.Context(), natstest.Connect(t, e.srv.URL()), chain.Config{Writer: "gw-1", Signer: e.signer, HeadDir: heads,
		LeaseTTL: -1, Linger: time.Hour, DurableTimeout: 3 * time.Second}, nopLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r2.Close(time.Second) })
	blocks := r2.Stats().Blocks.Load()
	if err := r2.Record(t.Context(), event(2, audit.Allow), true); err != nil {
		t.Fatal(err)
	}
	if r2.Stats().Blocks.Load() == blocks {
		t.Fatalf("Journal: false, yet a durable record returned before its block was acknowledged; journal files %v", journalFiles(t, heads))
	}
}

// Close cannot commit (NATS away) and the journal cannot take the rest
// (disk full): saveSpool writes the whole spool, journaled prefix
// included, and the next start spools that prefix twice.
func TestBrokenJournalAtCloseSpoolsOnlyTheRest(t *testing.T) {
	e := newChain(t)
	heads := t.TempDir()
	r, nc := e.openKillable(t, heads)
	recordOps(t, r, 1, 5, func(i int) bool { return i == 5 })
	chain.BreakJournal(r, errors.New("no space left on device"))
	recordOps(t, r, 6, 8, func(int) bool { return false })
	nc.Close() // NATS away
	t.Logf("close: %v", r.Close(300*time.Millisecond))
	r2 := e.openJournaled(t, natstest.Connect(t, e.srv.URL()), heads)
	t.Logf("pending after restart: %d (want 8)", r2.Pending())
	if err := r2.Close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	e.wantOps(t, 1, 8)
}

// Power loss can leave the journal's unsynced tail as zeros (size
// persisted before data): 8 zero bytes parse as a valid empty record
// (CRC-32C of nothing is 0), so Open fails decoding it instead of
// cutting the torn end.
func TestJournalCutsAZeroedEnd(t *testing.T) {
	e := newChain(t)
	heads := t.TempDir()
	r, nc := e.openKillable(t, heads)
	recordOps(t, r, 1, 3, func(i int) bool { return i == 3 })
	nc.Close()
	f, err := os.OpenFile(journalFiles(t, heads)[0], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = chain.Open(t.Context(), natstest.Connect(t, e.srv.URL()), chain.Config{Writer: "gw-1", Signer: e.signer, HeadDir: heads,
		Journal: true, LeaseTTL: -1}, nopLog())
	if err != nil {
		t.Fatalf("restart refused over a zeroed tail: %v", err)
	}
}

// The local head lags the stream (a non-journal run was killed within
// saveHead's 200 ms), then the first journal run is killed before its
// first block: its journal records are compared with the old run's
// blocks after the head, and Open refuses (ErrForeignHead).
func TestJournalAfterAStaleHeadOfARunWithout(t *testing.T) {
	e := newChain(t)
	heads := t.TempDir()
	plain := func() *chain.Recorder {
		r, err := chain.Open(t.Context(), natstest.Connect(t, e.srv.URL()), chain.Config{Writer: "gw-1", Signer: e.signer, HeadDir: heads,
			LeaseTTL: -1, Linger: time.Hour, DurableTimeout: 3 * time.Second}, nopLog())
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r := plain()
	recordOps(t, r, 1, 5, func(i int) bool { return i == 5 })
	if err := r.Close(time.Second); err != nil {
		t.Fatal(err)
	}
	head := filepath.Join(heads, "gw-1.head.json")
	stale, _ := os.ReadFile(head)
	r = plain()
	recordOps(t, r, 6, 10, func(i int) bool { return i == 10 })
	if err := r.Close(time.Second); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(head, stale, 0o600); err != nil { // killed before its head was saved
		t.Fatal(err)
	}
	nc := natstest.Connect(t, e.srv.URL())
	rj := e.openJournaled(t, nc, heads)
	if err := rj.Record(t.Context(), event(11, audit.Allow), true); err != nil {
		t.Fatal(err)
	}
	nc.Close() // killed before its first block
	r3, err := chain.Open(t.Context(), natstest.Connect(t, e.srv.URL()), chain.Config{Writer: "gw-1", Signer: e.signer, HeadDir: heads,
		Journal: true, LeaseTTL: -1}, nopLog())
	if err != nil {
		t.Fatalf("restart refused, op 11 durable only in the journal: %v", err)
	}
	if err := r3.Close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	e.wantOps(t, 1, 11)
}

// A crash after a spool file was folded into the journal and before it
// was removed: the next start finds both, and records its events once.
func TestJournalTakesASpoolFileOnceAcrossACrashWhileFolding(t *testing.T) {
	e := newChain(t)
	heads := t.TempDir()
	writeSpoolFile(t, heads, 1, 5)
	r, nc := e.openKillable(t, heads) // folds the spool file into the journal
	nc.Close()                        // killed
	writeSpoolFile(t, heads, 1, 5)    // as if its removal had not reached the disk
	r2 := e.openJournaled(t, natstest.Connect(t, e.srv.URL()), heads)
	if n := r2.Pending(); n != 5 || r.Pending() != 5 {
		t.Fatalf("pending after the restart %d (first run %d), want 5", n, r.Pending())
	}
	if err := r2.Close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	e.wantOps(t, 1, 5)
}

// Reads lingering for company are written to the journal within
// milliseconds, not only when their block is built: a process killed
// during the linger (here an hour) loses none of them.
func TestJournalKeepsLingeringReadsAcrossACrash(t *testing.T) {
	e := newChain(t)
	heads := t.TempDir()
	r, nc := e.openKillable(t, heads)
	// The first read wakes the committer, which journals what is spooled
	// then; the later ones arrive during its linger.
	recordOps(t, r, 1, 1, func(int) bool { return false })
	testwait.For(t, "the first read in the journal", journalHolds(t, heads, 1))
	recordOps(t, r, 2, 5, func(int) bool { return false })
	testwait.For(t, "the later reads in the journal", journalHolds(t, heads, 5))
	nc.Close() // killed
	e.restartRecords(t, heads, 5)
}

// While the committer retries a block NATS does not take, the reads that
// keep coming are written to the journal all the same: a crash then loses
// none of them either.
func TestJournalKeepsReadsWhileABlockIsRetried(t *testing.T) {
	e := newChain(t)
	heads := t.TempDir()
	nc := natstest.Connect(t, e.srv.URL())
	r, err := chain.Open(t.Context(), nc, chain.Config{Writer: "gw-1", Signer: e.signer, HeadDir: heads,
		Journal: true, LeaseTTL: -1, Linger: time.Millisecond, DurableTimeout: 3 * time.Second}, nopLog())
	if err != nil {
		t.Fatal(err)
	}
	nc.Close() // NATS away: the first block is retried
	recordOps(t, r, 1, 1, func(int) bool { return false })
	time.Sleep(50 * time.Millisecond)
	recordOps(t, r, 2, 5, func(int) bool { return false })
	testwait.For(t, "the reads in the journal", journalHolds(t, heads, 5))
	// killed
	e.restartRecords(t, heads, 5)
}

// A write that gives up waiting for an fsync (the disk holds every one in
// flight) leaves its record spooled: it and the reads after it are still
// written to the journal within its 2 ms, while the committer lingers.
func TestJournalWritesWhatAWriteGaveUpOn(t *testing.T) {
	e := newChain(t)
	heads := t.TempDir()
	r, err := chain.Open(t.Context(), e.nc, chain.Config{Writer: "gw-1", Signer: e.signer, HeadDir: heads,
		Journal: true, LeaseTTL: -1, Linger: time.Hour, DurableTimeout: 500 * time.Millisecond}, nopLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close(5 * time.Second) })
	recordOps(t, r, 1, 1, func(int) bool { return true }) // the journal's first fsync, at the disk's pace
	release := chain.HoldJournalSyncs(r, 2, 10*time.Second)
	defer release()
	for op := uint64(2); op <= 3; op++ { // the second hedges the first: both held
		go func() { _ = r.Record(t.Context(), event(op, audit.Allow), true) }()
		time.Sleep(200 * time.Millisecond)
	}
	if err := r.Record(t.Context(), event(4, audit.Allow), true); !errors.Is(err, chain.ErrUnavailable) {
		t.Fatalf("a write with no fsync free past its durable timeout: %v, want ErrUnavailable", err)
	}
	recordOps(t, r, 5, 5, func(int) bool { return false })
	testwait.For(t, "the given-up write and the read after it in the journal", journalHolds(t, heads, 5))
}

// journalHolds reports whether the journal under heads has records enough
// to hold ops 1..last (as event makes them): its files are preallocated,
// so it walks their records' lengths up to the zeros that end them.
func journalHolds(t *testing.T, heads string, last int) func() bool {
	want := 0
	for i := 1; i <= last; i++ {
		want += 8 + len(chain.AppendEvent(nil, event(uint64(i), audit.Allow)))
	}
	return func() bool {
		size := 0
		for _, name := range journalFiles(t, heads) {
			b, _ := os.ReadFile(name)
			for off := 0; off+8 <= len(b); {
				n := int(binary.BigEndian.Uint32(b[off:]))
				if n == 0 || off+8+n > len(b) {
					break
				}
				off += 8 + n
				size += 8 + n
			}
		}
		return size >= want
	}
}

// restartRecords starts the writer again on heads (the last one killed):
// it must spool the n reads the journal kept, and record ops 1..n.
func (e *chainEnv) restartRecords(t *testing.T, heads string, n int) {
	t.Helper()
	r := e.openJournaled(t, natstest.Connect(t, e.srv.URL()), heads)
	if got := r.Pending(); got != n {
		t.Fatalf("pending after restart: %d, want the %d reads", got, n)
	}
	if err := r.Close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	e.wantOps(t, 1, n)
}

// reopenAfterFence closes r, fenced by another holder of gw-1's lease,
// lets that holder go and starts the writer again on heads: the chain must
// then hold ops 1..last (want says what the restart should spool).
func (e *chainEnv) reopenAfterFence(t *testing.T, r *chain.Recorder, heads, want string, last int) {
	t.Helper()
	t.Logf("close: %v", r.Close(time.Second))
	h, _, _ := chain.LoadHead(heads, "gw-1")
	t.Logf("head after fence: %+v", h)
	kv, err := e.js.KeyValue(t.Context(), chain.LeaseBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(t.Context(), "gw-1"); err != nil { // the other process goes away
		t.Fatal(err)
	}
	r2, err := chain.Open(t.Context(), natstest.Connect(t, e.srv.URL()), chain.Config{Writer: "gw-1", Signer: e.signer, HeadDir: heads,
		Journal: true, LeaseTTL: -1, DurableTimeout: 3 * time.Second}, nopLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pending after restart: %d (want %s)", r2.Pending(), want)
	if err := r2.Close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	e.wantOps(t, 1, last)
}
