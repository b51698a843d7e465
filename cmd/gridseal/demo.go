package main

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"time"

	mbclient "github.com/simonvetter/modbus"
	"github.com/spf13/cobra"

	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/proxy"
	"github.com/gridseal/gridseal/simulators"
)

// demoPolicy is deploy/examples/policy.yaml (a test keeps the two equal).
//
//go:embed demo-policy.yaml
var demoPolicy []byte

func demoCmd(g *globals) *cobra.Command {
	var (
		listen   string
		simAddr  string
		duration time.Duration
		tour     bool
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run simulators, proxy and example policy in one process, with a guided tour",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			log, err := g.logger("", "")
			if err != nil {
				return err
			}
			pol, err := policy.Parse("demo-policy.yaml", demoPolicy)
			if err != nil {
				return err
			}
			plant, err := simulators.NewStandardPlant("all", simulators.Options{})
			if err != nil {
				return err
			}
			if simAddr == "" {
				simAddr = pol.Device("inverter-1").Upstream
			}
			sim, err := simulators.Start(simAddr, plant)
			if err != nil {
				return fmt.Errorf("start simulators: %w (is another demo running?)", err)
			}
			defer func() { _ = sim.Stop() }()
			if up := pol.Device("inverter-1").Upstream; sim.Addr != up {
				// The simulators moved: so do the policy's upstreams (and its digest).
				pol, err = policy.Parse("demo-policy.yaml", bytes.ReplaceAll(demoPolicy, []byte(up), []byte(sim.Addr)))
				if err != nil {
					return err
				}
			}
			specs, err := routes([]listenerConfig{{Listen: listen, Devices: []string{"inverter-1", "battery-1", "breaker-1"}}}, pol)
			if err != nil {
				return err
			}
			signer, err := g.demoKey(demoWriter)
			if err != nil {
				return err
			}
			rec, err := g.openRecorder(ctx, chain.Config{Writer: demoWriter, Signer: signer}, log)
			if err != nil {
				return err
			}
			defer rec.close()
			st, err := startProxy(ctx, proxy.DefaultConfig(), pol, specs, rec.rec, log)
			if err != nil {
				return err
			}
			addr := st.addrs[0]
			printBanner(g.stdout, sim.Addr, addr, pol)
			fmt.Fprintf(g.stdout, `
Every operation is recorded in the hash chain (writer %s, embedded NATS JetStream under %s):
  gridseal chain tail --data-dir %s            # newest operations (add --follow to stream them)
  gridseal chain tail --data-dir %s --verdict deny
  gridseal chain verify --data-dir %s          # every hash, Merkle root and signature
`, demoWriter, g.dataDir, g.dataDir, g.dataDir, g.dataDir)
			if tour {
				if err := runTour(ctx, g.stdout, addr); err != nil {
					_ = st.srv.Close()
					return fmt.Errorf("demo tour: %w", err)
				}
				fmt.Fprintln(g.stdout, "\nThe proxy keeps running; try the commands above. Ctrl-C stops it.")
			}
			if duration > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, duration)
				defer cancel()
			}
			return st.wait(ctx)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:5020", "proxy listen address")
	cmd.Flags().StringVar(&simAddr, "sim-listen", "", "simulators' address (default: the example policy's upstream, 127.0.0.1:15020)")
	cmd.Flags().DurationVar(&duration, "duration", 0, "stop this long after the tour (0: run until interrupted)")
	cmd.Flags().BoolVar(&tour, "tour", true, "run the guided tour of allowed and denied commands at start")
	return cmd
}

// demoWriter is the demo proxy's writer id.
const demoWriter = "demo-gw"

// demoKey loads the demo writer's key from --data-dir, creating it and a
// trust file pinning its public half on first use.
func (g *globals) demoKey(writer string) (*keys.Signer, error) {
	dir := filepath.Join(g.dataDir, "keys")
	priv, pub := keys.Paths(dir, writer)
	if _, err := os.Stat(priv); errors.Is(err, os.ErrNotExist) {
		h, err := keys.New(keys.Ed25519)
		if err != nil {
			return nil, err
		}
		if _, _, err := keys.WritePair(dir, writer, h); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(g.defaultTrust()); errors.Is(err, os.ErrNotExist) {
		if err := chain.WriteTrust(g.defaultTrust(), writer, pub); err != nil {
			return nil, err
		}
	}
	return keys.LoadSigner(priv)
}

func printBanner(w io.Writer, sim, addr string, pol *policy.Policy) {
	host, port := splitHostPort(addr)
	fmt.Fprintf(w, `gridseal demo
  simulators  %s   unit 1 PV inverter, unit 2 battery, unit 3 breaker
  proxy       %s   policy %s v%d (sha256 %s…)
  operations are logged as "modbus operation" lines on stderr

Try it with mbpoll (apt-get install mbpoll; -0 = 0-based addresses):
  mbpoll -m tcp -p %s -a 1 -0 -t 4 -r 40084 -c 1 -1 %s      # inverter AC power, 10 W steps
  mbpoll -m tcp -p %s -a 1 -0 -t 4 -r 40127 -1 %s 30       # power limit 30 %% (rule power-limit-setpoint)
  mbpoll -m tcp -p %s -a 1 -0 -t 4 -r 40126 -1 %s 0        # disconnect inverter: denied, exception 2
  mbpoll -m tcp -p %s -a 2 -0 -t 3 -r 0 -c 3 -1 %s          # battery SoC, power, alarms
  mbpoll -m tcp -p %s -a 3 -0 -t 0 -r 1 -1 %s 1            # open breaker: denied, exception 1
`, sim, addr, pol.ID, pol.Version, pol.Digest[:12], port, host, port, host, port, host, port, host, port, host)
}

func splitHostPort(addr string) (string, string) {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			return addr[:i], addr[i+1:]
		}
	}
	return addr, ""
}

// runTour drives the demo through the proxy as an operator would, printing
// what was allowed, what was denied, and how the inverter's physics answered.
func runTour(ctx context.Context, w io.Writer, addr string) error {
	c, err := mbclient.NewClient(&mbclient.ClientConfiguration{
		URL: "tcp://" + addr, Timeout: 5 * time.Second, Logger: log.New(io.Discard, "", 0),
	})
	if err != nil {
		return err
	}
	if err := c.Open(); err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	step := func(format string, args ...any) { fmt.Fprintf(w, "\n» "+format+"\n", args...) }
	readPower := func() (float64, error) {
		if err := c.SetUnitId(simulators.UnitInverter); err != nil {
			return 0, err
		}
		v, err := c.ReadRegister(simulators.InverterPower, mbclient.HOLDING_REGISTER)
		return float64(v) * 10 / 1000, err
	}

	fmt.Fprintln(w, "\nGuided tour (each request goes through the proxy):")
	p, err := readPower()
	if err != nil {
		return fmt.Errorf("read inverter power: %w", err)
	}
	step("read inverter AC power (allowed by rule inverter-telemetry): %.1f kW", p)

	_ = c.SetUnitId(simulators.UnitInverter)
	err = c.WriteRegister(simulators.InverterConn, 0)
	step("write 0 to 40126 to disconnect the inverter: %s", outcome(err))
	if !errors.Is(err, mbclient.ErrIllegalDataAddress) {
		return fmt.Errorf("disconnect was not denied: %v", err)
	}

	if err := c.WriteRegister(simulators.InverterLimitPct, 30); err != nil {
		return fmt.Errorf("power limit 30 %%: %w", err)
	}
	step("write 30 to 40127, the power limit in %% (allowed by rule power-limit-setpoint): forwarded")
	for i := 0; i < 8; i++ {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
		p, err := readPower()
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "   t+%.1fs  inverter output %.1f kW\n", float64(i+1)/2, p)
	}

	_ = c.SetUnitId(simulators.UnitInverter)
	err = c.WriteRegister(simulators.InverterLimitPct, 150)
	step("write 150 to 40127: %s", outcome(err))

	_ = c.SetUnitId(simulators.UnitBattery)
	err = c.WriteRegister(simulators.BatterySetpoint, 80)
	step("battery: discharge 80 kW (rule allows ±50): %s", outcome(err))

	_ = c.SetUnitId(simulators.UnitBreaker)
	err = c.WriteCoil(simulators.BreakerCoilOpen, true)
	step("breaker: open the feeder (no rule allows it yet; approvals will): %s", outcome(err))

	_ = c.SetUnitId(9)
	_, err = c.ReadRegister(0, mbclient.HOLDING_REGISTER)
	step("read from unit 9, which no device answers for: %s", outcome(err))
	return nil
}

func outcome(err error) string {
	if err == nil {
		return "forwarded"
	}
	return "denied by gridseal: " + err.Error()
}
