package chain_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/internal/testwait"
)

// openJournaled opens gw-1's recorder with a journal under heads; its
// blocks linger an hour unless a Flush or Close asks for them.
func (e *chainEnv) openJournaled(t *testing.T, nc *nats.Conn, heads string) *chain.Recorder {
	t.Helper()
	r, err := chain.Open(t.Context(), nc, chain.Config{Writer: "gw-1", Signer: e.signer, HeadDir: heads,
		Journal: true, LeaseTTL: -1, Linger: time.Hour, DurableTimeout: 3 * time.Second}, nopLog())
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// openKillable opens gw-1's journaled recorder under heads (as
// openJournaled) on a connection of its own: the test closes it to kill
// the process, or to take NATS away from it alone.
func (e *chainEnv) openKillable(t *testing.T, heads string) (*chain.Recorder, *nats.Conn) {
	t.Helper()
	nc := natstest.Connect(t, e.srv.URL())
	return e.openJournaled(t, nc, heads), nc
}

// wantOps checks that the chain holds ops first..last, each once, in order.
func (e *chainEnv) wantOps(t *testing.T, first, last int) {
	t.Helper()
	evs, err := verify(e.trust(), readAll(t, e.nc))
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for i := first; i <= last; i++ {
		want.WriteString(itoa(i) + " ")
	}
	if got := ops(evs); got != want.String() {
		t.Fatalf("chain holds ops %s\nwant %s", got, want.String())
	}
}

// recordOps records ops from..to, allowed, durable where durable says.
func recordOps(t *testing.T, r *chain.Recorder, from, to int, durable func(i int) bool) {
	t.Helper()
	for i := from; i <= to; i++ {
		if err := r.Record(t.Context(), event(uint64(i), audit.Allow), durable(i)); err != nil {
			t.Fatal(err)
		}
	}
}

func journalFiles(t *testing.T, heads string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(heads, "gw-1.journal.*"))
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// TestJournalKeepsReleasedWritesAcrossACrash: with a journal a durable
// record returns once its event is fsync'd there, before any block holds
// it; a process killed then loses none of them: the next start records
// them, once each.
func TestJournalKeepsReleasedWritesAcrossACrash(t *testing.T) {
	e := newChain(t)
	heads := t.TempDir()
	r, nc := e.openKillable(t, heads)
	recordOps(t, r, 1, 50, func(i int) bool { return i%10 == 0 })
	if n := r.Stats().Blocks.Load(); n != 0 {
		t.Fatalf("%d blocks committed: the durable records waited for their block, not for the journal", n)
	}
	// Kill: the connection goes, no Close, nothing published.
	nc.Close()
	r2 := e.openJournaled(t, natstest.Connect(t, e.srv.URL()), heads)
	if err := r2.Close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	e.wantOps(t, 1, 50)
	// A third start finds nothing left to record.
	r3 := e.openJournaled(t, natstest.Connect(t, e.srv.URL()), heads)
	if n := r3.Pending(); n != 0 {
		t.Fatalf("%d events spooled again after they were committed", n)
	}
	if err := r3.Close(time.Second); err != nil {
		t.Fatal(err)
	}
	e.wantOps(t, 1, 50)
}

// TestJournalWithAStaleHead: a crash can come after blocks landed and
// before the local head saying so was saved. Their events are still in
// the journal past the saved head; the next start must find them in the
// stream and not record them twice.
func TestJournalWithAStaleHead(t *testing.T) {
	e := newChain(t)
	heads := t.TempDir()
	r := e.openJournaled(t, natstest.Connect(t, e.srv.URL()), heads)
	record := func(r *chain.Recorder, from, to int) {
		t.Helper()
		recordOps(t, r, from, to, func(i int) bool { return i == to })
		if err := r.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	record(r, 1, 20)
	if err := r.Close(time.Second); err != nil {
		t.Fatal(err)
	}
	head := filepath.Join(heads, "gw-1.head.json")
	stale, err := os.ReadFile(head)
	if err != nil {
		t.Fatal(err)
	}
	r = e.openJournaled(t, natstest.Connect(t, e.srv.URL()), heads)
	record(r, 21, 40)
	if err := r.Close(time.Second); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(head, stale, 0o600); err != nil {
		t.Fatal(err)
	}
	r = e.openJournaled(t, natstest.Connect(t, e.srv.URL()), heads)
	if n := r.Pending(); n != 0 {
		t.Fatalf("%d events of blocks past the stale head spooled again", n)
	}
	record(r, 41, 45)
	if err := r.Close(time.Second); err != nil {
		t.Fatal(err)
	}
	e.wantOps(t, 1, 45)
}

// TestJournalCutsATornEnd: a crash during a journal write leaves a torn
// last record, never fsync'd, so nobody waited on it: the next start cuts
// it off and goes on.
func TestJournalCutsATornEnd(t *testing.T) {
	e := newChain(t)
	heads := t.TempDir()
	r, nc := e.openKillable(t, heads)
	recordOps(t, r, 1, 10, func(i int) bool { return i == 10 })
	nc.Close() // killed
	files := journalFiles(t, heads)
	if len(files) != 1 {
		t.Fatalf("journal files %v, want one", files)
	}
	before, err := os.Stat(files[0])
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(files[0], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte{0, 0, 1, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3}); err != nil { // a record cut short
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	r2 := e.openJournaled(t, natstest.Connect(t, e.srv.URL()), heads)
	if after, err := os.Stat(files[0]); err != nil || after.Size() != before.Size() {
		t.Fatalf("journal after its torn end was cut: %v, %v bytes; want %d", err, after.Size(), before.Size())
	}
	recordOps(t, r2, 11, 12, func(int) bool { return true })
	if err := r2.Close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	e.wantOps(t, 1, 12)
}

// TestJournalFilesGoOnceCommitted: the journal does not grow without end:
// a file goes once the local head is past its last record.
func TestJournalFilesGoOnceCommitted(t *testing.T) {
	e := newChain(t)
	heads := t.TempDir()
	r, err := chain.Open(t.Context(), natstest.Connect(t, e.srv.URL()), chain.Config{Writer: "gw-1", Signer: e.signer,
		HeadDir: heads, Journal: true, LeaseTTL: -1}, nopLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close(time.Second) })
	const n = 150_000 // about 20 MiB of events: three journal files
	recordOps(t, r, 1, n, func(i int) bool { return i%5000 == 0 })
	if err := r.Close(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	files := journalFiles(t, heads)
	if len(files) != 1 || strings.HasSuffix(files[0], ".journal.00000000000000000000") {
		t.Fatalf("journal files after every event was committed: %v, want only the newest (not the first)", files)
	}
	evs, err := verify(e.trust(), readAll(t, e.nc))
	if err != nil || len(evs) != n {
		t.Fatalf("chain: %d events, %v; want %d", len(evs), err, n)
	}
}

// TestJournalOfSeveralFilesAcrossACrash: a process killed with events
// in several journal files, some of them in blocks already, some not:
// the next start records each of them once.
func TestJournalOfSeveralFilesAcrossACrash(t *testing.T) {
	e := newChain(t)
	heads := t.TempDir()
	r, nc := e.openKillable(t, heads) // full blocks go; the rest lingers
	const n = 100_000                 // about 13 MiB: two files at least
	recordOps(t, r, 1, n, func(i int) bool { return i == n })
	testwait.For(t, "a full block committed", func() bool { return r.Stats().Blocks.Load() > 0 })
	if r.Pending() == 0 {
		t.Fatal("no event pending: want some only in the journal")
	}
	if files := journalFiles(t, heads); len(files) < 2 {
		t.Fatalf("journal files %v, want several", files)
	}
	nc.Close() // killed
	r2 := e.openJournaled(t, natstest.Connect(t, e.srv.URL()), heads)
	if err := r2.Close(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	evs, err := verify(e.trust(), readAll(t, e.nc))
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != n {
		t.Fatalf("chain holds %d events after the restart, want %d", len(evs), n)
	}
	for i, ev := range evs {
		if ev.Op != uint64(i+1) {
			t.Fatalf("event %d is op %d, want %d", i, ev.Op, i+1)
		}
	}
}

// TestJournalOfALiveProcessIsNotTouched: a second process started as the
// same writer on the same directory (the lease off, so only the journal's
// own lock stands in its way) is refused before it reads the journal, and
// the first process's journal stays as it was.
func TestJournalOfALiveProcessIsNotTouched(t *testing.T) {
	if heads := os.Getenv("GRIDSEAL_TEST_JOURNAL_HOLDER"); heads != "" {
		holdJournal(t, heads)
		return
	}
	e := newChain(t)
	heads := t.TempDir()
	child := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestJournalOfALiveProcessIsNotTouched$")
	child.Env = append(os.Environ(), "GRIDSEAL_TEST_JOURNAL_HOLDER="+heads, "GRIDSEAL_TEST_NATS="+e.srv.URL())
	stdin, err := child.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stdin.Close(); _ = child.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "journaled") {
		t.Fatalf("holder process: %q, %v", line, err)
	}
	before, err := os.ReadFile(journalFiles(t, heads)[0])
	if err != nil {
		t.Fatal(err)
	}
	_, err = chain.Open(t.Context(), natstest.Connect(t, e.srv.URL()), chain.Config{Writer: "gw-1", Signer: e.signer,
		HeadDir: heads, Journal: true, LeaseTTL: -1}, nopLog())
	if !errors.Is(err, chain.ErrWriterBusy) {
		t.Fatalf("second process on a live journal: %v, want ErrWriterBusy", err)
	}
	after, err := os.ReadFile(journalFiles(t, heads)[0])
	if err != nil || !bytes.Equal(before, after) {
		t.Fatalf("the live process's journal changed (%d → %d bytes, %v)", len(before), len(after), err)
	}
}

// holdJournal is the holder process: it journals a few events with a
// record half written after them (as a write in progress looks), says so,
// and keeps its journal until its stdin closes.
func holdJournal(t *testing.T, heads string) {
	nc, err := nats.Connect(os.Getenv("GRIDSEAL_TEST_NATS"))
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := newKey(t)
	r, err := chain.Open(t.Context(), nc, chain.Config{Writer: "gw-1", Signer: signer, HeadDir: heads,
		Journal: true, LeaseTTL: -1, Linger: time.Hour}, nopLog())
	if err != nil {
		t.Fatal(err)
	}
	recordOps(t, r, 1, 5, func(i int) bool { return i == 5 })
	f, err := os.OpenFile(journalFiles(t, heads)[0], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte{0, 0, 0, 40, 1, 2}); err != nil {
		t.Fatal(err)
	}
	fmt.Println("journaled")
	_, _ = io.Copy(io.Discard, os.Stdin)
}

// Events the journal refused while nothing else was spooled reach the
// stream by themselves once it takes writes again: no Record wakes the
// committer for them (only the first of a spool does), so it must look
// again on its own.
func TestJournalRetriesWhatItRefused(t *testing.T) {
	e := newChain(t)
	r, err := chain.Open(t.Context(), e.nc, chain.Config{Writer: "gw-1", Signer: e.signer, HeadDir: t.TempDir(),
		Journal: true, LeaseTTL: -1, Linger: 5 * time.Millisecond, DurableTimeout: 3 * time.Second}, nopLog())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(2 * time.Second)
	chain.BreakJournal(r, errors.New("no space left on device"))
	recordOps(t, r, 1, 3, func(int) bool { return false })
	time.Sleep(100 * time.Millisecond) // the committer finds the journal refusing them
	if n := r.Pending(); n != 3 {
		t.Fatalf("pending with the journal refusing writes: %d, want 3", n)
	}
	chain.MendJournal(r)
	testwait.For(t, "the refused reads in blocks", func() bool { return r.Pending() == 0 })
	e.wantOps(t, 1, 3)
}

// A journal broken for good (a failed fsync, or a write it could not cut
// back) makes the recorder say so — not available, JournalBroken, so the
// gateway's readiness and gridseal_chain_writable show it — and refuse
// durable records at once.
func TestBrokenJournalShowsAndRefusesAtOnce(t *testing.T) {
	e := newChain(t)
	r := e.openJournaled(t, e.nc, t.TempDir())
	defer r.Close(2 * time.Second)
	recordOps(t, r, 1, 1, func(int) bool { return true })
	chain.BreakJournal(r, errors.New("fsync: input/output error"))
	if err := r.Record(t.Context(), event(2, audit.Allow), true); !errors.Is(err, chain.ErrUnavailable) {
		t.Fatalf("a write on a broken journal: %v, want ErrUnavailable", err)
	}
	if r.Available() || r.JournalBroken() == nil {
		t.Fatalf("broken journal: Available %v, JournalBroken %v; want false and the error", r.Available(), r.JournalBroken())
	}
	pending := r.Pending()
	if err := r.Record(t.Context(), event(3, audit.Allow), true); !errors.Is(err, chain.ErrUnavailable) || r.Pending() != pending {
		t.Fatalf("the next write: %v, pending %d (was %d); want ErrUnavailable and nothing spooled", err, r.Pending(), pending)
	}
}

// A write made while an fsync of the journal is slow (a disk busy with
// another writer's flush) does not wait for the rest of that fsync and then
// its own: a second fsync starts for it, and its record is durable at the
// pace of a disk that answers, the first write's too.
func TestJournalWriteDoesNotWaitBehindASlowFsync(t *testing.T) {
	e := newChain(t)
	r := e.openJournaled(t, e.nc, t.TempDir())
	t.Cleanup(func() { _ = r.Close(5 * time.Second) })
	recordOps(t, r, 1, 1, func(int) bool { return true }) // the journal's first fsync, at the disk's pace
	const slow = time.Second
	release := chain.HoldJournalSync(r, slow)
	defer release()
	first := make(chan error, 1)
	go func() { first <- r.Record(t.Context(), event(2, audit.Allow), true) }()
	time.Sleep(20 * time.Millisecond) // its fsync is slow
	start := time.Now()
	if err := r.Record(t.Context(), event(3, audit.Allow), true); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > slow/2 {
		t.Fatalf("a write behind a slow fsync took %v to be durable, want a fsync of its own", took)
	}
	select {
	case err := <-first:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(slow / 2):
		t.Fatal("the first write still waits for the slow fsync, though the second one's covers it")
	}
	if err := r.Close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	e.wantOps(t, 1, 3)
}

// A write that comes while every fsync the journal may run at once is in
// flight, and slow, waits for one to end and is durable then, not at its
// durable timeout.
func TestJournalWriteWaitsForAFreeFsync(t *testing.T) {
	e := newChain(t)
	r := e.openJournaled(t, e.nc, t.TempDir())
	t.Cleanup(func() { _ = r.Close(5 * time.Second) })
	recordOps(t, r, 1, 1, func(int) bool { return true }) // the journal's first fsync, at the disk's pace
	release := chain.HoldJournalSyncs(r, 2, 10*time.Second)
	defer release()
	waiting := make(chan error, 3)
	for op := uint64(2); op <= 4; op++ {
		go func() { waiting <- r.Record(t.Context(), event(op, audit.Allow), true) }()
		time.Sleep(200 * time.Millisecond) // the one before is slow: the next hedges, or finds both taken
	}
	select {
	case err := <-waiting:
		t.Fatalf("a write was told (%v) while both fsyncs were held: the test shows nothing", err)
	default:
	}
	release()
	start := time.Now()
	for range 3 {
		select {
		case err := <-waiting:
			if err != nil {
				t.Fatalf("%v after %v", err, time.Since(start))
			}
		case <-time.After(time.Second): // the durable timeout is 3 s
			t.Fatal("the write that found no free fsync still waits, one having ended")
		}
	}
	if err := r.Close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	e.wantOps(t, 1, 4)
}

// A journal file that fills up while an fsync of it is in flight (the
// journal moves on to the next file, closing the full one) neither fails
// that fsync's write nor breaks the journal.
func TestJournalMovesOnToItsNextFileDuringAnFsync(t *testing.T) {
	e := newChain(t)
	heads := t.TempDir()
	r, nc := e.openKillable(t, heads)
	t.Cleanup(func() { _ = r.Close(time.Second) })
	nc.Close() // no block lands: only the journal makes the write durable
	release := chain.HoldJournalSync(r, 10*time.Second)
	defer release()
	first := make(chan error, 1)
	go func() { first <- r.Record(t.Context(), event(1, audit.Allow), true) }()
	time.Sleep(20 * time.Millisecond) // its fsync is in flight
	op := 2
	for len(journalFiles(t, heads)) < 2 && op < 100_000 {
		recordOps(t, r, op, op+999, func(int) bool { return false })
		op += 1000
		time.Sleep(3 * time.Millisecond) // written, a batch at a time
	}
	select {
	case err := <-first:
		t.Fatalf("the write's fsync ended (%v) before the journal moved on: the test shows nothing", err)
	default:
	}
	release()
	if err := <-first; err != nil {
		t.Fatalf("the write whose fsync was in flight: %v", err)
	}
	if err := r.JournalBroken(); err != nil {
		t.Fatalf("journal broken: %v", err)
	}
}
