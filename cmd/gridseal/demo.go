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
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	mbclient "github.com/simonvetter/modbus"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/mod/sumdb/note"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/proxy"
	"github.com/gridseal/gridseal/simulators"
)

// demoPolicy is the demo's policy template; the demo appends its approvers.
//
//go:embed demo-policy.yaml
var demoPolicy []byte

// Names of the demo's writer, approvers and policy admins.
const (
	demoWriter       = "demo-gw"
	demoCheckpointer = "demo-checkpointer"
)

var (
	demoApprovers = []string{"alice", "bob", "carol"}
	demoAdmins    = []string{"admin-1", "admin-2"}
)

func demoCmd(g *globals) *cobra.Command {
	var (
		listen   string
		httpAddr string
		cpEvery  time.Duration
		simAddr  string
		duration time.Duration
		tour     bool
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run simulators, proxy, chain and approvals in one process, with a guided tour",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			log, err := g.logger("", "")
			if err != nil {
				return err
			}
			plant, err := simulators.NewStandardPlant("all", simulators.Options{})
			if err != nil {
				return err
			}
			if simAddr == "" {
				simAddr = "127.0.0.1:15020"
			}
			sim, err := simulators.Start(simAddr, plant)
			if err != nil {
				return fmt.Errorf("start simulators: %w (is another demo running?)", err)
			}
			defer func() { _ = sim.Stop() }()
			pol, err := g.demoPolicy(sim.Addr)
			if err != nil {
				return err
			}
			specs, err := routes([]listenerConfig{{Listen: listen, Devices: []string{"inverter-1", "battery-1", "breaker-1"}}}, pol)
			if err != nil {
				return err
			}
			signer, err := g.demoKey(demoWriter)
			if err != nil {
				return err
			}
			cpSigner, err := g.demoTrust()
			if err != nil {
				return err
			}
			reg := prometheus.NewRegistry()
			rec, err := g.openRecorder(ctx, chain.Config{Writer: demoWriter, Signer: signer, Observe: chainObserver(reg)}, log)
			if err != nil {
				return err
			}
			defer rec.close()
			engine := policy.NewEngine(pol, log.Named("policy"))
			store, err := rec.startApprovals(ctx, engine, demoWriter, 1)
			if err != nil {
				return err
			}
			rec.startCheckpointer(ctx, cpSigner, cpEvery)
			obs := newObservability(reg, rec.rec)
			// The tour narrates each request and the chain, console and
			// `chain tail` show every operation; a log line per operation
			// would bury the narration (--log-level debug brings them back).
			opsLog := log
			if g.logLevel != "debug" {
				opsLog = log.WithOptions(zap.IncreaseLevel(zapcore.ErrorLevel))
			}
			st, err := startProxy(ctx, proxy.DefaultConfig(), engine, specs, nil, obs.recorders(rec.rec, opsLog), log)
			if err != nil {
				return err
			}
			g.consoleFallback = !cmd.Flags().Changed("http")
			cs, err := (&consoleConfig{}).setup(g.dataDir, httpAddr)
			if err != nil {
				_ = st.srv.Close()
				return err
			}
			if err := g.startConsole(ctx, cs, obs, rec, st, engine, store, g.defaultTrust(), log); err != nil {
				_ = st.srv.Close()
				return err
			}
			addr := st.addrs[0]
			printBanner(g, sim.Addr, addr, pol)
			if obs.url != "" {
				fmt.Fprintf(g.stdout, "\nSOC console: %s   (metrics: %smetrics)\n", obs.url, obs.url)
			}
			if tour {
				t := &tourGuide{w: g.stdout, addr: addr, store: store, pol: pol, keys: filepath.Join(g.dataDir, "keys")}
				if err := t.run(ctx); err != nil {
					_ = st.srv.Close()
					return fmt.Errorf("demo tour: %w", err)
				}
				fmt.Fprintf(g.stdout, "\nThe chain holds every step above:\n  gridseal chain tail --data-dir %s -n 40\n  gridseal chain verify --data-dir %s\n", g.dataDir, g.dataDir)
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
	cmd.Flags().StringVar(&httpAddr, "http", "127.0.0.1:8080", "console and /metrics address (off: none)")
	cmd.Flags().DurationVar(&cpEvery, "checkpoint-every", 5*time.Second, "how often the demo's checkpointer signs the stream's tree")
	cmd.Flags().StringVar(&simAddr, "sim-listen", "", "simulators' address (default 127.0.0.1:15020)")
	cmd.Flags().DurationVar(&duration, "duration", 0, "stop this long after the tour (0: run until interrupted)")
	cmd.Flags().BoolVar(&tour, "tour", true, "run the guided tour of allowed, denied and approved commands at start")
	return cmd
}

// demoKey loads a demo keyset from --data-dir/keys, creating it on first use.
func (g *globals) demoKey(name string) (*keys.Signer, error) {
	dir := filepath.Join(g.dataDir, "keys")
	priv, _ := keys.Paths(dir, name)
	if _, err := os.Stat(priv); errors.Is(err, os.ErrNotExist) {
		h, err := keys.New(keys.Ed25519)
		if err != nil {
			return nil, err
		}
		if _, _, err := keys.WritePair(dir, name, h); err != nil {
			return nil, err
		}
	}
	return keys.LoadSigner(priv)
}

// demoTrust pins the demo writer's public keyset for chain verify.
// demoTrust pins the demo writer's public keyset and the demo
// checkpointer's verifier key for chain verify, and returns the
// checkpointer's signer.
func (g *globals) demoTrust() (note.Signer, error) {
	dir := filepath.Join(g.dataDir, "keys")
	sp, vp := checkpointKeyPaths(dir, demoCheckpointer)
	if _, err := os.Stat(sp); errors.Is(err, os.ErrNotExist) {
		if _, err := newCheckpointKey(dir, demoCheckpointer); err != nil {
			return nil, err
		}
	}
	vkey, err := os.ReadFile(vp)
	if err != nil {
		return nil, err
	}
	_, pub := keys.Paths(dir, demoWriter)
	if err := chain.WriteTrust(g.defaultTrust(), demoWriter, pub, strings.TrimSpace(string(vkey))); err != nil {
		return nil, err
	}
	return loadCheckpointSigner(sp)
}

// demoPolicy writes the demo policy with its approvers and the simulators'
// address, has the demo admins sign it, and loads it as the proxy does: only
// with enough admin signatures.
func (g *globals) demoPolicy(simAddr string) (*policy.Policy, error) {
	var b bytes.Buffer
	b.Write(bytes.ReplaceAll(demoPolicy, []byte("127.0.0.1:15020"), []byte(simAddr)))
	var sb strings.Builder
	sb.WriteString("\napprovers:\n")
	dir := filepath.Join(g.dataDir, "keys")
	for _, name := range demoApprovers {
		if _, err := g.demoKey(name); err != nil {
			return nil, err
		}
		_, pub := keys.Paths(dir, name)
		data, err := os.ReadFile(pub)
		if err != nil {
			return nil, err
		}
		writeKeysetEntry(&sb, name, []string{"operators"}, data)
	}
	b.WriteString(sb.String())
	path := filepath.Join(g.dataDir, "policy.yaml")
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		return nil, err
	}
	var root strings.Builder
	fmt.Fprintf(&root, "threshold: %d\nadmins:\n", len(demoAdmins))
	var signers []*keys.Signer
	for _, name := range demoAdmins {
		s, err := g.demoKey(name)
		if err != nil {
			return nil, err
		}
		signers = append(signers, s)
		_, pub := keys.Paths(dir, name)
		data, err := os.ReadFile(pub)
		if err != nil {
			return nil, err
		}
		writeKeysetEntry(&root, name, nil, data)
	}
	rootPath := filepath.Join(g.dataDir, "policy-root.yaml")
	if err := os.WriteFile(rootPath, []byte(root.String()), 0o644); err != nil {
		return nil, err
	}
	_ = os.Remove(policy.SigPath(path))
	for _, s := range signers {
		if err := policy.SignPolicy(path, s); err != nil {
			return nil, err
		}
	}
	r, err := policy.LoadRoot(rootPath)
	if err != nil {
		return nil, err
	}
	p, _, err := policy.LoadSigned(path, r)
	return p, err
}

func printBanner(g *globals, sim, addr string, pol *policy.Policy) {
	host, port := splitHostPort(addr)
	d := g.dataDir
	fmt.Fprintf(g.stdout, `gridseal demo
  simulators  %s   unit 1 PV inverter, unit 2 battery, unit 3 breaker
  proxy       %s   policy %s v%d (sha256 %s…), signed by 2 of 2 demo admins
  chain       writer %s on embedded NATS JetStream under %s (fsync always)
  approvers   alice, bob, carol (operators); their keys are in %s/keys

Try it with mbpoll (apt-get install mbpoll; -0 = 0-based addresses):
  mbpoll -m tcp -p %s -a 1 -0 -t 4 -r 40084 -c 1 -1 %s      # inverter AC power, 10 W steps
  mbpoll -m tcp -p %s -a 1 -0 -t 4 -r 40127 -1 %s 60       # power limit 60 %% (standing rule)
  mbpoll -m tcp -p %s -a 1 -0 -t 4 -r 40127 -1 %s 20       # 20 %% needs 2 operators: denied, exception 1
  mbpoll -m tcp -p %s -a 3 -0 -t 0 -r 1 -1 %s 1            # open breaker: needs approval
and approve a command:
  gridseal propose --data-dir %s --device inverter-1 --unit 1 --write-register 40127=20 --key %s/keys/alice.private.json
  gridseal approve ID --data-dir %s --key %s/keys/bob.private.json
  gridseal approvals list --data-dir %s
  gridseal chain tail --data-dir %s --follow
`, sim, addr, pol.ID, pol.Version, pol.Digest[:12], demoWriter, d, d,
		port, host, port, host, port, host, port, host, d, d, d, d, d, d)
}

func splitHostPort(addr string) (string, string) {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return addr, ""
	}
	return addr[:i], addr[i+1:]
}

// tourGuide drives the demo through the proxy as operators would.
type tourGuide struct {
	w     io.Writer
	addr  string
	store *approvals.Store
	pol   *policy.Policy
	keys  string
	c     *mbclient.ModbusClient
}

func (t *tourGuide) step(format string, args ...any) { fmt.Fprintf(t.w, "\n» "+format+"\n", args...) }

func (t *tourGuide) power() (float64, error) {
	if err := t.c.SetUnitId(simulators.UnitInverter); err != nil {
		return 0, err
	}
	v, err := t.c.ReadRegister(simulators.InverterPower, mbclient.HOLDING_REGISTER)
	return float64(v) * 10 / 1000, err
}

// watch prints the inverter's output for a few seconds.
func (t *tourGuide) watch(ctx context.Context) error {
	for i := 0; i < 4; i++ {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
		p, err := t.power()
		if err != nil {
			return err
		}
		fmt.Fprintf(t.w, "   t+%ds  inverter output %.1f kW\n", i+1, p)
	}
	return nil
}

func (t *tourGuide) write(unit uint8, addr, value uint16) error {
	_ = t.c.SetUnitId(unit)
	return t.c.WriteRegister(addr, value)
}

func (t *tourGuide) run(ctx context.Context) error {
	c, err := mbclient.NewClient(&mbclient.ClientConfiguration{
		URL: "tcp://" + t.addr, Timeout: 5 * time.Second, Logger: log.New(io.Discard, "", 0),
	})
	if err != nil {
		return err
	}
	if err := c.Open(); err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	t.c = c

	fmt.Fprintln(t.w, "\nGuided tour (each request goes through the proxy):")
	p, err := t.power()
	if err != nil {
		return fmt.Errorf("read inverter power: %w", err)
	}
	t.step("read inverter AC power (allowed by rule inverter-telemetry): %.1f kW", p)

	err = t.write(simulators.UnitInverter, simulators.InverterConn, 0)
	t.step("write 0 to 40126 to disconnect the inverter: %s", outcome(err))
	if !errors.Is(err, mbclient.ErrIllegalDataAddress) {
		return fmt.Errorf("disconnect was not denied: %v", err)
	}
	if err := t.write(simulators.UnitInverter, simulators.InverterLimitPct, 60); err != nil {
		return fmt.Errorf("power limit 60 %%: %w", err)
	}
	t.step("write 60 to 40127, the power limit in %% (standing rule power-limit-setpoint): forwarded")
	if err := t.watch(ctx); err != nil {
		return err
	}
	err = t.write(simulators.UnitInverter, simulators.InverterLimitPct, 150)
	t.step("write 150 to 40127: %s", outcome(err))
	err = t.write(simulators.UnitBattery, simulators.BatterySetpoint, 80)
	t.step("battery: discharge 80 kW (rule allows ±50): %s", outcome(err))
	_ = t.c.SetUnitId(9)
	_, err = t.c.ReadRegister(0, mbclient.HOLDING_REGISTER)
	t.step("read from unit 9, which no device answers for: %s", outcome(err))

	fmt.Fprintln(t.w, "\nMulti-party approval: curtailing below 50 % takes 2 of the 3 operators.")
	err = t.write(simulators.UnitInverter, simulators.InverterLimitPct, 30)
	t.step("write 30 to 40127: %s", outcome(err))
	if !errors.Is(err, mbclient.ErrIllegalFunction) {
		return fmt.Errorf("deep curtailment without approval was not denied: %v", err)
	}
	id, err := t.propose(ctx, "alice", "inverter-1", simulators.UnitInverter, 30)
	if err != nil {
		return err
	}
	t.step("alice proposes it (gridseal propose --device inverter-1 --unit 1 --write-register 40127=30 --key …/alice.private.json)\n   proposal %s", id)
	if err := t.approve(ctx, id, "bob"); err != nil {
		return err
	}
	err = t.write(simulators.UnitInverter, simulators.InverterLimitPct, 30)
	t.step("bob approves (gridseal approve %s… --key …/bob.private.json); write 30 again: %s", id.String()[:12], outcome(err))
	if err == nil {
		return errors.New("one approval was enough: the quorum is broken")
	}
	if err := t.approve(ctx, id, "carol"); err != nil {
		return err
	}
	err = t.write(simulators.UnitInverter, simulators.InverterLimitPct, 30)
	t.step("carol approves too; write 30 again: %s", outcome(err))
	if err != nil {
		return fmt.Errorf("approved write refused: %w", err)
	}
	if err := t.watch(ctx); err != nil {
		return err
	}
	err = t.write(simulators.UnitInverter, simulators.InverterLimitPct, 30)
	t.step("the same write once more (replay): %s", outcome(err))
	if err == nil {
		return errors.New("an approval was used twice")
	}
	_ = t.c.SetUnitId(simulators.UnitBreaker)
	err = t.c.WriteCoil(simulators.BreakerCoilOpen, true)
	t.step("breaker: open the feeder without approval: %s", outcome(err))
	return nil
}

// propose and approve do what gridseal propose and gridseal approve do.
func (t *tourGuide) propose(ctx context.Context, who, device string, unit uint8, value uint16) (approvals.ID, error) {
	s, err := keys.LoadSigner(filepath.Join(t.keys, who+".private.json"))
	if err != nil {
		return approvals.ID{}, err
	}
	pdu := []byte{6, byte(simulators.InverterLimitPct >> 8), byte(simulators.InverterLimitPct & 0xFF), byte(value >> 8), byte(value)}
	pr, err := approvals.NewProposal(t.pol, device, unit, pdu, 15*time.Minute, who, time.Now())
	if err != nil {
		return approvals.ID{}, err
	}
	sig, err := s.Sign(approvals.ProposeInput(pr.ID()))
	if err != nil {
		return approvals.ID{}, err
	}
	id, err := t.store.Propose(ctx, pr, sig)
	if err != nil {
		return id, err
	}
	return id, t.waitIndexed(ctx, id, 0)
}

func (t *tourGuide) approve(ctx context.Context, id approvals.ID, who string) error {
	s, err := keys.LoadSigner(filepath.Join(t.keys, who+".private.json"))
	if err != nil {
		return err
	}
	sig, err := s.Sign(approvals.ApproveInput(id))
	if err != nil {
		return err
	}
	st, err := t.store.AddSignature(ctx, id, sig)
	if err != nil {
		return err
	}
	return t.waitIndexed(ctx, id, st.Revision)
}

// waitIndexed waits until the proxy's approval index has seen revision rev.
func (t *tourGuide) waitIndexed(ctx context.Context, id approvals.ID, rev uint64) error {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, st := range t.store.Pending() {
			if st.ID == id && st.Revision >= rev {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return fmt.Errorf("approval %s never reached the proxy", id)
}

func outcome(err error) string {
	if err == nil {
		return "forwarded"
	}
	return "denied by gridseal: " + err.Error()
}
