package main

import (
	"fmt"

	"github.com/gridseal/gridseal/gateway"
	"github.com/spf13/cobra"
)

// chainStreams are the streams gridseal chain init creates: the chain, the
// checkpoints, the approvals bucket's stream and the approvals' uses.
var chainStreams = gateway.Streams()

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
			streams, err := gateway.InitStreams(ctx, js, replicas)
			if err != nil {
				return err
			}
			for _, st := range streams {
				st.WriteText(g.stdout, replicas)
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&replicas, "replicas", 3, "replicas of each stream (1 on a single server)")
	return cmd
}
