package main

import (
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/gridseal/gridseal/gateway"
	"github.com/gridseal/gridseal/internal/cli"
)

func proxyCmd(g *globals) *cobra.Command {
	var configPath, httpAddr string
	cmd := &cobra.Command{
		Use:   "proxy --config FILE",
		Short: "Run the firewall in front of the devices a configuration names",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := cli.LoadRequired(configPath, "--config FILE is required (see deploy/examples/gridseal.yaml)", gateway.Load)
			if err != nil {
				return err
			}
			log, err := g.logger(cfg.Log.Level, cfg.Log.Format)
			if err != nil {
				return err
			}
			defer func() { _ = log.Sync() }()
			if cmd.Flags().Changed("http") || cfg.Console.Listen == "" {
				cfg.Console.Listen = httpAddr
			}
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP) // before serving: a SIGHUP from now on reloads
			defer signal.Stop(hup)
			ctx := cmd.Context()
			gw, err := gateway.New(ctx, cfg, g.gatewayOptions(log))
			if err != nil {
				return err
			}
			defer gw.Close()
			go gw.ReloadOn(ctx, hup)
			return gw.Run(ctx)
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "configuration file (YAML)")
	cmd.Flags().StringVar(&httpAddr, "http", "127.0.0.1:8080", "console, /metrics, /healthz and /readyz address (off: none); overrides console.listen")
	return cmd
}
