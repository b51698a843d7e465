package eve

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
)

// FileConfig says where the proxy writes its EVE file and when it rotates it.
type FileConfig struct {
	Path string
	// MaxSize rotates the file once it holds this many bytes; 0: never by size.
	MaxSize int64
	// Every rotates the file once it has been open this long; 0: never by age.
	Every time.Duration
	// Keep is how many rotated files (Path.1 … Path.Keep) are kept; default 10.
	Keep int
	// Buffer is how many events wait for the disk at most; default 8192.
	Buffer int
}

// FileRecorder writes every event as EVE lines to a file that a log
// forwarder tails, as it tails Suricata's eve.json: one JSON object per
// line, appended, rotated by renaming (Path → Path.1 → Path.2 …) when it
// grows past MaxSize or ages past Every, and reopened on Reopen (SIGHUP,
// for logrotate). Record never waits for the disk: it queues a copy of the
// event, and when the queue is full (the disk far behind) the event is
// dropped and counted (Dropped, gridseal_eve_dropped_total). The file is a
// copy for SIEMs; the chain is the record, and `chain export --from`
// refills what a full queue lost.
type FileRecorder struct {
	cfg FileConfig
	m   Mapper
	log *zap.Logger

	queue   chan audit.Event
	reopen  chan struct{}
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	dropped atomic.Uint64
	lines   atomic.Uint64
	rotated atomic.Uint64
	errors  atomic.Uint64

	f      *os.File
	w      *bufio.Writer
	size   int64
	opened time.Time
}

// OpenFile opens (or creates) cfg.Path for appending and starts the writer.
// m names the writer and the PLCs' addresses. Close it to flush.
func OpenFile(cfg FileConfig, m Mapper, log *zap.Logger) (*FileRecorder, error) {
	if cfg.Keep <= 0 {
		cfg.Keep = 10
	}
	if cfg.Buffer <= 0 {
		cfg.Buffer = 8192
	}
	r := &FileRecorder{cfg: cfg, m: m, log: log, queue: make(chan audit.Event, cfg.Buffer),
		reopen: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	if err := r.open(); err != nil {
		return nil, err
	}
	go r.run()
	return r, nil
}

// Record queues a copy of ev for the file; it never blocks and never fails
// (a full queue drops the event and counts it). Safe for concurrent use.
func (r *FileRecorder) Record(_ context.Context, ev *audit.Event, _ bool) error {
	if ev.Phase == audit.PhaseRequest {
		return nil // no line: the completion is one
	}
	c := *ev
	c.PDU, c.Response = slices.Clone(ev.PDU), slices.Clone(ev.Response)
	select {
	case r.queue <- c:
	default:
		r.dropped.Add(1)
	}
	return nil
}

// Reopen closes the file and opens Path again, for a log rotator that
// renamed it. It returns at once; the writer reopens between two lines.
func (r *FileRecorder) Reopen() {
	select {
	case r.reopen <- struct{}{}:
	default:
	}
}

// Dropped is how many events a full queue dropped.
func (r *FileRecorder) Dropped() uint64 { return r.dropped.Load() }

// Close writes what is queued, flushes and closes the file. Events
// recorded after Close are dropped.
func (r *FileRecorder) Close() error {
	r.once.Do(func() { close(r.stop) })
	<-r.done
	return r.closeFile()
}

// RegisterMetrics registers the file's counters with reg.
func (r *FileRecorder) RegisterMetrics(reg prometheus.Registerer) {
	for _, c := range []struct {
		name, help string
		v          *atomic.Uint64
	}{
		{"gridseal_eve_lines_total", "EVE lines written to the proxy's EVE file.", &r.lines},
		{"gridseal_eve_dropped_total", "Events not written to the EVE file because its queue was full (the chain still holds them).", &r.dropped},
		{"gridseal_eve_rotations_total", "Rotations of the EVE file.", &r.rotated},
		{"gridseal_eve_write_errors_total", "Failed writes, rotations or reopens of the EVE file.", &r.errors},
	} {
		v := c.v
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: c.name, Help: c.help},
			func() float64 { return float64(v.Load()) }))
	}
}

func (r *FileRecorder) run() {
	defer close(r.done)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case ev := <-r.queue:
			r.write(&ev)
			if len(r.queue) == 0 {
				r.flush()
			}
		case <-r.reopen:
			r.flush()
			r.fail("reopen", r.reopenFile())
		case <-tick.C:
			r.flush()
			r.maybeRotate()
		case <-r.stop:
			for {
				select {
				case ev := <-r.queue:
					r.write(&ev)
				default:
					r.flush()
					return
				}
			}
		}
	}
}

func (r *FileRecorder) write(ev *audit.Event) {
	r.maybeRotate() // a file past its age gets no more lines
	if r.w == nil {
		r.fail("reopen", r.reopenFile())
		if r.w == nil {
			r.dropped.Add(1)
			return
		}
	}
	for _, e := range r.m.For(nil, ev) {
		b, err := json.Marshal(e)
		if err != nil {
			r.fail("encode", err)
			continue
		}
		b = append(b, '\n')
		n, err := r.w.Write(b)
		r.size += int64(n)
		if err != nil {
			r.fail("write", err)
			return
		}
		r.lines.Add(1)
	}
	r.maybeRotate()
}

func (r *FileRecorder) flush() {
	if r.w != nil {
		r.fail("write", r.w.Flush())
	}
}

func (r *FileRecorder) maybeRotate() {
	if r.f == nil {
		return
	}
	if (r.cfg.MaxSize > 0 && r.size >= r.cfg.MaxSize) || (r.cfg.Every > 0 && r.size > 0 && time.Since(r.opened) >= r.cfg.Every) {
		r.fail("rotate", r.rotate())
	}
}

// rotate renames Path.N-1 → Path.N … Path → Path.1, dropping the oldest
// beyond Keep, and opens a new Path.
func (r *FileRecorder) rotate() error {
	r.flush()
	if err := r.closeFile(); err != nil {
		return err
	}
	p := r.cfg.Path
	_ = os.Remove(fmt.Sprintf("%s.%d", p, r.cfg.Keep))
	for i := r.cfg.Keep - 1; i >= 1; i-- {
		if err := os.Rename(fmt.Sprintf("%s.%d", p, i), fmt.Sprintf("%s.%d", p, i+1)); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	if err := os.Rename(p, p+".1"); err != nil && !os.IsNotExist(err) {
		return err
	}
	r.rotated.Add(1)
	return r.open()
}

func (r *FileRecorder) reopenFile() error {
	if err := r.closeFile(); err != nil {
		r.fail("close", err)
	}
	return r.open()
}

func (r *FileRecorder) open() error {
	f, err := os.OpenFile(r.cfg.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("eve file: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return fmt.Errorf("eve file: %w", err)
	}
	r.f, r.w, r.size, r.opened = f, bufio.NewWriterSize(f, 64<<10), fi.Size(), time.Now()
	return nil
}

func (r *FileRecorder) closeFile() error {
	if r.f == nil {
		return nil
	}
	err := r.w.Flush()
	if cerr := r.f.Close(); err == nil {
		err = cerr
	}
	r.f, r.w = nil, nil
	return err
}

// fail counts and logs err, if any: the file is a copy, so the proxy goes on.
func (r *FileRecorder) fail(what string, err error) {
	if err == nil {
		return
	}
	r.errors.Add(1)
	r.log.Warn("eve file: "+what+" failed", zap.String("path", r.cfg.Path), zap.Error(err))
}

// AppendVerifyAlerts appends one VerifyAlert per problem to the EVE file
// at path (created 0644 if missing) and syncs it: chain verify --eve.
func AppendVerifyAlerts(path string, problems []*chain.Problem, at time.Time) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for _, p := range problems {
		if err := enc.Encode(VerifyAlert(p, at)); err != nil {
			return err
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("--eve: %w", err)
	}
	_, err = f.Write(buf.Bytes())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("--eve %s: %w", path, err)
	}
	return nil
}
