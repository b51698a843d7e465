package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/proxy"
)

func proxyCmd(g *globals) *cobra.Command {
	var configPath string
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
			pol, err := policy.Load(cfg.Policy)
			if err != nil {
				return err
			}
			specs, err := routes(cfg.Listeners, pol)
			if err != nil {
				return fmt.Errorf("%s: %w", configPath, err)
			}
			signer, err := keys.LoadSigner(cfg.Chain.Key)
			if err != nil {
				return err
			}
			if cfg.Chain.NATS != "" {
				g.natsURL = cfg.Chain.NATS
			}
			rec, err := g.openRecorder(cmd.Context(), chain.Config{
				Writer: cfg.Chain.Writer, Signer: signer, Replicas: cfg.Chain.Replicas,
				DurableTimeout: cfg.Chain.DurableTimeout, SpoolBytes: cfg.Chain.SpoolBytes,
			}, log)
			if err != nil {
				return err
			}
			defer rec.close()
			st, err := startProxy(cmd.Context(), cfg.proxyConfig(), pol, specs, rec.rec, log)
			if err != nil {
				return err
			}
			return st.wait(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "configuration file (YAML)")
	return cmd
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
func startProxy(_ context.Context, cfg proxy.Config, pol *policy.Policy, specs []listenerSpec, rec *chain.Recorder, log *zap.Logger) (*running, error) {
	engine := policy.NewEngine(pol, log.Named("policy"))
	// The chain first: its durable answer decides whether a write moves.
	tee := audit.Tee{rec, audit.NewLogRecorder(log.Named("ops"))}
	srv, err := proxy.New(cfg, devices(pol), engine, tee, log.Named("proxy"))
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
}

// openRecorder connects to NATS (or starts the embedded server) and opens
// the writer's chain, keeping its head under --data-dir.
func (g *globals) openRecorder(ctx context.Context, cfg chain.Config, log *zap.Logger) (*recording, error) {
	conn, err := g.connectNATS(ctx, "recorder "+cfg.Writer)
	if err != nil {
		return nil, err
	}
	cfg.HeadDir = g.headDir()
	rec, err := chain.Open(ctx, conn.nc, cfg, log.Named("chain"))
	if err != nil {
		conn.Close()
		return nil, err
	}
	where := g.natsURL
	if conn.embedded {
		where = "embedded under " + g.dataDir
	}
	log.Info("recording to the chain", zap.String("writer", cfg.Writer), zap.String("nats", where))
	return &recording{rec: rec, conn: conn, log: log}, nil
}

// close commits what is spooled (for up to 5 s) and disconnects.
func (r *recording) close() {
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
