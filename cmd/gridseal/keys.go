package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/keys"
)

func keysCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "keys", Short: "Manage Tink signing keysets"}
	var dir, alg string
	newCmd := &cobra.Command{
		Use:   "new NAME [--dir DIR]",
		Short: "Create a keyset: NAME.private.json (0600) and NAME.public.json",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			name := args[0]
			if err := chain.CheckWriterID(name); err != nil {
				return fmt.Errorf("%w: key name: %v", errUsage, err)
			}
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
	cmd.AddCommand(newCmd, keysCheckpointCmd(g))
	return cmd
}
