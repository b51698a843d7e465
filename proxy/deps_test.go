package proxy_test

import (
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/proxy"
)

// What gridseal hands proxy.New satisfies the interfaces the proxy declares.
var (
	_ proxy.Decider  = (*policy.Engine)(nil)
	_ proxy.Resolver = (*policy.Engine)(nil) // else SunSpec rules would never resolve
	_ proxy.Recorder = (*chain.Recorder)(nil)
	_ proxy.Recorder = (*audit.LogRecorder)(nil)
	_ proxy.Recorder = audit.Tee(nil)
)

// TestNoNATSTinkOrYAML keeps the proxy free of the message bus, the key
// library and the policy file format: it decides through policy/decision and
// records through audit, and whatever does more is handed to it.
func TestNoNATSTinkOrYAML(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go is not on PATH")
	}
	out, err := exec.CommandContext(t.Context(), gobin, "list", "-deps", "github.com/gridseal/gridseal/proxy").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go list -deps: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 {
		t.Fatal("go list -deps listed nothing")
	}
	for _, dep := range deps {
		for _, banned := range []string{"nats-io", "tink-crypto", "yaml"} {
			if strings.Contains(dep, banned) {
				t.Errorf("proxy depends on %s (%s): import what it needs through policy/decision or audit instead", dep, banned)
			}
		}
	}
}
