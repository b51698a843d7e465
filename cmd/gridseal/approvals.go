package main

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/internal/cli"
	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/internal/natsembed"
	"github.com/gridseal/gridseal/policy"
)

// approvalsEnv is a connection to the approvals bucket and the policy the
// proxies have in force.
type approvalsEnv struct {
	conn  *natsembed.Conn
	store *approvals.Store
	pol   *policy.Policy
}

func (g *globals) approvals(cmd *cobra.Command) (*approvalsEnv, error) {
	conn, js, err := g.jetStream(cmd.Context(), cmd.Name())
	if err != nil {
		return nil, err
	}
	store, pol, err := approvals.OpenPublished(cmd.Context(), js)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return &approvalsEnv{conn: conn, store: store, pol: pol}, nil
}

func proposeCmd(g *globals) *cobra.Command {
	var (
		device, regs, coil, pduHex, keyPath string
		unit                                int
		ttl                                 time.Duration
	)
	cmd := &cobra.Command{
		Use:   "propose --device D --unit U (--write-register A=V[,V…] | --write-coil A=on|off | --pdu HEX) --key FILE [--ttl 15m]",
		Short: "Propose one exact state-changing command for m-of-n approval",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if device == "" || keyPath == "" {
				return fmt.Errorf("%w: --device and --key are required", errUsage)
			}
			if unit < 0 || unit > 255 {
				return fmt.Errorf("%w: --unit %d: want 0..255", errUsage, unit)
			}
			if unit == 0 {
				fmt.Fprintln(g.stderr, "warning: unit 0 is the broadcast address: on a gateway the command reaches every device behind it, and only a rule that names unit 0 allows it")
			}
			pdu, err := approvals.ParseWrite(regs, coil, pduHex)
			if err != nil {
				return fmt.Errorf("%w: %v", errUsage, err)
			}
			env, err := g.approvals(cmd)
			if err != nil {
				return err
			}
			defer env.conn.Close()
			p, err := approvals.ProposeCommand(cmd.Context(), env.store, env.pol, device, byte(unit), pdu, ttl, keyPath)
			if errors.Is(err, approvals.ErrTTL) {
				return fmt.Errorf("%w: %w", errUsage, err)
			}
			if err != nil {
				return err
			}
			pr, rule := p.Proposal, p.Rule
			fmt.Fprintf(g.stdout, "proposal %s\n  %s\n  by %s, valid until %s, needs %d of %s (rule %s)\n  approve with: %s approve %s --key KEY\n",
				p.ID, pr.Describe(), p.Proposer, pr.NotAfter.Local().Format(time.RFC3339), rule.Requires.M, rule.Requires.Group, rule.Name, g.prog, p.ID)
			return nil
		},
	}
	cmd.Flags().StringVar(&device, "device", "", "device name in the policy")
	cmd.Flags().IntVar(&unit, "unit", 1, "unit id")
	cmd.Flags().StringVar(&regs, "write-register", "", "ADDRESS=VALUE[,VALUE…]: function 6 for one value, 16 for several (0-based address)")
	cmd.Flags().StringVar(&coil, "write-coil", "", "ADDRESS=on|off: function 5")
	cmd.Flags().StringVar(&pduHex, "pdu", "", "the exact request PDU in hex, for any other write")
	cmd.Flags().DurationVar(&ttl, "ttl", 15*time.Minute, "how long the approval stays valid")
	cmd.Flags().StringVar(&keyPath, "key", "", "the proposer's private keyset")
	return cmd
}

func approveCmd(g *globals) *cobra.Command {
	var keyPath string
	var yes bool
	cmd := &cobra.Command{
		Use:   "approve ID --key FILE [--yes]",
		Short: "Show a proposed command and sign it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if keyPath == "" {
				return fmt.Errorf("%w: --key FILE is required", errUsage)
			}
			env, id, err := g.approval(cmd, args[0])
			if err != nil {
				return err
			}
			defer env.conn.Close()
			var confirm func(string) bool
			if !yes {
				confirm = func(who string) bool {
					fmt.Fprintf(g.stdout, "Sign this command as %s? Type yes: ", who)
					line, _ := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
					return strings.TrimSpace(line) == "yes"
				}
			}
			who, ev, err := approvals.SignCommand(cmd.Context(), env.store, env.pol, id, keyPath, g.stdout, confirm)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "signed as %s: %s\n", who, ev.Summary())
			return nil
		},
	}
	cmd.Flags().StringVar(&keyPath, "key", "", "the approver's private keyset")
	cmd.Flags().BoolVar(&yes, "yes", false, "sign without asking (scripts)")
	return cmd
}

func approvalsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "approvals", Short: "List and show m-of-n approvals"}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List approvals with their state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			env, err := g.approvals(cmd)
			if err != nil {
				return err
			}
			defer env.conn.Close()
			all, err := env.store.List(cmd.Context())
			if err != nil {
				return err
			}
			return approvals.WriteList(g.stdout, env.pol, all, time.Now())
		},
	}, &cobra.Command{
		Use:   "show ID",
		Short: "Show one approval and its signatures",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			env, id, err := g.approval(cmd, args[0])
			if err != nil {
				return err
			}
			defer env.conn.Close()
			st, err := env.store.Get(cmd.Context(), id)
			if err != nil {
				return err
			}
			st.WriteText(g.stdout, env.pol, time.Now())
			return nil
		},
	})
	return cmd
}

// approval opens the approvals and resolves the approval s names (a full
// id or a unique prefix, Store.Resolve); an id that names none is a usage
// error.
func (g *globals) approval(cmd *cobra.Command, s string) (*approvalsEnv, approvals.ID, error) {
	if _, err := hex.DecodeString(s); err != nil || len(s) > 64 {
		return nil, approvals.ID{}, fmt.Errorf("%w: approval id %q: want hex digits", errUsage, s)
	}
	env, err := g.approvals(cmd)
	if err != nil {
		return nil, approvals.ID{}, err
	}
	id, err := env.store.Resolve(cmd.Context(), s)
	if errors.Is(err, approvals.ErrBadID) {
		err = fmt.Errorf("%w: %w", errUsage, err)
	}
	if err != nil {
		env.conn.Close()
		return nil, id, err
	}
	return env, id, nil
}

func policyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Sign, verify, learn and test policies"}
	var keyPath, rootPath string
	var threshold int
	sign := &cobra.Command{
		Use:   "sign FILE --key KEY",
		Short: "Add a policy admin's signature to FILE.sig",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			s, err := cli.LoadRequired(keyPath, "--key KEY is required", keys.LoadSigner)
			if err != nil {
				return err
			}
			if err := policy.SignPolicy(args[0], s); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "signed %s with key %d (signatures in %s)\n", args[0], s.KeyID, policy.SigPath(args[0]))
			return nil
		},
	}
	sign.Flags().StringVar(&keyPath, "key", "", "the admin's private keyset")
	verify := &cobra.Command{
		Use:   "verify FILE --root ROOT",
		Short: "Check FILE parses and carries enough admin signatures",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			root, err := cli.LoadRequired(rootPath, "--root ROOT is required", policy.LoadRoot)
			if err != nil {
				return err
			}
			p, names, err := policy.LoadSigned(args[0], root)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "policy %s v%d (sha256 %s) signed by %s: %d of %d required\n",
				p.ID, p.Version, p.Digest, strings.Join(names, ", "), len(names), root.Threshold)
			return nil
		},
	}
	verify.Flags().StringVar(&rootPath, "root", "", "the admins' root trust file")
	root := &cobra.Command{
		Use:   "root --threshold M ADMIN.public.json...",
		Short: "Print a root trust file for these admins' public keysets",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if threshold < 1 || threshold > len(args) {
				return fmt.Errorf("%w: --threshold %d: want 1..%d", errUsage, threshold, len(args))
			}
			b, err := policy.FormatRoot(threshold, args)
			if err != nil {
				return err
			}
			_, err = g.stdout.Write(b)
			return err
		},
	}
	root.Flags().IntVar(&threshold, "threshold", 2, "how many admins must sign")
	cmd.AddCommand(sign, verify, root, policyApproversCmd(g), policyLearnCmd(g), policyWhatIfCmd(g))
	return cmd
}
