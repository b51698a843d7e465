package console

import (
	"context"
	"crypto/tls"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/proxy"
)

//go:embed assets
var assets embed.FS

// Config wires the console to the running proxy.
type Config struct {
	Metrics   *Metrics
	Gatherer  prometheus.Gatherer
	JetStream jetstream.JetStream
	Trust     chain.Trust           // writers to verify live; empty: show, don't verify
	Approvals *approvals.Store      // pending approvals; nil: none shown
	Policy    func() *policy.Policy // the policy in force
	// Ready reports why the proxy is not ready (nil: ready): upstreams
	// known and chain writable.
	Ready func() error
	// Auth admits viewers; nil admits anyone who can connect (loopback
	// only: the command checks that).
	Auth *Auth
	// MaxConns bounds open HTTP connections (default 256), and
	// MaxConnsPerClient those from one address (default 32).
	MaxConns          int
	MaxConnsPerClient int
	// TLS serves HTTPS with it; with ClientCAs set, Auth may admit
	// viewers by their verified client certificate.
	TLS *tls.Config
	// Upstreams reports each device's reachability (proxy.Server's
	// Upstreams); nil: not shown.
	Upstreams func() map[string]proxy.UpstreamState
	// TreeDir keeps the tree of every event as tlog-tiles, in
	// TreeDir/tiles: extended as blocks land, continued after a restart,
	// served under /log/ and read for inclusion proofs; "": in a temporary
	// directory removed when Run ends.
	TreeDir string
	Log     *zap.Logger
}

// Server is the console's HTTP side. It changes nothing on any device.
type Server struct {
	cfg     Config
	hub     *hub
	mux     *http.ServeMux
	handler http.Handler // mux, behind Auth if set

	proving   chan struct{} // one inclusion proof at a time: each reads the stream
	searching chan struct{} // searches, exports and charts at once: each reads the tiles
	tiles     logTiles

	cpMu sync.Mutex
	cpAt time.Time
	cp   *CheckpointView // newest signed checkpoint, as of cpAt
}

// New returns a console; Run follows the chain.
func New(cfg Config) *Server {
	s := &Server{cfg: cfg, hub: newHub(cfg.Log), mux: http.NewServeMux()}
	static, _ := fs.Sub(assets, "assets")
	s.mux.Handle("GET /", http.FileServerFS(static))
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{MaxRequestsInFlight: 8}))
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	s.mux.HandleFunc("GET /readyz", s.ready)
	s.mux.HandleFunc("GET /api/events", s.events)
	s.mux.HandleFunc("GET /api/status", s.status)
	s.mux.HandleFunc("GET /api/devices", s.devices)
	s.mux.HandleFunc("GET /api/approvals", s.approvals)
	s.mux.HandleFunc("GET /api/proof", s.proof)
	s.mux.HandleFunc("GET /api/search", s.search)
	s.mux.HandleFunc("GET /api/event/{leaf}", s.event)
	s.mux.HandleFunc("GET /api/export", s.export)
	s.mux.HandleFunc("GET /api/chart", s.chart)
	s.mux.HandleFunc("GET /e/{leaf}", permalink)
	s.mux.HandleFunc("GET /log/checkpoint", s.serveCheckpoint)
	s.mux.HandleFunc("GET /log/tile/{path...}", s.serveTile)
	s.proving = make(chan struct{}, 1)
	s.searching = make(chan struct{}, maxSearches)
	s.handler = s.mux
	if cfg.Auth != nil {
		cfg.Auth.log = cfg.Log
		s.handler = cfg.Auth.wrap(s.mux)
	}
	s.handler = securityHeaders(s.handler)
	return s
}

// Run follows and verifies the chain, and keeps its tiles, until ctx ends.
func (s *Server) Run(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.runTiles(ctx)
	}()
	s.hub.follow(ctx, s.cfg.JetStream, s.cfg.Trust)
	<-done
}

// Viewers returns the number of live event streams.
func (s *Server) Viewers() int { return s.hub.viewerCount() }

// Serve answers HTTP on ln until ctx ends, with timeouts and header limits
// on every connection.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	maxConns := s.cfg.MaxConns
	if maxConns <= 0 {
		maxConns = 256
	}
	perClient := s.cfg.MaxConnsPerClient
	if perClient <= 0 {
		perClient = 32
	}
	ln = limitListener(ln, maxConns, min(perClient, maxConns)) // below TLS: the server must see *tls.Conn
	if s.cfg.TLS != nil {
		ln = tls.NewListener(ln, s.cfg.TLS)
	}
	hs := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		// No WriteTimeout: the event stream is long-lived; slow viewers are
		// dropped by the hub instead.
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	err := hs.Serve(ln)
	if err == http.ErrServerClosed {
		return nil
	}
	return err
}

// Handler is the console's HTTP handler, behind its Auth (tests).
func (s *Server) Handler() http.Handler { return s.handler }

// securityHeaders keeps the console's pages to their own scripts and
// styles, out of other sites' frames, and its responses from being sniffed
// as another type.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		next.ServeHTTP(w, r)
	})
}

// limitListener accepts at most n open connections, and at most perClient
// from one address (those beyond are closed at once, so one client cannot
// take every slot); past n the next waits until one closes (the kernel's
// backlog holds it meanwhile).
func limitListener(ln net.Listener, n, perClient int) net.Listener {
	return &limited{Listener: ln, sem: make(chan struct{}, n), done: make(chan struct{}),
		perClient: perClient, byClient: map[netip.Addr]int{}}
}

type limited struct {
	net.Listener
	sem       chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	perClient int

	mu       sync.Mutex
	byClient map[netip.Addr]int
}

func (l *limited) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

func (l *limited) Accept() (net.Conn, error) {
	for {
		select {
		case l.sem <- struct{}{}:
		case <-l.done:
			return nil, net.ErrClosed
		}
		c, err := l.Listener.Accept()
		if err != nil {
			<-l.sem
			return nil, err
		}
		var ip netip.Addr
		if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			ip = ta.AddrPort().Addr().Unmap()
		}
		l.mu.Lock()
		over := l.byClient[ip] >= l.perClient
		if !over {
			l.byClient[ip]++
		}
		l.mu.Unlock()
		if over {
			_ = c.Close()
			<-l.sem
			continue
		}
		return &limitedConn{Conn: c, release: func() {
			l.mu.Lock()
			if l.byClient[ip]--; l.byClient[ip] <= 0 {
				delete(l.byClient, ip)
			}
			l.mu.Unlock()
			<-l.sem
		}}, nil
	}
}

type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Server) ready(w http.ResponseWriter, _ *http.Request) {
	if s.cfg.Ready != nil {
		if err := s.cfg.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
	}
	_, _ = w.Write([]byte("ready\n"))
}

// Live stream limits: a person reads a few rows a second; more than this
// per viewer is counted and reported as skipped, never queued, so viewers
// cost the proxy little however busy the plant is. Filters apply first.
const (
	viewerRate  = 200 // events per second per viewer
	viewerBurst = 600
	viewerTick  = 200 * time.Millisecond
)

// events streams the chain's events as server-sent events: the newest 500
// that match the viewer's filter (?device=&verdict=&fc=&client=), then each
// new one as its block is stored, at most viewerRate a second; an
// "skipped" event says how many were left out.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	q := r.URL.Query()
	f := Filter{Device: q.Get("device"), Verdict: q.Get("verdict"), Client: q.Get("client"), FC: -1}
	if v := q.Get("fc"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 255 {
			http.Error(w, "fc: want 0..255", http.StatusBadRequest)
			return
		}
		f.FC = n
	}
	backlog, ch, ok := s.hub.subscribe()
	if !ok {
		http.Error(w, "too many viewers", http.StatusServiceUnavailable)
		return
	}
	defer s.hub.unsubscribe(ch)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	lim := rate.NewLimiter(viewerRate, viewerBurst)
	skipped := 0
	send := func(items []item) bool {
		budget := int(lim.Tokens()) // one limiter check per batch, not per event
		sent := 0
		for i := range items {
			if !f.match(&items[i]) {
				continue
			}
			if sent >= budget {
				skipped++
				continue
			}
			if _, err := w.Write(items[i].msg); err != nil {
				return false
			}
			sent++
		}
		if sent > 0 {
			lim.AllowN(time.Now(), sent)
		}
		return true
	}
	flush := func() bool {
		if skipped > 0 {
			if _, err := fmt.Fprintf(w, "event: skipped\ndata: %d\n\n", skipped); err != nil {
				return false
			}
			skipped = 0
		}
		fl.Flush()
		return true
	}
	if !send(backlog) || !flush() {
		return
	}
	// The viewer wakes five times a second and takes whatever blocks
	// arrived meanwhile: a person sees no difference, and a busy plant
	// costs each viewer five writes a second instead of one per block.
	tick := time.NewTicker(viewerTick)
	defer tick.Stop()
	idle := 0
	first := len(backlog) == 0 // nothing shown yet: show the first events as they come
	for {
		if first {
			select {
			case <-r.Context().Done():
				return
			case items, ok := <-ch:
				if !ok || !send(items) || !flush() {
					return
				}
				first = false
				continue
			case <-tick.C:
			}
		} else {
			select {
			case <-r.Context().Done():
				return
			case <-tick.C:
			}
		}
		wrote := false
	drain:
		for {
			select {
			case items, ok := <-ch:
				if !ok || !send(items) {
					return // dropped (too slow), or gone
				}
				wrote = true
			default:
				break drain
			}
		}
		if !wrote && skipped == 0 {
			if idle++; idle < int(15*time.Second/viewerTick) {
				continue
			}
			if _, err := fmt.Fprint(w, ": ping\n\n"); err != nil {
				return
			}
		}
		idle = 0
		if !flush() {
			return
		}
	}
}

// CheckpointView is the newest signed checkpoint as the console shows it.
type CheckpointView struct {
	Size     int64     `json:"size"`
	Root     string    `json:"root"`
	SignedBy []string  `json:"signed_by"`
	Checked  time.Time `json:"checked"`
}

// checkpointEvery bounds how often the status asks NATS for checkpoints,
// however many viewers poll.
const checkpointEvery = 5 * time.Second

func (s *Server) checkpoint(ctx context.Context) *CheckpointView {
	if s.cfg.JetStream == nil || s.cfg.Trust.Checkpointers == nil {
		return nil
	}
	s.cpMu.Lock()
	defer s.cpMu.Unlock()
	wait := checkpointEvery
	if s.cp == nil {
		wait = time.Second // none yet: look again soon
	}
	if time.Since(s.cpAt) < wait {
		return s.cp
	}
	s.cpAt = time.Now()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if cp, err := chain.LatestCheckpoint(ctx, s.cfg.JetStream, s.cfg.Trust.Checkpointers); err == nil && cp != nil {
		s.cp = &CheckpointView{Size: cp.Size, Root: cp.Root.String(), SignedBy: cp.Signers, Checked: s.cpAt}
	}
	return s.cp
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	st := s.hub.snapshot()
	out := struct {
		ChainStatus
		Policy     map[string]any  `json:"policy,omitempty"`
		Viewers    int             `json:"viewers"`
		Checkpoint *CheckpointView `json:"checkpoint,omitempty"`
	}{ChainStatus: st, Viewers: s.hub.viewerCount(), Checkpoint: s.checkpoint(r.Context())}
	if s.cfg.Policy != nil {
		if p := s.cfg.Policy(); p != nil {
			out.Policy = map[string]any{"id": p.ID, "version": p.Version, "digest": p.Digest, "observe": p.ObservedDevices()}
		}
	}
	writeJSON(w, out)
}

func (s *Server) devices(w http.ResponseWriter, _ *http.Request) {
	out := map[string]DeviceView{}
	if s.cfg.Metrics != nil {
		out = s.cfg.Metrics.Devices()
	}
	if s.cfg.Policy != nil {
		if p := s.cfg.Policy(); p != nil {
			for _, d := range p.Devices {
				if _, ok := out[d.Name]; !ok {
					out[d.Name] = DeviceView{}
				}
			}
		}
	}
	if s.cfg.Upstreams != nil {
		for name, u := range s.cfg.Upstreams() {
			d := out[name]
			d.Upstream, d.UpstreamDetail = u.State, u.Detail
			if !u.Since.IsZero() {
				d.UpstreamSince = u.Since
			}
			out[name] = d
		}
	}
	writeJSON(w, out)
}

// ApprovalView is one pending approval as the console shows it.
type ApprovalView struct {
	ID         string    `json:"id"`
	Command    string    `json:"command"`
	Device     string    `json:"device"`
	Proposer   string    `json:"proposer"`
	NotAfter   time.Time `json:"not_after"`
	Status     string    `json:"status"`
	Approvers  []string  `json:"approvers"`
	Ready      bool      `json:"ready"`
	Signatures int       `json:"signatures"`
}

func (s *Server) approvals(w http.ResponseWriter, _ *http.Request) {
	out := []ApprovalView{}
	if s.cfg.Approvals != nil && s.cfg.Policy != nil {
		p := s.cfg.Policy()
		now := time.Now()
		for _, st := range s.cfg.Approvals.Pending() {
			if now.After(st.Proposal.NotAfter.Add(approvals.Skew)) {
				continue
			}
			ev := approvals.Evaluate(p, st, now)
			out = append(out, ApprovalView{ID: st.ID.String(), Command: st.Proposal.Describe(), Device: st.Proposal.Device,
				Proposer: st.Proposal.Proposer, NotAfter: st.Proposal.NotAfter, Status: ev.Summary(),
				Approvers: ev.Approvers, Ready: ev.Usable(), Signatures: len(st.Entry.Signatures)})
		}
		sort.Slice(out, func(i, j int) bool { return out[i].NotAfter.Before(out[j].NotAfter) })
	}
	writeJSON(w, out)
}

// prove proves the event against the newest checkpoint from the tiles the
// console keeps as it follows the chain: O(log n) reads, not a pass over
// the stream.
func (s *Server) prove(ctx context.Context, seq uint64, index int) (*chain.Inclusion, error) {
	ts, err := s.tiles.reader()
	if err != nil {
		return nil, err
	}
	return chain.ProveEventInTiles(ctx, s.cfg.JetStream, s.cfg.Trust.Checkpointers, ts, seq, index)
}

// ProofView is an event's inclusion proof as the console shows it.
type ProofView struct {
	// Status is "proved", "pending" (no checkpoint covers the event yet),
	// "unavailable" (no checkpointer keys trusted, NATS away, too slow) or
	// "failed" (the stream does not match a signed checkpoint).
	Status    string   `json:"status"`
	Problem   string   `json:"problem,omitempty"`
	Leaf      int64    `json:"leaf"`
	TreeSize  int64    `json:"tree_size,omitempty"`
	Root      string   `json:"root,omitempty"`
	LeafHash  string   `json:"leaf_hash,omitempty"`
	Proof     []string `json:"proof,omitempty"`
	SignedBy  []string `json:"signed_by,omitempty"`
	Signature string   `json:"checkpoint,omitempty"` // the signed note
}

// proof proves ?seq=S&index=I (an event's block and place in it) is in the
// newest signed checkpoint, from the hub's tree. Proofs are cheap, but each
// asks NATS for the newest checkpoints: one runs at a time, and a viewer
// who waits over 2 s gets 503.
func (s *Server) proof(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	seq, err1 := strconv.ParseUint(q.Get("seq"), 10, 64)
	index, err2 := strconv.Atoi(q.Get("index"))
	if err1 != nil || err2 != nil || seq == 0 || index < 0 || index > 1<<20 {
		http.Error(w, "want ?seq=S&index=I: the block's stream sequence and the event's index in it", http.StatusBadRequest)
		return
	}
	if s.cfg.JetStream == nil || s.cfg.Trust.Checkpointers == nil {
		writeJSON(w, ProofView{Status: "unavailable", Problem: "the trust file lists no checkpointers", Leaf: -1})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	select {
	case s.proving <- struct{}{}:
		defer func() { <-s.proving }()
	case <-time.After(2 * time.Second):
		http.Error(w, "another proof is being built; try again", http.StatusServiceUnavailable)
		return
	case <-ctx.Done():
		return
	}
	inc, err := s.prove(ctx, seq, index)
	switch {
	case errors.Is(err, chain.ErrNotCheckpointed):
		writeJSON(w, ProofView{Status: "pending", Problem: err.Error(), Leaf: -1})
		return
	case errors.Is(err, chain.ErrCheckpointMismatch):
		writeJSON(w, ProofView{Status: "failed", Problem: err.Error(), Leaf: -1})
		return
	case err != nil: // NATS away, or the proof took too long: not evidence of anything
		writeJSON(w, ProofView{Status: "unavailable", Problem: err.Error(), Leaf: -1})
		return
	}
	v := ProofView{Status: "proved", Leaf: inc.Leaf, TreeSize: inc.Checkpoint.Size, Root: inc.Checkpoint.Root.String(),
		LeafHash: inc.LeafHash.String(), SignedBy: inc.Checkpoint.Signers, Signature: string(inc.Checkpoint.Note)}
	for _, h := range inc.Proof {
		v.Proof = append(v.Proof, h.String())
	}
	writeJSON(w, v)
}
