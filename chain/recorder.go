package chain

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/internal/atomicfile"
)

// Errors a Recorder returns; callers branch on them with errors.Is.
var (
	ErrUnavailable = errors.New("chain unavailable: the block was not acknowledged in time")
	ErrSpoolFull   = errors.New("chain spool full: NATS has been away too long")
	ErrFenced      = errors.New("chain fenced: another process appends as this writer")
	ErrClosed      = errors.New("chain recorder closed")
	ErrTruncated   = errors.New("chain truncated: the stream is behind this writer's local head")
	ErrForeignHead = errors.New("chain head not signed by this writer's key")
)

// Config of a Recorder. Zero fields take the defaults in brackets.
type Config struct {
	Writer         string        // writer id: the subject token and the name in the trust file
	Signer         BlockSigner   // the writer's Tink signer
	Replicas       int           // stream replicas when the recorder creates it [1]
	HeadDir        string        // where the writer's head is kept locally; "" keeps none
	MaxBlockEvents int           // events per block [4096]
	MaxBlockBytes  int           // encoded events per block [1 MiB − 8 KiB, and under the server's max_payload]
	SpoolBytes     int           // encoded events held while NATS is away [128 MiB]
	DurableTimeout time.Duration // how long a durable Record waits for its block [2s]
	// Linger is how long a block of only non-durable events (reads, and
	// with a journal the durable ones too) waits for more before it is
	// published, so load makes few large fsync'd blocks instead of many
	// small ones. A block's fixed cost (signature, store, fsync, ack; some
	// 300–600 µs of CPU on two loaded cores) divided by the linger is what
	// blocks cost whatever the load: 20 ms keeps it near 2 % of a core,
	// where 2 ms took a quarter. It is also how late the stream, and so
	// the console and the mirrors, see a read. A durable event without a
	// journal ends the wait at once. [20ms; negative: never wait]
	Linger         time.Duration
	PublishTimeout time.Duration // one publish attempt [2s]
	// LeaseTTL is how long the writer's lease in LeaseBucket outlives its
	// last renewal: a second process with this writer id refuses to start
	// while the lease lives, and one that crashed frees it after LeaseTTL
	// (at once when the new process runs on the same host). [15s;
	// negative: no lease, only fencing by expected sequence]
	LeaseTTL time.Duration
	// Observe, if set, is told of every acknowledged block: its event count
	// and how long its publish took to be acknowledged (metrics).
	Observe func(events int, ack time.Duration)
	// ObserveJournal, if set, is told of every journal fsync that succeeded
	// in the journaler: how long its fdatasync took (metrics).
	ObserveJournal func(sync time.Duration)
	// Journal keeps every event in a journal under HeadDir (see
	// journal.go), and a durable Record returns once its event is
	// fsync'd there, its block published behind it, instead of waiting
	// for the block's acknowledgement. Where the stream is on this host's
	// disk (the embedded server) that is the same promise, kept at the
	// speed of one fsync for all the durable records waiting; with a
	// replicated stream it promises less (this host's disk, not the
	// replicas'). Requires HeadDir.
	Journal bool
}

// BlockSigner signs block hashes: a Tink signer and its primary key id.
type BlockSigner interface {
	Sign(data []byte) ([]byte, error)
	PrimaryKeyID() uint32
}

// entry is one spooled event; done is non-nil for a durable record.
type entry struct {
	data []byte
	done chan error
}

// Recorder appends events to the writer's chain with group commit: events
// that arrive while a block is being acknowledged go into the next block.
// Record is safe for concurrent use.
type Recorder struct {
	cfg Config
	nc  *nats.Conn
	js  jetstream.JetStream
	log *zap.Logger

	mu         sync.Mutex
	spool      []entry
	spoolBytes int
	durable    int // durable entries in the spool
	flushing   int // Flush calls waiting: the spool is urgent
	closed     bool
	failed     error // fatal: fenced or truncated
	wake       chan struct{}
	// lost counts events Record could not spool (it was full) since the
	// last gap event, from lostFrom to lostTo.
	lost             uint64
	lostFrom, lostTo time.Time
	restored         int // entries at the spool's front loaded from the spool file
	// With a journal: the journal index of spool[0], and of the first
	// spooled entry not yet written to the journal.
	base, journaled uint64
	lastOp          uint64

	jr        *journal
	jmu       sync.Mutex            // serialises journal appends (journalWrite)
	jevents   [][]byte              // journalWrite's scratch, under jmu
	jreleased uint64                // under mu: durable records below this journal index were told
	jlazy     chan struct{}         // wakes the journaler: an event waits to be written, not fsync'd
	jarmed    atomic.Bool           // the journaler's timer is set: it writes what is spooled when it fires
	jdone     chan struct{}         // closed when the journaler returns
	jrelease  atomic.Uint64         // journal files below this index may go (a saved head says so)
	jbroken   atomic.Pointer[error] // set once the journal is broken (see JournalBroken)
	hlock     *os.File              // this process's lock on the writer's files in HeadDir (lockHeads)
	// The journal's fsyncs in flight (leadSync), under smu: nil where a
	// slot is free; the index below which the fsyncs started cover every
	// record; their moving average (1/16 each); closed and made anew
	// whenever a slot frees; and whether Close stopped them (swg: those
	// still in flight).
	smu      sync.Mutex
	sflight  [journalSyncers]*jsync
	scovered uint64
	susual   time.Duration
	sfreed   chan struct{}
	sstop    bool
	swg      sync.WaitGroup

	lease     atomic.Pointer[lease]
	leaseDone chan struct{} // closed when keepLease returns; nil without a lease

	available atomic.Bool
	nearFull  atomic.Bool           // the spool is past Admit's mark; set under mu
	fatal     atomic.Pointer[error] // set once by fail
	stop      chan struct{}
	done      chan struct{}

	// committer state, owned by run
	jwarned  error // the journal write failure last logged
	synced   bool
	height   uint64 // next block's height
	prev     Hash
	lastSeq  uint64
	headSave time.Time
	leaves   []Hash

	stats Stats
}

// Stats are the recorder's counters, for metrics and benchmarks.
type Stats struct {
	Blocks  atomic.Uint64
	Events  atomic.Uint64
	Retries atomic.Uint64
}

// Open starts a recorder for cfg.Writer on nc. It does not need NATS to be
// reachable: events are spooled until the writer's head is read, and a
// durable Record fails fast while the chain is unavailable.
func Open(ctx context.Context, nc *nats.Conn, cfg Config, log *zap.Logger) (*Recorder, error) {
	if err := CheckWriterID(cfg.Writer); err != nil {
		return nil, err
	}
	if cfg.Signer == nil {
		return nil, errors.New("chain recorder: no signer")
	}
	if cfg.MaxBlockEvents <= 0 {
		cfg.MaxBlockEvents = 4096
	}
	if cfg.MaxBlockBytes <= 0 {
		cfg.MaxBlockBytes = 1<<20 - 8<<10 // under NATS's default 1 MB max_payload
	}
	if cfg.SpoolBytes <= 0 {
		cfg.SpoolBytes = 128 << 20
	}
	if cfg.DurableTimeout <= 0 {
		cfg.DurableTimeout = 2 * time.Second
	}
	if cfg.PublishTimeout <= 0 {
		cfg.PublishTimeout = 2 * time.Second
	}
	if cfg.Linger == 0 {
		cfg.Linger = 20 * time.Millisecond
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.Journal && cfg.HeadDir == "" {
		return nil, errors.New("chain recorder: a journal needs a head directory")
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	// A block must fit the server's max_payload (1 MB by default), with room
	// for the header, signature and NATS headers.
	if mp := nc.MaxPayload(); mp > 0 && int64(cfg.MaxBlockBytes) > mp-4096 {
		cfg.MaxBlockBytes = int(max(mp-4096, 4096))
	}
	r := &Recorder{
		cfg:  cfg,
		nc:   nc,
		js:   js,
		log:  log,
		wake: make(chan struct{}, 1),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	if err := r.loadJournal(); err != nil {
		return nil, err
	}
	if err := r.loadSpool(); err != nil {
		r.closeJournal()
		return nil, err
	}
	// A first attempt to take the lease and read the head now, so a busy,
	// fenced or truncated writer fails at start; if NATS is away the
	// committer keeps trying.
	sctx, cancel := context.WithTimeout(ctx, cfg.PublishTimeout)
	err = r.syncHead(sctx)
	cancel()
	if errors.Is(err, ErrTruncated) || errors.Is(err, ErrForeignHead) || errors.Is(err, ErrWriterBusy) {
		r.closeJournal()
		return nil, err
	}
	if err != nil {
		log.Warn("chain not reachable at start; spooling until it is", zap.Error(err))
	}
	go r.run()
	if r.jr != nil {
		r.sfreed = make(chan struct{})
		r.jlazy = make(chan struct{}, 1)
		r.jdone = make(chan struct{})
		go r.journaler()
	}
	if cfg.LeaseTTL > 0 {
		r.leaseDone = make(chan struct{})
		go r.keepLease()
	}
	return r, nil
}

// Record appends ev to the spool. With durable set it returns only once the
// block holding ev is acknowledged by JetStream (fsync'd on every replica
// the stream requires), or ErrUnavailable after DurableTimeout; while the
// chain is known to be down, or the spool is full, it fails at once.
// Without durable it returns as soon as ev is spooled. When the spool is
// full it returns ErrSpoolFull at once, never blocking its caller; the
// event is then counted, and a gap event with the count is recorded as
// soon as there is room. Callers that must not lose a record ask Admit
// before they act.
func (r *Recorder) Record(ctx context.Context, ev *audit.Event, durable bool) error {
	data := AppendEvent(make([]byte, 0, EventSize(ev)), ev)
	var done chan error
	if durable {
		if !r.Available() {
			return ErrUnavailable
		}
		done = make(chan error, 1)
	}
	r.mu.Lock()
	switch {
	case r.failed != nil:
		r.mu.Unlock()
		return r.failed
	case r.closed:
		r.mu.Unlock()
		return ErrClosed
	case r.spoolBytes+len(data) > r.cfg.SpoolBytes:
		if !durable {
			if r.lost == 0 {
				r.lostFrom = ev.Time
			}
			r.lost++
			r.lostTo = ev.Time
		}
		r.mu.Unlock()
		return ErrSpoolFull
	}
	r.spool = append(r.spool, entry{data: data, done: done})
	r.spoolBytes += len(data)
	r.levelLocked()
	// Wake the committer only when it has a reason to act now: the
	// first event, a durable one (unless the journal takes it), or a
	// full block.
	signal := len(r.spool) == 1 || (durable && !r.cfg.Journal) || len(r.spool) == r.cfg.MaxBlockEvents
	// and the journaler when this is the first event it has not written
	// (a durable one too: should its fsync not start before its Record
	// gives up, it and the events after it are written all the same).
	lazy := r.jr != nil && uint64(len(r.spool)) == r.journaled-r.base+1
	mine := r.base + uint64(len(r.spool)) // the journal index past this event
	if durable {
		r.durable++
	}
	r.mu.Unlock()
	if signal {
		r.signal()
	}
	if lazy && !r.jarmed.Load() { // armed: its write will take this one
		select {
		case r.jlazy <- struct{}{}:
		default:
		}
	}
	if !durable {
		return nil
	}
	return r.awaitDurable(ctx, done, mine)
}

// awaitDurable waits until the durable record below journal index mine,
// spooled with done, is told, for at most cfg.DurableTimeout. With a
// journal it starts the fsync its record needs itself, at once or as soon
// as one may start (leadSync).
func (r *Recorder) awaitDurable(ctx context.Context, done <-chan error, mine uint64) error {
	deadline := time.Now().Add(r.cfg.DurableTimeout)
	lead := r.cfg.Journal && r.jr != nil
	var retry time.Duration
	var freed <-chan struct{}
	if lead {
		retry, freed = r.leadSync(mine)
	}
	t := time.NewTimer(max(time.Until(deadline), 0)) // leadSync may have written
	defer t.Stop()
	for {
		if retry > 0 { // or sooner: the fsync in flight turns slow then
			t.Reset(min(retry, max(time.Until(deadline), 0)))
		}
		select {
		case err := <-done:
			return err
		case <-freed:
			retry, freed = r.leadSync(mine)
		case <-t.C:
			if !lead || !time.Now().Before(deadline) {
				return ErrUnavailable
			}
			retry, freed = r.leadSync(mine)
			if retry == 0 {
				t.Reset(max(time.Until(deadline), 0))
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// signal wakes the committer, if it is not awake already.
func (r *Recorder) signal() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Admit reports whether an operation may go ahead because its record can
// be kept: nil, or why not (the recorder stopped, or its spool is nearly
// full while the chain cannot take blocks). The last sixteenth of the spool
// stays free for the records of the operations Admit refuses.
func (r *Recorder) Admit() error {
	if err := r.Failed(); err != nil {
		return err
	}
	if r.nearFull.Load() {
		return ErrSpoolFull
	}
	return nil
}

// levelLocked notes whether the spool is past Admit's mark. r.mu is held.
func (r *Recorder) levelLocked() {
	r.nearFull.Store(r.spoolBytes > r.cfg.SpoolBytes-r.cfg.SpoolBytes/16)
}

// Failed returns the fatal error that stopped the recorder (fenced,
// truncated, a foreign head), or nil. A proxy must forward nothing after it.
func (r *Recorder) Failed() error {
	if e := r.fatal.Load(); e != nil {
		return *e
	}
	return nil
}

// Available reports whether the last publish succeeded.
func (r *Recorder) Available() bool { return r.available.Load() && r.jbroken.Load() == nil }

// JournalBroken returns why the journal takes no more writes (a failed
// fsync, or a failed write it could not cut back), or nil: until a
// restart the recorder then refuses durable records at once.
func (r *Recorder) JournalBroken() error {
	if p := r.jbroken.Load(); p != nil {
		return *p
	}
	return nil
}

// Pending returns the number of spooled events not yet acknowledged.
func (r *Recorder) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.spool)
}

// Stats returns the recorder's counters.
func (r *Recorder) Stats() *Stats { return &r.stats }

// Flush waits until every event recorded before it is acknowledged.
func (r *Recorder) Flush(ctx context.Context) error {
	// What is spooled goes out now, not when a block would have lingered
	// to: the committer treats the spool as urgent while a Flush waits.
	r.mu.Lock()
	r.flushing++
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.flushing--
		r.mu.Unlock()
	}()
	r.signal()
	for {
		r.mu.Lock()
		n, failed := len(r.spool), r.failed
		r.mu.Unlock()
		if failed != nil {
			return failed
		}
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("flush chain (%d events pending): %w", n, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// Close stops accepting events, tries for up to timeout to commit what is
// spooled, and stops. Events still spooled then are reported in the error.
func (r *Recorder) Close(timeout time.Duration) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		<-r.done
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	err := r.Flush(ctx) // closed: the committer publishes what is spooled at once
	cancel()
	close(r.stop)
	<-r.done
	if r.leaseDone != nil {
		<-r.leaseDone
	}
	journaled := false
	if r.jr != nil {
		<-r.jdone
		r.stopSyncs()
		// What is still spooled stays in the journal for the next start,
		// with a gap event for what could not be spooled.
		r.mu.Lock()
		r.appendGapLocked("the recorder's spool was full when it stopped")
		r.mu.Unlock()
		jerr := r.journalUpTo()
		journaled = jerr == nil
		if jerr != nil && err != nil {
			r.log.Error("chain events not journaled", zap.Error(jerr))
		}
	}
	r.saveHead(true)
	if r.jr != nil {
		r.jmu.Lock()
		r.jr.release(r.jrelease.Load())
		r.mu.Lock()
		empty := len(r.spool) == 0 && r.failed == nil
		r.mu.Unlock()
		if !r.cfg.Journal && empty && err == nil {
			r.jr.removeAll() // an earlier run's journal, replayed and committed
		}
		r.jr.close()
		r.jmu.Unlock()
	}
	// The head directory stays this process's until its spool file is
	// written and its lease given back.
	defer r.unlockHeads()
	if err != nil && journaled {
		r.mu.Lock()
		n := len(r.spool)
		r.mu.Unlock()
		r.log.Warn("chain events kept in the journal for the next start", zap.Int("events", n))
		err = nil
	} else if err != nil {
		if serr := r.saveSpool(); serr != nil {
			err = fmt.Errorf("%w; %w", err, serr)
		} else if r.cfg.HeadDir != "" {
			err = nil // kept for the next start
		}
	}
	if l := r.lease.Load(); l != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		l.release(ctx)
		cancel()
	}
	return err
}

// keepLease renews the writer's lease every third of its TTL until the
// recorder stops; a lease another process took stops the recorder.
func (r *Recorder) keepLease() {
	defer close(r.leaseDone)
	t := time.NewTicker(r.cfg.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-r.done:
			return
		case <-t.C:
		}
		l := r.lease.Load()
		if l == nil {
			continue // the committer has not reached NATS yet
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.PublishTimeout)
		err := l.renew(ctx)
		cancel()
		if errors.Is(err, ErrFenced) {
			r.fail(err)
			return
		}
		if err != nil {
			r.log.Warn("writer lease not renewed; retrying", zap.String("writer", r.cfg.Writer), zap.Error(err))
		}
	}
}

// run is the committer: one block in flight at a time.
func (r *Recorder) run() {
	defer close(r.done)
	backoff := 50 * time.Millisecond
	sleep := func() bool {
		select {
		case <-r.stop:
			return false
		case <-time.After(backoff):
			backoff = min(2*backoff, time.Second)
			return true
		}
	}
	for {
		if r.Failed() != nil {
			return // keepLease found the writer fenced
		}
		if !r.synced {
			ctx, cancel := context.WithTimeout(context.Background(), r.cfg.PublishTimeout)
			err := r.syncHead(ctx)
			cancel()
			if err != nil {
				if errors.Is(err, ErrTruncated) || errors.Is(err, ErrForeignHead) {
					r.fail(err)
					return
				}
				if !sleep() {
					return
				}
				continue
			}
		}
		batch := r.next()
		if batch == nil {
			return
		}
		events := make([][]byte, len(batch))
		for i := range batch {
			events[i] = batch[i].data
		}
		msg, hash, err := buildBlock(r.cfg.Writer, r.cfg.Signer.PrimaryKeyID(), r.cfg.Signer, r.height, r.prev, time.Now(), events, &r.leaves)
		if err != nil {
			r.fail(err)
			return
		}
		for {
			t0 := time.Now()
			seq, err := r.publish(msg, hash)
			if err == nil {
				if r.cfg.Observe != nil {
					r.cfg.Observe(len(batch), time.Since(t0))
				}
				r.commit(batch, hash, seq)
				backoff = 50 * time.Millisecond
				break
			}
			if errors.Is(err, ErrFenced) || errors.Is(err, ErrTruncated) {
				r.fail(err)
				return
			}
			r.available.Store(false)
			r.stats.Retries.Add(1)
			r.log.Warn("chain publish failed; retrying", zap.Uint64("height", r.height), zap.Error(err))
			if !sleep() {
				return
			}
		}
	}
}

// next waits for spooled events and returns the next block's worth, which
// stays in the spool until committed. A block of only non-durable events
// lingers up to cfg.Linger for company. It returns nil when stopped.
func (r *Recorder) next() []entry {
	var lingerUntil time.Time
	for {
		if r.jr != nil {
			// A block holds only journaled events (so a crash cannot
			// leave one in the stream the journal lacks, see
			// dropJournaled); the reads are written now, not fsync'd.
			// Durable ones among them are fsync'd by their waiters
			// (leadSync).
			if err := r.journalWrite(); newFailure(&r.jwarned, err) {
				r.log.Warn("chain journal write failed", zap.Error(err))
			}
		}
		r.mu.Lock()
		if r.failed != nil {
			r.mu.Unlock()
			return nil
		}
		spool := r.spool
		if r.jr != nil {
			spool = r.spool[:r.journaled-r.base]
		}
		n := len(spool)
		full := false
		if n > r.cfg.MaxBlockEvents || r.spoolBytes+4*n > r.cfg.MaxBlockBytes {
			n, full = 0, true
			size := 0
			for n < len(spool) && n < r.cfg.MaxBlockEvents {
				size += len(spool[n].data) + 4
				if n > 0 && size > r.cfg.MaxBlockBytes {
					break
				}
				n++
			}
		}
		full = full || n == r.cfg.MaxBlockEvents
		// With a journal the durable events are durable already: their
		// block lingers for company like any other.
		urgent := (r.durable > 0 && !r.cfg.Journal) || r.closed || r.flushing > 0
		batch := spool[:n:n]
		held := len(r.spool) > len(spool) // not journaled yet
		r.mu.Unlock()
		var t *time.Timer
		var wait <-chan time.Time
		if n == 0 && held {
			// The journal refused them (a full disk): try again soon,
			// no Record will wake the committer for them.
			t = time.NewTimer(journalRetry)
			wait = t.C
		}
		if n > 0 {
			now := time.Now()
			if lingerUntil.IsZero() {
				lingerUntil = now.Add(r.cfg.Linger)
			}
			if full || urgent || r.cfg.Linger < 0 || !now.Before(lingerUntil) {
				return batch
			}
			t = time.NewTimer(lingerUntil.Sub(now))
			wait = t.C
		}
		stopped := false
		select {
		case <-r.wake:
		case <-wait:
		case <-r.stop:
			stopped = true
		}
		if t != nil {
			t.Stop()
		}
		if stopped {
			return nil
		}
	}
}

func (r *Recorder) publish(msg []byte, hash Hash) (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.PublishTimeout)
	defer cancel()
	id := hash.String()
	ack, err := r.js.PublishMsg(ctx, &nats.Msg{Subject: Subject(r.cfg.Writer), Data: msg},
		jetstream.WithMsgID(id), jetstream.WithExpectLastSequencePerSubject(r.lastSeq))
	if err == nil {
		return ack.Sequence, nil
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		// Either our earlier attempt landed and its ack was lost, or another
		// process appended as this writer, or the stream lost what we had
		// committed. Ask the stream's leader: a direct get may be answered
		// by a replica still catching up after a fail-over, whose stale
		// answer would look like another writer.
		last, gerr := r.leaderLast(ctx)
		if gerr != nil {
			return 0, gerr
		}
		var seq uint64
		if last != nil {
			seq = last.Seq
		}
		switch {
		case last != nil && last.MsgID == id:
			return seq, nil
		case seq > r.lastSeq:
			return 0, fmt.Errorf("%w (writer %s, expected last sequence %d, found %d)", ErrFenced, r.cfg.Writer, r.lastSeq, seq)
		case seq < r.lastSeq:
			return 0, fmt.Errorf("%w: the stream's leader has sequence %d as this writer's last block, this writer committed %d",
				ErrTruncated, seq, r.lastSeq)
		}
		// The leader's last is ours, yet it refused the expectation: a
		// leader change between the two answers. Try again.
		return 0, fmt.Errorf("writer %s: the leader's last sequence %d is ours; retrying", r.cfg.Writer, seq)
	}
	return 0, err
}

// lastBlock is a writer's last message as the stream's leader has it.
type lastBlock struct {
	Seq   uint64
	MsgID string
	Data  []byte
}

// leaderLast asks the stream's leader (not a direct get, which any replica
// may answer, stale after a fail-over) for this writer's last message; nil
// if it has none.
func (r *Recorder) leaderLast(ctx context.Context) (*lastBlock, error) {
	return r.leaderGet(ctx, struct {
		LastBySubj string `json:"last_by_subj"`
	}{Subject(r.cfg.Writer)})
}

// leaderGet asks the stream's leader for the message req names (a
// STREAM.MSG.GET request); nil if there is none.
func (r *Recorder) leaderGet(ctx context.Context, req any) (*lastBlock, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	m, err := r.nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+StreamName, body)
	if err != nil {
		return nil, fmt.Errorf("read the writer's last block from the stream leader: %w", err)
	}
	var resp struct {
		Error *struct {
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
		Message *struct {
			Seq     uint64 `json:"seq"`
			Headers []byte `json:"hdrs"`
			Data    []byte `json:"data"`
		} `json:"message"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return nil, fmt.Errorf("stream leader's answer: %w", err)
	}
	if resp.Error != nil {
		if resp.Error.ErrCode == int(jetstream.JSErrCodeMessageNotFound) {
			return nil, nil
		}
		return nil, fmt.Errorf("stream leader: %s (%d)", resp.Error.Description, resp.Error.ErrCode)
	}
	if resp.Message == nil {
		return nil, errors.New("stream leader: empty answer")
	}
	lb := &lastBlock{Seq: resp.Message.Seq, Data: resp.Message.Data}
	if len(resp.Message.Headers) > 0 {
		h, err := nats.DecodeHeadersMsg(resp.Message.Headers)
		if err != nil {
			return nil, fmt.Errorf("stream leader's headers: %w", err)
		}
		lb.MsgID = h.Get(jetstream.MsgIDHeader)
	}
	return lb, nil
}

// commit drops the batch from the spool, wakes its durable waiters and
// advances the head.
func (r *Recorder) commit(batch []entry, hash Hash, seq uint64) {
	r.height++
	r.prev = hash
	r.lastSeq = seq
	r.available.Store(true)
	r.stats.Blocks.Add(1)
	r.stats.Events.Add(uint64(len(batch)))
	r.mu.Lock()
	if r.failed != nil {
		// fail, called by keepLease while this block was in flight, has
		// emptied the spool and told every waiter already. The block
		// landed: the head saved at Close has it, so its journal index
		// must be past its events.
		r.base += uint64(len(batch))
		r.mu.Unlock()
		return
	}
	n := len(batch)
	for _, e := range batch {
		r.spoolBytes -= len(e.data)
		if e.done != nil {
			e.done <- nil // buffered: only this or fail sends, under r.mu
			r.durable--
		}
	}
	clear(r.spool[:n]) // batch aliases these entries: release them to the GC
	r.spool = r.spool[n:]
	r.base += uint64(n)
	restoredDone := r.restored > 0 && n >= r.restored
	r.restored = max(r.restored-n, 0)
	r.appendGapLocked("the recorder's spool was full")
	r.levelLocked()
	r.mu.Unlock()
	if restoredDone {
		r.removeSpoolFile()
	}
	r.saveHead(false)
}

// appendGapLocked spools a gap event for the events Record could not
// spool, once there is room for it. r.mu is held.
func (r *Recorder) appendGapLocked(why string) {
	if r.lost == 0 {
		return
	}
	ev := audit.Event{Time: time.Now(), Phase: audit.PhaseGap, Verdict: audit.Deny, Class: "gap",
		Reason: fmt.Sprintf("%d operations not recorded from %s to %s: %s", r.lost,
			r.lostFrom.UTC().Format(time.RFC3339Nano), r.lostTo.UTC().Format(time.RFC3339Nano), why)}
	data := AppendEvent(nil, &ev)
	if r.spoolBytes+len(data) > r.cfg.SpoolBytes {
		return
	}
	r.log.Error("chain gap: operations not recorded", zap.Uint64("operations", r.lost), zap.String("why", why))
	r.spool = append(r.spool, entry{data: data})
	r.spoolBytes += len(data)
	r.lost = 0
}

func (r *Recorder) fail(err error) {
	r.log.Error("chain recorder stopped", zap.String("writer", r.cfg.Writer), zap.Error(err))
	r.fatal.Store(&err)
	r.available.Store(false)
	r.mu.Lock()
	r.failed = err
	spool := r.spool
	// r.base stays: journaled events no block holds stay in the journal,
	// and the head saved at Close says so, for the next start to find.
	r.spool, r.spoolBytes, r.durable = nil, 0, 0
	r.levelLocked()
	r.mu.Unlock()
	for _, e := range spool {
		if e.done != nil {
			e.done <- err
		}
	}
	if len(spool) > 0 {
		r.log.Error("chain events not recorded", zap.Int("events", len(spool)))
	}
}

// syncHead reads the writer's last block from the stream (creating the
// stream if needed) and checks it against the locally kept head.
func (r *Recorder) syncHead(ctx context.Context) error {
	if r.lease.Load() == nil && r.cfg.LeaseTTL > 0 {
		l, err := acquireLease(ctx, r.js, r.cfg.Writer, r.cfg.LeaseTTL, r.cfg.Replicas)
		if err != nil {
			return err
		}
		r.lease.Store(l)
	}
	if _, err := EnsureStream(ctx, r.js, r.cfg.Replicas); err != nil {
		return err
	}
	last, err := r.leaderLast(ctx)
	if err != nil {
		return fmt.Errorf("read head of %s: %w", r.cfg.Writer, err)
	}
	local, haveLocal, err := LoadHead(r.cfg.HeadDir, r.cfg.Writer)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrTruncated, err)
	}
	height, prev, seq := uint64(0), GenesisPrev(r.cfg.Writer), uint64(0)
	if last != nil {
		b, err := ParseBlock(last.Data)
		if err != nil {
			return fmt.Errorf("%w: head of %s at sequence %d: %v", ErrForeignHead, r.cfg.Writer, last.Seq, err)
		}
		// Never build on a block this writer did not sign.
		if v, ok := r.cfg.Signer.(interface{ Verify(sig, data []byte) error }); ok {
			if b.Writer != r.cfg.Writer || v.Verify(b.Signature, SigningInput(b.Hash)) != nil {
				return fmt.Errorf("%w: someone else appended to %s (sequence %d)", ErrForeignHead, Subject(r.cfg.Writer), last.Seq)
			}
		}
		height, prev, seq = b.Height+1, b.Hash, last.Seq
		for _, e := range b.Events {
			if ev, err := DecodeEvent(e); err == nil {
				r.noteOp(ev.Op)
			}
		}
		if r.jr == nil {
			r.dropLanded(b.Events) // with a journal: dropJournaled below
		}
	}
	if haveLocal {
		if local.Height >= height || (local.Height == height-1 && local.Hash != prev.String()) {
			return fmt.Errorf("%w: local head is block %d %s, the stream's is block %d", ErrTruncated,
				local.Height, local.Hash, int64(height)-1)
		}
	}
	if r.jr != nil && last != nil && last.Seq > local.Seq {
		if err := r.dropJournaled(ctx, local.Seq, last.Seq); err != nil {
			return err
		}
	}
	r.height, r.prev, r.lastSeq, r.synced = height, prev, seq, true
	r.available.Store(true)
	// The head and the journal index agree from here on, before anything
	// new is journaled (an older run may have been killed before it saved
	// its last head).
	r.saveHead(true)
	r.log.Info("chain head", zap.String("writer", r.cfg.Writer), zap.Uint64("next_height", height),
		zap.Uint64("last_seq", seq))
	return nil
}

// Head is a writer's last committed block, kept locally so that a verifier
// can tell a truncated stream from a short chain.
type Head struct {
	Writer string `json:"writer"`
	Height uint64 `json:"height"`
	Hash   string `json:"hash"`
	Seq    uint64 `json:"seq"`
	// Journal is the journal index of the first event no committed block
	// holds (see Config.Journal); the journal's records before it may go.
	Journal uint64 `json:"journal,omitempty"`
}

func headPath(dir, writer string) string { return filepath.Join(dir, writer+".head.json") }

// LoadHead reads the local head of writer from dir. Only a missing file
// means "no head"; an unreadable or corrupt one is an error, never silence.
func LoadHead(dir, writer string) (Head, bool, error) {
	if dir == "" {
		return Head{}, false, nil
	}
	path := headPath(dir, writer)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Head{}, false, nil
	}
	if err != nil {
		return Head{}, false, fmt.Errorf("local chain head: %w", err)
	}
	var h Head
	if json.Unmarshal(data, &h) != nil || h.Writer != writer {
		return Head{}, false, fmt.Errorf("local chain head %s is corrupt: check the chain with gridseal chain verify before moving it away", path)
	}
	if _, err := hex.DecodeString(h.Hash); err != nil || len(h.Hash) != 64 {
		return Head{}, false, fmt.Errorf("local chain head %s is corrupt (hash)", path)
	}
	return h, true, nil
}

// saveHead writes the head atomically, at most every 200 ms unless forced.
func (r *Recorder) saveHead(force bool) {
	if r.cfg.HeadDir == "" || r.height == 0 || (!force && time.Since(r.headSave) < 200*time.Millisecond) {
		return
	}
	r.headSave = time.Now()
	r.mu.Lock()
	base := r.base
	r.mu.Unlock()
	h := Head{Writer: r.cfg.Writer, Height: r.height - 1, Hash: r.prev.String(), Seq: r.lastSeq, Journal: base}
	data, _ := json.Marshal(h)
	path := headPath(r.cfg.HeadDir, r.cfg.Writer)
	if err := atomicfile.Write(path, data, 0o600); err != nil {
		r.log.Warn("cannot keep local chain head", zap.String("path", path), zap.Error(err))
		return
	}
	r.jrelease.Store(base)
}
