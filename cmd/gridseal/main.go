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
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// version is set at build time: `make build` passes -ldflags "-X
// main.version=…" with the nearest git tag and commit.
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// globals are the flags every command takes.
type globals struct {
	logLevel  string
	logFormat string
	natsURL   string
	natsCreds string
	natsCA    string
	natsCert  string
	natsKey   string
	dataDir   string
	stdout    io.Writer
	stderr    io.Writer
}

// run executes one command line and returns the process exit code. Errors
// are one line on stderr.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "gridseal",
		Short:         "Command-integrity firewall for Modbus/TCP grid controllers",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		if (g.natsCert == "") != (g.natsKey == "") {
			return fmt.Errorf("%w: --nats-tls-cert and --nats-tls-key go together", errUsage)
		}
		return nil
	}
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
		approvalsCmd(g), policyCmd(g), benchCmd(g), versionCmd(g))
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

// errUsage marks a command line that cannot be run as written: exit 2.
var errUsage = errors.New("usage")

func versionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			_, err := fmt.Fprintf(g.stdout, "gridseal %s\n", version)
			return err
		},
	}
}

func nopLogger() *zap.Logger { return zap.NewNop() }

// logger builds the process logger: console on a terminal, JSON otherwise.
func (g *globals) logger(level, format string) (*zap.Logger, error) {
	if level == "" {
		level = g.logLevel
	}
	if format == "" || format == "auto" {
		format = g.logFormat
	}
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	if format == "auto" {
		format = "json"
		if f, ok := g.stderr.(*os.File); ok {
			if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
				format = "console"
			}
		}
	}
	var enc zapcore.Encoder
	switch format {
	case "json":
		ec := zap.NewProductionEncoderConfig()
		ec.EncodeTime = zapcore.ISO8601TimeEncoder
		enc = zapcore.NewJSONEncoder(ec)
	case "console":
		ec := zap.NewDevelopmentEncoderConfig()
		ec.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
		enc = zapcore.NewConsoleEncoder(ec)
	default:
		return nil, fmt.Errorf("--log-format %q: want console, json or auto", format)
	}
	core := zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(g.stderr)), lvl)
	return zap.New(core), nil
}
