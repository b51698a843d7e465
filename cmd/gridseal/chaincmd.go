package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/eve"
	"github.com/gridseal/gridseal/internal/cli"
)

func chainCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "chain", Short: "Verify, follow and export the tamper-evident record"}
	cmd.AddCommand(chainVerifyCmd(g), chainTailCmd(g), chainExportCmd(g), chainProveCmd(g), chainVerifyProofCmd(g), chainTrustCmd(g), chainInitCmd(g))
	return cmd
}

// trustOr is path, or the default trust file if path is empty.
func (g *globals) trustOr(path string) string {
	return cmp.Or(path, filepath.Join(g.dataDir, "trust.yaml"))
}

func chainVerifyCmd(g *globals) *cobra.Command {
	var trustPath, heads, eveFile string
	var maxCheckpointAge time.Duration
	cmd := &cobra.Command{
		Use:   "verify [--trust FILE] [--heads DIR] [--max-checkpoint-age D] [--eve FILE]",
		Short: "Check every hash, Merkle root, signature and height of the chain",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if maxCheckpointAge < 0 {
				return fmt.Errorf("%w: --max-checkpoint-age %v: want 0 (do not check) or more", errUsage, maxCheckpointAge)
			}
			trust, err := chain.LoadTrust(g.trustOr(trustPath), cmp.Or(heads, filepath.Join(g.dataDir, "heads")))
			if err != nil {
				return err
			}
			conn, js, err := g.jetStream(cmd.Context(), "chain verify")
			if err != nil {
				return err
			}
			defer conn.Close()
			pinnedPath := filepath.Join(g.dataDir, "checkpoint.pinned")
			start := time.Now()
			rep, err := chain.VerifyStream(cmd.Context(), js, chain.VerifyOptions{
				Trust: trust, PinnedCheckpoint: pinnedPath, MaxCheckpointAge: maxCheckpointAge,
				Progress: func(blocks, events uint64) {
					fmt.Fprintf(g.stderr, "verifying: %d blocks, %d events so far\n", blocks, events)
				},
			})
			if err != nil {
				return err
			}
			if problems := rep.Problems; len(problems) > 0 {
				if eveFile != "" {
					if err := eve.AppendVerifyAlerts(eveFile, problems, time.Now()); err != nil {
						return err
					}
				}
				rep.WriteProblems(g.stdout)
				return fmt.Errorf("chain verify FAILED at %v (%d problems in all)", problems[0], len(problems))
			}
			rep.WriteSummary(g.stdout, time.Since(start))
			if err := rep.Pin(pinnedPath); err != nil {
				return err
			}
			rep.WriteWriters(g.stdout, trust.Heads)
			return nil
		},
	}
	cmd.Flags().StringVar(&trustPath, "trust", "", "trust file pinning writer public keysets (default DATA-DIR/trust.yaml)")
	cmd.Flags().StringVar(&heads, "heads", "", "directory of locally kept writer heads (default DATA-DIR/heads)")
	cmd.Flags().DurationVar(&maxCheckpointAge, "max-checkpoint-age", 5*time.Minute,
		"with checkpointers in the trust file: fail if an event recorded longer ago than this is in no signed checkpoint (0: do not check)")
	cmd.Flags().StringVar(&eveFile, "eve", "", "append a Suricata-EVE alert line (signature 9050014) per problem to this file, for the SIEM that tails it")
	return cmd
}

func chainTailCmd(g *globals) *cobra.Command {
	var (
		f       chain.Filter
		follow  bool
		asJSON  bool
		lastN   int
		verdict string
	)
	cmd := &cobra.Command{
		Use:   "tail [--follow] [--device D] [--verdict allow|deny|malformed] [--json]",
		Short: "Show the newest recorded operations, or follow them live",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if lastN < 1 {
				return fmt.Errorf("%w: --lines %d: want at least 1", errUsage, lastN)
			}
			if verdict != "" {
				v, ok := audit.ParseVerdict(verdict)
				if !ok {
					return fmt.Errorf("%w: --verdict %q: want allow, deny or malformed", errUsage, verdict)
				}
				f.Verdict = v
			}
			conn, js, err := g.jetStream(cmd.Context(), "chain tail")
			if err != nil {
				return err
			}
			defer conn.Close()
			return chain.Tail(cmd.Context(), js, lastN, &f, follow, asJSON, g.stdout)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "stream new operations as they are recorded")
	cmd.Flags().StringVar(&f.Device, "device", "", "only this device")
	cmd.Flags().StringVar(&verdict, "verdict", "", "only this verdict: allow, deny or malformed")
	cmd.Flags().BoolVar(&asJSON, "json", false, "JSON lines instead of a table")
	cmd.Flags().IntVarP(&lastN, "lines", "n", 20, "how many of the newest operations to show")
	return cmd
}

func chainExportCmd(g *globals) *cobra.Command {
	var (
		format       string
		since, until string
		follow       bool
		from         uint64
		f            chain.Filter
	)
	cmd := &cobra.Command{
		Use:   "export --format jsonl|eve [--since T] [--until T] [--from SEQ] [--follow]",
		Short: "Write every recorded operation as JSON lines: lossless (jsonl) or Suricata EVE (eve)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "jsonl" && format != "eve" {
				return fmt.Errorf("%w: --format %q: want jsonl or eve", errUsage, format)
			}
			if from < 1 {
				return fmt.Errorf("%w: --from %d: stream sequences start at 1", errUsage, from)
			}
			var err error
			if f.Since, err = cli.ParseTime(since); err != nil {
				return fmt.Errorf("%w: --since: %v", errUsage, err)
			}
			if f.Until, err = cli.ParseTime(until); err != nil {
				return fmt.Errorf("%w: --until: %v", errUsage, err)
			}
			conn, js, err := g.jetStream(cmd.Context(), "chain export")
			if err != nil {
				return err
			}
			defer conn.Close()
			enc := json.NewEncoder(g.stdout)
			var m *eve.Mapper
			if format == "eve" {
				m = &eve.Mapper{Devices: approvals.PublishedDevices(cmd.Context(), js)}
			}
			err = chain.ScanRecords(cmd.Context(), js, from, follow, &f, func(r *chain.Record, ev *audit.Event) error {
				if m == nil {
					return enc.Encode(r)
				}
				return m.Encode(enc, r, ev)
			})
			if follow && cmd.Context().Err() != nil {
				return nil // stopped by the user
			}
			return err
		},
	}
	cmd.Flags().StringVar(&format, "format", "jsonl", "jsonl (lossless) or eve (Suricata EVE: modbus and alert events)")
	cmd.Flags().StringVar(&since, "since", "", "only operations at or after this time (RFC 3339, or a duration ago such as 1h)")
	cmd.Flags().StringVar(&until, "until", "", "only operations before this time (RFC 3339, or a duration ago)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep going: write each block's operations as it is recorded, until interrupted")
	cmd.Flags().Uint64Var(&from, "from", 1, "start at this chain stream sequence (an exported line's seq / gridseal_seq), to resume an export")
	return cmd
}
