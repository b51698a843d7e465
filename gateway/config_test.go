package gateway

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestExampleConfigLoads(t *testing.T) {
	cfg, err := Load("../deploy/examples/gridseal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Limits.MaxConnectionsPerClient != 16 || cfg.Upstream.ResponseTimeout != 3*time.Second || cfg.Exceptions.Unrouted != 10 {
		t.Fatalf("example config decoded as %+v", cfg)
	}
}

// TestEVEConfig: eve.path is taken relative to the file, rotate.size reads
// 16KB, 100MB, 1GB or bytes, and a size that is none is one clear line.
func TestEVEConfig(t *testing.T) {
	for _, tc := range []struct {
		name, rotate string
		size         ByteSize
		err          string
	}{
		{"megabytes", "{size: 100MB, every: 24h}", 100 << 20, ""},
		{"kilobytes", "{size: 16kb}", 16 << 10, ""},
		{"gigabytes", "{size: 1GB}", 1 << 30, ""},
		{"bytes", "{size: 4096}", 4096, ""},
		{"not a size", "{size: big}", 0, `:6: "big" is not a size (e.g. 100MB, 1GB, or a number of bytes)`},
		{"negative", "{size: -1MB}", 0, `"-1MB" is not a size`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, dir := loadText(t, "chain: {writer: gw-1, key: k.json}\neve:\n  path: eve.json\n  rotate: "+tc.rotate+"\n", tc.err)
			if cfg == nil {
				return
			}
			if cfg.EVE.Path != filepath.Join(dir, "eve.json") || cfg.EVE.Rotate.Size != tc.size {
				t.Fatalf("eve %+v", cfg.EVE)
			}
		})
	}
}

// TestChainDurations: chain.linger is a duration from 0 to 1s and
// chain.durable_timeout one from 0 to 1m; outside its range the file is
// refused with one line naming the key.
func TestChainDurations(t *testing.T) {
	for _, tc := range []struct {
		key, value string
		want       time.Duration
		err        string
	}{
		{"linger", "50ms", 50 * time.Millisecond, ""},
		{"linger", "0s", 0, ""},
		{"linger", "-1ms", 0, "chain.linger: want 0 to 1s"},
		{"linger", "2s", 0, "chain.linger: want 0 to 1s"},
		{"durable_timeout", "5s", 5 * time.Second, ""},
		{"durable_timeout", "0s", 0, ""},
		{"durable_timeout", "-1s", 0, "chain.durable_timeout: want 0 to 1m"},
		{"durable_timeout", "2m", 0, "chain.durable_timeout: want 0 to 1m"},
	} {
		t.Run(tc.key+"="+tc.value, func(t *testing.T) {
			cfg, _ := loadText(t, "chain: {writer: gw-1, key: k.json, "+tc.key+": "+tc.value+"}\n", tc.err)
			if cfg == nil {
				return
			}
			got := map[string]time.Duration{"linger": cfg.Chain.Linger, "durable_timeout": cfg.Chain.DurableTimeout}[tc.key]
			if got != tc.want {
				t.Fatalf("%s %v, want %v", tc.key, got, tc.want)
			}
		})
	}
}

// loadText loads a configuration of a policy, one listener and rest, from
// a file in a new directory (returned). With wantErr set it expects an
// error holding it, and returns a nil configuration.
func loadText(t *testing.T, rest, wantErr string) (*Config, string) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "gridseal.yaml")
	yml := "policy: policy.yaml\nlisteners: [{listen: 127.0.0.1:0, devices: [d]}]\n" + rest
	if err := os.WriteFile(path, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path)
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("error %v, want one with %q", err, wantErr)
		}
		return nil, dir
	}
	if err != nil {
		t.Fatal(err)
	}
	return cfg, dir
}
