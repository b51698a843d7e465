package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/gridseal/gridseal/internal/bench"
	"github.com/gridseal/gridseal/internal/loadgen"
)

func benchCmd(g *globals) *cobra.Command {
	var f bench.Flags
	cmd := &cobra.Command{
		Use:   "bench [--clients N] [--duration D] [--direct ADDR] [--via ADDR]",
		Short: "Measure gridseal against a direct connection and a bare TCP relay",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageOf(bench.Run(cmd.Context(), f, g.stdout, g.stderr))
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.Clients, "clients", "1,16,256", "client connections (a comma list runs each)")
	fl.DurationVar(&f.Duration, "duration", 6*time.Second, "measuring time per target and client count, split over the rounds")
	fl.IntVar(&f.Pipeline, "pipeline", 1, "requests in flight per connection")
	fl.StringVar(&f.Mix, "mix", "read=100,write=0", "request mix for the overhead scenario")
	fl.StringVar(&f.Direct, "direct", "", "a device to measure directly")
	fl.StringVar(&f.Via, "via", "", "a gridseal proxy in front of that device")
	fl.BoolVar(&f.JSON, "json", false, "print one JSON object")
	fl.IntVar(&f.Rounds, "rounds", 3, "interleaved rounds, so machine noise hits every target alike")
	fl.StringVar(&f.Scenarios, "scenarios", "overhead,plc,writes,approved,idle", "self-hosted scenarios to run (also: devices)")
	fl.IntVar(&f.Devices, "devices", 200, "devices scenario: devices behind one gridseal, a listener each and all on one gateway listener")
	fl.IntVar(&f.DeviceClients, "device-clients", 4, "devices scenario: clients to each device")
	fl.StringVar(&f.CPUProfile, "cpuprofile", "", "write a CPU profile of this process (the load generator; with --in-process also proxy and NATS) to this file")
	fl.BoolVar(&f.Console, "console", false, "run gridseal with its console on, as its default configuration does (the console's verifier, tiler and live view read every block)")
	fl.StringVar(&f.Dir, "dir", "", "directory for gridseal's journal and stores, on the disk it will have at the site (default: the system's temporary directory); the report gives that disk's fsync")
	fl.BoolVar(&f.InProcess, "in-process", false, "run device, relay, gridseal and NATS in this process (for profiling) instead of each as a process of its own, as deployed")
	return cmd
}

// usageOf makes the bench's *UsageError a usage error (exit 2).
func usageOf(err error) error {
	if ue := (*bench.UsageError)(nil); errors.As(err, &ue) {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	return err
}

// benchServeCmd runs one of the bench's targets as a process of its own:
// a zero-latency (or PLC-like) device, or a bare TCP relay. It prints
// "listening ADDR" once it listens. Hidden: the bench starts it.
func benchServeCmd() *cobra.Command {
	var listen, to string
	var devices int
	var dev loadgen.Device
	cmd := &cobra.Command{
		Use:    "bench-serve device|relay",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return usageOf(bench.Serve(cmd.Context(), cmd.OutOrStdout(), args[0], listen, to, devices, &dev))
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:0", "address to serve on")
	cmd.Flags().StringVar(&to, "to", "", "the relay's upstream")
	cmd.Flags().DurationVar(&dev.ServiceTime, "service-time", 0, "the device's time per request")
	cmd.Flags().BoolVar(&dev.Serial, "serial", false, "the device serves one request at a time, as a PLC's CPU does")
	cmd.Flags().IntVar(&devices, "devices", 1, "devices to serve, each on a port of its own; above 1 the i-th answers unit id i only")
	return cmd
}
