package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
	badPolicyRef := write("cfg.yaml", "policy: badpolicy.yaml\nlisteners:\n  - listen: 127.0.0.1:0\n    devices: [a]\n")
	write("good.yaml", "id: x\ndevices:\n  - name: a\n    upstream: 127.0.0.1:1\n")
	unknownDevice := write("cfg2.yaml", "policy: good.yaml\nlisteners:\n  - listen: 127.0.0.1:0\n    devices: [b]\n")

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
	code, out, stderr := runCLI(t, ctx, "demo", "--listen", "127.0.0.1:0", "--sim-listen", "127.0.0.1:0",
		"--duration", "100ms", "--log-format", "json")
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
}
