package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"golang.org/x/mod/sumdb/note"

	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/atomicfile"
)

func keysCheckpointCmd(g *globals) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "checkpoint NAME [--dir DIR]",
		Short: "Create a checkpointer's signed-note key: NAME.checkpoint.key (0600) and NAME.checkpoint.vkey",
		Args:  nameArg("key name"),
		RunE: func(_ *cobra.Command, args []string) error {
			vkey, err := chain.NewCheckpointKey(dir, args[0])
			if errors.Is(err, atomicfile.ErrExists) {
				return fmt.Errorf("%v: choose another name", err)
			}
			if err != nil {
				return err
			}
			sp, _ := chain.CheckpointKeyPaths(dir, args[0])
			fmt.Fprintf(g.stdout, "signer key %s (mode 0600: keep it secret)\nverifier key, for the trust file's checkpointers:\n  %s\n", sp, vkey)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", ".", "directory to write the key files to")
	return cmd
}

func chainProveCmd(g *globals) *cobra.Command {
	var seq uint64
	var index int
	var trustPath, fromCheckpoint string
	var fromSize int64
	var update bool
	cmd := &cobra.Command{
		Use:   "prove (--seq S --index I | --from-checkpoint FILE | --from-size N) [--trust FILE]",
		Short: "Prove an event is in the newest signed checkpoint, or that the newest extends an older one (RFC 6962)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			consistency := fromCheckpoint != "" || fromSize != 0
			if update && fromCheckpoint == "" {
				return fmt.Errorf("%w: --update goes with --from-checkpoint FILE", errUsage)
			}
			if consistency && (seq != 0 || fromCheckpoint != "" && fromSize != 0) {
				return fmt.Errorf("%w: give --seq/--index, --from-checkpoint or --from-size, one of them", errUsage)
			}
			if !consistency && (seq == 0 || index < 0) {
				return fmt.Errorf("%w: --seq (stream sequence of the block) and --index (event in the block) are required", errUsage)
			}
			if trustPath == "" {
				trustPath = g.defaultTrust()
			}
			trust, err := chain.LoadTrust(trustPath, "")
			if err != nil {
				return err
			}
			if trust.Checkpointers == nil {
				return fmt.Errorf("trust file %s lists no checkpointers", trustPath)
			}
			conn, js, err := g.jetStream(cmd.Context(), "chain prove")
			if err != nil {
				return err
			}
			defer conn.Close()
			if consistency {
				return g.proveConsistency(cmd.Context(), js, trust.Checkpointers, fromCheckpoint, fromSize, update)
			}
			inc, err := chain.ProveEvent(cmd.Context(), js, trust.Checkpointers, seq, index)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "event %d of block %d is leaf %d of the signed tree of %d events\nleaf hash %s\nproof (%d hashes):\n",
				index, seq, inc.Leaf, inc.Checkpoint.Size, inc.LeafHash, len(inc.Proof))
			for _, h := range inc.Proof {
				fmt.Fprintf(g.stdout, "  %s\n", h)
			}
			fmt.Fprintf(g.stdout, "checkpoint:\n%s", inc.Checkpoint.Note)
			return nil
		},
	}
	cmd.Flags().Uint64Var(&seq, "seq", 0, "stream sequence of the block (chain tail --json shows it)")
	cmd.Flags().IntVar(&index, "index", 0, "the event's index in its block")
	cmd.Flags().StringVar(&trustPath, "trust", "", "trust file with checkpointer keys (default DATA-DIR/trust.yaml)")
	cmd.Flags().StringVar(&fromCheckpoint, "from-checkpoint", "", "a signed checkpoint you kept: prove the newest extends it")
	cmd.Flags().Int64Var(&fromSize, "from-size", 0, "prove the newest checkpoint extends the stream's first N events")
	cmd.Flags().BoolVar(&update, "update", false, "with --from-checkpoint: keep the newest checkpoint in FILE once proved (a witness's cron job)")
	return cmd
}

// proveConsistency prints the proof that the newest checkpoint extends an
// older tree: one the caller kept as a signed note (its signature and root
// are checked too), or the stream's first size events.
func (g *globals) proveConsistency(ctx context.Context, js jetstream.JetStream, known note.Verifiers, oldPath string, size int64, update bool) error {
	var old *chain.Checkpoint
	if oldPath != "" {
		b, err := os.ReadFile(oldPath)
		if err != nil {
			return err
		}
		if old, err = chain.OpenCheckpoint(b, known); err != nil {
			return fmt.Errorf("%s: %w", oldPath, err)
		}
		size = old.Size
	}
	c, err := chain.ProveConsistency(ctx, js, known, size)
	if err != nil {
		return err
	}
	if old != nil && old.Root != c.OldRoot {
		return fmt.Errorf("the stream's first %d events no longer have the root %s signed in %s: the chain was rewritten", old.Size, old.Root, oldPath)
	}
	fmt.Fprintf(g.stdout, "the signed tree of %d events extends the tree of %d events\nold root %s\nnew root %s\nproof (%d hashes):\n",
		c.New.Size, c.OldSize, c.OldRoot, c.New.Root, len(c.Proof))
	for _, h := range c.Proof {
		fmt.Fprintf(g.stdout, "  %s\n", h)
	}
	fmt.Fprintf(g.stdout, "checkpoint:\n%s", c.New.Note)
	if update && c.New.Size > c.OldSize {
		if err := atomicfile.Write(oldPath, c.New.Note, 0o644); err != nil {
			return err
		}
		fmt.Fprintf(g.stdout, "%s now keeps the checkpoint of %d events\n", oldPath, c.New.Size)
	}
	return nil
}
