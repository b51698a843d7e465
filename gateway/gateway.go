// Package gateway assembles one gridseal deployment from its configuration:
// the proxy in front of the devices, the policy engine with its approvals,
// the chain recorder on NATS JetStream, the checkpointer and the console.
// `gridseal proxy` runs one from a file; `gridseal demo` builds a Config of
// its own and adds simulators, keys and the tour.
//
// The lifecycle is New (bind every listener, open the chain, start serving),
// Reload (put a newly signed policy in force, the SIGHUP path), Run (serve
// until the context ends or a listener fails) and Close.
package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"golang.org/x/mod/sumdb/note"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/console"
	"github.com/gridseal/gridseal/eve"
	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/internal/natsembed"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/proxy"
)

// Options are what a command adds to a Config: where it keeps its state,
// which NATS it records to and how it logs.
type Options struct {
	// DataDir keeps the embedded NATS store, local chain heads, the policy
	// succession record, the default trust file and the console's tree.
	DataDir string
	// NATS is the connection to record to; its DataDir is DataDir, and
	// Config.Chain.NATS, when set, replaces its URL.
	NATS natsembed.ConnectOptions
	Log  *zap.Logger
	// OpsLog writes a line per operation; nil: Log.
	OpsLog *zap.Logger
	// ConsoleFallback serves the console on a free loopback port when its
	// address is taken (the demo, on a busy laptop).
	ConsoleFallback bool
	// Build is what /metrics reports as gridseal_build_info.
	Build console.BuildInfo
	// ObserveLogEvery is how often a warning says which devices are in
	// observe mode, while any is; 0: DefaultObserveLogEvery.
	ObserveLogEvery time.Duration
}

// Gateway is a running deployment. Its methods are safe to call from any
// goroutine; Close must be called once Run has returned (or instead of it).
type Gateway struct {
	cfg    *Config
	opts   Options
	log    *zap.Logger
	cancel context.CancelFunc

	conn    *natsembed.Conn
	rec     *chain.Recorder
	engine  *policy.Engine
	store   *approvals.Store
	srv     *proxy.Server
	opsLog  *audit.LogRecorder
	eve     *eve.FileRecorder // nil without eve.path
	observe *observeWatch
	addrs   []string
	errc    chan error
	console string // the console's URL; "" when off

	reloadMu          sync.Mutex
	checkpointer      *chain.Checkpointer // nil when none runs
	checkpointStarted time.Time
	requireWitnessed  time.Duration // checkpoint.require_witnessed
	stopCheckpointer  func()
	closeOnce         sync.Once
}

// New checks cfg, opens the chain, binds every listener (a busy port fails
// the start before anything is served) and starts serving. Background work
// (approvals, checkpointer, console) runs until Close.
func New(ctx context.Context, cfg *Config, opts Options) (_ *Gateway, err error) {
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	if opts.OpsLog == nil {
		opts.OpsLog = opts.Log
	}
	opts.NATS.DataDir, opts.NATS.Own, opts.NATS.Recorder, opts.NATS.Log = opts.DataDir, true, true, opts.Log.Named("nats")
	if opts.NATS.Name == "" {
		opts.NATS.Name = "recorder " + cfg.Chain.Writer
	}
	if cfg.Chain.NATS != "" {
		opts.NATS.URL = cfg.Chain.NATS
	}
	log := opts.Log
	ctx, cancel := context.WithCancel(ctx)
	g := &Gateway{cfg: cfg, opts: opts, log: log, cancel: cancel}
	defer func() {
		if err != nil {
			g.Close()
		}
	}()

	pol, err := cfg.loadPolicy(log)
	if err != nil {
		return nil, err
	}
	prev, err := g.acceptPolicy(pol)
	if err != nil {
		return nil, err
	}
	specs, err := routes(cfg.Listeners, pol)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cfg.path, err)
	}
	upTLS, err := cfg.tlsSetup(specs)
	if err != nil {
		return nil, err
	}
	cs, err := cfg.Console.setup(filepath.Dir(cfg.path), cfg.Console.Listen)
	if err != nil {
		return nil, err
	}
	if err := checkListeners(cfg.path, specs, cs, opts.ConsoleFallback); err != nil {
		return nil, err
	}
	signer, err := keys.LoadSigner(cfg.Chain.Key)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	if err := g.openRecorder(ctx, signer, reg); err != nil {
		return nil, err
	}
	if err := g.openEVE(pol, reg); err != nil {
		return nil, err
	}
	var before []string
	if prev != nil {
		before = prev.Observe
	}
	if err := g.recordModes(ctx, modeEvents(before, pol, true)); err != nil {
		return nil, err
	}
	if err := g.saveAccepted(pol); err != nil {
		return nil, err
	}
	g.engine = policy.NewEngine(pol, log.Named("policy"))
	if err := g.useCandidate(); err != nil {
		return nil, err
	}
	metrics := console.NewMetrics(reg)
	// Approval steps go to the chain, then to the EVE file and the metrics.
	steps := audit.Tee{g.rec, metrics}
	if g.eve != nil {
		steps = audit.Tee{g.rec, g.eve, metrics}
	}
	if err := g.startApprovals(ctx, steps); err != nil {
		return nil, err
	}
	if cfg.Checkpoint.Key != "" {
		s, err := chain.LoadCheckpointSigner(cfg.Checkpoint.Key)
		if err != nil {
			return nil, err
		}
		every := cfg.Checkpoint.Every
		if every <= 0 {
			every = 10 * time.Second
		}
		g.startCheckpointer(ctx, s, every, reg)
	}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	g.rec.RegisterMetrics(reg)
	console.RegisterBuildInfo(reg, opts.Build)
	// The chain first (its durable answer decides whether a write moves),
	// then the EVE file, metrics, then the log line.
	g.opsLog = audit.NewLogRecorder(opts.OpsLog.Named("ops"), audit.DefaultLogInterval)
	g.observe = newObserveWatch()
	g.observe.register(reg, g.engine.Policy)
	every := opts.ObserveLogEvery
	if every <= 0 {
		every = DefaultObserveLogEvery
	}
	go g.observe.logEvery(ctx, every, g.engine.Policy, log.Named("observe"))
	recorders := audit.Tee{g.rec, metrics, g.observe, g.opsLog}
	if g.eve != nil {
		recorders = audit.Tee{g.rec, g.eve, metrics, g.observe, g.opsLog}
	}
	if err := g.startProxy(specs, upTLS, recorders); err != nil {
		return nil, err
	}
	if err := g.startConsole(ctx, cs, reg, metrics); err != nil {
		return nil, err
	}
	return g, nil
}

// Addrs are the proxy's bound listener addresses, in configuration order.
func (g *Gateway) Addrs() []string { return g.addrs }

// ConsoleURL is the console's address, "" when it is off.
func (g *Gateway) ConsoleURL() string { return g.console }

// Policy is the policy in force.
func (g *Gateway) Policy() *policy.Policy { return g.engine.Policy() }

// Approvals is the approvals bucket the engine consumes from.
func (g *Gateway) Approvals() *approvals.Store { return g.store }

// Run serves until ctx ends or a listener fails, then stops the proxy. It
// returns nil on a clean stop.
func (g *Gateway) Run(ctx context.Context) error {
	var err error
	select {
	case <-ctx.Done():
		g.log.Info("shutting down")
	case err = <-g.errc:
	}
	_ = g.srv.Close()
	if errors.Is(err, proxy.ErrClosed) {
		err = nil
	}
	return err
}

// Close stops the proxy, the background work and the checkpointer, commits
// what is spooled (for up to 5 s) and disconnects. It is idempotent.
func (g *Gateway) Close() {
	g.closeOnce.Do(func() {
		if g.srv != nil {
			_ = g.srv.Close()
		}
		if g.opsLog != nil {
			g.opsLog.Close()
		}
		g.cancel()
		if g.stopCheckpointer != nil {
			g.stopCheckpointer()
		}
		if g.eve != nil {
			if err := g.eve.Close(); err != nil {
				g.log.Error("eve file not closed cleanly", zap.Error(err))
			}
		}
		if g.rec != nil {
			if err := g.rec.Close(5 * time.Second); err != nil {
				g.log.Error("chain closed with events not recorded", zap.Error(err))
			}
		}
		if g.conn != nil {
			g.conn.Close()
		}
	})
}

// ReloadOn calls Reload for each signal sig delivers (SIGHUP) until ctx
// ends; a refused reload is logged, and the policy in force stays.
func (g *Gateway) ReloadOn(ctx context.Context, sig <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-sig:
		}
		if err := g.Reload(ctx); err != nil {
			g.log.Error("policy reload refused; the policy in force stays", zap.Error(err))
		}
	}
}

// Reload reopens the EVE file (for a log rotator that moved it), re-reads
// the policy and puts it in force if it is valid, signed and not older than
// the one in force; otherwise the policy in force stays and the error says
// why. Devices added or moved need a restart to be routed; Reload warns of
// them.
func (g *Gateway) Reload(ctx context.Context) error {
	g.reloadMu.Lock()
	defer g.reloadMu.Unlock()
	if g.eve != nil {
		g.eve.Reopen()
	}
	p, err := g.cfg.loadPolicy(g.log)
	if err == nil {
		_, err = g.acceptPolicy(p)
	}
	if err != nil {
		return err
	}
	old := g.engine.Policy()
	if err := g.recordModes(ctx, modeEvents(old.ObservedDevices(), p, false)); err != nil {
		return err
	}
	if err := g.saveAccepted(p); err != nil {
		return err
	}
	for _, d := range p.Devices {
		if od := old.Device(d.Name); od == nil || od.Upstream != d.Upstream {
			g.log.Warn("device added or moved in the new policy: restart the proxy to route it", zap.String("device", d.Name))
		}
	}
	g.engine.Swap(p)
	g.log.Info("policy reloaded", zap.String("policy", p.ID), zap.Int("version", p.Version), zap.String("digest", p.Digest))
	if err := g.useCandidate(); err != nil {
		g.engine.SetCandidate(nil)
		g.log.Error("shadow candidate not evaluated any more", zap.Error(err))
	}
	if err := g.store.PublishPolicy(ctx, p); err != nil {
		g.log.Error("cannot publish the policy in force", zap.Error(err))
	}
	return nil
}

// useCandidate (re)loads the shadow candidate, if one is configured, and
// has the engine evaluate it beside the policy in force.
func (g *Gateway) useCandidate() error {
	c, err := g.cfg.loadCandidate(g.log)
	if err != nil {
		return err
	}
	g.engine.SetCandidate(c)
	if c != nil {
		g.log.Warn("shadow candidate evaluated beside the policy in force: requests it decides otherwise are flagged, nothing it says is enforced",
			zap.String("candidate", c.ID), zap.Int("version", c.Version), zap.String("digest", c.Digest))
	}
	return nil
}

// loadPolicy reads the policy, refusing it unless enough admins signed it
// (or the configuration says, by name, to run an unsigned policy).
func (c *Config) loadPolicy(log *zap.Logger) (*policy.Policy, error) {
	return c.loadSigned(c.Policy, log)
}

// loadCandidate reads the shadow candidate policy, signed like the policy;
// nil when the configuration names none.
func (c *Config) loadCandidate(log *zap.Logger) (*policy.Policy, error) {
	if c.Candidate == "" {
		return nil, nil
	}
	p, err := c.loadSigned(c.Candidate, log)
	if err != nil {
		return nil, fmt.Errorf("candidate: %w", err)
	}
	return p, nil
}

func (c *Config) loadSigned(path string, log *zap.Logger) (*policy.Policy, error) {
	if c.PolicyRoot == "" {
		if !c.InsecureUnsignedPolicy {
			return nil, fmt.Errorf("policy_root: name the admins' root file that signs %s (or set insecure_unsigned_policy: true, never in production)", path)
		}
		log.Warn("running an UNSIGNED policy: insecure_unsigned_policy is set", zap.String("policy", path))
		return policy.Load(path)
	}
	root, err := policy.LoadRoot(c.PolicyRoot)
	if err != nil {
		return nil, err
	}
	p, signers, err := policy.LoadSigned(path, root)
	if err != nil {
		return nil, err
	}
	log.Info("policy signature verified", zap.String("policy", p.ID), zap.Strings("signed_by", signers))
	return p, nil
}

// acceptPolicy refuses a policy older than the newest this data directory
// accepted (unless allow_policy_rollback is set) and returns that record
// (nil if none); saveAccepted then remembers p as the newest.
func (g *Gateway) acceptPolicy(p *policy.Policy) (*policy.Accepted, error) {
	prev, err := policy.LoadAccepted(g.acceptedPath())
	if err != nil {
		return nil, err
	}
	if err := policy.CheckSuccession(prev, p); err != nil && !g.cfg.AllowPolicyRollback {
		return nil, fmt.Errorf("%w (set allow_policy_rollback: true to go back on purpose)", err)
	}
	return prev, nil
}

func (g *Gateway) saveAccepted(p *policy.Policy) error {
	return policy.SaveAccepted(g.acceptedPath(), p)
}

func (g *Gateway) acceptedPath() string { return filepath.Join(g.opts.DataDir, "policy-in-force.json") }

// openRecorder connects to NATS (or starts the embedded server) and opens
// the writer's chain, keeping its head under the data directory.
func (g *Gateway) openRecorder(ctx context.Context, signer *keys.Signer, reg prometheus.Registerer) error {
	conn, err := natsembed.Connect(ctx, g.opts.NATS)
	if err != nil {
		return err
	}
	g.conn = conn
	c := g.cfg.Chain
	// On the embedded server the stream is on this disk: a durable record
	// fsync'd in the local journal is the same promise, at fsync speed.
	g.rec, err = chain.Open(ctx, conn.Recorder(), chain.Config{
		Writer: c.Writer, Signer: signer, Replicas: c.Replicas,
		DurableTimeout: c.DurableTimeout, SpoolBytes: c.SpoolBytes, Linger: c.Linger,
		Observe: chain.BlockObserver(reg), ObserveJournal: chain.JournalObserver(reg),
		HeadDir: HeadDir(g.opts.DataDir), Journal: conn.Embedded,
	}, g.log.Named("chain"))
	if err != nil {
		return err
	}
	where := natsembed.RedactURLs(g.opts.NATS.URL)
	if conn.Embedded {
		where = "embedded under " + g.opts.DataDir
	}
	g.log.Info("recording to the chain", zap.String("writer", c.Writer), zap.String("nats", where))
	return nil
}

// openEVE opens the proxy's EVE file, if the configuration names one. Its
// PLC addresses are the policy's at start: the devices the proxy routes to
// until a restart.
func (g *Gateway) openEVE(pol *policy.Policy, reg prometheus.Registerer) error {
	c := g.cfg.EVE
	if c.Path == "" {
		return nil
	}
	devs := make(map[string]string, len(pol.Devices))
	for _, d := range pol.Devices {
		devs[d.Name] = d.Upstream
	}
	f, err := eve.OpenFile(eve.FileConfig{Path: c.Path, MaxSize: int64(c.Rotate.Size), Every: c.Rotate.Every, Keep: c.Rotate.Keep},
		eve.Mapper{Writer: g.cfg.Chain.Writer, Devices: devs}, g.log.Named("eve"))
	if err != nil {
		return fmt.Errorf("eve.path: %w", err)
	}
	f.RegisterMetrics(reg)
	g.eve = f
	return nil
}

// startApprovals opens the approvals bucket, lets the engine allow writes
// with approvals from it, records every approval step with rec (the chain
// first), and publishes the policy in force for gridseal propose.
func (g *Gateway) startApprovals(ctx context.Context, rec audit.Recorder) error {
	js, err := g.conn.JetStream()
	if err != nil {
		return err
	}
	g.store, err = openApprovals(ctx, js, rec, g.engine, g.cfg.Chain.Writer, g.cfg.Chain.Replicas, g.log.Named("approvals"))
	if err != nil {
		return err
	}
	if err := g.store.PublishPolicy(ctx, g.engine.Policy()); err != nil {
		return fmt.Errorf("publish the policy in force: %w", err)
	}
	return nil
}

// openApprovals opens the approvals bucket, restores every use the chain
// records that the use stream lacks (see approvaluses.go), records every
// approval step it sees from then on in rec, and lets engine allow writes
// with its approvals, consumed in writer's name.
func openApprovals(ctx context.Context, js jetstream.JetStream, rec audit.Recorder, engine *policy.Engine, writer string, replicas int, log *zap.Logger) (*approvals.Store, error) {
	store, err := approvals.OpenStore(ctx, js, replicas, log)
	if err != nil {
		return nil, err
	}
	store.OnChange = func(before, after *approvals.Stored) {
		for _, ev := range approvalEvents(engine.Policy(), before, after) {
			if err := rec.Record(ctx, &ev, false); err != nil {
				log.Error("approval step not recorded", zap.String("approval", after.ID.String()), zap.Error(err))
			}
		}
	}
	store.OnInvalid = func(key string, invalid error) {
		ev := invalidApprovalEvent(engine.Policy(), key, invalid)
		if err := rec.Record(ctx, &ev, false); err != nil {
			log.Error("refused approval entry not recorded", zap.String("key", key), zap.Error(err))
		}
	}
	restoreUses(ctx, js, store, log)
	if err := store.Watch(ctx); err != nil {
		return nil, err
	}
	approvals.Use(engine, store, writer)
	return store, nil
}

// startCheckpointer signs checkpoints of the whole stream every period and
// registers its failures with reg.
func (g *Gateway) startCheckpointer(ctx context.Context, s note.Signer, every time.Duration, reg prometheus.Registerer) {
	js, err := g.conn.JetStream()
	if err != nil {
		g.log.Error("checkpointer not started", zap.Error(err))
		return
	}
	ws, err := g.cfg.Checkpoint.witnesses(g.cfg.path)
	if err != nil {
		g.log.Error("checkpointer not started", zap.Error(err))
		return
	}
	quorum := g.cfg.Checkpoint.WitnessQuorum
	if quorum == 0 {
		quorum = len(ws)
	}
	cp := &chain.Checkpointer{Signer: s, Every: every, Replicas: g.cfg.Chain.Replicas, Log: g.log.Named("checkpoint"),
		Witnesses: ws, WitnessQuorum: quorum, WitnessTimeout: g.cfg.Checkpoint.WitnessTimeout,
		TreeDir: filepath.Join(g.opts.DataDir, "checkpoint")}
	cp.RegisterMetrics(reg)
	g.checkpointStarted, g.requireWitnessed = time.Now(), g.cfg.Checkpoint.RequireWitnessed
	g.checkpointer = cp
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := cp.Run(ctx, js); err != nil && ctx.Err() == nil {
			g.log.Error("checkpointer stopped", zap.Error(err))
		}
	}()
	g.stopCheckpointer = func() {
		cancel()
		<-done
	}
}

// checkListeners binds each listener's and the console's address once and
// lets it go again, so one that cannot be served (malformed, not a local
// address, taken) fails the start before NATS does anything. A busy console
// address is left to startConsole when it may fall back to a free port.
func checkListeners(path string, specs []listenerSpec, cs *consoleSetup, consoleFallback bool) error {
	try := func(addr string) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		return ln.Close()
	}
	for _, sp := range specs {
		err := checkAddr(sp.addr)
		if err == nil {
			err = try(sp.addr)
		}
		if err != nil {
			return fmt.Errorf("%s: listener %s: %w", path, sp.addr, err)
		}
	}
	if cs.addr != "" && cs.addr != "off" && !consoleFallback {
		if err := try(cs.addr); err != nil {
			return fmt.Errorf("console: listen on %s: %w (choose another with --http, or --http off)", cs.addr, err)
		}
	}
	return nil
}

// startProxy binds every listener first, so a busy port fails the start
// before anything is served, then serves them.
func (g *Gateway) startProxy(specs []listenerSpec, upTLS map[string]*tls.Config, rec audit.Recorder) error {
	pol := g.engine.Policy()
	pc := g.cfg.proxyConfig()
	// Operation numbers unique per writer across restarts and crashes: each
	// run reserves a million (the next run starts above the reservation,
	// or above the chain's last op if a run used more).
	first, err := g.rec.ReserveOps(1 << 20)
	if err != nil {
		return err
	}
	pc.FirstOp = first
	srv, err := proxy.New(pc, devices(pol, upTLS), g.engine, rec, g.log.Named("proxy"))
	if err != nil {
		return err
	}
	var lns []net.Listener
	for _, sp := range specs {
		ln, err := net.Listen("tcp", sp.addr)
		if err != nil {
			for _, l := range lns {
				_ = l.Close()
			}
			_ = srv.Close()
			return fmt.Errorf("listen on %s: %w", sp.addr, err)
		}
		if sp.tls != nil {
			ln = tls.NewListener(ln, sp.tls)
		}
		lns = append(lns, ln)
	}
	g.srv, g.errc = srv, make(chan error, len(lns))
	for i, ln := range lns {
		g.addrs = append(g.addrs, ln.Addr().String())
		rt := specs[i].route
		go func() { g.errc <- srv.Serve(ln, rt) }()
	}
	g.log.Info("gridseal proxy running", zap.String("policy", pol.ID), zap.Int("version", pol.Version),
		zap.String("digest", pol.Digest), zap.Strings("listen", g.addrs))
	return nil
}

// startConsole serves /metrics, /healthz, /readyz and the console as cs
// says (address "" or "off": not at all) until the gateway closes.
func (g *Gateway) startConsole(ctx context.Context, cs *consoleSetup, reg *prometheus.Registry, metrics *console.Metrics) error {
	addr := cs.addr
	if addr == "" || addr == "off" {
		return nil
	}
	g.srv.RegisterMetrics(reg)
	reg.MustRegister(console.NewStateCollector(g.engine.Policy, g.srv.Upstreams))
	js, err := jetstream.New(g.conn.NC)
	if err != nil {
		return err
	}
	trustPath := g.cfg.Chain.Trust
	if trustPath == "" {
		trustPath = TrustPath(g.opts.DataDir)
	}
	trust := chain.Trust{}
	if _, err := os.Stat(trustPath); err == nil {
		if trust, err = chain.LoadTrust(trustPath, HeadDir(g.opts.DataDir)); err != nil {
			return err
		}
	}
	c := console.New(console.Config{
		Metrics: metrics, Gatherer: reg, JetStream: js, Trust: trust, Approvals: g.store,
		Upstreams: g.srv.Upstreams, Policy: g.engine.Policy, Log: g.log.Named("console"),
		Auth: cs.auth, MaxConns: cs.maxConns, TLS: cs.tls, TreeDir: filepath.Join(g.opts.DataDir, "console"),
		Ready: g.ready,
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil && g.opts.ConsoleFallback {
		g.log.Warn("console address busy; using a free port", zap.String("wanted", addr), zap.Error(err))
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		return fmt.Errorf("console: listen on %s: %w (choose another with --http, or --http off)", addr, err)
	}
	if ta, ok := ln.Addr().(*net.TCPAddr); ok && cs.auth == nil && !ta.IP.IsLoopback() {
		// "localhost" may resolve elsewhere: judge the address bound.
		_ = ln.Close()
		return fmt.Errorf("console: %s is bound to %s, not a loopback address: set console.tls and console.tls.ca or console.tokens", addr, ta.IP)
	}
	storeDir := g.opts.DataDir
	if g.opts.NATS.URL != "" {
		storeDir = "" // NATS stores elsewhere
	}
	reg.MustRegister(chain.NewStorageCollector(js, storeDir))
	scheme := "http"
	if cs.tls != nil {
		scheme = "https"
	}
	g.console = scheme + "://" + ln.Addr().String() + "/"
	go c.Run(ctx)
	go func() {
		if err := c.Serve(ctx, ln); err != nil {
			g.log.Error("console stopped", zap.Error(err))
		}
	}()
	g.log.Info("console and metrics", zap.String("url", g.console), zap.Bool("sign_in_required", cs.auth != nil))
	return nil
}

// ready says why the gateway is not ready: the chain is not writable, or
// its checkpointer fails to publish.
func (g *Gateway) ready() error {
	if err := g.rec.Failed(); err != nil {
		return err
	}
	if g.store != nil {
		if err := g.store.Failed(); err != nil {
			return err
		}
	}
	if err := g.rec.JournalBroken(); err != nil {
		return err
	}
	if !g.rec.Available() {
		return errors.New("chain not writable")
	}
	if g.checkpointer != nil {
		if err := g.checkpointer.Err(); err != nil {
			return err
		}
		if need := g.requireWitnessed; need > 0 {
			_, at := g.checkpointer.Witnessed()
			if at.IsZero() {
				at = g.checkpointStarted // a grace period from the start
			}
			if since := time.Since(at); since > need {
				return fmt.Errorf("no checkpoint cosigned by a quorum of witnesses for %v (checkpoint.require_witnessed: %v): %s",
					since.Round(time.Second), need, witnessSummary(g.checkpointer.WitnessStatus()))
			}
		}
	}
	return nil
}

// witnessSummary says in one line where each witness stands.
func witnessSummary(st []chain.WitnessStatus) string {
	parts := make([]string, len(st))
	for i, w := range st {
		switch {
		case w.LastErr != nil:
			parts[i] = fmt.Sprintf("%s failing: %v", w.Name, w.LastErr)
		case w.LastCosigned.IsZero():
			parts[i] = w.Name + " not asked yet"
		default:
			parts[i] = fmt.Sprintf("%s cosigned %d events at %s", w.Name, w.Size, w.LastCosigned.Format(time.RFC3339))
		}
	}
	return strings.Join(parts, "; ")
}

// TrustPath is the trust file a data directory keeps by default.
func TrustPath(dataDir string) string { return filepath.Join(dataDir, "trust.yaml") }

// HeadDir is where a data directory keeps the writers' local chain heads.
func HeadDir(dataDir string) string { return filepath.Join(dataDir, "heads") }
