package chain

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"golang.org/x/sys/unix"

	"github.com/gridseal/gridseal/internal/atomicfile"
)

// The journal makes a durable record durable on the local disk, with one
// write and one fdatasync for every record waiting (group commit), instead
// of waiting for its block's JetStream acknowledgement: blocks are then
// built and published behind it at the pace of reads. It keeps every
// spooled event, in spool order, under DATA-DIR/heads as
// <writer>.journal.<index of its first record>, each record
//
//	u32 length | u32 CRC-32C of the event | encoded event
//
// Each file is preallocated (fallocate) to journalFileBytes plus room for
// one more write, so an fdatasync need not write the inode's new size
// with every write: on ext4 without a journal (this project's test
// machine) one device write and wait fewer, measured 30 % less time a
// durable record. (A journaling file system still records each
// preallocated block's first write in its journal; never more than an
// append costs.) Past the last record a file holds zeros, which end its
// records.
//
// A file is removed once the local head (saved with the index of the first
// event no committed block holds) is past its last record; a new one is
// started past journalFileBytes. At Open the records past the local head
// go back to the front of the spool, less those the stream's blocks after
// the head hold already (a crash can come between a block's landing and
// the head that says so). A torn last record (a crash during its write) is
// cut off: it was never fsync'd, so no write waited on it.
const journalFileBytes = 8 << 20

// journalAlloc is the size a journal file is preallocated to: a write
// starting just short of journalFileBytes fits too, unless it is larger
// than the rest (the file then grows as any file does).
const journalAlloc = journalFileBytes + 1<<20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// journalFile is one file of the journal: its records are the events with
// indexes base .. base+n-1 (an index counts every event this writer ever
// spooled since its journal began).
type journalFile struct {
	path string
	base uint64
	n    uint64
}

// journal is the writer's open journal. The recorder serialises its use
// (jmu), but for the fsyncs of syncf, which may run beside it.
type journal struct {
	dir, writer string
	files       []journalFile // oldest first; the last is f
	f           *os.File
	// syncf are f's file opened again, one for each fsync that may be in
	// flight beside the others (journalSyncers): a write-back error is
	// reported once per open file, so two fsyncs on one could see one
	// report it and the other succeed over the lost pages.
	syncf  [journalSyncers]*os.File
	size   int64
	buf    []byte
	broken error // a failed append could not be cut back: append no more
	cut    int   // bytes of a torn end openJournal cut off
	// beforeSync, if set, runs before each fsync of syncf (tests: a slow
	// disk).
	beforeSync func()
	noRoom     error // why the file last started got no room (see preallocate)
}

func journalPath(dir, writer string, base uint64) string {
	return filepath.Join(dir, fmt.Sprintf("%s.journal.%020d", writer, base))
}

// journalBase is the index of the first record of the journal file path.
func journalBase(path, writer string) (uint64, error) {
	return strconv.ParseUint(strings.TrimPrefix(filepath.Base(path), writer+".journal."), 10, 64)
}

// openJournal reads the writer's journal under dir and opens it for
// appending. It returns the journal, the index of its first record and
// every record in order; j.cut is how many bytes of a torn end it cut.
// Files whose records all come before head (the local head's journal
// index: in the chain) are removed unread, whatever their state.
// lockHeads takes the writer's files in the head directory (journal,
// spool file) for this process: a POSIX record lock on
// <writer>.journal-lock, gone with the process. A second process started
// as the same writer on the same directory must not cut the "torn end" of
// a write in progress, append beside it or fold away a spool file before
// its lease refuses it. (A record lock is the process's: a second
// recorder in one process is not refused, as the tests' "killed" ones
// rely on.)
func lockHeads(dir, writer string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("chain journal: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, writer+".journal-lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("chain journal: %w", err)
	}
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: 0}
	if err := syscall.FcntlFlock(f.Fd(), syscall.F_SETLK, &lk); err != nil {
		_ = f.Close()
		if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EACCES) {
			return nil, fmt.Errorf("%w: another process journals as %s in %s: stop that process first", ErrWriterBusy, writer, dir)
		}
		return nil, fmt.Errorf("chain journal: lock: %w", err)
	}
	return f, nil
}

func openJournal(dir, writer string, head uint64) (*journal, uint64, [][]byte, error) {
	j := &journal{dir: dir, writer: writer}
	names, err := filepath.Glob(filepath.Join(dir, writer+".journal.*"))
	if err != nil {
		return nil, 0, nil, err
	}
	slices.Sort(names)
	// A file is wholly before head when the next one starts at or before
	// head: remove those (a power cut may have left them short).
	for len(names) > 1 {
		next, err := journalBase(names[1], writer)
		if err != nil || next > head {
			break
		}
		if err := os.Remove(names[0]); err != nil {
			return nil, 0, nil, fmt.Errorf("chain journal: %w", err)
		}
		names = names[1:]
	}
	var first uint64
	var events [][]byte
	for i, name := range names {
		base, err := journalBase(name, writer)
		if err != nil {
			return nil, 0, nil, fmt.Errorf("chain journal: unexpected file %s: move it away", name)
		}
		if i == 0 {
			first = base
		} else if last := j.files[i-1]; last.base+last.n != base {
			return nil, 0, nil, fmt.Errorf("chain journal: %s does not follow %s (records %d..%d are missing): check the chain with gridseal chain verify, then move the journal away",
				name, last.path, last.base+last.n, base)
		}
		b, err := os.ReadFile(name)
		if err != nil {
			return nil, 0, nil, fmt.Errorf("chain journal: %w", err)
		}
		recs, good := parseJournal(b)
		// Zeros past the records are the file's preallocated room.
		if end := len(bytes.TrimRight(b[good:], "\x00")); end > 0 {
			if i < len(names)-1 {
				return nil, 0, nil, fmt.Errorf("chain journal: %s is corrupt at byte %d: check the chain with gridseal chain verify, then move the journal away", name, good)
			}
			// A torn last write: never fsync'd, so nobody waited on it.
			if err := os.Truncate(name, int64(good)); err != nil {
				return nil, 0, nil, fmt.Errorf("chain journal: cut its torn end: %w", err)
			}
			j.cut = end
		}
		events = append(events, recs...)
		j.files = append(j.files, journalFile{path: name, base: base, n: uint64(len(recs))})
		j.size = int64(good)
	}
	if len(j.files) == 0 {
		if err := j.start(0); err != nil {
			return nil, 0, nil, err
		}
		return j, 0, nil, nil
	}
	f, err := os.OpenFile(j.files[len(j.files)-1].path, os.O_WRONLY, 0o600)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("chain journal: %w", err)
	}
	j.f = f
	j.noRoom = j.preallocate(f)
	if err := j.openSyncFiles(j.files[len(j.files)-1].path); err != nil {
		j.close()
		return nil, 0, nil, err
	}
	return j, first, events, nil
}

// parseJournal returns the whole records at the front of b and how many
// bytes they take.
func parseJournal(b []byte) ([][]byte, int) {
	var recs [][]byte
	off := 0
	for len(b)-off >= 8 {
		n := int(binary.BigEndian.Uint32(b[off:]))
		sum := binary.BigEndian.Uint32(b[off+4:])
		if n == 0 || n > len(b)-off-8 {
			break // no event is empty: zeros are a torn end's
		}
		data := b[off+8 : off+8+n : off+8+n]
		if crc32.Checksum(data, castagnoli) != sum {
			break
		}
		recs = append(recs, data)
		off += 8 + n
	}
	return recs, off
}

// start begins a new journal file whose first record has index base.
func (j *journal) start(base uint64) error {
	if err := os.MkdirAll(j.dir, 0o700); err != nil {
		return fmt.Errorf("chain journal: %w", err)
	}
	if j.f != nil {
		// Its reads may be in blocks already: it is whole on the disk
		// before the next file's name is, so a power cut leaves no hole.
		if err := syscall.Fdatasync(int(j.f.Fd())); err != nil {
			j.broken = fmt.Errorf("chain journal: fsync: %w", err)
			return j.broken
		}
	}
	path := journalPath(j.dir, j.writer, base)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("chain journal: %w", err)
	}
	j.noRoom = j.preallocate(f)
	if err := atomicfile.SyncDir(j.dir); err != nil {
		_ = f.Close()
		return fmt.Errorf("chain journal: %w", err)
	}
	if err := j.openSyncFiles(path); err != nil {
		_ = f.Close()
		return err
	}
	if j.f != nil {
		_ = j.f.Close()
	}
	j.f, j.size = f, 0
	j.files = append(j.files, journalFile{path: path, base: base})
	return nil
}

// openSyncFiles opens path (the journal's new current file) for its
// fsyncs, and closes those of the file before (an fsync in flight has a
// descriptor of its own, see syncFile).
func (j *journal) openSyncFiles(path string) error {
	var fs [journalSyncers]*os.File
	for i := range fs {
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			for _, f := range fs[:i] {
				_ = f.Close()
			}
			return fmt.Errorf("chain journal: %w", err)
		}
		fs[i] = f
	}
	for _, f := range j.syncf {
		if f != nil {
			_ = f.Close()
		}
	}
	j.syncf = fs
	return nil
}

// datasync waits until what was written to f's file is on the disk.
func datasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for serr = syscall.Fdatasync(int(fd)); serr == syscall.EINTR; {
			serr = syscall.Fdatasync(int(fd))
		}
	}); err != nil {
		return err
	}
	return serr
}

// dupFile is a second descriptor of f's open file: its write-back errors
// are f's (one open file), and it stays open when f is closed.
func dupFile(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var nfd int
	var derr error
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.Dup(int(fd)) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, fmt.Errorf("chain journal: %w", derr)
	}
	unix.CloseOnExec(nfd)
	return os.NewFile(uintptr(nfd), f.Name()), nil
}

// append writes events (whose first has index next) in one write, and
// with sync set waits until they are on the disk.
func (j *journal) append(events [][]byte, next uint64, sync bool) error {
	if j.broken != nil {
		return j.broken
	}
	if j.size > journalFileBytes {
		if err := j.start(next); err != nil {
			return err
		}
	}
	b := j.buf[:0]
	for _, e := range events {
		b = binary.BigEndian.AppendUint32(b, uint32(len(e)))
		b = binary.BigEndian.AppendUint32(b, crc32.Checksum(e, castagnoli))
		b = append(b, e...)
	}
	j.buf = b
	if len(b) > 0 {
		if _, err := j.f.WriteAt(b, j.size); err != nil {
			return j.undo(fmt.Errorf("chain journal: %w", err))
		}
	}
	if sync {
		if err := syscall.Fdatasync(int(j.f.Fd())); err != nil {
			// After a failed fsync the kernel may have dropped earlier
			// unsynced pages: nothing after it can be trusted. Cut these
			// records (not journaled, they stay spooled) and append no more.
			_ = j.f.Truncate(j.size)
			j.broken = fmt.Errorf("chain journal: fsync: %w", err)
			return j.broken
		}
	}
	j.size += int64(len(b))
	j.files[len(j.files)-1].n += uint64(len(events))
	return nil
}

// preallocate gives f its room of journalAlloc bytes, where the disk has
// it. Without (a file system without fallocate, or a disk too full for
// it) the journal works as well, with a dearer fsync: appends grow the
// file. A disk too full for a new file's room is kept in noRoom, for the
// recorder to log (not when a failed write is cut back: that one the
// write's own error says, at every retry).
func (j *journal) preallocate(f *os.File) error {
	err := syscall.Fallocate(int(f.Fd()), 0, 0, journalAlloc)
	if err == nil || errors.Is(err, syscall.EOPNOTSUPP) {
		return nil
	}
	return fmt.Errorf("chain journal: preallocate %s: %w", f.Name(), err)
}

// warnNoRoom logs, once for each time it happened, that a journal file
// got no room. Callers hold jmu or own the journal.
func (r *Recorder) warnNoRoom() {
	if err := r.jr.noRoom; err != nil {
		r.jr.noRoom = nil
		r.log.Warn("chain journal: no room preallocated for its file (is the disk nearly full?): records are appended as it grows, each write's fsync dearer", zap.Error(err))
	}
}

// undo cuts the journal back to its records before a failed append, so
// the next append does not follow a torn record.
func (j *journal) undo(err error) error {
	if terr := j.f.Truncate(j.size); terr != nil {
		j.broken = fmt.Errorf("%w; and not cut back: %w", err, terr)
		return j.broken
	}
	_ = j.preallocate(j.f)
	return err
}

// release removes the files whose records all have indexes below
// committed: a saved local head says their events are in the chain.
func (j *journal) release(committed uint64) {
	removed := false
	for len(j.files) > 1 && j.files[0].base+j.files[0].n <= committed {
		if err := os.Remove(j.files[0].path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return
		}
		j.files, removed = j.files[1:], true
	}
	if removed {
		_ = atomicfile.SyncDir(j.dir)
	}
}

// removeAll removes every file of the journal (all committed).
func (j *journal) removeAll() {
	for _, f := range j.files {
		_ = os.Remove(f.path)
	}
	j.files = nil
	_ = atomicfile.SyncDir(j.dir)
}

func (j *journal) close() {
	if j.f != nil {
		_ = j.f.Close()
	}
	for _, f := range j.syncf {
		if f != nil {
			_ = f.Close()
		}
	}
}

// loadJournal opens the writer's journal, with Config.Journal, and puts
// the events of its records past the local head back at the front of the
// spool; syncHead then drops those the stream holds already.
func (r *Recorder) loadJournal() error {
	if r.cfg.HeadDir == "" {
		return nil
	}
	lock, err := lockHeads(r.cfg.HeadDir, r.cfg.Writer)
	if err != nil {
		return err
	}
	r.hlock = lock
	if !r.cfg.Journal {
		// A journal an earlier run kept may hold durable records no
		// block has yet: keep it, and journaling, for this run.
		names, _ := filepath.Glob(filepath.Join(r.cfg.HeadDir, r.cfg.Writer+".journal.*"))
		if len(names) == 0 {
			return nil
		}
		r.log.Warn("a chain journal from an earlier run is there: it is replayed, and this run journals too (durable records still wait for their block) until it is committed",
			zap.String("dir", r.cfg.HeadDir))
	}
	head, _, err := LoadHead(r.cfg.HeadDir, r.cfg.Writer)
	if err != nil {
		r.unlockHeads()
		return fmt.Errorf("%w: %v", ErrTruncated, err)
	}
	j, first, events, err := openJournal(r.cfg.HeadDir, r.cfg.Writer, head.Journal)
	if err != nil {
		r.unlockHeads()
		return err
	}
	start := max(first, head.Journal)
	if skip := start - first; skip < uint64(len(events)) {
		events = events[skip:]
	} else {
		events = nil
	}
	if err := r.respool(events); err != nil {
		j.close()
		r.unlockHeads()
		return fmt.Errorf("chain journal of %s: %w", r.cfg.Writer, err)
	}
	if len(events) == 0 && len(j.files) > 0 && j.files[len(j.files)-1].base+j.files[len(j.files)-1].n < start {
		// Every record is in the chain and the head is past the files:
		// the next record starts a file of its own at the head's index.
		if err := j.start(start); err != nil {
			j.close()
			r.unlockHeads()
			return err
		}
	}
	if j.cut > 0 {
		r.log.Warn("chain journal: a torn last write cut off", zap.String("file", j.files[len(j.files)-1].path),
			zap.Int("bytes", j.cut), zap.Uint64("records_kept", j.files[len(j.files)-1].n))
	}
	r.jr = j
	r.warnNoRoom()
	r.jrelease.Store(head.Journal)
	r.base, r.journaled = start, start+uint64(len(events))
	if len(events) > 0 {
		r.log.Info("chain events from the journal spooled again", zap.Int("events", len(events)))
	}
	return nil
}

// closeJournal closes the journal and gives the head directory up (Open
// failing after loadJournal).
func (r *Recorder) closeJournal() {
	if r.jr != nil {
		r.jr.close()
	}
	r.unlockHeads()
}

func (r *Recorder) unlockHeads() {
	if r.hlock != nil {
		_ = r.hlock.Close()
		r.hlock = nil
	}
}

// journalEvery is how soon an event is written to the journal, fsync'd or
// not, whatever the committer does (lingering, or retrying a publish NATS
// refuses): the most a crash of the process (not of the host) can lose of
// the reads recorded on the embedded server.
const journalEvery = 2 * time.Millisecond

// journalRetry is how soon the committer tries again to journal events a
// failed journal write left spooled (with nothing journaled to publish).
const journalRetry = 50 * time.Millisecond

// journalSyncers is how many journal fsyncs may be in flight at once. A
// write that comes while one is in flight waits for it to end and then
// shares the next, unless the one in flight is slow — in flight for twice
// the usual fsync (an average of the last ones) and at least hedgeAfter —
// and then starts another at once: a disk that takes 1–2 ms over an fsync
// now and then (another writer's flush ahead of it) would otherwise hold
// the write for the rest of that one and then all of its own. Only slow
// ones are hedged: a second fsync costs CPU and disk for every write.
const (
	journalSyncers = 2
	hedgeAfter     = 250 * time.Microsecond
)

// jsync is a journal fsync's outcome: every record below upTo was written
// before it began.
type jsync struct {
	slot  int
	upTo  uint64
	began time.Time
	took  time.Duration
	err   error
}

// journaler writes the spooled events journalEvery after the first it has
// not written, fsync'd or not, until the recorder stops. The durable
// records' fsyncs are not its: the records waiting for one start it
// (leadSync).
func (r *Recorder) journaler() {
	defer close(r.jdone)
	var t *time.Timer
	var tick <-chan time.Time
	var warned error
	for {
		select {
		case <-r.stop:
			if t != nil {
				t.Stop()
			}
			return
		case <-r.jlazy:
			if t == nil {
				t = time.NewTimer(journalEvery)
				tick = t.C
				r.jarmed.Store(true)
			}
		case <-tick:
			t, tick = nil, nil
			// Before the write takes what is spooled: a Record that
			// spools after it and sees this wakes the journaler again.
			r.jarmed.Store(false)
			if err := r.journalWrite(); newFailure(&warned, err) {
				r.log.Warn("chain journal write failed", zap.Error(err))
			}
		}
	}
}

// leadSync writes the spooled events and fsyncs the journal, on the
// caller's goroutine, for the durable record below journal index mine
// when no fsync started so far covers it and one may start: a slot is
// free, and none is in flight or the one in flight is slow (see
// journalSyncers); the fsync tells the records it covers (every one
// written before it began, the caller's among them) as it ends. Else it
// returns at once with how soon to try again (the fsync in flight turns
// slow then; 0: no need) and a channel closed when a slot frees (nil: mine
// is covered, an fsync in flight tells it). A durable record's Record calls
// it until its record is told, so a write's fsync costs no hand-off to a
// journaling goroutine and back.
func (r *Recorder) leadSync(mine uint64) (time.Duration, <-chan struct{}) {
	now := time.Now()
	r.smu.Lock()
	if mine <= r.scovered || r.sstop {
		r.smu.Unlock()
		return 0, nil
	}
	var oldest time.Time
	free := -1
	for i, s := range r.sflight {
		switch {
		case s == nil:
			if free < 0 {
				free = i
			}
		case oldest.IsZero() || s.began.Before(oldest):
			oldest = s.began
		}
	}
	freed := r.sfreed
	if free < 0 {
		r.smu.Unlock()
		return 0, freed
	}
	if slow := max(hedgeAfter, 2*r.susual); !oldest.IsZero() && now.Sub(oldest) < slow {
		r.smu.Unlock()
		return oldest.Add(slow).Sub(now), freed
	}
	s := &jsync{slot: free, began: now}
	r.sflight[free] = s
	r.swg.Add(1)
	r.smu.Unlock()
	// Written just before their fsync: the durable records that came
	// while one was in flight go together, in one write.
	if err := r.journalWrite(); err != nil {
		r.log.Error("chain journal: durable records refused", zap.Error(err))
	}
	f, before := r.syncFile(s)
	r.smu.Lock()
	r.scovered = max(r.scovered, s.upTo)
	r.smu.Unlock()
	// On a goroutine of its own, so the caller's record may yet be told
	// by a hedge while this fsync is slow.
	go r.finishSync(s, f, before)
	return 0, nil
}

// finishSync runs the fsync s (of f; none if nil, s.err says why), tells
// its records, and frees its slot.
func (r *Recorder) finishSync(s *jsync, f *os.File, before func()) {
	defer r.swg.Done()
	if f != nil {
		if before != nil {
			before()
		}
		s.err = datasync(f)
		_ = f.Close()
		s.took = time.Since(s.began)
	}
	r.syncDone(*s)
	r.smu.Lock()
	defer r.smu.Unlock()
	r.sflight[s.slot] = nil
	if s.err == nil {
		if r.susual == 0 {
			r.susual = s.took
		}
		r.susual += (s.took - r.susual) / 16
	}
	// The durable records that came during this fsync wait for a slot:
	// this one is free now.
	close(r.sfreed)
	r.sfreed = make(chan struct{})
}

// syncFile sets s.upTo to the journal index past every record written so
// far and returns a descriptor of its own of the open file of s's slot to
// fsync them (a rotation, in journalWrite, may close the slot's before the
// fsync runs), and the test hook to run before it; or nil with s.err set
// when there is none to fsync (the journal is broken).
func (r *Recorder) syncFile(s *jsync) (*os.File, func()) {
	r.jmu.Lock()
	defer r.jmu.Unlock()
	r.mu.Lock()
	s.upTo = r.journaled
	r.mu.Unlock()
	if err := r.jr.broken; err != nil {
		s.err = err
		return nil, nil
	}
	f, err := dupFile(r.jr.syncf[s.slot])
	if err != nil {
		s.err = err
		return nil, nil
	}
	return f, r.jr.beforeSync
}

// stopSyncs makes leadSync start no more fsyncs and waits for those in
// flight (Close, before its last fsync).
func (r *Recorder) stopSyncs() {
	r.smu.Lock()
	r.sstop = true
	r.smu.Unlock()
	r.swg.Wait()
}

// syncDone releases the durable records a journal fsync covered, or fails
// them if it failed (and then the journal is broken).
func (r *Recorder) syncDone(s jsync) {
	r.jmu.Lock()
	switch {
	case s.err == nil:
		s.err = r.jr.broken // once one fsync failed, none that ends after it is trusted
	case r.jr.broken == nil:
		r.jr.broken = fmt.Errorf("chain journal: fsync: %w", s.err)
	}
	if s.err != nil {
		r.noteBroken()
	}
	r.jmu.Unlock()
	if s.err == nil && r.cfg.ObserveJournal != nil {
		r.cfg.ObserveJournal(s.took)
	}
	r.releaseDurable(s.upTo, s.err)
}

// noteBroken makes a broken journal known (JournalBroken, the log), once.
// Callers hold jmu.
func (r *Recorder) noteBroken() {
	if r.jr.broken != nil && r.jbroken.Load() == nil {
		broken := r.jr.broken
		r.jbroken.Store(&broken)
		r.log.Error("chain journal broken: writes are refused until gridseal restarts (after the disk is fixed)", zap.Error(r.jr.broken))
	}
}

// releaseDurable tells the durable records below journal index upTo still
// waiting that they are durable, or (err set) that they are not.
func (r *Recorder) releaseDurable(upTo uint64, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failed != nil || (err == nil && !r.cfg.Journal) {
		return // fail told every waiter; without Journal a durable record waits for its block
	}
	// Below base the entries are committed: commit told their waiters.
	for i := max(r.jreleased, r.base); i < min(upTo, r.journaled); i++ {
		e := &r.spool[i-r.base]
		if e.done == nil {
			continue
		}
		if err == nil {
			e.done <- nil
		} else {
			e.done <- fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		e.done = nil
		r.durable--
	}
	r.jreleased = max(r.jreleased, upTo)
}

// newFailure reports whether err is a failure other than *last (so it is
// logged once, not at every retry), and keeps it in *last.
func newFailure(last *error, err error) bool {
	isNew := err != nil && (*last == nil || err.Error() != (*last).Error())
	*last = err
	return isNew
}

// journalWrite appends the spooled events not yet in the journal, not
// fsync'd: the durable ones among them wait for an fsync (leadSync).
// If the append fails, the durable records among them fail with
// ErrUnavailable (their events stay spooled, to be journaled later).
func (r *Recorder) journalWrite() error {
	r.jmu.Lock()
	defer r.jmu.Unlock()
	r.jr.release(r.jrelease.Load())
	r.mu.Lock()
	if r.failed != nil {
		r.mu.Unlock()
		return r.failed
	}
	from := r.journaled
	rest := r.spool[from-r.base:]
	events := r.jevents[:0]
	for _, e := range rest {
		events = append(events, e.data)
	}
	r.mu.Unlock()
	r.jevents = events
	if len(events) == 0 {
		return nil
	}
	err := r.jr.append(events, from, false)
	clear(r.jevents)
	r.noteBroken()
	r.warnNoRoom()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failed != nil {
		return err
	}
	upTo := from + uint64(len(events))
	if err == nil {
		r.journaled = upTo
		if uint64(len(r.spool)) > r.journaled-r.base {
			// Spooled meanwhile: their Record saw others unwritten and
			// did not wake the journaler.
			select {
			case r.jlazy <- struct{}{}:
			default:
			}
		}
		return nil
	}
	// Entries from..upTo are still spooled: commit drops only journaled
	// ones, and fail was checked.
	for i := range events {
		e := &r.spool[from-r.base+uint64(i)]
		if e.done == nil {
			continue
		}
		e.done <- fmt.Errorf("%w: %v", ErrUnavailable, err)
		e.done = nil
		r.durable--
	}
	return err
}

// journalUpTo writes the spooled events not yet in the journal and fsyncs
// the journal, then releases the durable records waiting (Close: no fsync
// is in flight, the journaler has returned).
func (r *Recorder) journalUpTo() error {
	werr := r.journalWrite()
	// What was written before (a failed write wrote nothing) is fsync'd
	// all the same: its durable records may wait for it still.
	r.jmu.Lock()
	r.mu.Lock()
	upTo := r.journaled
	r.mu.Unlock()
	err := r.jr.broken
	if err == nil {
		if serr := datasync(r.jr.f); serr != nil {
			r.jr.broken = fmt.Errorf("chain journal: fsync: %w", serr)
			err = r.jr.broken
			r.noteBroken()
		}
	}
	r.jmu.Unlock()
	r.releaseDurable(upTo, err)
	return errors.Join(werr, err)
}

// dropJournaled drops from the front of the spool, put back from the
// journal, the events the writer's blocks after sequence from (the local
// head's) up to last hold already: blocks that landed while the head
// saying so was not yet saved. Their events must be the journal's, in
// order; anything else means another process wrote as this writer.
func (r *Recorder) dropJournaled(ctx context.Context, from, last uint64) error {
	r.mu.Lock()
	if r.failed != nil {
		r.mu.Unlock()
		return r.failed
	}
	restored := r.spool[:r.journaled-r.base]
	r.mu.Unlock()
	n := 0
	for seq := from + 1; seq <= last && n < len(restored); {
		m, err := r.leaderGet(ctx, struct {
			Seq        uint64 `json:"seq"`
			NextBySubj string `json:"next_by_subj"`
		}{seq, Subject(r.cfg.Writer)})
		if err != nil {
			return fmt.Errorf("read %s's blocks after its local head: %w", r.cfg.Writer, err)
		}
		if m == nil || m.Seq > last {
			break
		}
		b, err := ParseBlock(m.Data)
		if err != nil {
			return fmt.Errorf("%w: block of %s at sequence %d: %v", ErrForeignHead, r.cfg.Writer, m.Seq, err)
		}
		for _, e := range b.Events {
			if n == len(restored) {
				break // the rest was written, not fsync'd, when the power went
			}
			if !bytes.Equal(e, restored[n].data) {
				return fmt.Errorf("%w: the block at sequence %d holds events the journal under %s does not: check the chain with gridseal chain verify, then move the journal away",
					ErrForeignHead, m.Seq, r.cfg.HeadDir)
			}
			n++
		}
		seq = m.Seq + 1
	}
	if n == 0 {
		return nil
	}
	r.mu.Lock()
	if r.failed != nil || n > len(r.spool) {
		r.mu.Unlock()
		return r.failed
	}
	r.dropRestoredLocked(n)
	r.mu.Unlock()
	r.log.Info("journaled chain events were recorded already by blocks after the local head", zap.Int("events", n))
	return nil
}
