package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/policy"
)

func chainTrustCmd(g *globals) *cobra.Command {
	var writers, checkpointers []string
	var out string
	cmd := &cobra.Command{
		Use:   "trust --writer ID=KEYSET... [--checkpointer VKEY...] [--out FILE]",
		Short: "Write the trust file chain verify, prove and the console check against",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if len(writers) == 0 {
				return fmt.Errorf("%w: --writer ID=PUBLIC-KEYSET is required (gridseal keys new ID writes ID.public.json)", errUsage)
			}
			ws, vkeys, err := chain.TrustArgs(writers, checkpointers)
			if err != nil {
				return fmt.Errorf("%w: %v", errUsage, err)
			}
			out = g.trustOr(out)
			if err := chain.WriteTrustFile(out, ws, vkeys...); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "trust file %s pins %d writers and %d checkpointers\n", out, len(ws), len(vkeys))
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&writers, "writer", nil, "a writer id and its public keyset, ID=PATH (repeatable)")
	cmd.Flags().StringArrayVar(&checkpointers, "checkpointer", nil, "a checkpointer's verifier key, or the .vkey file holding it (repeatable)")
	cmd.Flags().StringVar(&out, "out", "", "where to write it (default DATA-DIR/trust.yaml)")
	return cmd
}

func policyApproversCmd(g *globals) *cobra.Command {
	var groups []string
	cmd := &cobra.Command{
		Use:   "approvers --group G PERSON.public.json...",
		Short: "Print a policy's approvers section for these people's public keysets (append it to the policy, then sign)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if len(groups) == 0 {
				return fmt.Errorf("%w: --group is required (rules name it in requires: {group: G, m: M})", errUsage)
			}
			b, err := policy.FormatApprovers(groups, args)
			if err != nil {
				return err
			}
			_, err = g.stdout.Write(b)
			return err
		},
	}
	cmd.Flags().StringSliceVar(&groups, "group", nil, "the groups they are in (repeatable, or a comma list)")
	return cmd
}
