package gateway_test

import (
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/gateway"
	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/internal/natsembed"
)

// site writes an unsigned policy for the simulators at simAddr and a writer
// key, and returns a configuration serving them on a free port.
func site(t *testing.T, simAddr string) *gateway.Config {
	t.Helper()
	dir := t.TempDir()
	pol := "id: plant\nversion: 1\ndevices:\n  - name: inverter-1\n    upstream: " + simAddr +
		"\n    units: [1]\n    rules:\n      - {name: telemetry, allow: read, table: holding-registers, addresses: 40000-40149}\n"
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(pol), 0o600); err != nil {
		t.Fatal(err)
	}
	return &gateway.Config{Policy: filepath.Join(dir, "policy.yaml"), InsecureUnsignedPolicy: true,
		Listeners: []gateway.ListenerConfig{{Listen: "127.0.0.1:0", Devices: []string{"inverter-1"}}},
		Chain:     gateway.ChainConfig{Writer: "gw-1", Key: writerKey(t, dir)}, Console: gateway.ConsoleConfig{Listen: "off"}}
}

// writerKey writes a new key pair for writer gw-1 to dir and returns the
// private keyset's path.
func writerKey(t *testing.T, dir string) string {
	t.Helper()
	priv, _, err := keys.WritePair(dir, "gw-1", keystest.New(t).Handle)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

// recorded calls fn with each event of the chain a gateway (closed by
// now) kept in dataDir's embedded server, in order.
func recorded(t *testing.T, dataDir string, fn func(ev *audit.Event) error) {
	t.Helper()
	conn, err := natsembed.Connect(t.Context(), natsembed.ConnectOptions{Name: "test", DataDir: dataDir})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	js, err := conn.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	if err := chain.ScanRecords(t.Context(), js, 1, false, nil, func(_ *chain.Record, ev *audit.Event) error {
		return fn(ev)
	}); err != nil {
		t.Fatal(err)
	}
}

// startGateway runs cfg on a new data directory, which it returns, until
// the test ends or it is closed.
func startGateway(t *testing.T, cfg *gateway.Config) (*gateway.Gateway, string) {
	t.Helper()
	dataDir := t.TempDir()
	gw, err := gateway.New(t.Context(), cfg, gateway.Options{DataDir: dataDir, Log: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	return gw, dataDir
}

// chainEvents returns the events the chain of the gateway that ran on
// dataDir holds, in order, once the gateway is closed.
func chainEvents(t *testing.T, dataDir string) []audit.Event {
	t.Helper()
	var out []audit.Event
	recorded(t, dataDir, func(ev *audit.Event) error {
		out = append(out, *ev)
		return nil
	})
	return out
}
