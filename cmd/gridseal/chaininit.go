package main

import (
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/chain"
)

// chainStreams are the streams gridseal chain init creates: the chain, the
// checkpoints, the approvals bucket's stream and the approvals' uses.
var chainStreams = []string{chain.StreamName, chain.CheckpointStream, "KV_" + approvals.Bucket, approvals.UsedStream, "KV_" + chain.LeaseBucket}

func chainInitCmd(g *globals) *cobra.Command {
	var replicas int
	cmd := &cobra.Command{
		Use:   "init [--replicas 3]",
		Short: "Create the chain's, checkpoints' and approvals' streams once, as the NATS admin user, before any proxy starts",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if replicas < 1 || replicas > 5 {
				return fmt.Errorf("%w: --replicas %d: want 1 to 5 (3 on the shipped cluster)", errUsage, replicas)
			}
			ctx := cmd.Context()
			conn, js, err := g.jetStream(ctx, "chain init")
			if err != nil {
				return err
			}
			defer conn.Close()
			existed := map[string]bool{}
			for _, name := range chainStreams {
				_, err := js.Stream(ctx, name)
				if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
					return fmt.Errorf("stream %s: %w", name, err)
				}
				existed[name] = err == nil
			}
			if _, err := chain.EnsureStream(ctx, js, replicas); err != nil {
				return err
			}
			if err := chain.EnsureCheckpointStream(ctx, js, replicas); err != nil {
				return fmt.Errorf("checkpoint stream %s: %w", chain.CheckpointStream, err)
			}
			if _, err := approvals.OpenStore(ctx, js, replicas, nopLogger()); err != nil {
				return err
			}
			if _, err := chain.EnsureLeaseBucket(ctx, js, chain.DefaultLeaseTTL, replicas); err != nil {
				return err
			}
			for _, name := range chainStreams {
				s, err := js.Stream(ctx, name)
				if err != nil {
					return fmt.Errorf("stream %s: %w", name, err)
				}
				got := s.CachedInfo().Config.Replicas
				state := "created"
				if existed[name] {
					state = "already there"
				}
				fmt.Fprintf(g.stdout, "stream %-24s %s, %d replicas", name, state, got)
				if got != replicas {
					fmt.Fprintf(g.stdout, " (not %d: a NATS administrator changes that with nats stream edit)", replicas)
				}
				fmt.Fprintln(g.stdout)
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&replicas, "replicas", 3, "replicas of each stream (1 on a single server)")
	return cmd
}
