package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/gateway"
	"github.com/gridseal/gridseal/internal/cli"
	"github.com/gridseal/gridseal/policy"
)

func policyLearnCmd(g *globals) *cobra.Command {
	var (
		since, base string
		o           policy.LearnOptions
	)
	cmd := &cobra.Command{
		Use:   "learn [--since D] [--device NAME] [--gap N] [--standing-writes]",
		Short: "Print a candidate policy built from what the chain recorded, on top of the policy in force",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			from, err := cli.ParseTime(since)
			if err != nil {
				return fmt.Errorf("%w: --since: %v", errUsage, err)
			}
			conn, js, err := g.jetStream(cmd.Context(), "policy learn")
			if err != nil {
				return err
			}
			defer conn.Close()
			p, err := gateway.PolicyInForce(cmd.Context(), js, base)
			if err != nil {
				return err
			}
			o.Since = from // map reads before it still name SunSpec points
			l, err := policy.NewLearner(p, o)
			if err != nil {
				return fmt.Errorf("%w: %v", errUsage, err)
			}
			err = chain.ScanEvents(cmd.Context(), js, time.Time{}, l.Add)
			if err != nil {
				return err
			}
			out, err := l.Policy()
			if err != nil {
				return err
			}
			if _, err := g.stdout.Write(out); err != nil {
				return err
			}
			fmt.Fprintf(g.stderr, "gridseal: %s\n", l.Summary())
			return nil
		},
	}
	cmd.Flags().StringVar(&since, "since", "", "learn from operations at or after this time (RFC 3339, or a duration ago such as 72h)")
	cmd.Flags().StringVar(&o.Device, "device", "", "learn only this device; the others keep their rules")
	cmd.Flags().IntVar(&o.Gap, "gap", 0, "merge read ranges up to this many addresses apart (writes merge only where they touch)")
	cmd.Flags().BoolVar(&o.StandingWrites, "standing-writes", false, "make state-changing requests standing rules instead of rules that require a quorum")
	cmd.Flags().StringVar(&o.Group, "group", "", "approver group those rules require (default: the group the policy's approval rules use)")
	cmd.Flags().IntVar(&o.M, "m", 0, "how many of the group (default: as the policy's approval rules, else 2)")
	cmd.Flags().StringVar(&base, "policy", "", "policy file to build on (default: the policy the proxies publish as in force)")
	return cmd
}

// errNewlyDenied is what-if's failure: the candidate denies what the
// policy in force allows.
type errNewlyDenied struct{ n int }

func (e errNewlyDenied) Error() string {
	return fmt.Sprintf("the candidate denies %d recorded requests the policy in force allows", e.n)
}

func policyWhatIfCmd(g *globals) *cobra.Command {
	var (
		since, base string
		asJSON      bool
	)
	cmd := &cobra.Command{
		Use:   "what-if CANDIDATE [--since D] [--json]",
		Short: "Replay the chain's recorded requests against a candidate policy; exit 1 if it denies what the policy in force allows",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			from, err := cli.ParseTime(since)
			if err != nil {
				return fmt.Errorf("%w: --since: %v", errUsage, err)
			}
			cand, err := policy.Load(args[0])
			if err != nil {
				return err
			}
			conn, js, err := g.jetStream(cmd.Context(), "policy what-if")
			if err != nil {
				return err
			}
			defer conn.Close()
			cur, err := gateway.PolicyInForce(cmd.Context(), js, base)
			if err != nil {
				return err
			}
			w := &policy.WhatIf{Baseline: cur, Candidate: cand}
			if err := gateway.ReplayChain(cmd.Context(), js, from, w); err != nil {
				return err
			}
			r := w.Report()
			if asJSON {
				enc := json.NewEncoder(g.stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(r); err != nil {
					return err
				}
			} else {
				r.WriteText(g.stdout)
			}
			if r.NewlyDenied > 0 {
				return errNewlyDenied{r.NewlyDenied}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&since, "since", "", "replay operations at or after this time (RFC 3339, or a duration ago such as 72h)")
	cmd.Flags().StringVar(&base, "baseline", "", "policy file to compare with (default: the policy the proxies publish as in force)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as one JSON object")
	return cmd
}
