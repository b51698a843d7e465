package main

import (
	"fmt"
	"net"
	"path/filepath"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/natsembed"
	"github.com/gridseal/gridseal/mirror"
)

// mirrorDir is where a mirror keeps its state in the data directory.
func (g *globals) mirrorDir() string { return filepath.Join(g.dataDir, "mirror") }

func mirrorCmd(g *globals) *cobra.Command {
	var source, sourceCreds, sourceCA, sourceCert, sourceKey, trustPath, keyPath, listen string
	var known []string
	cmd := &cobra.Command{
		Use:   "mirror --source URL --key FILE [--trust FILE] [--listen ADDR] [--known-policy DIGEST]...",
		Short: "Run a full-audit copy of an operator's chain: copy it, verify every block, cosign checkpoints as a witness",
		Long: `Run a mirror: a full-audit copy of an operator's chain, kept by another party on its own NATS
(the embedded server under --data-dir, or --nats). It copies the operator's GRIDSEAL_CHAIN
(--source, with read rights) into a stream of its own, verifies every block as it lands
against the trust file's writer keys (signatures, hash links, Merkle roots, and with
--known-policy the policy digests the events name), keeps the tree of every event, and
answers c2sp.org/tlog-witness add-checkpoint requests on --listen: it cosigns a checkpoint
only if the trust file's checkpointer key signed it, it verified every block up to its size
and its own tree has its root. Give the operator its verifier key (gridseal keys witness) and
URL for checkpoint.witnesses. Any inconsistency is an alarm: logged, counted in /metrics
(gridseal_mirror_*), and kept under DATA-DIR/mirror, where "gridseal mirror check" finds it.
--source local copies nothing: the mirror verifies what its own GRIDSEAL_CHAIN holds (a
JetStream mirror an admin configured).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if source == "" {
				return fmt.Errorf("%w: --source is required: the operator's NATS URL (or local, to verify a JetStream mirror)", errUsage)
			}
			if keyPath == "" {
				return fmt.Errorf("%w: --key is required: the witness key that cosigns (gridseal keys witness NAME)", errUsage)
			}
			knownSet, err := mirror.KnownPolicies(known)
			if err != nil {
				return fmt.Errorf("%w: --known-policy %v", errUsage, err)
			}
			trustPath = g.trustOr(trustPath)
			trust, err := chain.LoadTrust(trustPath, "")
			if err != nil {
				return err
			}
			if trust.Checkpointers == nil {
				return fmt.Errorf("trust file %s lists no checkpointers: the mirror cosigns their checkpoints", trustPath)
			}
			cosigner, err := chain.LoadCosigner(keyPath)
			if err != nil {
				return err
			}
			log, err := g.logger("", "")
			if err != nil {
				return err
			}
			defer func() { _ = log.Sync() }()
			ctx := cmd.Context()
			opts := g.natsOptions("mirror")
			opts.Own, opts.Log = true, log.Named("nats")
			own, err := natsembed.Connect(ctx, opts)
			if err != nil {
				return err
			}
			defer own.Close()
			local, err := own.JetStream()
			if err != nil {
				return err
			}
			var src jetstream.JetStream
			if source != "local" {
				sc, err := natsembed.Connect(ctx, natsembed.ConnectOptions{Name: "mirror source", URL: source, Creds: sourceCreds,
					CA: sourceCA, Cert: sourceCert, Key: sourceKey})
				if err != nil {
					return err
				}
				defer sc.Close()
				if src, err = sc.JetStream(); err != nil {
					return err
				}
			}
			cfg := mirror.Config{Trust: trust, KnownPolicies: knownSet, Cosigner: cosigner, Dir: g.mirrorDir(),
				Source: src, Local: local, Log: log.Named("mirror")}
			return mirror.Serve(ctx, cfg, listen, func(addr net.Addr) {
				fmt.Fprintf(g.stdout, "mirror of %s, kept in %s\nwitness URL (checkpoint.witnesses url): http://%s\nwitness verifier key: %s\n",
					natsembed.RedactURLs(source), g.dataDir, addr, cosigner.Verifier())
				log.Info("mirror running", zap.String("listen", addr.String()), zap.String("source", natsembed.RedactURLs(source)))
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&source, "source", "", "the operator's NATS URL(s), read rights on GRIDSEAL_CHAIN and GRIDSEAL_CHECKPOINTS; local: copy nothing")
	f.StringVar(&sourceCreds, "source-creds", "", "NATS credentials file for --source")
	f.StringVar(&sourceCA, "source-tls-ca", "", "CA bundle to verify --source's servers")
	f.StringVar(&sourceCert, "source-tls-cert", "", "client certificate for --source (with --source-tls-key)")
	f.StringVar(&sourceKey, "source-tls-key", "", "client key for --source-tls-cert")
	f.StringVar(&trustPath, "trust", "", "trust file: the writers' keysets and the checkpointers' keys (default DATA-DIR/trust.yaml)")
	f.StringVar(&keyPath, "key", "", "the mirror's witness secret key (gridseal keys witness NAME)")
	f.StringVar(&listen, "listen", "127.0.0.1:8790", "address for add-checkpoint (c2sp.org/tlog-witness), /metrics and /healthz")
	f.StringSliceVar(&known, "known-policy", nil, "hex SHA-256 of a policy the writers may decide under (repeat); an event naming another is an alarm")
	cmd.AddCommand(mirrorCheckCmd(g), mirrorCompareCmd(g))
	return cmd
}

func mirrorCheckCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "check",
		Short: "Exit 1 if the mirror under --data-dir has recorded any alarm, listing them",
		Args:  cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			return mirror.Check(g.mirrorDir(), g.stdout)
		},
	}
}

func mirrorCompareCmd(g *globals) *cobra.Command {
	var trustPath, tilesDir string
	var stream bool
	cmd := &cobra.Command{
		Use:   "compare FILE... [--trust FILE] [--tiles DIR | --stream]",
		Short: "Check signed checkpoints handed to you for a split view: one size with two roots, or a root the tree contradicts",
		Long: `Compare signed checkpoint notes (files, each one note: a witness's, a tlog-proof's, one kept
by chain prove --update). Each must be signed by a checkpointer of the trust file. Two of one
size must have one root; with a tree of the chain — a console's tiles (--tiles DIR) or the
stream the NATS flags name, read from its start (--stream: a mirror's own under --data-dir by
default) — each the tree reaches must have its root. Exit 1 on a split view.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if tilesDir != "" && stream {
				return fmt.Errorf("%w: --tiles and --stream: give one tree", errUsage)
			}
			known, err := chain.LoadCheckpointers(g.trustOr(trustPath))
			if err != nil {
				return err
			}
			var tree mirror.Tree
			switch {
			case tilesDir != "":
				ts, err := chain.OpenTiles(tilesDir)
				if err != nil {
					return err
				}
				tree = ts
			case stream:
				conn, js, err := g.jetStream(cmd.Context(), "mirror compare")
				if err != nil {
					return err
				}
				t, err := chain.ReadTree(cmd.Context(), js)
				conn.Close()
				if err != nil {
					return err
				}
				defer func() { _ = t.Close() }()
				tree = t
			}
			return mirror.CompareFiles(args, known, tree, g.stdout)
		},
	}
	cmd.Flags().StringVar(&trustPath, "trust", "", "trust file with the checkpointers' keys (default DATA-DIR/trust.yaml)")
	cmd.Flags().StringVar(&tilesDir, "tiles", "", "a console's tiles (DATA-DIR/console/tiles): compare each checkpoint with the tree")
	cmd.Flags().BoolVar(&stream, "stream", false, "read the chain stream (a mirror's own, by default) into a tree and compare with it")
	return cmd
}
