// Package cli holds the conventions every gridseal command keeps: a
// wrong command line is a usage error (exit 2), any other failure one
// line on standard error (exit 1); a group of commands refuses an unknown
// subcommand and suggests the nearest; times are RFC 3339 or a duration
// ago; the commands gridseal prints for a user to try next start the way
// the user started it.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// ErrUsage marks a command line that cannot be run as written: exit 2.
var ErrUsage = errors.New("usage")

// Execute runs root with ctx and returns the process exit code: 0, 1 for
// a failure, 2 for a usage error. An error is printed as one line on
// stderr, prefixed "gridseal: ".
//
// With GRIDSEAL_CPUPROFILE set, the whole run is CPU-profiled into that
// file ("%p" in it becomes the process id, for the processes a bench
// starts): how a proxy is profiled as deployed.
func Execute(ctx context.Context, root *cobra.Command, stderr io.Writer) int {
	if path := os.Getenv("GRIDSEAL_CPUPROFILE"); path != "" {
		stop, err := StartCPUProfile(strings.ReplaceAll(path, "%p", strconv.Itoa(os.Getpid())), stderr)
		if err != nil {
			fmt.Fprintf(stderr, "gridseal: GRIDSEAL_CPUPROFILE: %v\n", err)
			return 1
		}
		defer stop()
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return fmt.Errorf("%w: %w", ErrUsage, err) })
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
	if errors.Is(err, ErrUsage) {
		return 2
	}
	return 1
}

// StartCPUProfile profiles this process's CPU into the file at path until
// stop is called; stop reports a failure to close the file on stderr.
func StartCPUProfile(path string, stderr io.Writer) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			fmt.Fprintf(stderr, "gridseal: cpu profile %s: %v\n", path, err)
		}
	}, nil
}

// CommandName is how to run this gridseal again from wd, given how it was
// started (arg0): "gridseal" when the shell found it on PATH (or under go
// run), else its path relative to wd ("bin/gridseal" for make demo, which
// runs ./bin/gridseal) or, when shorter, absolute.
func CommandName(arg0, wd string) string {
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
				return fmt.Errorf("%w: %w", ErrUsage, err)
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
	return fmt.Errorf("%w: unknown command %q for %q%s", ErrUsage, args[0], cmd.CommandPath(), hint)
}

// ParseTime reads a time flag: RFC 3339, or a duration ago (72h); empty
// is the zero time.
func ParseTime(s string) (time.Time, error) {
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

// OneName accepts one argument, a name that check accepts (what names it
// in the error).
func OneName(what string, check func(string) error) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.ExactArgs(1)(cmd, args); err != nil {
			return err
		}
		if err := check(args[0]); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	}
}

// LoadRequired loads the file a required flag names, or says (missing)
// that it is required: a usage error.
func LoadRequired[T any](path, missing string, load func(string) (T, error)) (T, error) {
	if path == "" {
		var none T
		return none, fmt.Errorf("%w: %s", ErrUsage, missing)
	}
	return load(path)
}
