package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/console"
	"github.com/gridseal/gridseal/internal/cli"
	"github.com/gridseal/gridseal/internal/keys"
)

func keysCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "keys", Short: "Manage Tink signing keysets"}
	var dir, alg string
	newCmd := &cobra.Command{
		Use:   "new NAME [--dir DIR]",
		Short: "Create a keyset: NAME.private.json (0600) and NAME.public.json",
		Args:  nameArg("key name"),
		RunE: func(_ *cobra.Command, args []string) error {
			name := args[0]
			h, err := keys.New(alg)
			if err != nil {
				return fmt.Errorf("%w: %v", errUsage, err)
			}
			priv, pub, err := keys.WritePair(dir, name, h)
			if errors.Is(err, keys.ErrExists) {
				return fmt.Errorf("%v: choose another name or move the old keyset away", err)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "private keyset %s (mode 0600: keep it secret)\npublic keyset  %s (key id %d)\n",
				priv, pub, h.KeysetInfo().GetPrimaryKeyId())
			return nil
		},
	}
	newCmd.Flags().StringVar(&dir, "dir", ".", "directory to write the keyset files to")
	newCmd.Flags().StringVar(&alg, "algorithm", keys.Ed25519, "ed25519 or ecdsa-p256")
	cmd.AddCommand(newCmd, keysCheckpointCmd(g), keysWitnessCmd(g), keysConsoleTokenCmd(g))
	return cmd
}

// nameArg accepts one argument, a name (what calls it in the error) fit
// for file names and writer ids.
func nameArg(what string) cobra.PositionalArgs { return cli.OneName(what, chain.CheckWriterID) }

// keysConsoleTokenCmd adds a viewer's token to a console token file. The
// file keeps only the token's SHA-256; the token is printed once.
func keysConsoleTokenCmd(g *globals) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "console-token NAME --file FILE",
		Short: "Create a console sign-in token for NAME (an analyst, or Prometheus) and list its hash in FILE (0600)",
		Args:  nameArg("token name"),
		RunE: func(_ *cobra.Command, args []string) error {
			name := args[0]
			if file == "" {
				return fmt.Errorf("%w: --file is required (the console's tokens: file)", errUsage)
			}
			tok, err := console.AddToken(file, name)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "console token for %s (shown once; %s keeps only its hash):\n%s\n", name, file, tok)
			return nil
		},
	}
	cmd.Flags().StringVar(&file, "file", "", "the console's token file (created 0600)")
	return cmd
}
