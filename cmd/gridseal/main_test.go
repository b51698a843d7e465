package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mbclient "github.com/simonvetter/modbus"

	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/simulators"
	"github.com/gridseal/gridseal/simulators/simtest"
)

func runCLI(t *testing.T, ctx context.Context, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestDemoPolicyIsTheExample(t *testing.T) {
	ex, err := os.ReadFile("../../deploy/examples/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ex, demoPolicy) {
		t.Fatal("cmd/gridseal/demo-policy.yaml differs from deploy/examples/policy.yaml; copy the example over it")
	}
}

func TestExampleConfigLoads(t *testing.T) {
	cfg, err := loadConfig("../../deploy/examples/gridseal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Limits.MaxConnectionsPerClient != 16 || cfg.Upstream.ResponseTimeout != 3*time.Second || cfg.Exceptions.Unrouted != 10 {
		t.Fatalf("example config decoded as %+v", cfg)
	}
}

func TestCommandErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	badYAML := write("bad.yaml", "policy: p.yaml\nlisteners:\n  - listen: 127.0.0.1:0\n    devices: [a]\nlimits:\n  idle_timeout: soon\n")
	unknownKey := write("typo.yaml", "policy: p.yaml\nlistners: []\n")
	write("badpolicy.yaml", "id: x\ndevices:\n  - name: a\n    upstream: 127.0.0.1:1\n    rules:\n      - {name: r, allow: wirte}\n")
	badPolicyRef := write("cfg.yaml", "policy: badpolicy.yaml\nlisteners:\n  - listen: 127.0.0.1:0\n    devices: [a]\nchain: {writer: gw-1, key: k.json}\n")
	write("good.yaml", "id: x\ndevices:\n  - name: a\n    upstream: 127.0.0.1:1\n")
	unknownDevice := write("cfg2.yaml", "policy: good.yaml\nlisteners:\n  - listen: 127.0.0.1:0\n    devices: [b]\nchain: {writer: gw-1, key: k.json}\n")
	noKey := write("cfg3.yaml", "policy: good.yaml\nlisteners:\n  - listen: 127.0.0.1:0\n    devices: [a]\nchain: {writer: gw-1}\n")
	missingKey := write("cfg4.yaml", "policy: good.yaml\nlisteners:\n  - listen: 127.0.0.1:0\n    devices: [a]\nchain: {writer: gw-1, key: nope.json}\n")

	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"proxy without config", []string{"proxy"}, 2, "--config FILE is required"},
		{"missing config file", []string{"proxy", "--config", filepath.Join(dir, "nope.yaml")}, 1, "no such file"},
		{"bad value in config", []string{"proxy", "--config", badYAML}, 1, badYAML + ":6:"},
		{"unknown config key", []string{"proxy", "--config", unknownKey}, 1, unknownKey + `:2: field listners not found`},
		{"bad policy", []string{"proxy", "--config", badPolicyRef}, 1, `badpolicy.yaml:6: device "a" rule "r": allow must be read, write or diagnostic`},
		{"device not in policy", []string{"proxy", "--config", unknownDevice}, 1, `device "b" is not in policy x`},
		{"no chain key", []string{"proxy", "--config", noKey}, 1, "chain.key: the writer's private keyset (create one with: gridseal keys new gw-1"},
		{"missing key file", []string{"proxy", "--config", missingKey}, 1, "private keyset: stat"},
		{"verify without trust", []string{"chain", "verify", "--data-dir", dir}, 1, "trust file: open"},
		{"bad export format", []string{"chain", "export", "--format", "xml"}, 2, `--format "xml": want jsonl`},
		{"bad verdict filter", []string{"chain", "tail", "--verdict", "maybe"}, 2, `--verdict "maybe"`},
		{"bad key name", []string{"keys", "new", "Bad.Name", "--dir", dir}, 2, "key name"},
		{"unknown sim device", []string{"sim", "--device", "pump"}, 2, `unknown device "pump"`},
		{"bad log level", []string{"sim", "--log-level", "loud"}, 1, `--log-level "loud"`},
		{"unknown command", []string{"frobnicate"}, 1, `unknown command "frobnicate"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, t.Context(), tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d (stderr %q)", code, tc.code, stderr)
			}
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "gridseal: ") || !strings.Contains(lines[0], tc.want) {
				t.Fatalf("stderr = %q; want one line containing %q", stderr, tc.want)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := runCLI(t, t.Context(), "version")
	if code != 0 || !strings.HasPrefix(out, "gridseal ") {
		t.Fatalf("version: exit %d, %q", code, out)
	}
}

// TestDemoTour runs the whole demo on free ports: simulators, proxy and the
// guided tour, which fails the command if any step behaves unexpectedly.
func TestDemoTour(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	data := t.TempDir()
	code, out, stderr := runCLI(t, ctx, "demo", "--listen", "127.0.0.1:0", "--sim-listen", "127.0.0.1:0",
		"--duration", "100ms", "--log-format", "json", "--data-dir", data)
	if code != 0 {
		t.Fatalf("demo exit %d\nstdout:\n%s\nstderr:\n%s", code, out, stderr)
	}
	for _, want := range []string{
		"write 0 to 40126 to disconnect the inverter: denied by gridseal: illegal data address",
		"allowed by rule power-limit-setpoint): forwarded",
		"breaker: open the feeder",
		"inverter output",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(stderr, `"verdict":"deny"`) || !strings.Contains(stderr, `"verdict":"allow"`) {
		t.Errorf("operations were not logged:\n%s", stderr)
	}

	// The demo recorded every operation in the chain: it verifies, and the
	// analyst's views show the tour's denies.
	code, out, stderr = runCLI(t, ctx, "chain", "verify", "--data-dir", data)
	if code != 0 || !strings.Contains(out, "chain OK: 1 writers") {
		t.Fatalf("chain verify after the demo: exit %d\n%s%s", code, out, stderr)
	}
	code, out, stderr = runCLI(t, ctx, "chain", "tail", "--data-dir", data, "--verdict", "deny", "--json", "-n", "100")
	if code != 0 {
		t.Fatalf("chain tail: exit %d: %s", code, stderr)
	}
	var denies []chain.Record
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var r chain.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("tail --json line %q: %v", line, err)
		}
		denies = append(denies, r)
	}
	// The tour's denies: disconnect, 150 %, 80 kW, breaker open, unit 9.
	if len(denies) != 5 || denies[0].Address != 40126 || denies[0].Exception != 2 || denies[3].Device != "breaker-1" {
		t.Fatalf("denied operations in the chain: %+v", denies)
	}
	code, out, _ = runCLI(t, ctx, "chain", "tail", "--data-dir", data, "--device", "inverter-1", "-n", "3")
	if code != 0 || !strings.Contains(out, "DEVICE") || strings.Count(out, "inverter-1") != 3 {
		t.Fatalf("chain tail table:\n%s", out)
	}
	code, out, _ = runCLI(t, ctx, "chain", "export", "--data-dir", data, "--format", "jsonl")
	// The tour makes 15 requests; the one allowed write is recorded twice
	// (durably before forwarding, and with its answer).
	if lines := strings.Count(out, "\n"); code != 0 || lines != 16 {
		t.Fatalf("export: exit %d, %d lines, want 16:\n%s", code, lines, out)
	}
	if strings.Count(out, `"phase":"request"`) != 1 || !strings.Contains(out, `"values":[30]`) {
		t.Fatalf("the allowed write is not recorded before forwarding:\n%s", out)
	}
}

func TestKeysNew(t *testing.T) {
	dir := t.TempDir()
	code, out, stderr := runCLI(t, t.Context(), "keys", "new", "gw-1", "--dir", dir)
	if code != 0 {
		t.Fatalf("keys new: exit %d %s", code, stderr)
	}
	priv, pub := filepath.Join(dir, "gw-1.private.json"), filepath.Join(dir, "gw-1.public.json")
	for path, mode := range map[string]os.FileMode{priv: 0o600, pub: 0o644} {
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != mode {
			t.Fatalf("%s: %v mode %v, want %v", path, err, fi.Mode().Perm(), mode)
		}
	}
	pubBytes, _ := os.ReadFile(pub)
	privBytes, _ := os.ReadFile(priv)
	if strings.Contains(string(pubBytes), "ASYMMETRIC_PRIVATE") || !strings.Contains(string(privBytes), "ASYMMETRIC_PRIVATE") {
		t.Fatal("public keyset must hold no private key material, and the private one must")
	}
	if strings.Contains(out, string(privBytes)) {
		t.Fatal("keys new printed the private keyset")
	}
	if code, _, stderr := runCLI(t, t.Context(), "keys", "new", "gw-1", "--dir", dir); code != 1 || !strings.Contains(stderr, "already exists") {
		t.Fatalf("overwrite: exit %d %s", code, stderr)
	}
}

// TestProxyCommandRecordsToTheChain runs `gridseal proxy --config` as an
// operator would: a fresh keyset, the example configuration pointed at the
// simulators, traffic through it, then `chain verify` against a trust file.
func TestProxyCommandRecordsToTheChain(t *testing.T) {
	dir, data := t.TempDir(), t.TempDir()
	if code, _, stderr := runCLI(t, t.Context(), "keys", "new", "gw-1", "--dir", filepath.Join(dir, "keys")); code != 0 {
		t.Fatal(stderr)
	}
	simAddr, _ := simtest.Start(t, simulators.Options{})
	pol, err := os.ReadFile("../../deploy/examples/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pol = bytes.ReplaceAll(pol, []byte("127.0.0.1:15020"), []byte(simAddr))
	cfg, err := os.ReadFile("../../deploy/examples/gridseal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	listen := freeAddr(t)
	cfg = bytes.ReplaceAll(cfg, []byte("127.0.0.1:5020"), []byte(listen))
	for name, body := range map[string][]byte{"policy.yaml": pol, "gridseal.yaml": cfg,
		"trust.yaml": []byte("writers:\n  - id: gw-1\n    keyset: keys/gw-1.public.json\n")} {
		if err := os.WriteFile(filepath.Join(dir, name), body, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan int, 1)
	var stderr string
	go func() {
		var code int
		code, _, stderr = runCLI(t, ctx, "proxy", "--config", filepath.Join(dir, "gridseal.yaml"), "--data-dir", data, "--log-format", "json")
		done <- code
	}()
	waitForCond(t, "the proxy to listen", func() bool {
		conn, err := net.Dial("tcp", listen)
		if err == nil {
			_ = conn.Close()
		}
		return err == nil
	})
	c := modbusClient(t, listen, 1)
	if _, err := c.ReadRegister(simulators.InverterPower, mbclient.HOLDING_REGISTER); err != nil {
		t.Fatalf("read through the proxy: %v", err)
	}
	if err := c.WriteRegister(simulators.InverterLimitPct, 40); err != nil {
		t.Fatalf("allowed write: %v", err)
	}
	if err := c.WriteRegister(simulators.InverterConn, 0); err == nil {
		t.Fatal("forbidden write went through")
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("proxy exit %d: %s", code, stderr)
	}
	code, out, errOut := runCLI(t, t.Context(), "chain", "verify", "--data-dir", data, "--trust", filepath.Join(dir, "trust.yaml"))
	if code != 0 || !strings.Contains(out, "writer gw-1") || !strings.Contains(out, "present)") {
		t.Fatalf("verify: exit %d\n%s%s", code, out, errOut)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func modbusClient(t *testing.T, addr string, unit uint8) *mbclient.ModbusClient {
	t.Helper()
	c, err := mbclient.NewClient(&mbclient.ClientConfiguration{URL: "tcp://" + addr, Timeout: 3 * time.Second,
		Logger: log.New(io.Discard, "", 0)})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetUnitId(unit)
	return c
}

// waitForCond polls cond until it holds or 10 s pass.
func waitForCond(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
