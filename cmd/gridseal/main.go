// Command gridseal is the command-integrity firewall for Modbus/TCP grid
// controllers: the proxy, the bundled PLC simulators and the demo that wires
// them together. See the README for the two commands a newcomer needs.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/gridseal/gridseal/internal/logging"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	wd, _ := os.Getwd()
	code := runAs(ctx, commandName(os.Args[0], wd), os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// globals are the flags every command takes.
type globals struct {
	logLevel  string
	logFormat string
	// logSet and formatSet say --log-level and --log-format were given:
	// they then win over a configuration file's log section.
	logSet, formatSet bool
	natsURL           string
	natsCreds         string
	natsCA            string
	natsCert          string
	natsKey           string
	dataDir           string
	prog              string // how the user ran gridseal, for the commands we print
	stdout            io.Writer
	stderr            io.Writer
}

// run executes one command line and returns the process exit code. Errors
// are one line on stderr.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return runAs(ctx, "gridseal", args, stdin, stdout, stderr)
}

// runAs is run for a gridseal the user ran as prog: the commands it prints
// for them to try next start with prog.
func runAs(ctx context.Context, prog string, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	g := &globals{prog: prog, stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "gridseal",
		Short:         "Command-integrity firewall for Modbus/TCP grid controllers",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if (g.natsCert == "") != (g.natsKey == "") {
			return fmt.Errorf("%w: --nats-tls-cert and --nats-tls-key go together", errUsage)
		}
		if _, err := zapcore.ParseLevel(g.logLevel); err != nil {
			return fmt.Errorf("%w: --log-level %q: want debug, info, warn or error", errUsage, g.logLevel)
		}
		if !slices.Contains([]string{"auto", "console", "json"}, g.logFormat) {
			return fmt.Errorf("%w: --log-format %q: want console, json or auto", errUsage, g.logFormat)
		}
		g.logSet, g.formatSet = cmd.Flags().Changed("log-level"), cmd.Flags().Changed("log-format")
		return nil
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return fmt.Errorf("%w: %w", errUsage, err) })
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetArgs(args)
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "auto", "log format: console, json, or auto (console on a terminal)")
	root.PersistentFlags().StringVar(&g.natsURL, "nats", "", "NATS URL(s) of the chain's JetStream (default: the embedded server under --data-dir)")
	root.PersistentFlags().StringVar(&g.natsCreds, "nats-creds", "", "NATS credentials file (JWT and nkey) for --nats")
	root.PersistentFlags().StringVar(&g.natsCA, "nats-tls-ca", "", "CA bundle to verify the NATS servers of --nats")
	root.PersistentFlags().StringVar(&g.natsCert, "nats-tls-cert", "", "client certificate for --nats (with --nats-tls-key)")
	root.PersistentFlags().StringVar(&g.natsKey, "nats-tls-key", "", "client key for --nats-tls-cert")
	root.PersistentFlags().StringVar(&g.dataDir, "data-dir", "gridseal-data", "directory for the embedded NATS store, keys, local chain heads and trust file")
	root.AddCommand(proxyCmd(g), simCmd(g), demoCmd(g), keysCmd(g), chainCmd(g), proposeCmd(g), approveCmd(g),
		approvalsCmd(g), policyCmd(g), benchCmd(g), benchServeCmd(), versionCmd(g), mirrorCmd(g))
	usageErrors(root)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	msg := err.Error()
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	fmt.Fprintf(stderr, "gridseal: %s\n", msg)
	if errors.Is(err, errUsage) {
		return 2
	}
	return 1
}

// commandName is how to run this gridseal again from wd, given how it was
// started (arg0): "gridseal" when the shell found it on PATH (or under go
// run), else its path relative to wd ("bin/gridseal" for make demo, which
// runs ./bin/gridseal) or, when shorter, absolute.
func commandName(arg0, wd string) string {
	if !strings.ContainsRune(arg0, filepath.Separator) || strings.Contains(arg0, "go-build") {
		return "gridseal"
	}
	abs := arg0
	if !filepath.IsAbs(abs) {
		abs = filepath.Join(wd, abs)
	}
	rel, err := filepath.Rel(wd, abs)
	if err != nil || len(rel) >= len(abs) {
		return abs
	}
	if !strings.ContainsRune(rel, filepath.Separator) {
		rel = "./" + rel // not a PATH lookup
	}
	return rel
}

// errUsage marks a command line that cannot be run as written: exit 2.
var errUsage = errors.New("usage")

// usageErrors makes every wrong command line under c a usage error (exit
// 2): a command that only groups others (chain, keys, …) refuses an unknown
// subcommand, suggesting the nearest, and prints its help when given none;
// a command given the wrong arguments says so.
func usageErrors(c *cobra.Command) {
	if c.HasSubCommands() {
		c.Args = unknownSubcommand
		if c.RunE == nil && c.Run == nil {
			c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
		}
	} else if check := c.Args; check != nil {
		c.Args = func(cmd *cobra.Command, args []string) error {
			if err := check(cmd, args); err != nil {
				return fmt.Errorf("%w: %w", errUsage, err)
			}
			return nil
		}
	}
	for _, sub := range c.Commands() {
		usageErrors(sub)
	}
}

// unknownSubcommand refuses any argument to a command that only groups
// subcommands: cobra hands it the words it found no subcommand for.
func unknownSubcommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	cmd.SuggestionsMinimumDistance = 2
	hint := fmt.Sprintf(" (run %s --help)", cmd.CommandPath())
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		hint = fmt.Sprintf("; did you mean %q?", s[0])
	}
	return fmt.Errorf("%w: unknown command %q for %q%s", errUsage, args[0], cmd.CommandPath(), hint)
}

// logger builds the process logger: console on a terminal, JSON otherwise.
func (g *globals) logger(level, format string) (*zap.Logger, error) {
	if level == "" || g.logSet {
		level = g.logLevel
	}
	if format == "" || format == "auto" || g.formatSet {
		format = g.logFormat
	}
	return logging.New(g.stderr, level, format)
}
