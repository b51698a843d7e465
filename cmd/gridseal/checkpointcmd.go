package main

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/atomicfile"
)

func keysCheckpointCmd(g *globals) *cobra.Command {
	return noteKeyCmd(g, noteKey{kind: "checkpoint", what: "a checkpointer's signed-note key", secret: "signer key",
		forWhom: "the trust file's checkpointers", args: nameArg("key name"), create: chain.NewCheckpointKey, paths: chain.CheckpointKeyPaths})
}

func keysWitnessCmd(g *globals) *cobra.Command {
	// A witness's name is its origin-like name (mirror.example/m1):
	// NewCosignerKey checks it.
	return noteKeyCmd(g, noteKey{kind: "witness", what: "a mirror's witness key (cosignature/v1, Ed25519)", secret: "secret key",
		forWhom: "the operator's checkpoint.witnesses and trust file witnesses", args: cobra.ExactArgs(1),
		create: chain.NewCosignerKey, paths: chain.CosignerKeyPaths})
}

// noteKey says what keys checkpoint or keys witness writes.
type noteKey struct {
	kind, what, secret, forWhom string
	args                        cobra.PositionalArgs
	create                      func(dir, name string) (string, error)
	paths                       func(dir, name string) (string, string)
}

// noteKeyCmd writes NAME.KIND.key (0600) and NAME.KIND.vkey and prints
// the verifier key for whom it is for.
func noteKeyCmd(g *globals, k noteKey) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   k.kind + " NAME [--dir DIR]",
		Short: fmt.Sprintf("Create %s: NAME.%s.key (0600) and NAME.%s.vkey", k.what, k.kind, k.kind),
		Args:  k.args,
		RunE: func(_ *cobra.Command, args []string) error {
			vkey, err := k.create(dir, args[0])
			if errors.Is(err, atomicfile.ErrExists) {
				return fmt.Errorf("%v: choose another name", err)
			}
			if err != nil {
				return fmt.Errorf("%w: %v", errUsage, err)
			}
			sp, _ := k.paths(dir, args[0])
			fmt.Fprintf(g.stdout, "%s %s (mode 0600: keep it secret)\nverifier key, for %s:\n  %s\n", k.secret, sp, k.forWhom, vkey)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", ".", "directory to write the key files to")
	return cmd
}

func chainProveCmd(g *globals) *cobra.Command {
	var seq uint64
	var index int
	var trustPath, fromCheckpoint, tilesDir, format, out string
	var fromSize int64
	var update bool
	cmd := &cobra.Command{
		Use:   "prove (--seq S --index I [--format text|tlog-proof] [--out FILE] | --from-checkpoint FILE | --from-size N) [--trust FILE] [--tiles DIR]",
		Short: "Prove an event is in the newest signed checkpoint, or that the newest extends an older one (RFC 6962)",
		Long: `Prove an event is in the newest signed checkpoint (--seq, --index), or that the newest
checkpoint extends an older one (--from-checkpoint, --from-size). The proof is read from the
tiles the console keeps (DATA-DIR/console/tiles, or --tiles DIR): O(log n) reads at any chain
size; without tiles, from the stream, read from its start. --format tlog-proof writes a
c2sp.org/tlog-proof file (the event, its inclusion proof, the checkpoint with every
signature) that "gridseal chain verify-proof" checks offline.`,
		Args: cobra.NoArgs,
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
			if format != "text" && format != "tlog-proof" {
				return fmt.Errorf("%w: --format %q: want text or tlog-proof", errUsage, format)
			}
			if consistency && (format != "text" || out != "") {
				return fmt.Errorf("%w: --format and --out go with --seq/--index", errUsage)
			}
			known, err := chain.LoadCheckpointers(g.trustOr(trustPath))
			if err != nil {
				return err
			}
			ts, err := g.openTiles(tilesDir)
			if err != nil {
				return err
			}
			conn, js, err := g.jetStream(cmd.Context(), "chain prove")
			if err != nil {
				return err
			}
			defer conn.Close()
			if consistency {
				return chain.ProveExtendsFile(cmd.Context(), js, known, ts, fromCheckpoint, fromSize, update, g.stdout)
			}
			inc, err := chain.ProveEventFrom(cmd.Context(), js, known, ts, seq, index)
			if err != nil {
				return err
			}
			if format == "tlog-proof" {
				event, err := chain.ProvedEvent(cmd.Context(), js, ts, inc, seq, index)
				if err != nil {
					return err
				}
				return g.writeOut(out, chain.NewTlogProof(inc, event).Marshal())
			}
			return g.writeOut(out, inc.Text(seq, index))
		},
	}
	cmd.Flags().Uint64Var(&seq, "seq", 0, "stream sequence of the block (chain tail --json shows it)")
	cmd.Flags().IntVar(&index, "index", 0, "the event's index in its block")
	cmd.Flags().StringVar(&trustPath, "trust", "", "trust file with checkpointer keys (default DATA-DIR/trust.yaml)")
	cmd.Flags().StringVar(&fromCheckpoint, "from-checkpoint", "", "a signed checkpoint you kept: prove the newest extends it")
	cmd.Flags().Int64Var(&fromSize, "from-size", 0, "prove the newest checkpoint extends the stream's first N events")
	cmd.Flags().BoolVar(&update, "update", false, "with --from-checkpoint: keep the newest checkpoint in FILE once proved (a witness's cron job)")
	cmd.Flags().StringVar(&tilesDir, "tiles", "", "the chain's tiles (default DATA-DIR/console/tiles, if there; none: read the stream)")
	cmd.Flags().StringVar(&format, "format", "text", "text, or tlog-proof (c2sp.org/tlog-proof, for chain verify-proof)")
	cmd.Flags().StringVar(&out, "out", "", "write the proof to FILE (default standard output)")
	return cmd
}

// openTiles opens the tiles in dir, or in DATA-DIR/console/tiles if dir is
// empty and a console keeps them there; nil if there are none to read.
func (g *globals) openTiles(dir string) (*chain.Tiles, error) {
	if dir != "" {
		return chain.OpenTiles(dir)
	}
	ts, err := chain.OpenTiles(filepath.Join(g.dataDir, "console", "tiles"))
	if err != nil {
		return nil, nil //nolint:nilerr // no tiles here: the stream is read instead
	}
	return ts, nil
}

// writeOut writes b to path, or to standard output if path is empty.
func (g *globals) writeOut(path string, b []byte) error {
	if path == "" {
		_, err := g.stdout.Write(b)
		return err
	}
	return atomicfile.Write(path, b, 0o644)
}

func chainVerifyProofCmd(g *globals) *cobra.Command {
	var trustPath string
	cmd := &cobra.Command{
		Use:   "verify-proof FILE [--trust FILE]",
		Short: "Check a c2sp.org/tlog-proof file offline: the event it holds is in a checkpoint signed by a trusted key",
		Long: `Check a c2sp.org/tlog-proof file (chain prove --format tlog-proof) with the trust file's
checkpointer keys alone, no NATS: the checkpoint's signature, and that the event the file holds
is the proved leaf of the checkpoint's tree. Prints the event: the command, its verdict, the
rule and approval that allowed it and who approved it, the policy digest it was decided under.
Exit 1 if anything does not check.`,
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			known, err := chain.LoadCheckpointers(g.trustOr(trustPath))
			if err != nil {
				return err
			}
			p, err := chain.CheckTlogProofFile(args[0], known)
			if err != nil {
				return err
			}
			p.WriteText(g.stdout)
			return nil
		},
	}
	cmd.Flags().StringVar(&trustPath, "trust", "", "trust file with checkpointer keys (default DATA-DIR/trust.yaml)")
	return cmd
}
