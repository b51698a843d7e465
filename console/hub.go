package console

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/chain"
)

// hub follows the chain once — verifying every block as it arrives — and
// fans the decoded events out to the console's live viewers. A viewer that
// cannot keep up is dropped, never waited for: viewers must not slow the
// proxy or each other.
type hub struct {
	log *zap.Logger

	mu      sync.Mutex
	recent  []chain.Record // ring of the newest events
	viewers map[chan chain.Record]struct{}
	status  ChainStatus
}

// ChainStatus is what the console shows of the chain.
type ChainStatus struct {
	Writers      map[string]WriterStatus `json:"writers"`
	Blocks       uint64                  `json:"blocks"`
	Events       uint64                  `json:"events"`
	LastBlock    time.Time               `json:"last_block"`
	Verified     bool                    `json:"verified"` // every block so far verified
	Problem      string                  `json:"problem,omitempty"`
	VerifiedAt   time.Time               `json:"verified_at"`
	TrustPinned  bool                    `json:"trust_pinned"`
	FollowingErr string                  `json:"following_error,omitempty"`
}

// WriterStatus is one writer's chain.
type WriterStatus struct {
	Height uint64 `json:"height"`
	Hash   string `json:"hash"`
	Events uint64 `json:"events"`
}

const (
	recentEvents = 500
	viewerBuffer = 256
	maxViewers   = 256
)

func newHub(log *zap.Logger) *hub {
	return &hub{log: log, viewers: map[chan chain.Record]struct{}{},
		status: ChainStatus{Writers: map[string]WriterStatus{}}}
}

// follow verifies and fans out the chain until ctx ends, restarting the
// scan after a NATS error.
func (h *hub) follow(ctx context.Context, js jetstream.JetStream, trust chain.Trust) {
	pinned := len(trust.Writers) > 0
	for ctx.Err() == nil {
		v := chain.NewVerifier(trust)
		h.mu.Lock()
		h.status = ChainStatus{Writers: map[string]WriterStatus{}, Verified: true, TrustPinned: pinned}
		h.recent = h.recent[:0]
		h.mu.Unlock()
		err := chain.Scan(ctx, js, 1, true, func(m *chain.Msg) error {
			b, err := chain.ParseBlock(m.Data)
			if err != nil {
				h.problem(m.Seq, err.Error())
				return nil
			}
			if pinned {
				var p *chain.Problem
				if err := v.Add(m); errors.As(err, &p) {
					h.problem(m.Seq, p.Error())
				} else if err != nil {
					return err
				}
			}
			recs := make([]chain.Record, 0, len(b.Events))
			for i, e := range b.Events {
				ev, err := chain.DecodeEvent(e)
				if err != nil {
					continue
				}
				recs = append(recs, chain.NewRecord(m, b, i, &ev))
			}
			h.publish(b, recs)
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		h.mu.Lock()
		if err != nil {
			h.status.FollowingErr = err.Error()
		}
		h.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (h *hub) problem(seq uint64, why string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.status.Verified {
		h.status.Verified = false
		h.status.Problem = why
	}
	h.log.Error("chain verification failed", zap.Uint64("seq", seq), zap.String("problem", why))
}

func (h *hub) publish(b *chain.Block, recs []chain.Record) {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := &h.status
	st.Blocks++
	st.Events += uint64(len(recs))
	st.LastBlock = b.Time
	st.VerifiedAt = time.Now()
	w := st.Writers[b.Writer]
	w.Height, w.Hash, w.Events = b.Height, b.Hash.String(), w.Events+uint64(len(recs))
	st.Writers[b.Writer] = w
	for _, r := range recs {
		h.recent = append(h.recent, r)
		for ch := range h.viewers {
			select {
			case ch <- r:
			default: // too slow: this viewer is dropped
				delete(h.viewers, ch)
				close(ch)
			}
		}
	}
	if len(h.recent) > 2*recentEvents {
		h.recent = append(h.recent[:0], h.recent[len(h.recent)-recentEvents:]...)
	}
}

// subscribe returns the newest events and a channel of the ones to come;
// ok is false when too many viewers are connected.
func (h *hub) subscribe() (backlog []chain.Record, ch chan chain.Record, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.viewers) >= maxViewers {
		return nil, nil, false
	}
	n := min(len(h.recent), recentEvents)
	backlog = append([]chain.Record(nil), h.recent[len(h.recent)-n:]...)
	ch = make(chan chain.Record, viewerBuffer)
	h.viewers[ch] = struct{}{}
	return backlog, ch, true
}

func (h *hub) unsubscribe(ch chan chain.Record) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.viewers[ch]; ok {
		delete(h.viewers, ch)
		close(ch)
	}
}

func (h *hub) viewerCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.viewers)
}

func (h *hub) snapshot() ChainStatus {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := h.status
	st.Writers = make(map[string]WriterStatus, len(h.status.Writers))
	for k, v := range h.status.Writers {
		st.Writers[k] = v
	}
	return st
}
