// Package demo prepares what `gridseal demo` runs on top of a gateway: the
// demo's keys (writer, checkpointer, three operators, two policy admins)
// under the data directory, a trust file pinning the writer and the
// checkpointer, the demo policy signed by both admins, and the guided tour.
package demo

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/gateway"
	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/simulators"
)

// policyTemplate is the demo's policy; Setup appends its approvers.
//
//go:embed policy.yaml
var policyTemplate []byte

// Names of the demo's writer, checkpointer, approvers and policy admins.
const (
	Writer       = "demo-gw"
	Checkpointer = "demo-checkpointer"
)

var (
	approvers = []string{"alice", "bob", "carol"}
	admins    = []string{"admin-1", "admin-2"}
)

// Setup writes the demo's keys (first use only), trust file and signed
// policy under dataDir, and returns the gateway configuration that serves
// the three simulated devices at simAddr on listen, signing a checkpoint
// every cpEvery.
func Setup(dataDir, simAddr, listen string, cpEvery time.Duration) (*gateway.Config, error) {
	d := dir(dataDir)
	if _, err := key(d, Writer); err != nil {
		return nil, err
	}
	cpKey, err := trust(dataDir)
	if err != nil {
		return nil, err
	}
	polPath, rootPath, err := signedPolicy(dataDir, simAddr)
	if err != nil {
		return nil, err
	}
	priv, _ := keys.Paths(d, Writer)
	return &gateway.Config{
		Policy: polPath, PolicyRoot: rootPath,
		// The demo re-signs its policy at every start.
		AllowPolicyRollback: true,
		Listeners:           []gateway.ListenerConfig{{Listen: listen, Devices: []string{"inverter-1", "battery-1", "breaker-1"}}},
		Chain:               gateway.ChainConfig{Writer: Writer, Key: priv},
		Checkpoint:          gateway.CheckpointConfig{Key: cpKey, Every: cpEvery},
	}, nil
}

func dir(dataDir string) string { return filepath.Join(dataDir, "keys") }

// key loads a demo keyset from dir, creating it on first use.
func key(dir, name string) (*keys.Signer, error) {
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

// trust pins the demo writer's public keyset and the demo checkpointer's
// verifier key for chain verify, and returns the checkpointer's key file.
func trust(dataDir string) (string, error) {
	d := dir(dataDir)
	sp, vp := chain.CheckpointKeyPaths(d, Checkpointer)
	if _, err := os.Stat(sp); errors.Is(err, os.ErrNotExist) {
		if _, err := chain.NewCheckpointKey(d, Checkpointer); err != nil {
			return "", err
		}
	}
	vkey, err := os.ReadFile(vp)
	if err != nil {
		return "", err
	}
	_, pub := keys.Paths(d, Writer)
	if err := chain.WriteTrust(gateway.TrustPath(dataDir), Writer, pub, strings.TrimSpace(string(vkey))); err != nil {
		return "", err
	}
	return sp, nil
}

// signedPolicy writes the demo policy with its approvers and the
// simulators' address, and the root of the demo admins, who both sign it.
func signedPolicy(dataDir, simAddr string) (polPath, rootPath string, err error) {
	d := dir(dataDir)
	var b bytes.Buffer
	b.Write(bytes.ReplaceAll(policyTemplate, []byte("127.0.0.1:15020"), []byte(simAddr)))
	var sb strings.Builder
	sb.WriteString("\napprovers:\n")
	for _, name := range approvers {
		if err := entry(&sb, d, name, []string{"operators"}); err != nil {
			return "", "", err
		}
	}
	b.WriteString(sb.String())
	polPath = filepath.Join(dataDir, "policy.yaml")
	if err := os.WriteFile(polPath, b.Bytes(), 0o644); err != nil {
		return "", "", err
	}
	var pubs []string
	for _, name := range admins {
		if _, err := key(d, name); err != nil {
			return "", "", err
		}
		_, pub := keys.Paths(d, name)
		pubs = append(pubs, pub)
	}
	root, err := policy.FormatRoot(len(admins), pubs)
	if err != nil {
		return "", "", err
	}
	rootPath = filepath.Join(dataDir, "policy-root.yaml")
	if err := os.WriteFile(rootPath, root, 0o644); err != nil {
		return "", "", err
	}
	_ = os.Remove(policy.SigPath(polPath))
	for _, name := range admins {
		s, err := key(d, name)
		if err != nil {
			return "", "", err
		}
		if err := policy.SignPolicy(polPath, s); err != nil {
			return "", "", err
		}
	}
	return polPath, rootPath, nil
}

// entry appends name's public keyset (created on first use) to b.
func entry(b *strings.Builder, dir, name string, groups []string) error {
	if _, err := key(dir, name); err != nil {
		return err
	}
	_, pub := keys.Paths(dir, name)
	data, err := os.ReadFile(pub)
	if err != nil {
		return err
	}
	policy.WriteKeysetEntry(b, name, groups, data)
	return nil
}

// PrintBanner tells what runs where and what to try; prog is how the user
// ran gridseal (e.g. bin/gridseal), so the commands it shows run as printed.
func PrintBanner(w io.Writer, prog, dataDir, sim, addr string, pol *policy.Policy) {
	i := strings.LastIndexByte(addr, ':')
	host, port := addr[:max(i, 0)], addr[i+1:]
	d := dataDir
	fmt.Fprintf(w, `gridseal demo
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
  %s propose --data-dir %s --device inverter-1 --unit 1 --write-register 40127=20 --key %s/keys/alice.private.json
  %s approve ID --data-dir %s --key %s/keys/bob.private.json
  %s approvals list --data-dir %s
  %s chain tail --data-dir %s --follow
`, sim, addr, pol.ID, pol.Version, pol.Digest[:12], Writer, d, d,
		port, host, port, host, port, host, port, host, prog, d, d, prog, d, d, prog, d, prog, d)
}

// ParseWitnesses reads demo --witness flags, URL=VKEY each, VKEY the
// witness's cosignature verifier key.
func ParseWitnesses(flags []string) ([]gateway.WitnessConfig, error) {
	var ws []gateway.WitnessConfig
	for _, f := range flags {
		u, k, ok := strings.Cut(f, "=")
		if !ok {
			return nil, fmt.Errorf("--witness %q: want URL=VKEY", f)
		}
		if _, err := chain.NewCosignatureVerifier(k); err != nil {
			return nil, fmt.Errorf("--witness %q: %v", f, err)
		}
		ws = append(ws, gateway.WitnessConfig{URL: u, Key: k})
	}
	return ws, nil
}

// AddWitnesses adds witnesses to the demo's checkpointer and trust file
// (all of them must cosign), and prints to w what a witness's operator
// needs to add this log: its origin and verifier key.
func AddWitnesses(w io.Writer, dataDir string, cfg *gateway.Config, ws []gateway.WitnessConfig) error {
	_, vp := chain.CheckpointKeyPaths(dir(dataDir), Checkpointer)
	vkey, err := os.ReadFile(vp)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "checkpoint origin: %s\ncheckpoint verifier key: %s\n", chain.CheckpointOrigin, strings.TrimSpace(string(vkey)))
	if len(ws) == 0 {
		return nil
	}
	var trust strings.Builder
	trust.WriteString("# Witnesses that must all cosign the newest checkpoint (gridseal demo --witness).\nwitnesses:\n")
	for _, wc := range ws {
		cfg.Checkpoint.Witnesses = append(cfg.Checkpoint.Witnesses, wc)
		fmt.Fprintf(&trust, "  - %q\n", wc.Key)
	}
	fmt.Fprintf(&trust, "witness_quorum: %d\n", len(ws))
	f, err := os.OpenFile(gateway.TrustPath(dataDir), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(trust.String())
	return errors.Join(err, f.Close())
}

// Options are gridseal demo's: where the simulators, the proxy and the
// console listen, the witnesses, whether to run the tour and for how long
// to run after it (0: until ctx ends), and the gateway's options (its
// DataDir is the demo's).
type Options struct {
	Out                   io.Writer
	Prog                  string // how the user runs gridseal, for the commands printed
	SimAddr, Listen, HTTP string
	CheckpointEvery       time.Duration
	Witnesses             []gateway.WitnessConfig
	Tour                  bool
	Duration              time.Duration
	Gateway               gateway.Options
}

// Run is gridseal demo: the three simulators, the gateway in front of
// them configured by Setup, the banner, the tour; then it serves until ctx
// ends or o.Duration has passed.
func Run(ctx context.Context, o Options) error {
	plant, err := simulators.NewStandardPlant("all", simulators.Options{})
	if err != nil {
		return err
	}
	sim, err := simulators.Start(o.SimAddr, plant)
	if err != nil {
		return fmt.Errorf("start simulators: %w (is another demo running?)", err)
	}
	defer func() { _ = sim.Stop() }()
	dataDir := o.Gateway.DataDir
	cfg, err := Setup(dataDir, sim.Addr, o.Listen, o.CheckpointEvery)
	if err != nil {
		return err
	}
	cfg.Console.Listen = o.HTTP
	if err := AddWitnesses(o.Out, dataDir, cfg, o.Witnesses); err != nil {
		return err
	}
	gw, err := gateway.New(ctx, cfg, o.Gateway)
	if err != nil {
		return err
	}
	defer gw.Close()
	addr := gw.Addrs()[0]
	PrintBanner(o.Out, o.Prog, dataDir, sim.Addr, addr, gw.Policy())
	if u := gw.ConsoleURL(); u != "" {
		fmt.Fprintf(o.Out, "\nSOC console: %s   (metrics: %smetrics)\n", u, u)
	}
	if o.Tour {
		t := &Tour{W: o.Out, Addr: addr, Store: gw.Approvals(), Policy: gw.Policy(), Keys: dir(dataDir)}
		if err := t.Run(ctx); err != nil {
			return fmt.Errorf("demo tour: %w", err)
		}
		fmt.Fprintf(o.Out, "\nThe chain holds every step above:\n  %s chain tail --data-dir %s -n 40\n  %s chain verify --data-dir %s\n", o.Prog, dataDir, o.Prog, dataDir)
		fmt.Fprintln(o.Out, "\nThe proxy keeps running; try the commands above. Ctrl-C stops it.")
	}
	if o.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Duration)
		defer cancel()
	}
	return gw.Run(ctx)
}
