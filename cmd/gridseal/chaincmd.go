package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/eve"
	"github.com/gridseal/gridseal/internal/atomicfile"
)

func chainCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "chain", Short: "Verify, follow and export the tamper-evident record"}
	cmd.AddCommand(chainVerifyCmd(g), chainTailCmd(g), chainExportCmd(g), chainProveCmd(g), chainTrustCmd(g), chainInitCmd(g))
	return cmd
}

func (g *globals) defaultTrust() string { return filepath.Join(g.dataDir, "trust.yaml") }
func (g *globals) headDir() string      { return filepath.Join(g.dataDir, "heads") }

func chainVerifyCmd(g *globals) *cobra.Command {
	var trustPath, heads string
	var maxCheckpointAge time.Duration
	cmd := &cobra.Command{
		Use:   "verify [--trust FILE] [--heads DIR] [--max-checkpoint-age D]",
		Short: "Check every hash, Merkle root, signature and height of the chain",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if maxCheckpointAge < 0 {
				return fmt.Errorf("%w: --max-checkpoint-age %v: want 0 (do not check) or more", errUsage, maxCheckpointAge)
			}
			if trustPath == "" {
				trustPath = g.defaultTrust()
			}
			if heads == "" {
				heads = g.headDir()
			}
			trust, err := chain.LoadTrust(trustPath, heads)
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
				for i, p := range problems {
					if i == 20 {
						fmt.Fprintf(g.stdout, "  … and %d more\n", len(problems)-20)
						break
					}
					fmt.Fprintf(g.stdout, "  problem %d: %v\n", i+1, p)
				}
				return fmt.Errorf("chain verify FAILED at %v (%d problems in all)", problems[0], len(problems))
			}
			el := time.Since(start)
			fmt.Fprintf(g.stdout, "chain OK: %d writers, %d blocks, %d events", len(rep.Writers), rep.Blocks, rep.Events)
			if rep.Blocks > 0 {
				fmt.Fprintf(g.stdout, ", %s … %s", rep.First.Format(time.RFC3339), rep.Last.Format(time.RFC3339))
			}
			fmt.Fprintf(g.stdout, " (verified in %v)\n", el.Round(time.Millisecond))
			if cp := rep.Checkpoints; cp != nil {
				fmt.Fprintf(g.stdout, "  checkpoints: %d signed checkpoints match the stream (%d events in the tree)\n", cp.Confirmed, cp.Events)
				// The last checkpoint this verifier saw stays pinned even if
				// the stream's checkpoints are removed.
				if cp.Newest != nil {
					if err := atomicfile.Write(pinnedPath, cp.Newest.Note, 0o644); err != nil {
						return fmt.Errorf("pin checkpoint: %w", err)
					}
				}
			}
			for _, w := range slices.Sorted(maps.Keys(rep.Writers)) {
				st := rep.Writers[w]
				pinned := "no local head"
				if h, ok := trust.Heads[w]; ok {
					pinned = fmt.Sprintf("local head %d present", h.Height)
				}
				fmt.Fprintf(g.stdout, "  writer %-16s blocks 0..%d  events %d  last hash %s  (%s)\n", w, st.Height, st.Events, st.Hash.String()[:16], pinned)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&trustPath, "trust", "", "trust file pinning writer public keysets (default DATA-DIR/trust.yaml)")
	cmd.Flags().StringVar(&heads, "heads", "", "directory of locally kept writer heads (default DATA-DIR/heads)")
	cmd.Flags().DurationVar(&maxCheckpointAge, "max-checkpoint-age", 5*time.Minute,
		"with checkpointers in the trust file: fail if an event recorded longer ago than this is in no signed checkpoint (0: do not check)")
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
			switch verdict {
			case "":
			case "allow":
				f.Verdict = audit.Allow
			case "deny":
				f.Verdict = audit.Deny
			case "malformed":
				f.Verdict = audit.Malformed
			default:
				return fmt.Errorf("%w: --verdict %q: want allow, deny or malformed", errUsage, verdict)
			}
			conn, js, err := g.jetStream(cmd.Context(), "chain tail")
			if err != nil {
				return err
			}
			defer conn.Close()
			out := func(r *chain.Record) error {
				if asJSON {
					return json.NewEncoder(g.stdout).Encode(r)
				}
				printRow(g.stdout, r)
				return nil
			}
			// The newest N, read backwards from the end; then, following,
			// what is recorded after them.
			recs, last, err := chain.LastRecords(cmd.Context(), js, lastN, &f)
			if err != nil {
				return err
			}
			if !asJSON {
				fmt.Fprintf(g.stdout, tailRow, "TIME", "CLIENT", "DEVICE", "UNIT", "FC", "ADDR+QTY", "VALUES", "VERDICT", "EXC", "REASON")
			}
			for i := range recs {
				if err := out(&recs[i]); err != nil {
					return err
				}
			}
			if !follow {
				return nil
			}
			return chain.ScanRecords(cmd.Context(), js, last+1, true, &f, func(r *chain.Record, _ *audit.Event) error { return out(r) })
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "stream new operations as they are recorded")
	cmd.Flags().StringVar(&f.Device, "device", "", "only this device")
	cmd.Flags().StringVar(&verdict, "verdict", "", "only this verdict: allow, deny or malformed")
	cmd.Flags().BoolVar(&asJSON, "json", false, "JSON lines instead of a table")
	cmd.Flags().IntVarP(&lastN, "lines", "n", 20, "how many of the newest operations to show")
	return cmd
}

// tailRow is a row of chain tail's table: fixed column widths, so the rows
// printed while following line up with the header printed first.
const tailRow = "%-12s  %-21s  %-16s  %4s  %3s  %-11s  %-24s  %-13s  %-4s  %s\n"

func printRow(w io.Writer, r *chain.Record) {
	vals := ""
	if len(r.Values) > 0 {
		parts := make([]string, len(r.Values))
		for i, v := range r.Values {
			parts[i] = fmt.Sprint(v)
		}
		vals = strings.Join(parts, ",")
		if len(vals) > 24 {
			vals = vals[:21] + "..."
		}
	}
	exc := ""
	if r.Exception != 0 {
		exc = fmt.Sprintf("0x%02X", r.Exception)
	}
	reason, verdict := r.Reason, r.Verdict
	switch r.Phase {
	case "request":
		reason = "(durable before forwarding) " + reason
	case "dropped-reply":
		verdict = "dropped-reply"
	}
	if r.Observed {
		verdict = "WOULD-DENY"
	}
	fmt.Fprintf(w, tailRow, r.Time.Local().Format("15:04:05.000"), r.Client, r.Device, strconv.Itoa(int(r.Unit)),
		strconv.Itoa(int(r.Function)), fmt.Sprintf("%d+%d", r.Address, r.Quantity), vals, verdict, exc, reason)
}

func chainExportCmd(g *globals) *cobra.Command {
	var (
		format       string
		since, until string
		f            chain.Filter
	)
	cmd := &cobra.Command{
		Use:   "export --format jsonl|eve [--since T] [--until T]",
		Short: "Write every recorded operation as JSON lines: lossless (jsonl) or Suricata EVE (eve)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "jsonl" && format != "eve" {
				return fmt.Errorf("%w: --format %q: want jsonl or eve", errUsage, format)
			}
			var err error
			if f.Since, err = parseTime(since); err != nil {
				return fmt.Errorf("%w: --since: %v", errUsage, err)
			}
			if f.Until, err = parseTime(until); err != nil {
				return fmt.Errorf("%w: --until: %v", errUsage, err)
			}
			conn, js, err := g.jetStream(cmd.Context(), "chain export")
			if err != nil {
				return err
			}
			defer conn.Close()
			enc := json.NewEncoder(g.stdout)
			return chain.ScanRecords(cmd.Context(), js, 1, false, &f, func(r *chain.Record, ev *audit.Event) error {
				if format == "jsonl" {
					return enc.Encode(r)
				}
				for _, e := range eve.For(r, ev) {
					if err := enc.Encode(e); err != nil {
						return err
					}
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&format, "format", "jsonl", "jsonl (lossless) or eve (Suricata EVE: modbus and alert events)")
	cmd.Flags().StringVar(&since, "since", "", "only operations at or after this time (RFC 3339, or a duration ago such as 1h)")
	cmd.Flags().StringVar(&until, "until", "", "only operations before this time (RFC 3339, or a duration ago)")
	return cmd
}

func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		return time.Now().Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither RFC 3339 nor a duration", s)
	}
	return t, nil
}
