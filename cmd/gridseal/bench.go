package main

import (
	"encoding/json"
	"errors"
	"fmt"
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
		devices   [2]int // the devices scenario: devices, clients each
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
			counts, err := bench.ParseClients(clients)
			if err != nil {
				return fmt.Errorf("%w: --clients %q: %v", errUsage, clients, err)
			}
			if rounds < 1 || duration < 100*time.Millisecond || pipeline < 1 || pipeline > 512 || devices[0] < 1 || devices[0] > bench.MaxDevices || devices[1] < 1 {
				return fmt.Errorf("%w: want --rounds ≥ 1, --duration ≥ 100ms, --pipeline 1..512, --devices 1..%d, --device-clients ≥ 1", errUsage, bench.MaxDevices)
			}
			if cpuprof != "" {
				stop, err := bench.StartCPUProfile(cpuprof, g.stderr)
				if err != nil {
					return err
				}
				defer stop()
			}
			b := &bench.Bencher{Stderr: g.stderr, Duration: duration, Rounds: rounds, Pipeline: pipeline, Quiet: asJSON, Devices: devices[0], DeviceClients: devices[1]}
			if !inProcess && direct == "" && via == "" {
				procs, cleanup, err := bench.TempProcs()
				if err != nil {
					return err
				}
				defer cleanup()
				b.Procs = procs
			}
			var rep bench.Report
			if direct != "" || via != "" {
				rep, err = b.Custom(cmd.Context(), direct, via, counts, writePct)
			} else {
				rep, err = b.SelfHosted(cmd.Context(), counts, writePct, scenarios)
			}
			if err != nil {
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
	cmd.Flags().StringVar(&scenarios, "scenarios", "overhead,plc,writes,approved,idle", "self-hosted scenarios to run (also: devices)")
	cmd.Flags().IntVar(&devices[0], "devices", 200, "devices scenario: devices behind one gridseal, a listener each and all on one gateway listener")
	cmd.Flags().IntVar(&devices[1], "device-clients", 4, "devices scenario: clients to each device")
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
	var devices int
	cmd := &cobra.Command{
		Use:    "bench-serve device|relay",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			err := bench.Serve(cmd.Context(), cmd.OutOrStdout(), args[0], listen, to, devices, &loadgen.Device{ServiceTime: serviceTime, Serial: serial})
			if ue := (*bench.UsageError)(nil); errors.As(err, &ue) {
				return fmt.Errorf("%w: %w", errUsage, err)
			}
			return err
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:0", "address to serve on")
	cmd.Flags().StringVar(&to, "to", "", "the relay's upstream")
	cmd.Flags().DurationVar(&serviceTime, "service-time", 0, "the device's time per request")
	cmd.Flags().BoolVar(&serial, "serial", false, "the device serves one request at a time, as a PLC's CPU does")
	cmd.Flags().IntVar(&devices, "devices", 1, "devices to serve, each on a port of its own; above 1 the i-th answers unit id i only")
	return cmd
}
