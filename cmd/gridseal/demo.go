package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/gridseal/gridseal/internal/demo"
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
			ws, err := demo.ParseWitnesses(witnesses)
			if err != nil {
				return fmt.Errorf("%w: %v", errUsage, err)
			}
			opts := g.gatewayOptions(log)
			opts.ConsoleFallback = !cmd.Flags().Changed("http")
			// The tour narrates each request and the chain, console and
			// `chain tail` show every operation; a log line per operation
			// would bury the narration (--log-level debug brings them back).
			if g.logLevel != "debug" {
				opts.OpsLog = log.WithOptions(zap.IncreaseLevel(zapcore.ErrorLevel))
			}
			return demo.Run(ctx, demo.Options{Out: g.stdout, Prog: g.prog, SimAddr: simAddr, Listen: listen, HTTP: httpAddr,
				CheckpointEvery: cpEvery, Witnesses: ws, Tour: tour, Duration: duration, Gateway: opts})
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
