package console

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
)

// Investigation — search, one event, export, chart — reads the tiles the
// console keeps as it follows the chain: each leaf's entry is the event as
// recorded, in stream order, and the blocks index maps a leaf to its
// block's sequence. No viewer opens a JetStream consumer: a result row's
// writer, height and block hash come from one direct get of its block
// (the same block for its neighbours), and the row's event is checked to
// be that block's event.
//
// Time ranges are a binary search over the entry bundles by the time of
// their first event. Tree order is stream order, and times are only
// roughly monotonic in it (writers' clocks differ; a write's completion is
// recorded after requests that came later): the search widens the range by
// timeSlack and filters each event by its own time, so it is exact as
// long as no event is recorded more than timeSlack after one stamped
// later. Events further out of order than that may be missed at a range's
// edges; `gridseal chain export` reads every event.
const (
	timeSlack = time.Minute

	searchLimit     = 100     // rows a search returns by default
	searchMaxLimit  = 1000    // and at most
	searchMaxScan   = 500_000 // events a search reads before it stops (next says where)
	searchTimeout   = 10 * time.Second
	exportMax       = 100_000   // events in one download
	exportMaxScan   = 5_000_000 // events one download reads
	exportTimeout   = 2 * time.Minute
	chartMaxScan    = 2_000_000 // events one chart reads
	chartMaxBuckets = 500
	chartBuckets    = 60 // the default step cuts the range into this many
	maxSearches     = 2  // searches, exports and charts at once
	searchWait      = 2 * time.Second
)

// query is what a search, an export and a chart select by; every field
// that is set must match.
type query struct {
	device, verdict, client, approval string
	fc, address                       int // -1: any
	since, until                      time.Time
}

// parseTime reads RFC 3339 time, or a duration ago ("15m"), as `gridseal
// chain export` does; "" is the zero time.
func parseTime(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q: want RFC 3339 time (2025-06-01T14:00:00Z) or a duration ago (15m)", s)
	}
	return t, nil
}

func parseQuery(v url.Values, now time.Time) (query, error) {
	q := query{device: v.Get("device"), verdict: v.Get("verdict"), client: v.Get("client"),
		approval: strings.ToLower(v.Get("approval")), fc: -1, address: -1}
	switch q.verdict {
	case "", "allow", "deny", "malformed", "approval":
	default:
		return q, fmt.Errorf("verdict %q: want allow, deny, malformed or approval", q.verdict)
	}
	if s := v.Get("function"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > 255 {
			return q, fmt.Errorf("function %q: want a function code 0..255", s)
		}
		q.fc = n
	}
	if s := v.Get("address"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > 65535 {
			return q, fmt.Errorf("address %q: want 0..65535", s)
		}
		q.address = n
	}
	var err error
	if q.since, err = parseTime(v.Get("since"), now); err != nil {
		return q, fmt.Errorf("since: %w", err)
	}
	if q.until, err = parseTime(v.Get("until"), now); err != nil {
		return q, fmt.Errorf("until: %w", err)
	}
	if !q.since.IsZero() && !q.until.IsZero() && !q.since.Before(q.until) {
		return q, errors.New("since must be before until")
	}
	return q, nil
}

// verdictOf is an event's verdict as the console filters it: an approval
// step is "approval", whatever it decided.
func verdictOf(ev *audit.Event) string {
	if ev.Phase == audit.PhaseApproval {
		return "approval"
	}
	return ev.Verdict.String()
}

func (q *query) match(ev *audit.Event) bool {
	if (q.device != "" && ev.Device != q.device) || (q.fc >= 0 && int(ev.Function) != q.fc) ||
		(q.verdict != "" && verdictOf(ev) != q.verdict) ||
		(!q.since.IsZero() && ev.Time.Before(q.since)) || (!q.until.IsZero() && !ev.Time.Before(q.until)) {
		return false
	}
	if q.address >= 0 {
		end := int(ev.Address) + max(int(ev.Quantity), 1)
		if q.address < int(ev.Address) || q.address >= end {
			return false
		}
	}
	if q.approval != "" && !strings.HasPrefix(strings.ToLower(ev.Approval), q.approval) {
		return false
	}
	if q.client != "" && (!ev.Client.IsValid() || !strings.Contains(ev.Client.String(), q.client)) {
		return false
	}
	return true
}

// leaves reads the tiles' entries bundle by bundle: the one bundle it
// holds is what consecutive leaves cost.
type leaves struct {
	ts      *chain.Tiles
	size    int64
	bundle  int64
	entries [][]byte
}

func newLeaves(ts *chain.Tiles) *leaves { return &leaves{ts: ts, size: ts.Size(), bundle: -1} }

const bundleWidth = 1 << chain.TileHeight

// entry returns leaf i's event as recorded; it aliases the bundle, valid
// until the next call reads another.
func (l *leaves) entry(i int64) ([]byte, error) {
	if i < 0 || i >= l.size {
		return nil, fmt.Errorf("%w: leaf %d of %d", chain.ErrNoTile, i, l.size)
	}
	if b := i / bundleWidth; b != l.bundle {
		data, err := l.ts.ReadTile(tlog.Tile{L: -1, N: b, W: int(min(bundleWidth, l.size-b*bundleWidth))})
		if err != nil {
			return nil, err
		}
		if l.entries, err = chain.Entries(data); err != nil {
			return nil, err
		}
		l.bundle = b
	}
	return l.entries[i%bundleWidth], nil
}

func (l *leaves) event(i int64) ([]byte, audit.Event, error) {
	e, err := l.entry(i)
	if err != nil {
		return nil, audit.Event{}, err
	}
	ev, err := chain.DecodeEvent(e)
	if err != nil {
		return nil, audit.Event{}, fmt.Errorf("leaf %d: %w", i, err)
	}
	return e, ev, nil
}

// bundleAt returns the first bundle whose first event is at or after t,
// by binary search (see timeSlack for why that is enough).
func (l *leaves) bundleAt(t time.Time) (int64, error) {
	n := int((l.size + bundleWidth - 1) / bundleWidth)
	var err error
	k := sort.Search(n, func(k int) bool {
		if err != nil {
			return true
		}
		var ev audit.Event
		_, ev, err = l.event(int64(k) * bundleWidth)
		return err != nil || !ev.Time.Before(t)
	})
	return int64(k), err
}

// bounds returns the leaves [lo, hi) that may hold events in [since,
// until): from the bundle before the first one that starts past
// since−timeSlack, to the first one that starts past until+timeSlack.
func (l *leaves) bounds(since, until time.Time) (lo, hi int64, err error) {
	hi = l.size
	if !since.IsZero() {
		k, err := l.bundleAt(since.Add(-timeSlack))
		if err != nil {
			return 0, 0, err
		}
		lo = max(0, k-1) * bundleWidth
	}
	if !until.IsZero() {
		k, err := l.bundleAt(until.Add(timeSlack))
		if err != nil {
			return 0, 0, err
		}
		hi = min(hi, k*bundleWidth)
	}
	return lo, max(lo, hi), nil
}

// EventRow is one event as the investigation views show it: the record as
// the live stream sends it, and its leaf in the tree (its permalink).
type EventRow struct {
	Leaf int64 `json:"leaf"`
	chain.Record
}

// blocks fetches the blocks of result rows from the stream by sequence,
// keeping the last one: rows of one block cost one get.
type blocks struct {
	ctx    context.Context
	js     jetstream.JetStream
	stream jetstream.Stream
	ts     *chain.Tiles
	off    error // NATS failed once: the remaining rows go without blocks

	msg   *chain.Msg
	block *chain.Block
	first int64 // the block's first leaf
}

// errLeafMismatch says a leaf's entry is not the event its block holds
// there: the tiles are not the stream's.
var errLeafMismatch = fmt.Errorf("%w: a leaf of the tiles is not its block's event", chain.ErrCheckpointMismatch)

// row builds leaf i's row from its entry e and the event decoded from it.
// With NATS away, the row has the event, its sequence and index, and no
// block fields.
func (b *blocks) row(i int64, e []byte, ev *audit.Event) (EventRow, error) {
	if b.block == nil || i < b.first || i >= b.first+int64(len(b.block.Events)) {
		seq, index, err := b.ts.BlockOf(i)
		if err != nil {
			return EventRow{}, err
		}
		if err := b.load(seq, i-int64(index)); err != nil {
			if errors.Is(err, errLeafMismatch) {
				return EventRow{}, err
			}
			b.off = err
			b.msg, b.block = nil, nil
			rec := chain.NewRecord(&chain.Msg{Seq: seq}, &chain.Block{}, index, ev)
			rec.Block = ""
			return EventRow{Leaf: i, Record: rec}, nil
		}
	}
	index := int(i - b.first)
	if !bytes.Equal(b.block.Events[index], e) {
		return EventRow{}, fmt.Errorf("%w: leaf %d, event %d of the block at sequence %d", errLeafMismatch, i, index, b.msg.Seq)
	}
	return EventRow{Leaf: i, Record: chain.NewRecord(b.msg, b.block, index, ev)}, nil
}

func (b *blocks) load(seq uint64, first int64) error {
	if b.off != nil {
		return b.off
	}
	if b.js == nil {
		return errors.New("the console reads no chain")
	}
	if b.stream == nil {
		s, err := b.js.Stream(b.ctx, chain.StreamName)
		if err != nil {
			return fmt.Errorf("chain stream %s: %w", chain.StreamName, err)
		}
		b.stream = s
	}
	raw, err := b.stream.GetMsg(b.ctx, seq)
	if err != nil {
		return fmt.Errorf("read chain sequence %d: %w", seq, err)
	}
	blk, err := chain.ParseBlock(raw.Data)
	if err != nil {
		return fmt.Errorf("%w: sequence %d: %v", errLeafMismatch, seq, err)
	}
	b.msg = &chain.Msg{Seq: raw.Sequence, Subject: raw.Subject, Data: raw.Data, Stored: raw.Time}
	b.block, b.first = blk, first
	return nil
}

// scan is an investigation under way — a search, an export, a chart or
// one event: its place among the few that may run at once, its deadline,
// the tiles' leaves and the blocks of its rows, and [lo, hi), the leaves
// that may hold its query's time range.
type scan struct {
	ctx     context.Context
	l       *leaves
	bs      *blocks
	lo, hi  int64
	scanned int64 // leaves read
	done    func()
}

// startScan is what every investigation handler starts with: a place
// among the few that may run at once, for at most timeout, and the leaves
// of q's time range; what names the investigation in an error. ok false:
// the answer was written; otherwise the caller calls sc.done when it is
// finished.
func (s *Server) startScan(w http.ResponseWriter, r *http.Request, q *query, timeout time.Duration, what string) (sc *scan, ok bool) {
	select {
	case s.searching <- struct{}{}:
	case <-time.After(searchWait):
		http.Error(w, "the console is busy with other searches; try again", http.StatusServiceUnavailable)
		return nil, false
	case <-r.Context().Done():
		return nil, false
	}
	ts, err := s.tiles.reader()
	if err != nil {
		<-s.searching
		http.Error(w, "no events to search: "+err.Error(), http.StatusServiceUnavailable)
		return nil, false
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	sc = &scan{ctx: ctx, l: newLeaves(ts), bs: &blocks{ctx: ctx, js: s.cfg.JetStream, ts: ts},
		done: func() { cancel(); <-s.searching }}
	if sc.lo, sc.hi, err = sc.l.bounds(q.since, q.until); err != nil {
		sc.done()
		http.Error(w, what+": "+err.Error(), http.StatusInternalServerError)
		return nil, false
	}
	return sc, true
}

// each reads the leaves [lo, hi), oldest first (newest first when
// backward), and calls f with each one whose event matches q, until f
// says no more or fails (each returns its error), a leaf cannot be read
// (that error), maxScan leaves are read or the deadline passes (cut). rest
// is where the leaves it did not finish begin (forward) or end
// (backward): the from= or before= of the rest; -1 when it finished them
// all.
func (sc *scan) each(q *query, backward bool, maxScan int64, f func(i int64, e []byte, ev *audit.Event) (more bool, err error)) (rest int64, cut bool, err error) {
	i, step := sc.lo, int64(1)
	if backward {
		i, step = sc.hi-1, -1
	}
	in := func(i int64) bool { return i >= sc.lo && i < sc.hi }
	// unread is the rest when leaf i is the first not finished.
	unread := func(i int64) int64 {
		if backward {
			return i + 1
		}
		return i
	}
	for ; in(i); i += step {
		if sc.scanned >= maxScan || sc.ctx.Err() != nil {
			return unread(i), true, nil
		}
		e, ev, err := sc.l.event(i)
		if err != nil {
			return unread(i), false, err
		}
		sc.scanned++
		if !q.match(&ev) {
			continue
		}
		more, err := f(i, e, &ev)
		if err != nil {
			return unread(i), false, err
		}
		if !more {
			if in(i + step) {
				return unread(i + step), false, nil
			}
			break
		}
	}
	return -1, false, nil
}

// leafParam is the leaf index query parameter name of v, -1 when it is
// absent. ok false: it is not one, and the answer was written.
func leafParam(w http.ResponseWriter, v url.Values, name string) (leaf int64, ok bool) {
	s := v.Get(name)
	if s == "" {
		return -1, true
	}
	leaf, err := strconv.ParseInt(s, 10, 64)
	if err != nil || leaf < 0 {
		http.Error(w, fmt.Sprintf("%s %q: want a leaf index", name, s), http.StatusBadRequest)
		return 0, false
	}
	return leaf, true
}

// SearchResult is a page of a search, newest first.
type SearchResult struct {
	Rows    []EventRow `json:"rows"`
	Scanned int64      `json:"scanned"` // events read
	// Next, if not -1, is the before= of the next (older) page: the
	// search stopped at its limit, its scan bound or its time.
	Next    int64  `json:"next"`
	Stopped string `json:"stopped,omitempty"` // why it stopped short of the range's start
	Size    int64  `json:"size"`              // events in the tiles
}

// search answers /api/search?device=&verdict=&function=&address=&client=
// &approval=&since=&until=&limit=&before=: the newest events that match,
// newest first, before leaf before (default: the newest).
func (s *Server) search(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	q, err := parseQuery(v, time.Now())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	limit := searchLimit
	if l := v.Get("limit"); l != "" {
		if limit, err = strconv.Atoi(l); err != nil || limit < 1 || limit > searchMaxLimit {
			http.Error(w, fmt.Sprintf("limit %q: want 1..%d", l, searchMaxLimit), http.StatusBadRequest)
			return
		}
	}
	before, ok := leafParam(w, v, "before")
	if !ok {
		return
	}
	sc, ok := s.startScan(w, r, &q, searchTimeout, "search")
	if !ok {
		return
	}
	defer sc.done()
	if before >= 0 {
		sc.hi = min(sc.hi, before)
	}
	res := SearchResult{Rows: []EventRow{}, Next: -1, Size: sc.l.size}
	rest, cut, err := sc.each(&q, true, searchMaxScan, func(i int64, e []byte, ev *audit.Event) (bool, error) {
		row, err := sc.bs.row(i, e, ev)
		if err != nil {
			return false, err
		}
		res.Rows = append(res.Rows, row)
		return len(res.Rows) < limit, nil
	})
	if err != nil {
		http.Error(w, "search: "+err.Error(), http.StatusInternalServerError)
		return
	}
	res.Scanned = sc.scanned
	switch {
	case cut && res.Scanned >= searchMaxScan:
		res.Next, res.Stopped = rest, fmt.Sprintf("read %d events, a search's most; go on with the next page", res.Scanned)
	case cut:
		res.Next, res.Stopped = rest, fmt.Sprintf("read %d events in %v; go on with the next page", res.Scanned, searchTimeout)
	case rest >= 0:
		res.Next, res.Stopped = rest, fmt.Sprintf("the first %d matches", limit)
	}
	writeJSON(w, res)
}

// EventView is one event by its leaf: its row, its leaf hash and every
// event of its operation near it (an allowed write's request and
// completion), oldest first.
type EventView struct {
	EventRow
	LeafHash string     `json:"leaf_hash"`
	Phases   []EventRow `json:"phases"`
}

// opWindow is how far from an event its operation's other phases are
// looked for: a write's completion lands a few blocks after its request.
const opWindow = 2048

// event answers /api/event/{leaf}.
func (s *Server) event(w http.ResponseWriter, r *http.Request) {
	leaf, err := strconv.ParseInt(r.PathValue("leaf"), 10, 64)
	if err != nil || leaf < 0 {
		http.Error(w, "want /api/event/LEAF: the event's leaf index", http.StatusBadRequest)
		return
	}
	sc, ok := s.startScan(w, r, &query{}, searchTimeout, "event")
	if !ok {
		return
	}
	defer sc.done()
	l, bs := sc.l, sc.bs
	if leaf >= l.size {
		http.Error(w, fmt.Sprintf("no event %d: the console holds %d", leaf, l.size), http.StatusNotFound)
		return
	}
	e, ev, err := l.event(leaf)
	if err != nil {
		http.Error(w, "event: "+err.Error(), http.StatusInternalServerError)
		return
	}
	row, err := bs.row(leaf, e, &ev)
	if err != nil {
		http.Error(w, "event: "+err.Error(), http.StatusInternalServerError)
		return
	}
	out := EventView{EventRow: row, LeafHash: chain.LeafHash(e).String(), Phases: []EventRow{row}}
	if ev.Op != 0 && ev.Phase != audit.PhaseApproval && row.Writer != "" {
		for i := max(0, leaf-opWindow); i < min(l.size, leaf+opWindow); i++ {
			if i == leaf {
				continue
			}
			oe, oev, err := l.event(i)
			if err != nil || oev.Op != ev.Op || oev.Phase == audit.PhaseApproval {
				continue
			}
			if orow, err := bs.row(i, oe, &oev); err == nil && orow.Writer == row.Writer {
				out.Phases = append(out.Phases, orow)
			}
		}
		sort.Slice(out.Phases, func(a, b int) bool { return out.Phases[a].Leaf < out.Phases[b].Leaf })
	}
	writeJSON(w, out)
}

// permalink answers /e/{leaf}, an event's permanent link, with the page
// that shows it: ../?event=LEAF, relative, so the link works under any
// prefix a reverse proxy serves the console at.
func permalink(w http.ResponseWriter, r *http.Request) {
	leaf, err := strconv.ParseInt(r.PathValue("leaf"), 10, 64)
	if err != nil || leaf < 0 {
		http.Error(w, "want /e/LEAF: the event's leaf index", http.StatusNotFound)
		return
	}
	w.Header().Set("Location", "../?event="+strconv.FormatInt(leaf, 10))
	w.WriteHeader(http.StatusSeeOther)
}
