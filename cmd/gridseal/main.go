// Command gridseal is the command-integrity firewall for Modbus/TCP grid
// controllers: the proxy, the bundled PLC simulators and the demo that wires
// them together. See the README for the two commands a newcomer needs.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"syscall"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/gridseal/gridseal/internal/cli"
	"github.com/gridseal/gridseal/internal/logging"
	"github.com/gridseal/gridseal/internal/natsembed"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	wd, _ := os.Getwd()
	code := runAs(ctx, cli.CommandName(os.Args[0], wd), os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
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
	nats              natsembed.ConnectOptions // the --nats flags
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
		if (g.nats.Cert == "") != (g.nats.Key == "") {
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
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetArgs(args)
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "auto", "log format: console, json, or auto (console on a terminal)")
	root.PersistentFlags().StringVar(&g.nats.URL, "nats", "", "NATS URL(s) of the chain's JetStream (default: the embedded server under --data-dir)")
	root.PersistentFlags().StringVar(&g.nats.Creds, "nats-creds", "", "NATS credentials file (JWT and nkey) for --nats")
	root.PersistentFlags().StringVar(&g.nats.CA, "nats-tls-ca", "", "CA bundle to verify the NATS servers of --nats")
	root.PersistentFlags().StringVar(&g.nats.Cert, "nats-tls-cert", "", "client certificate for --nats (with --nats-tls-key)")
	root.PersistentFlags().StringVar(&g.nats.Key, "nats-tls-key", "", "client key for --nats-tls-cert")
	root.PersistentFlags().StringVar(&g.dataDir, "data-dir", "gridseal-data", "directory for the embedded NATS store, keys, local chain heads and trust file")
	root.AddCommand(proxyCmd(g), simCmd(g), demoCmd(g), keysCmd(g), chainCmd(g), proposeCmd(g), approveCmd(g),
		approvalsCmd(g), policyCmd(g), benchCmd(g), benchServeCmd(), versionCmd(g), mirrorCmd(g))
	return cli.Execute(ctx, root, stderr)
}

// errUsage marks a command line that cannot be run as written: exit 2.
var errUsage = cli.ErrUsage

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
