package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gridseal/gridseal/internal/bench"
	"github.com/gridseal/gridseal/internal/loadgen"
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
		inProcess bool
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
			if !inProcess && direct == "" && via == "" {
				self, err := os.Executable()
				if err != nil {
					return err
				}
				dir, err := os.MkdirTemp("", "gridseal-bench-")
				if err != nil {
					return err
				}
				defer func() { _ = os.RemoveAll(dir) }() // the children's stores: nothing to keep
				b.Procs = &bench.Procs{Self: self, Dir: dir}
			}
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
	cmd.Flags().StringVar(&cpuprof, "cpuprofile", "", "write a CPU profile of this process (the load generator; with --in-process also proxy and NATS) to this file")
	cmd.Flags().BoolVar(&inProcess, "in-process", false, "run device, relay, gridseal and NATS in this process (for profiling) instead of each as a process of its own, as deployed")
	return cmd
}

// benchServeCmd runs one of the bench's targets as a process of its own:
// a zero-latency (or PLC-like) device, or a bare TCP relay. It prints
// "listening ADDR" once it listens. Hidden: the bench starts it.
func benchServeCmd() *cobra.Command {
	var listen, to string
	var serviceTime time.Duration
	var serial bool
	cmd := &cobra.Command{
		Use:    "bench-serve device|relay",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			switch args[0] {
			case "device":
				dev := &loadgen.Device{ServiceTime: serviceTime, Serial: serial}
				go dev.Serve(ln)
				defer dev.Close()
			case "relay":
				if to == "" {
					_ = ln.Close()
					return fmt.Errorf("%w: relay needs --to ADDR", errUsage)
				}
				rel := &loadgen.Relay{Upstream: to}
				go rel.Serve(ln)
				defer rel.Close()
			default:
				_ = ln.Close()
				return fmt.Errorf("%w: bench-serve %q: want device or relay", errUsage, args[0])
			}
			fmt.Fprintf(cmd.OutOrStdout(), "listening %s\n", ln.Addr())
			<-cmd.Context().Done()
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:0", "address to serve on")
	cmd.Flags().StringVar(&to, "to", "", "the relay's upstream")
	cmd.Flags().DurationVar(&serviceTime, "service-time", 0, "the device's time per request")
	cmd.Flags().BoolVar(&serial, "serial", false, "the device serves one request at a time, as a PLC's CPU does")
	return cmd
}
