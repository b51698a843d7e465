package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"golang.org/x/mod/sumdb/note"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/protocols/modbus"
	"github.com/gridseal/gridseal/proxy"
)

func proxyCmd(g *globals) *cobra.Command {
	var configPath, httpAddr string
	cmd := &cobra.Command{
		Use:   "proxy --config FILE",
		Short: "Run the firewall in front of the devices a configuration names",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configPath == "" {
				return fmt.Errorf("%w: --config FILE is required (see deploy/examples/gridseal.yaml)", errUsage)
			}
			cfg, err := loadConfig(configPath)
			if err != nil {
				return err
			}
			log, err := g.logger(cfg.Log.Level, cfg.Log.Format)
			if err != nil {
				return err
			}
			defer func() { _ = log.Sync() }()
			pol, err := cfg.loadPolicy(log)
			if err != nil {
				return err
			}
			if err := g.acceptPolicy(cfg, pol); err != nil {
				return err
			}
			specs, err := routes(cfg.Listeners, pol)
			if err != nil {
				return fmt.Errorf("%s: %w", configPath, err)
			}
			upTLS, err := cfg.tlsSetup(specs)
			if err != nil {
				return err
			}
			consoleAddr := cfg.Console.Listen
			if cmd.Flags().Changed("http") || consoleAddr == "" {
				consoleAddr = httpAddr
			}
			cs, err := cfg.Console.setup(filepath.Dir(configPath), consoleAddr)
			if err != nil {
				return err
			}
			signer, err := keys.LoadSigner(cfg.Chain.Key)
			if err != nil {
				return err
			}
			if cfg.Chain.NATS != "" {
				g.natsURL = cfg.Chain.NATS
			}
			ctx := cmd.Context()
			reg := prometheus.NewRegistry()
			rec, err := g.openRecorder(ctx, chain.Config{
				Writer: cfg.Chain.Writer, Signer: signer, Replicas: cfg.Chain.Replicas,
				DurableTimeout: cfg.Chain.DurableTimeout, SpoolBytes: cfg.Chain.SpoolBytes,
				Observe: chainObserver(reg),
			}, log)
			if err != nil {
				return err
			}
			defer rec.close()
			engine := policy.NewEngine(pol, log.Named("policy"))
			store, err := rec.startApprovals(ctx, engine, cfg.Chain.Writer, cfg.Chain.Replicas)
			if err != nil {
				return err
			}
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP) // before serving: a SIGHUP from now on reloads
			defer signal.Stop(hup)
			go g.reloadOnHangup(ctx, hup, cfg, engine, store, log)
			if cfg.Checkpoint.Key != "" {
				cs, err := loadCheckpointSigner(cfg.Checkpoint.Key)
				if err != nil {
					return err
				}
				every := cfg.Checkpoint.Every
				if every <= 0 {
					every = 10 * time.Second
				}
				rec.startCheckpointer(ctx, cs, every)
			}
			obs := newObservability(reg, rec.rec)
			st, err := startProxy(ctx, cfg.proxyConfig(), engine, specs, upTLS, obs.recorders(rec.rec, log), log)
			if err != nil {
				return err
			}
			trust := cfg.Chain.Trust
			if trust == "" {
				trust = g.defaultTrust()
			}
			if err := g.startConsole(ctx, cs, obs, rec, st, engine, store, trust, log); err != nil {
				_ = st.srv.Close()
				return err
			}
			return st.wait(ctx)
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "configuration file (YAML)")
	cmd.Flags().StringVar(&httpAddr, "http", "127.0.0.1:8080", "console, /metrics, /healthz and /readyz address (off: none); overrides console.listen")
	return cmd
}

// loadPolicy reads the policy, refusing it unless enough admins signed it
// (or the configuration says, by name, to run an unsigned policy).
func (c *fileConfig) loadPolicy(log *zap.Logger) (*policy.Policy, error) {
	if c.PolicyRoot == "" {
		if !c.InsecureUnsignedPolicy {
			return nil, fmt.Errorf("policy_root: name the admins' root file that signs %s (or set insecure_unsigned_policy: true, never in production)", c.Policy)
		}
		log.Warn("running an UNSIGNED policy: insecure_unsigned_policy is set", zap.String("policy", c.Policy))
		return policy.Load(c.Policy)
	}
	root, err := policy.LoadRoot(c.PolicyRoot)
	if err != nil {
		return nil, err
	}
	p, signers, err := policy.LoadSigned(c.Policy, root)
	if err != nil {
		return nil, err
	}
	log.Info("policy signature verified", zap.String("policy", p.ID), zap.Strings("signed_by", signers))
	return p, nil
}

// acceptPolicy refuses a policy older than the newest this proxy accepted
// (unless allow_policy_rollback is set) and remembers p as the newest.
func (g *globals) acceptPolicy(cfg *fileConfig, p *policy.Policy) error {
	path := filepath.Join(g.dataDir, "policy-in-force.json")
	prev, err := policy.LoadAccepted(path)
	if err != nil {
		return err
	}
	if err := policy.CheckSuccession(prev, p); err != nil && !cfg.AllowPolicyRollback {
		return fmt.Errorf("%w (set allow_policy_rollback: true to go back on purpose)", err)
	}
	return policy.SaveAccepted(path, p)
}

// reloadOnHangup re-reads the policy on SIGHUP and puts it in force if it
// is valid and signed; otherwise the policy in force stays.
func (g *globals) reloadOnHangup(ctx context.Context, hup <-chan os.Signal, cfg *fileConfig, engine *policy.Engine, store *approvals.Store, log *zap.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		p, err := cfg.loadPolicy(log)
		if err == nil {
			err = g.acceptPolicy(cfg, p)
		}
		if err != nil {
			log.Error("policy reload refused; the policy in force stays", zap.Error(err))
			continue
		}
		old := engine.Policy()
		for _, d := range p.Devices {
			if od := old.Device(d.Name); od == nil || od.Upstream != d.Upstream {
				log.Warn("device added or moved in the new policy: restart the proxy to route it", zap.String("device", d.Name))
			}
		}
		engine.Swap(p)
		log.Info("policy reloaded", zap.String("policy", p.ID), zap.Int("version", p.Version), zap.String("digest", p.Digest))
		if err := store.PublishPolicy(ctx, p); err != nil {
			log.Error("cannot publish the policy in force", zap.Error(err))
		}
	}
}

// running is a started proxy with its listeners.
type running struct {
	srv   *proxy.Server
	addrs []string
	errc  chan error
	log   *zap.Logger
}

// startProxy binds every listener first, so a busy port fails the start
// before anything is served, then serves them.
func startProxy(_ context.Context, cfg proxy.Config, engine *policy.Engine, specs []listenerSpec, upTLS map[string]*tls.Config,
	rec audit.Recorder, log *zap.Logger) (*running, error) {
	pol := engine.Policy()
	srv, err := proxy.New(cfg, devices(pol, upTLS), engine, rec, log.Named("proxy"))
	if err != nil {
		return nil, err
	}
	var lns []net.Listener
	for _, sp := range specs {
		ln, err := net.Listen("tcp", sp.addr)
		if err != nil {
			for _, l := range lns {
				_ = l.Close()
			}
			_ = srv.Close()
			return nil, fmt.Errorf("listen on %s: %w", sp.addr, err)
		}
		if sp.tls != nil {
			ln = tls.NewListener(ln, sp.tls)
		}
		lns = append(lns, ln)
	}
	r := &running{srv: srv, errc: make(chan error, len(lns)), log: log}
	for i, ln := range lns {
		r.addrs = append(r.addrs, ln.Addr().String())
		rt := specs[i].route
		go func() { r.errc <- srv.Serve(ln, rt) }()
	}
	log.Info("gridseal proxy running", zap.String("policy", pol.ID), zap.Int("version", pol.Version),
		zap.String("digest", pol.Digest), zap.Strings("listen", r.addrs))
	return r, nil
}

// recording is an open chain recorder and its NATS connection.
type recording struct {
	rec  *chain.Recorder
	conn *natsConn
	log  *zap.Logger

	stopCheckpointer func() // cancels the checkpointer and waits for it; nil if none
}

// openRecorder connects to NATS (or starts the embedded server) and opens
// the writer's chain, keeping its head under --data-dir.
func (g *globals) openRecorder(ctx context.Context, cfg chain.Config, log *zap.Logger) (*recording, error) {
	conn, err := g.connectNATSOwner(ctx, "recorder "+cfg.Writer, true)
	if err != nil {
		return nil, err
	}
	cfg.HeadDir = g.headDir()
	rec, err := chain.Open(ctx, conn.nc, cfg, log.Named("chain"))
	if err != nil {
		conn.Close()
		return nil, err
	}
	where := redactURLs(g.natsURL)
	if conn.embedded {
		where = "embedded under " + g.dataDir
	}
	log.Info("recording to the chain", zap.String("writer", cfg.Writer), zap.String("nats", where))
	return &recording{rec: rec, conn: conn, log: log}, nil
}

// startApprovals opens the approvals bucket on the recorder's NATS, lets
// engine allow writes with approvals from it, records every approval step
// in the chain, and publishes the policy in force for gridseal propose.
func (r *recording) startApprovals(ctx context.Context, engine *policy.Engine, writer string, replicas int) (*approvals.Store, error) {
	js, err := jetstream.New(r.conn.nc)
	if err != nil {
		return nil, err
	}
	store, err := approvals.OpenStore(ctx, js, replicas, r.log.Named("approvals"))
	if err != nil {
		return nil, err
	}
	store.OnChange = func(before, after *approvals.Stored) {
		for _, ev := range approvalEvents(engine.Policy(), before, after) {
			if err := r.rec.Record(ctx, &ev, false); err != nil {
				r.log.Error("approval step not recorded", zap.String("approval", after.ID.String()), zap.Error(err))
			}
		}
	}
	if err := store.Watch(ctx); err != nil {
		return nil, err
	}
	approvals.Use(engine, store, writer)
	if err := store.PublishPolicy(ctx, engine.Policy()); err != nil {
		return nil, fmt.Errorf("publish the policy in force: %w", err)
	}
	return store, nil
}

// approvalEvents describes what changed on an approval as chain events.
func approvalEvents(p *policy.Policy, before, after *approvals.Stored) []audit.Event {
	pr := after.Proposal
	base := audit.Event{Time: time.Now(), Phase: audit.PhaseApproval, Verdict: audit.Allow, Class: "approval",
		Device: pr.Device, Unit: pr.Unit, Function: pr.PDU[0], PDU: pr.PDU, Approval: after.ID.String(), Policy: p.Digest}
	if req, err := modbus.ParseRequest(pr.PDU); err == nil {
		base.Address, base.Quantity = req.Address, req.Quantity
	}
	var out []audit.Event
	if before == nil {
		ev := base
		ev.Reason = fmt.Sprintf("proposed by %s: %s, valid %s to %s", pr.Proposer, pr.Describe(),
			pr.NotBefore.Format(time.RFC3339), pr.NotAfter.Format(time.RFC3339))
		out = append(out, ev)
	}
	seen := 0
	if before != nil {
		seen = len(before.Entry.Signatures)
	}
	for _, s := range after.Entry.Signatures[min(seen, len(after.Entry.Signatures)):] {
		ev := base
		who := "an unknown key"
		if len(s.Sig) >= 5 {
			id := uint32(s.Sig[1])<<24 | uint32(s.Sig[2])<<16 | uint32(s.Sig[3])<<8 | uint32(s.Sig[4])
			who = fmt.Sprintf("key %d", id)
			if a := p.ApproverForKey(id); a != nil {
				who = fmt.Sprintf("%s (key %d)", a.Name, id)
			}
		}
		ev.Reason = "signed by " + who
		out = append(out, ev)
	}
	if after.Entry.Consumed != nil && (before == nil || before.Entry.Consumed == nil) {
		ev := base
		ev.Reason = fmt.Sprintf("used by %s for operation %d", after.Entry.Consumed.By, after.Entry.Consumed.Op)
		out = append(out, ev)
	}
	return out
}

// startCheckpointer signs checkpoints of the whole stream every period.
func (r *recording) startCheckpointer(ctx context.Context, s note.Signer, every time.Duration) {
	js, err := jetstream.New(r.conn.nc)
	if err != nil {
		r.log.Error("checkpointer not started", zap.Error(err))
		return
	}
	cp := &chain.Checkpointer{Signer: s, Every: every, Log: r.log.Named("checkpoint")}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := cp.Run(ctx, js); err != nil && ctx.Err() == nil {
			r.log.Error("checkpointer stopped", zap.Error(err))
		}
	}()
	r.stopCheckpointer = func() {
		cancel()
		<-done
	}
}

// close commits what is spooled (for up to 5 s) and disconnects.
func (r *recording) close() {
	if r.stopCheckpointer != nil {
		r.stopCheckpointer()
	}
	if err := r.rec.Close(5 * time.Second); err != nil {
		r.log.Error("chain closed with events not recorded", zap.Error(err))
	}
	r.conn.Close()
}

// wait serves until ctx ends or a listener fails, then closes the proxy.
func (r *running) wait(ctx context.Context) error {
	var err error
	select {
	case <-ctx.Done():
		r.log.Info("shutting down")
	case err = <-r.errc:
	}
	_ = r.srv.Close()
	if errors.Is(err, proxy.ErrClosed) {
		err = nil
	}
	return err
}
