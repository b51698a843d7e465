package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/gridseal/gridseal/gateway"
	"github.com/gridseal/gridseal/internal/demo"
	"github.com/gridseal/gridseal/simulators"
)

func demoCmd(g *globals) *cobra.Command {
	var (
		listen    string
		httpAddr  string
		cpEvery   time.Duration
		simAddr   string
		duration  time.Duration
		tour      bool
		witnesses []string
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run simulators, proxy, chain and approvals in one process, with a guided tour",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			log, err := g.logger("", "")
			if err != nil {
				return err
			}
			plant, err := simulators.NewStandardPlant("all", simulators.Options{})
			if err != nil {
				return err
			}
			sim, err := simulators.Start(simAddr, plant)
			if err != nil {
				return fmt.Errorf("start simulators: %w (is another demo running?)", err)
			}
			defer func() { _ = sim.Stop() }()
			cfg, err := demo.Setup(g.dataDir, sim.Addr, listen, cpEvery)
			if err != nil {
				return err
			}
			cfg.Console.Listen = httpAddr
			ws, err := demo.ParseWitnesses(witnesses)
			if err != nil {
				return fmt.Errorf("%w: %v", errUsage, err)
			}
			if err := demo.AddWitnesses(g.stdout, g.dataDir, cfg, ws); err != nil {
				return err
			}
			opts := g.gatewayOptions(log)
			opts.ConsoleFallback = !cmd.Flags().Changed("http")
			// The tour narrates each request and the chain, console and
			// `chain tail` show every operation; a log line per operation
			// would bury the narration (--log-level debug brings them back).
			if g.logLevel != "debug" {
				opts.OpsLog = log.WithOptions(zap.IncreaseLevel(zapcore.ErrorLevel))
			}
			gw, err := gateway.New(ctx, cfg, opts)
			if err != nil {
				return err
			}
			defer gw.Close()
			addr := gw.Addrs()[0]
			demo.PrintBanner(g.stdout, g.prog, g.dataDir, sim.Addr, addr, gw.Policy())
			if u := gw.ConsoleURL(); u != "" {
				fmt.Fprintf(g.stdout, "\nSOC console: %s   (metrics: %smetrics)\n", u, u)
			}
			if tour {
				t := &demo.Tour{W: g.stdout, Addr: addr, Store: gw.Approvals(), Policy: gw.Policy(), Keys: filepath.Join(g.dataDir, "keys")}
				if err := t.Run(ctx); err != nil {
					return fmt.Errorf("demo tour: %w", err)
				}
				fmt.Fprintf(g.stdout, "\nThe chain holds every step above:\n  %s chain tail --data-dir %s -n 40\n  %s chain verify --data-dir %s\n", g.prog, g.dataDir, g.prog, g.dataDir)
				fmt.Fprintln(g.stdout, "\nThe proxy keeps running; try the commands above. Ctrl-C stops it.")
			}
			if duration > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, duration)
				defer cancel()
			}
			return gw.Run(ctx)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:5020", "proxy listen address")
	cmd.Flags().StringVar(&httpAddr, "http", "127.0.0.1:8080", "console and /metrics address (off: none)")
	cmd.Flags().StringArrayVar(&witnesses, "witness", nil,
		"URL=VKEY of a witness (c2sp.org/tlog-witness) to cosign every checkpoint, VKEY its cosignature verifier key; repeatable. chain verify then requires all of them")
	cmd.Flags().DurationVar(&cpEvery, "checkpoint-every", 5*time.Second, "how often the demo's checkpointer signs the stream's tree")
	cmd.Flags().StringVar(&simAddr, "sim-listen", "127.0.0.1:15020", "simulators' address")
	cmd.Flags().DurationVar(&duration, "duration", 0, "stop this long after the tour (0: run until interrupted)")
	cmd.Flags().BoolVar(&tour, "tour", true, "run the guided tour of allowed, denied and approved commands at start")
	return cmd
}
