package gateway

import (
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
