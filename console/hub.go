package console

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/chain"
)

// hub follows the chain — verifying every block from the first, and
// from the newest events on fanning the decoded events out to the
// console's live viewers. A viewer that
// cannot keep up is dropped, never waited for: viewers must not slow the
// proxy or each other.
type hub struct {
	log *zap.Logger

	// liveNext is the stream sequence the live view fans out next (0: it
	// has not started); only the live loop uses it. A restarted live scan
	// goes on from there, so viewers see neither a repeat nor a gap.
	liveNext uint64

	mu      sync.Mutex
	recent  []item // the newest events
	viewers map[chan []item]struct{}
	status  ChainStatus
	// While nobody watches, the live view keeps the newest blocks as they
	// came (unwatched: at most recentEvents blocks and maxUnwatchedBytes),
	// and reads, checks and encodes them only when a viewer arrives: an
	// unwatched console costs the proxy no JSON per operation.
	unwatched      []*chain.Msg
	unwatchedBytes int
	check          func(*chain.Msg, *chain.Block) error // the live view's, see live
}

// maxUnwatchedBytes bounds the blocks kept unread for the next viewer.
const maxUnwatchedBytes = 16 << 20

// item is one event, encoded once as an SSE message, with what viewers
// filter on.
type item struct {
	device, verdict, client string
	fc                      byte
	msg                     []byte
}

// Filter selects the events a viewer wants; zero fields match anything.
type Filter struct {
	Device, Verdict, Client string
	FC                      int // -1: any
}

func (f *Filter) match(it *item) bool {
	return (f.Device == "" || f.Device == it.device) && (f.Verdict == "" || f.Verdict == it.verdict) &&
		(f.FC < 0 || byte(f.FC) == it.fc) && (f.Client == "" || strings.Contains(it.client, f.Client))
}

// ChainStatus is what the console shows of the chain.
type ChainStatus struct {
	Writers    map[string]WriterStatus `json:"writers"`
	Blocks     uint64                  `json:"blocks"`
	Events     uint64                  `json:"events"`
	LastBlock  time.Time               `json:"last_block"`
	Verified   bool                    `json:"verified"` // every block so far verified
	Problem    string                  `json:"problem,omitempty"`
	VerifiedAt time.Time               `json:"verified_at"`
	// VerifiedSeq is the stream sequence of the last block verified: the
	// status counts blocks and events up to it (at start the verifier reads
	// the chain from its first block while the live view already shows the
	// newest events).
	VerifiedSeq  uint64 `json:"verified_seq"`
	TrustPinned  bool   `json:"trust_pinned"`
	FollowingErr string `json:"following_error,omitempty"`
}

// WriterStatus is one writer's chain.
type WriterStatus struct {
	Height uint64 `json:"height"`
	Hash   string `json:"hash"`
	Events uint64 `json:"events"`
}

const (
	recentEvents = 500
	viewerBuffer = 1024 // blocks queued per viewer between its wakes
	maxViewers   = 256
)

func newHub(log *zap.Logger) *hub {
	return &hub{log: log, viewers: map[chan []item]struct{}{},
		status: ChainStatus{Writers: map[string]WriterStatus{}}}
}

// follow verifies and fans out the chain until ctx ends, restarting each
// scan after a NATS error. The live view starts at the newest events (read
// backwards from the end, so the console shows the plant's present at
// once at any chain size) and follows what is recorded after them; the
// verifier reads every block from the first, in order, beside it, and the
// status says how far it got.
func (h *hub) follow(ctx context.Context, js jetstream.JetStream, trust chain.Trust) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		h.retry(ctx, func() error { return h.verify(ctx, js, trust) })
	}()
	h.retry(ctx, func() error { return h.live(ctx, js, trust) })
	wg.Wait()
}

// retry runs scan until ctx ends, again a second after each failure, which
// the status shows.
func (h *hub) retry(ctx context.Context, scan func() error) {
	for ctx.Err() == nil {
		err := scan()
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

// live fans out the newest recentEvents events, then every event recorded
// after them.
func (h *hub) live(ctx context.Context, js jetstream.JetStream, trust chain.Trust) error {
	// With writers pinned, a block is shown only once it checks on its
	// own (pinned key's signature, Merkle root, event format); its place
	// in the chain is the verifier's to judge, and the status says how far
	// it got.
	var check func(*chain.Msg, *chain.Block) error
	if len(trust.Writers) > 0 {
		check = trust.CheckParsed
	}
	h.mu.Lock()
	h.check = check
	h.mu.Unlock()
	if h.liveNext > 0 {
		// A restart: go on where the last scan stopped, unless the stream
		// is no longer the one it read (recreated, shorter).
		last, err := lastSeq(ctx, js)
		if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return err
		}
		if last+1 < h.liveNext {
			h.liveNext = 0
		}
	}
	if h.liveNext == 0 {
		recs, last, err := chain.LastCheckedRecords(ctx, js, recentEvents, nil, check)
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound):
		case err != nil:
			// A newest block that does not read (the verifier reports it)
			// leaves the live view without a backlog, not without a view.
			h.log.Warn("console: the newest events do not read; following from the end", zap.Error(err))
			if last, err = lastSeq(ctx, js); err != nil {
				return err
			}
		}
		h.mu.Lock()
		h.recent, h.unwatched, h.unwatchedBytes = h.recent[:0], nil, 0
		h.mu.Unlock()
		h.fanout(recs)
		h.liveNext = last + 1
	}
	return chain.Scan(ctx, js, h.liveNext, true, func(m *chain.Msg) error {
		h.liveNext = m.Seq + 1
		h.mu.Lock()
		if len(h.viewers) == 0 {
			h.keepUnwatchedLocked(m)
			h.mu.Unlock()
			return nil
		}
		h.mu.Unlock()
		h.fanout(blockRecords(m, check))
		return nil
	})
}

// blockRecords reads the events of block m, nil if it does not read or
// does not pass check (the verifier reports it).
func blockRecords(m *chain.Msg, check func(*chain.Msg, *chain.Block) error) []chain.Record {
	b, err := chain.ParseBlock(m.Data)
	if err != nil || check != nil && check(m, b) != nil {
		return nil
	}
	recs := make([]chain.Record, 0, len(b.Events))
	for i, e := range b.Events {
		ev, err := chain.DecodeEvent(e)
		if err != nil {
			continue
		}
		recs = append(recs, chain.NewRecord(m, b, i, &ev))
	}
	return recs
}

// keepUnwatchedLocked keeps block m for the next viewer, dropping the
// oldest kept past the bounds. h.mu is held.
func (h *hub) keepUnwatchedLocked(m *chain.Msg) {
	h.unwatched = append(h.unwatched, m)
	h.unwatchedBytes += len(m.Data)
	drop := 0
	for len(h.unwatched)-drop > recentEvents || (h.unwatchedBytes > maxUnwatchedBytes && len(h.unwatched)-drop > 1) {
		h.unwatchedBytes -= len(h.unwatched[drop].Data)
		drop++
	}
	if drop > 0 {
		h.unwatched = append(h.unwatched[:0], h.unwatched[drop:]...)
		// The events encoded before are older than the blocks dropped:
		// shown with the kept ones, they would hide a gap.
		h.recent = h.recent[:0]
	}
}

// catchUpLocked reads, checks and encodes the blocks kept while nobody
// watched into recent, newest recentEvents events at most. h.mu is held.
func (h *hub) catchUpLocked() {
	if len(h.unwatched) == 0 {
		return
	}
	var recs []chain.Record
	for i := len(h.unwatched) - 1; i >= 0 && len(recs) < recentEvents; i-- {
		recs = append(blockRecords(h.unwatched[i], h.check), recs...)
	}
	h.unwatched, h.unwatchedBytes = nil, 0
	h.recent = append(h.recent, encodeItems(recs)...)
	h.trimRecentLocked()
}

// lastSeq is the chain stream's last sequence (0: empty).
func lastSeq(ctx context.Context, js jetstream.JetStream) (uint64, error) {
	st, err := js.Stream(ctx, chain.StreamName)
	if err != nil {
		return 0, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.LastSeq, nil
}

// verify checks every block from the first, in order, as it arrives, and
// keeps the chain's status.
func (h *hub) verify(ctx context.Context, js jetstream.JetStream, trust chain.Trust) error {
	pinned := len(trust.Writers) > 0
	v := chain.NewVerifier(trust)
	h.mu.Lock()
	h.status = ChainStatus{Writers: map[string]WriterStatus{}, Verified: true, TrustPinned: pinned}
	h.mu.Unlock()
	return chain.Scan(ctx, js, 1, true, func(m *chain.Msg) error {
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
		h.account(m.Seq, b)
		return nil
	})
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

// account adds block b, stored at seq and verified, to the status.
func (h *hub) account(seq uint64, b *chain.Block) {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := &h.status
	st.Blocks++
	st.Events += uint64(len(b.Events))
	st.LastBlock = b.Time
	st.VerifiedAt = time.Now()
	st.VerifiedSeq = seq
	w := st.Writers[b.Writer]
	w.Height, w.Hash, w.Events = b.Height, b.Hash.String(), w.Events+uint64(len(b.Events))
	st.Writers[b.Writer] = w
}

// fanout sends records to the live viewers and keeps the newest.
func (h *hub) fanout(recs []chain.Record) {
	// Encode each event once; send each viewer the block's events in one
	// channel send, not one per event.
	items := encodeItems(recs)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.catchUpLocked()
	h.recent = append(h.recent, items...)
	if len(items) > 0 {
		for ch := range h.viewers {
			select {
			case ch <- items:
			default: // too slow: this viewer is dropped
				delete(h.viewers, ch)
				close(ch)
			}
		}
	}
	h.trimRecentLocked()
}

func (h *hub) trimRecentLocked() {
	if len(h.recent) > 2*recentEvents {
		h.recent = append(h.recent[:0], h.recent[len(h.recent)-recentEvents:]...)
	}
}

// encodeItems encodes each record as an SSE message.
func encodeItems(recs []chain.Record) []item {
	items := make([]item, 0, len(recs))
	for i := range recs {
		r := &recs[i]
		data, err := json.Marshal(r)
		if err != nil {
			continue
		}
		msg := make([]byte, 0, len(data)+8)
		msg = append(append(append(msg, "data: "...), data...), "\n\n"...)
		verdict := r.Verdict
		if r.Phase == "approval" {
			verdict = "approval"
		}
		items = append(items, item{device: r.Device, verdict: verdict, client: r.Client, fc: r.Function, msg: msg})
	}
	return items
}

// subscribe returns the newest events and a channel of the ones to come;
// ok is false when too many viewers are connected.
func (h *hub) subscribe() (backlog []item, ch chan []item, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.viewers) >= maxViewers {
		return nil, nil, false
	}
	h.catchUpLocked()
	n := min(len(h.recent), recentEvents)
	backlog = append([]item(nil), h.recent[len(h.recent)-n:]...)
	ch = make(chan []item, viewerBuffer)
	h.viewers[ch] = struct{}{}
	return backlog, ch, true
}

func (h *hub) unsubscribe(ch chan []item) {
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
