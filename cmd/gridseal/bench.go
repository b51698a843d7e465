package main

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gridseal/gridseal/internal/bench"
)

func benchCmd(g *globals) *cobra.Command {
	var (
		clients   string
		duration  time.Duration
		pipeline  int
		mix       string
		direct    string
		via       string
		asJSON    bool
		rounds    int
		scenarios string
		cpuprof   string
	)
	cmd := &cobra.Command{
		Use:   "bench [--clients N] [--duration D] [--direct ADDR] [--via ADDR]",
		Short: "Measure gridseal against a direct connection and a bare TCP relay",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			writePct, err := bench.ParseMix(mix)
			if err != nil {
				return fmt.Errorf("%w: --mix: %v", errUsage, err)
			}
			var counts []int
			for _, f := range strings.Split(clients, ",") {
				n, err := strconv.Atoi(strings.TrimSpace(f))
				if err != nil || n < 1 || n > 4096 {
					return fmt.Errorf("%w: --clients %q: want numbers 1..4096", errUsage, clients)
				}
				counts = append(counts, n)
			}
			if rounds < 1 || duration < 100*time.Millisecond || pipeline < 1 || pipeline > 512 {
				return fmt.Errorf("%w: want --rounds ≥ 1, --duration ≥ 100ms, --pipeline 1..512", errUsage)
			}
			if cpuprof != "" {
				f, err := os.Create(cpuprof)
				if err != nil {
					return err
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					_ = f.Close()
					return err
				}
				defer func() {
					if err := f.Close(); err != nil {
						fmt.Fprintf(g.stderr, "gridseal: cpu profile %s: %v\n", cpuprof, err)
					}
				}()
				defer pprof.StopCPUProfile()
			}
			b := &bench.Bencher{Stderr: g.stderr, Duration: duration, Rounds: rounds, Pipeline: pipeline, Quiet: asJSON}
			var rep bench.Report
			if direct != "" || via != "" {
				var targets []bench.Target
				if direct != "" {
					targets = append(targets, bench.Target{Name: "direct", Addr: direct})
				}
				if via != "" {
					targets = append(targets, bench.Target{Name: "gridseal", Addr: via})
				}
				for _, n := range counts {
					sr, err := b.Scenario(cmd.Context(), "custom", targets, n, writePct, nil)
					if err != nil {
						return err
					}
					rep.Scenarios = append(rep.Scenarios, *sr)
				}
			} else if rep, err = b.SelfHosted(cmd.Context(), counts, writePct, scenarios); err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(g.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			bench.PrintReport(g.stdout, &rep)
			return nil
		},
	}
	cmd.Flags().StringVar(&clients, "clients", "1,16,256", "client connections (a comma list runs each)")
	cmd.Flags().DurationVar(&duration, "duration", 6*time.Second, "measuring time per target and client count, split over the rounds")
	cmd.Flags().IntVar(&pipeline, "pipeline", 1, "requests in flight per connection")
	cmd.Flags().StringVar(&mix, "mix", "read=100,write=0", "request mix for the overhead scenario")
	cmd.Flags().StringVar(&direct, "direct", "", "a device to measure directly")
	cmd.Flags().StringVar(&via, "via", "", "a gridseal proxy in front of that device")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	cmd.Flags().IntVar(&rounds, "rounds", 3, "interleaved rounds, so machine noise hits every target alike")
	cmd.Flags().StringVar(&scenarios, "scenarios", "overhead,plc,writes,approved,idle", "self-hosted scenarios to run")
	cmd.Flags().StringVar(&cpuprof, "cpuprofile", "", "write a CPU profile of the whole run (proxy, NATS, load generator) to this file")
	return cmd
}
