package gateway_test

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	mbclient "github.com/simonvetter/modbus"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/gateway"
	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/simulators"
	"github.com/gridseal/gridseal/simulators/simtest"
)

// TestShadowCandidate: a candidate policy evaluated beside the policy in
// force changes nothing on the wire; every request it decides otherwise is
// flagged in the chain with what it says, and counted in /metrics.
func TestShadowCandidate(t *testing.T) {
	simAddr, _ := simtest.Start(t, simulators.Options{})
	cfg := site(t, simAddr)
	dir := filepath.Dir(cfg.Policy)
	// In force: telemetry 40000-40149 and the power limit 0..100 %.
	// The candidate: telemetry up to 40299, the power limit only 50..100 %.
	inForce := "id: plant\nversion: 1\ndevices:\n  - name: inverter-1\n    upstream: " + simAddr + "\n    units: [1]\n    rules:\n" +
		"      - {name: telemetry, allow: read, table: holding-registers, addresses: 40000-40149}\n" +
		"      - {name: limit, allow: write, functions: [6], addresses: 40127, values: 0-100}\n"
	candidate := strings.Replace(strings.Replace(inForce, "40000-40149", "40000-40299", 1), "values: 0-100", "values: 50-100", 1)
	candidate = strings.Replace(candidate, "version: 1", "version: 2", 1)
	for name, body := range map[string]string{"policy.yaml": inForce, "candidate.yaml": candidate} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg.Candidate = filepath.Join(dir, "candidate.yaml")
	cfg.Console.Listen = "127.0.0.1:0"
	dataDir := t.TempDir()
	gw, err := gateway.New(t.Context(), cfg, gateway.Options{DataDir: dataDir, Log: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	c := simtest.Client(t, gw.Addrs()[0], 1, 5*time.Second)
	for _, v := range []uint16{30, 40, 60} { // 30 and 40: the candidate would deny
		if err := c.WriteRegister(simulators.InverterLimitPct, v); err != nil {
			t.Fatalf("write %d: the policy in force allows it, the candidate must change nothing: %v", v, err)
		}
	}
	if _, err := c.ReadRegister(simulators.InverterPower, mbclient.HOLDING_REGISTER); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadRegister(40200, mbclient.HOLDING_REGISTER); err == nil {
		t.Fatal("a read the policy in force denies went through because the candidate allows it")
	}

	metrics := func() string {
		resp, err := http.Get(gw.ConsoleURL() + "metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	testwait.For(t, "the candidate's differences in /metrics", func() bool {
		m := metrics()
		return regexp.MustCompile(`gridseal_candidate_differs_total\{candidate="deny",device="inverter-1"\} 2\b`).MatchString(m) &&
			regexp.MustCompile(`gridseal_candidate_differs_total\{candidate="allow",device="inverter-1"\} 1\b`).MatchString(m)
	})
	gw.Close()

	var flagged []string
	recorded(t, dataDir, func(ev *audit.Event) error {
		if ev.Phase != audit.PhaseComplete {
			return nil
		}
		if ev.CandidateDiffers {
			flagged = append(flagged, ev.Verdict.String()+" "+ev.Reason)
		} else if strings.Contains(ev.Reason, "candidate") {
			t.Errorf("unflagged event names the candidate: %s", ev.Reason)
		}
		return nil
	})
	if len(flagged) != 3 || !strings.HasPrefix(flagged[0], "allow limit | candidate plant v2 would deny: ") ||
		!strings.HasPrefix(flagged[2], "deny ") || !strings.HasSuffix(flagged[2], "| candidate plant v2 would allow (rule telemetry)") {
		t.Fatalf("flagged events:\n%s", strings.Join(flagged, "\n"))
	}
}
