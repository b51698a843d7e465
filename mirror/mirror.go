// Package mirror is a full-audit copy of a gridseal chain, run by another
// party on its own NATS. It copies the operator's chain stream into a
// stream of its own, verifies every block as it lands there (writer
// signatures against pinned keys, hash links, Merkle roots, event
// encodings, known policy digests), recomputes the tree over every event,
// and only then cosigns the operator's checkpoints: it speaks
// c2sp.org/tlog-witness, so the checkpointer treats it as one more
// witness. A consistency-only witness checks that history only grows; a
// mirror also checks what the history says.
//
// It alarms — log, metric, a record in its directory that "gridseal
// mirror check" fails on — on any inconsistency: a block that does not
// verify, a source whose stream no longer holds what was copied, and a
// split view: two signed checkpoints of one origin that cannot both be
// true, met in the source's checkpoint stream (with other witnesses'
// cosignatures), in an add-checkpoint request, or handed to Compare.
//
// The copy is verified, not trusted: it holds the source's messages
// byte for byte, with their sequence numbers and message ids, however
// they came (this package's copier, or a JetStream mirror an admin set
// up), and nothing it holds is believed before the checks pass.
package mirror

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/chain"
)

// Config says what a mirror copies, what it trusts and where it keeps its
// state.
type Config struct {
	// Trust pins the writers' public keys and the checkpointers' note
	// keys; the mirror cosigns checkpoints of those keys only. Heads and
	// witnesses in it are not used.
	Trust chain.Trust
	// KnownPolicies, if not empty, are the hex SHA-256 digests of the
	// policies the writers may decide under: an event naming another is
	// an alarm. An event that names no policy is not checked.
	KnownPolicies map[string]bool
	// Cosigner signs the mirror's cosignatures.
	Cosigner *chain.Cosigner
	// Dir keeps the mirror's state: alarms, the checkpoint it last
	// cosigned, the tree's files.
	Dir string
	// Source is the operator's NATS (read rights on the chain and
	// checkpoint streams suffice). Nil: copy nothing, and verify what
	// Local's chain stream holds (a JetStream mirror, say).
	Source jetstream.JetStream
	// Local is the mirror's own NATS: its GRIDSEAL_CHAIN holds the copy.
	Local jetstream.JetStream
	// Poll is how often the source is asked for new messages [250ms].
	Poll time.Duration
	// Wait is how long an add-checkpoint request waits for the copy to
	// reach the checkpoint's size before it is answered 503 [2s].
	Wait time.Duration
	Log  *zap.Logger
	// Metrics, if set, gets the mirror's metrics (gridseal_mirror_*).
	Metrics prometheus.Registerer
}

// Mirror copies, verifies and cosigns. Create it with New, run it with
// Run, and serve Handler to the checkpointers.
type Mirror struct {
	cfg    Config
	log    *zap.Logger
	alarms *alarmLog
	met    *metrics

	mu       sync.Mutex
	tree     *chain.Tree // nil until Run starts
	copied   uint64      // last sequence copied into Local
	verified uint64      // last sequence of Local verified
	events   int64       // leaves in the tree
	clean    int64       // leaves of the prefix verified without a problem
	tainted  *Alarm      // the first problem in the copy's history
	pending  []*chain.Checkpoint
	matched  *chain.Checkpoint // the newest signed checkpoint the tree confirmed
	grown    chan struct{}     // closed, and replaced, when the copy grows

	wmu      sync.Mutex // add-checkpoint: checking and persisting are one step
	state    witnessState
	cosigned atomic.Int64 // state.Size, for readers that must not wait for wmu
}

// maxPending bounds the signed checkpoints kept until the copy reaches
// their size.
const maxPending = 1024

// New opens the mirror's directory: its alarms and the checkpoint it last
// cosigned.
func New(cfg Config) (*Mirror, error) {
	switch {
	case len(cfg.Trust.Writers) == 0:
		return nil, errors.New("mirror: the trust file pins no writers")
	case cfg.Trust.Checkpointers == nil:
		return nil, errors.New("mirror: the trust file pins no checkpointer keys: there would be nothing to cosign")
	case cfg.Cosigner == nil:
		return nil, errors.New("mirror: no witness key to cosign with")
	case cfg.Local == nil:
		return nil, errors.New("mirror: no NATS of its own to keep the copy in")
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 250 * time.Millisecond
	}
	if cfg.Wait <= 0 {
		cfg.Wait = 2 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("mirror directory: %w", err)
	}
	st, err := loadState(cfg.Dir)
	if err != nil {
		return nil, err
	}
	al, err := openAlarmLog(cfg.Dir)
	if err != nil {
		return nil, err
	}
	m := &Mirror{cfg: cfg, log: cfg.Log, alarms: al, state: st, grown: make(chan struct{}), met: newMetrics(cfg.Metrics)}
	m.cosigned.Store(st.Size)
	m.met.cosignedSize.Set(float64(st.Size))
	if n := len(al.list()); n > 0 {
		m.met.alarmed.Set(1)
		m.log.Error("the mirror has alarms from before; gridseal mirror check lists them", zap.Int("alarms", n))
	}
	return m, nil
}

// Close releases the alarms file. Call it after Run returned.
func (m *Mirror) Close() error { return m.alarms.close() }

// Run copies and verifies until ctx ends, then returns nil; it returns an
// error only when it cannot go on (the tree's files cannot be written).
// NATS errors are logged and retried. Restarted, a mirror verifies its
// copy again from the first message, then goes on copying where it
// stopped.
func (m *Mirror) Run(ctx context.Context) error {
	tree, err := chain.TempTreeFiles(filepath.Join(m.cfg.Dir, "tree"))
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.tree = tree
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.tree = nil
		m.mu.Unlock()
		_ = tree.Close()
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 3)
	var wg sync.WaitGroup
	loops := []func(context.Context) error{m.verifyLoop}
	if m.cfg.Source != nil {
		loops = append(loops, m.copyLoop, m.checkpointLoop)
	}
	for _, loop := range loops {
		wg.Go(func() {
			if err := loop(ctx); err != nil && ctx.Err() == nil {
				errc <- err
				cancel()
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

// retry runs round until ctx ends, every pause, logging its errors; a
// *fatalError stops it.
func (m *Mirror) retry(ctx context.Context, what string, pause time.Duration, round func(context.Context) error) error {
	t := time.NewTicker(pause)
	defer t.Stop()
	for {
		err := round(ctx)
		var fatal *fatalError
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.As(err, &fatal):
			return fatal.err
		case err != nil:
			m.log.Warn(what+" failed; trying again", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// fatalError stops the mirror: the local state cannot be kept.
type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }

// raise records an alarm, logs it and counts it; a repeat of one already
// recorded is dropped.
func (m *Mirror) raise(a Alarm) {
	a.Time = time.Now().UTC()
	fresh, err := m.alarms.add(a)
	if err != nil {
		m.log.Error("alarm not recorded in the mirror's directory", zap.String("kind", a.Kind), zap.String("reason", a.Reason), zap.Error(err))
	}
	if !fresh {
		return
	}
	m.met.alarms.WithLabelValues(a.Kind).Inc()
	m.met.alarmed.Set(1)
	m.log.Error("MIRROR ALARM", zap.String("kind", a.Kind), zap.Uint64("seq", a.Seq), zap.String("reason", a.Reason))
}

// Alarms returns the alarms recorded so far, before this run included.
func (m *Mirror) Alarms() []Alarm { return m.alarms.list() }

// Status is what the mirror has done so far.
type Status struct {
	Copied   uint64 // last stream sequence copied from the source
	Verified uint64 // last stream sequence of the copy verified
	Events   int64  // events in the copy's tree
	// Clean is how many events the copy holds before its first problem:
	// the largest tree the mirror may cosign.
	Clean    int64
	Cosigned int64 // size of the checkpoint last cosigned
	Alarms   int
}

// Status returns the mirror's progress. Safe to call from any goroutine.
func (m *Mirror) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	return Status{Copied: m.copied, Verified: m.verified, Events: m.events, Clean: m.clean,
		Cosigned: m.cosigned.Load(), Alarms: len(m.alarms.list())}
}
