package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/simulators"
)

func simCmd(g *globals) *cobra.Command {
	var (
		listen string
		device string
		speed  float64
		day    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "sim [--listen ADDR] [--device inverter|battery|breaker|all]",
		Short: "Run the bundled PLC simulators (unit 1 inverter, 2 battery, 3 breaker)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger("", "")
			if err != nil {
				return err
			}
			plant, err := simulators.NewStandardPlant(device, simulators.Options{Speed: speed, DayLength: day})
			if err != nil {
				return fmt.Errorf("%w: --device: %v", errUsage, err)
			}
			srv, err := simulators.Start(listen, plant)
			if err != nil {
				return err
			}
			defer func() { _ = srv.Stop() }()
			log.Info("simulators running", zap.String("addr", srv.Addr), zap.String("device", device))
			fmt.Fprintf(g.stdout, "simulators (%s) on %s\n", device, srv.Addr)
			<-cmd.Context().Done()
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:15020", "address to serve Modbus/TCP on")
	cmd.Flags().StringVar(&device, "device", "all", "inverter, battery, breaker or all")
	cmd.Flags().Float64Var(&speed, "speed", 1, "physics speed-up factor")
	cmd.Flags().DurationVar(&day, "day", 20*time.Minute, "length of the inverter's compressed day")
	return cmd
}
