package gateway_test

import (
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	mbclient "github.com/simonvetter/modbus"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/console"
	"github.com/gridseal/gridseal/gateway"
	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/protocols/modbus"
	"github.com/gridseal/gridseal/simulators"
	"github.com/gridseal/gridseal/simulators/simtest"
)

// scrape is one /metrics page.
type scrape string

// value is the sample of series (name and labels as /metrics writes them,
// labels in name order), or -1 when the page lacks it.
func (s scrape) value(series string) float64 {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(string(s))
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return -1
	}
	return v
}

func get(t *testing.T, url string) scrape {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return scrape(b)
}

// TestMetricsCountEveryApprovalStep runs a gateway with a console and a
// checkpointer and takes an approval through every step — proposed, two
// signatures, a junk one behind the proposer's key id, used by the write,
// the same write again — then checks /metrics counts each step, and
// reports the build, the policy in force, each device's reachability, the
// checkpoint's age and the spool.
func TestMetricsCountEveryApprovalStep(t *testing.T) {
	simAddr, _ := simtest.Start(t, simulators.Options{})
	dir := t.TempDir()
	people := map[string]keystest.Key{"alice": keystest.New(t), "bob": keystest.New(t), "carol": keystest.New(t)}
	var pol strings.Builder
	pol.WriteString("id: plant\nversion: 3\napprovers:\n")
	for _, name := range []string{"alice", "bob", "carol"} {
		pub, err := keys.PublicJSON(people[name].Handle)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&pol, "  - name: %s\n    groups: [operators]\n    keyset: |\n", name)
		for _, line := range strings.Split(strings.TrimSpace(string(pub)), "\n") {
			pol.WriteString("      " + line + "\n")
		}
	}
	fmt.Fprintf(&pol, `devices:
  - name: inverter-1
    upstream: %s
    units: [1]
    rules:
      - {name: telemetry, allow: read, table: holding-registers, addresses: 40000-40149}
      - {name: curtail, allow: write, functions: [6], addresses: 40127, values: 0-100, requires: {group: operators, m: 2}}
  - name: dead-1
    upstream: 127.0.0.1:1
    units: [2]
    rules:
      - {name: telemetry, allow: read, table: holding-registers, addresses: 40000-40149}
`, simAddr)
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(pol.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	priv := writerKey(t, dir)
	if _, err := chain.NewCheckpointKey(dir, "cp-1"); err != nil {
		t.Fatal(err)
	}
	cpKey, _ := chain.CheckpointKeyPaths(dir, "cp-1")
	cfg := &gateway.Config{Policy: filepath.Join(dir, "policy.yaml"), InsecureUnsignedPolicy: true,
		Listeners:  []gateway.ListenerConfig{{Listen: "127.0.0.1:0", Devices: []string{"inverter-1", "dead-1"}}},
		Chain:      gateway.ChainConfig{Writer: "gw-1", Key: priv, SpoolBytes: 3 << 20},
		Checkpoint: gateway.CheckpointConfig{Key: cpKey, Every: 200 * time.Millisecond},
		Console:    gateway.ConsoleConfig{Listen: "127.0.0.1:0"}}
	build := console.BuildInfo{Version: "v9.8.7", Commit: "c0ffee", Date: "2026-01-02T03:04:05Z"}
	gw, err := gateway.New(t.Context(), cfg, gateway.Options{DataDir: t.TempDir(), Log: zap.NewNop(), Build: build})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	metricsURL := gw.ConsoleURL() + "metrics"

	before := get(t, metricsURL)
	for _, step := range []string{"proposed", "signed", "used", "refused", "denied"} {
		if v := before.value(`gridseal_approvals_total{step="` + step + `"}`); v != 0 {
			t.Errorf("step %s before any approval: %v, want 0 (present from the start)", step, v)
		}
	}

	store := gw.Approvals()
	pdu := modbus.AppendWriteSingleRegister(nil, simulators.InverterLimitPct, 30)
	pr, err := approvals.NewProposal(gw.Policy(), "inverter-1", 1, pdu, 15*time.Minute, "alice", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	sig, err := people["alice"].Signer.Sign(approvals.ProposeInput(pr.ID()))
	if err != nil {
		t.Fatal(err)
	}
	id, err := store.Propose(t.Context(), pr, sig)
	if err != nil {
		t.Fatal(err)
	}
	junk := make([]byte, 69)
	_, _ = rand.Read(junk)
	junk[0] = 1
	kid := people["alice"].Signer.KeyID
	copy(junk[1:5], []byte{byte(kid >> 24), byte(kid >> 16), byte(kid >> 8), byte(kid)})
	if _, err := store.AddSignature(t.Context(), id, junk); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"bob", "carol"} {
		sig, err := people[name].Signer.Sign(approvals.ApproveInput(id))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := store.AddSignature(t.Context(), id, sig); err != nil {
			t.Fatal(err)
		}
	}

	c := simtest.Client(t, gw.Addrs()[0], 1, 3*time.Second)
	waitIndexed(t, store, id, pdu)
	if err := c.WriteRegister(simulators.InverterLimitPct, 30); err != nil {
		t.Fatalf("the approved write: %v", err)
	}
	if err := c.WriteRegister(simulators.InverterLimitPct, 30); err == nil {
		t.Fatal("the same write again passed: a replay")
	}
	_ = c.SetUnitId(2)
	if _, err := c.ReadRegister(simulators.InverterPower, mbclient.HOLDING_REGISTER); err == nil {
		t.Fatal("a read from a device nothing listens for was answered")
	}

	want := map[string]float64{
		`gridseal_approvals_total{step="proposed"}`: 1,
		`gridseal_approvals_total{step="signed"}`:   2,
		`gridseal_approvals_total{step="refused"}`:  1,
		`gridseal_approvals_total{step="used"}`:     1,
		`gridseal_approvals_total{step="denied"}`:   1,
		`gridseal_build_info{commit="c0ffee",date="2026-01-02T03:04:05Z",goversion="` + runtimeVersion() + `",version="v9.8.7"}`: 1,
		`gridseal_policy_version`:                                 3,
		`gridseal_device_state{device="inverter-1",state="up"}`:   1,
		`gridseal_device_state{device="inverter-1",state="down"}`: 0,
		`gridseal_device_state{device="dead-1",state="down"}`:     1,
		`gridseal_device_state{device="dead-1",state="up"}`:       0,
		`gridseal_chain_spool_limit_bytes`:                        3 << 20,
	}
	var s scrape
	testwait.NoError(t, "every step counted", func() error {
		s = get(t, metricsURL)
		for series, v := range want {
			if got := s.value(series); got != v {
				return fmt.Errorf("%s = %v, want %v", series, got, v)
			}
		}
		return nil
	})
	digest := gw.Policy().Digest
	if v := s.value(`gridseal_policy_info{digest="` + digest + `",id="plant",version="3"}`); v != 1 {
		t.Errorf("policy info %v:\n%s", v, grep(s, "gridseal_policy"))
	}
	// The approved write waited for the embedded server's journal.
	if v := s.value("gridseal_chain_journal_sync_seconds_count"); v < 1 {
		t.Errorf("journal fsyncs counted %v after a write, want at least 1:\n%s", v, grep(s, "journal"))
	}
	if v := s.value("gridseal_chain_spool_bytes"); v < 0 || v > 3<<20 {
		t.Errorf("spool bytes %v", v)
	}
	testwait.For(t, "a checkpoint under a second old", func() bool {
		s = get(t, metricsURL)
		age := s.value("gridseal_checkpoint_age_seconds")
		return age >= 0 && age < 1 && s.value("gridseal_checkpoint_last_success_timestamp_seconds") > 0
	})
}

func runtimeVersion() string { return runtime.Version() }

// grep is the lines of s that hold what.
func grep(s scrape, what string) string {
	var out []string
	for _, l := range strings.Split(string(s), "\n") {
		if strings.Contains(l, what) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
