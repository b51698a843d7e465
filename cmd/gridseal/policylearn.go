package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/policy/decision"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// inForce is the policy file given, or else the policy the proxies publish.
func inForce(ctx context.Context, js jetstream.JetStream, file string) (*policy.Policy, error) {
	if file != "" {
		return policy.Load(file)
	}
	store, err := approvals.OpenStore(ctx, js, 1, nopLogger())
	if err != nil {
		return nil, err
	}
	p, err := store.PublishedPolicy(ctx)
	if err != nil {
		return nil, fmt.Errorf("the policy in force: %w (or name a policy file with --policy)", err)
	}
	return p, nil
}

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
			from, err := parseTime(since)
			if err != nil {
				return fmt.Errorf("%w: --since: %v", errUsage, err)
			}
			conn, js, err := g.jetStream(cmd.Context(), "policy learn")
			if err != nil {
				return err
			}
			defer conn.Close()
			p, err := inForce(cmd.Context(), js, base)
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
			from, err := parseTime(since)
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
			cur, err := inForce(cmd.Context(), js, base)
			if err != nil {
				return err
			}
			w := &policy.WhatIf{Baseline: cur, Candidate: cand}
			if err := replayChain(cmd.Context(), js, from, w); err != nil {
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

// replayChain feeds every recorded request of the chain at or after from
// to w: the completed record of each well-formed request routed to a
// device. It decodes in place and allocates per block, not per event.
func replayChain(ctx context.Context, js jetstream.JetStream, from time.Time, w *policy.WhatIf) error {
	rp := newReplayer(from, w)
	return chain.ScanBlocks(ctx, js, 1, rp.block)
}

// replayer turns stored events into policy.Recorded without allocating:
// device and role names are interned.
type replayer struct {
	from  int64
	w     *policy.WhatIf
	names map[string]string
	v     chain.EventView
	q     policy.Recorded
}

func newReplayer(from time.Time, w *policy.WhatIf) *replayer {
	rp := &replayer{w: w, names: map[string]string{}}
	if !from.IsZero() {
		rp.from = from.UnixNano()
	}
	return rp
}

func (rp *replayer) intern(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if s, ok := rp.names[string(b)]; ok {
		return s
	}
	s := string(b)
	rp.names[s] = s
	return s
}

func (rp *replayer) block(m *chain.Msg, b *chain.Block) error {
	v, q := &rp.v, &rp.q
	for i, e := range b.Events {
		if err := chain.ViewEvent(e, v); err != nil {
			return fmt.Errorf("sequence %d event %d: %w", m.Seq, i, err)
		}
		if v.IsMapRead() { // the proxy's own read: SunSpec rules are judged for the map it read
			rp.w.MapRead(rp.intern(v.Device), v.Unit, v.Address, v.Quantity, v.Response)
			continue
		}
		if v.Phase != audit.PhaseComplete || v.Verdict == audit.Malformed || len(v.PDU) == 0 || len(v.Device) == 0 || v.Time < rp.from {
			continue
		}
		req, err := modbus.ParseRequest(v.PDU)
		if err != nil {
			continue
		}
		q.In = decision.Input{Op: v.Op, Device: rp.intern(v.Device), Role: rp.intern(v.Role), Unit: v.Unit, Client: v.Client, Request: req}
		q.Approved = len(v.Approval) > 0 && v.Verdict == audit.Allow && !v.Observed()
		q.Time, q.Seq, q.Op = time.Unix(0, v.Time).UTC(), m.Seq, v.Op
		rp.w.Add(q)
	}
	return nil
}
