package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	mbclient "github.com/simonvetter/modbus"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/internal/testpki"
	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/simulators"
	"github.com/gridseal/gridseal/simulators/simtest"
)

// shippedUsers are the users of deploy/nats/gridseal-accounts.conf, in
// order: the admin who creates the streams, one user per proxy (gw-1 runs
// the checkpointer), an operator and an analyst.
var shippedUsers = []string{"admin", "gw-1", "gw-2", "operator", "analyst"}

// TestShippedNATSConfigs parses the cluster configurations under
// deploy/nats as shipped (certificates are the site's).
func TestShippedNATSConfigs(t *testing.T) {
	dir := t.TempDir()
	tlsBlock := regexp.MustCompile(`(?s)\n\s*tls \{.*?\n\s*\}\n`)
	accounts, err := os.ReadFile(filepath.Join("..", "..", "deploy", "nats", "gridseal-accounts.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "gridseal-accounts.conf"), accounts, 0o600); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		src, err := os.ReadFile(filepath.Join("..", "..", "deploy", "nats", fmt.Sprintf("nats-%d.conf", i)))
		if err != nil {
			t.Fatal(err)
		}
		conf := tlsBlock.ReplaceAllString(string(src), "\n")
		p := filepath.Join(dir, "node.conf")
		if err := os.WriteFile(p, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		o, err := server.ProcessConfigFile(p)
		if err != nil {
			t.Fatalf("nats-%d.conf: %v", i, err)
		}
		if !o.JetStream || !o.SyncAlways || o.Cluster.Name != "gridseal" || len(o.Routes) != 3 {
			t.Fatalf("nats-%d.conf: jetstream %v sync-always %v cluster %q routes %d", i, o.JetStream, o.SyncAlways, o.Cluster.Name, len(o.Routes))
		}
		var users []string
		for _, u := range o.Users {
			users = append(users, u.Username)
		}
		if !slices.Equal(users, shippedUsers) {
			t.Fatalf("nats-%d.conf: users %v, want %v", i, users, shippedUsers)
		}
	}
}

// violations collects the permission violations the servers log.
type violations struct {
	mu    sync.Mutex
	lines []string
}

func (v *violations) Errorf(format string, a ...any) {
	line := fmt.Sprintf(format, a...)
	if strings.Contains(line, "Violation") {
		v.mu.Lock()
		v.lines = append(v.lines, line)
		v.mu.Unlock()
	}
}
func (v *violations) Noticef(string, ...any) {}
func (v *violations) Warnf(string, ...any)   {}
func (v *violations) Fatalf(string, ...any)  {}
func (v *violations) Debugf(string, ...any)  {}
func (v *violations) Tracef(string, ...any)  {}

// of returns the violations logged for user on subject.
func (v *violations) of(user, subject string) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	n := 0
	for _, l := range v.lines {
		if strings.Contains(l, `"GRIDSEAL/user:`+user+`"`) && strings.Contains(l, fmt.Sprintf("Subject %q", subject)) {
			n++
		}
	}
	return n
}

func (v *violations) all() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.lines)
}

// shippedCluster starts deploy/nats/nats-{1,2,3}.conf on loopback: only
// addresses, the store directory and the certificate paths (test
// certificates from a test CA) are changed; the accounts file is the
// shipped one with a test password for each user ("test-" + user). It
// returns the client URLs and what the servers log as violations.
func shippedCluster(t *testing.T, ca *testpki.CA, dir string) (urls []string, v *violations) {
	t.Helper()
	ca.WriteCA(filepath.Join(dir, "ca.pem"))
	ca.WritePair(ca.Issue("gridseal-nats", "", true), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem"))
	accounts, err := os.ReadFile(filepath.Join("..", "..", "deploy", "nats", "gridseal-accounts.conf"))
	if err != nil {
		t.Fatal(err)
	}
	var users []string
	withPw := regexp.MustCompile(`user: (\S+)\n(\s*)password: "[^"]*"`).ReplaceAllStringFunc(string(accounts), func(m string) string {
		u := strings.Fields(m)[1]
		users = append(users, u)
		return strings.Replace(m, m[strings.Index(m, `"`):], `"test-`+u+`"`, 1)
	})
	if !slices.Equal(users, shippedUsers) {
		t.Fatalf("users in the accounts file: %v, want %v", users, shippedUsers)
	}
	if err := os.WriteFile(filepath.Join(dir, "gridseal-accounts.conf"), []byte(withPw), 0o600); err != nil {
		t.Fatal(err)
	}
	clients, routes := make([]string, 3), make([]string, 3)
	for i := range clients {
		clients[i], routes[i] = freeAddr(t), freeAddr(t)
	}
	v = &violations{}
	var servers []*server.Server
	for i := range 3 {
		src, err := os.ReadFile(filepath.Join("..", "..", "deploy", "nats", fmt.Sprintf("nats-%d.conf", i+1)))
		if err != nil {
			t.Fatal(err)
		}
		conf := string(src)
		sub := func(old, repl string, n int) {
			t.Helper()
			if c := strings.Count(conf, old); c != n {
				t.Fatalf("nats-%d.conf has %q %d times, want %d: update this test with the file", i+1, old, c, n)
			}
			conf = strings.ReplaceAll(conf, old, repl)
		}
		sub("listen: 0.0.0.0:4222", "listen: "+clients[i], 1)
		sub("http: 127.0.0.1:8222\n", "", 1)
		sub("store_dir: /var/lib/nats", "store_dir: "+t.TempDir(), 1)
		sub("/etc/nats/tls/", dir+"/", 6)
		sub("listen: 0.0.0.0:6222", "listen: "+routes[i], 1)
		for j := range routes {
			sub(fmt.Sprintf("nats-route://nats-%d.grid.local:6222", j+1), "nats-route://"+routes[j], 1)
		}
		p := filepath.Join(dir, fmt.Sprintf("nats-%d.conf", i+1))
		if err := os.WriteFile(p, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		s := natstest.RunConfig(t, p)
		s.SetLogger(v, false, false)
		servers = append(servers, s)
	}
	natstest.WaitClusterReady(t, servers)
	return clients, v
}

// TestShippedNATSCluster runs the shipped 3-node cluster with exactly the
// shipped accounts and drives every role through it: the admin creates the
// streams (R3), two proxies gw-1 and gw-2 record and serve, gw-1 signs
// checkpoints, an operator proposes and approves, gw-2 uses the approval,
// an analyst tails and verifies. None of that trips a permission. Then
// each role is refused, by the server, what is not its to do: deleting,
// purging or changing a stream, appending as another writer, signing
// another's checkpoints, recording an approval's use, setting the policy.
func TestShippedNATSCluster(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.New(t)
	clients, viol := shippedCluster(t, ca, dir)
	natsURL := func(user string) string {
		var us []string
		for _, c := range clients {
			us = append(us, fmt.Sprintf("nats://%s:test-%s@%s", user, user, c))
		}
		return strings.Join(us, ",")
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	as := func(user string, args ...string) (int, string, string) {
		t.Helper()
		return runCLI(t, ctx, append(args, "--nats", natsURL(user), "--nats-tls-ca", filepath.Join(dir, "ca.pem"))...)
	}
	must := func(code int, out, stderr string) string {
		t.Helper()
		if code != 0 {
			t.Fatalf("exit %d\n%s%s", code, out, stderr)
		}
		return out
	}

	// Keys, trust file, policy with its approvers, one configuration per proxy.
	keyDir := filepath.Join(dir, "keys")
	for _, k := range []string{"gw-1", "gw-2", "alice", "bob", "carol"} {
		must(runCLI(t, ctx, "keys", "new", k, "--dir", keyDir))
	}
	vkey := strings.Fields(must(runCLI(t, ctx, "keys", "checkpoint", "cp-1", "--dir", keyDir)))
	trust := filepath.Join(dir, "trust.yaml")
	must(runCLI(t, ctx, "chain", "trust", "--writer", "gw-1="+filepath.Join(keyDir, "gw-1.public.json"),
		"--writer", "gw-2="+filepath.Join(keyDir, "gw-2.public.json"), "--checkpointer", vkey[len(vkey)-1], "--out", trust))
	simAddr, _ := simtest.Start(t, simulators.Options{})
	pol, err := os.ReadFile("../../deploy/examples/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pol = []byte(strings.ReplaceAll(string(pol), "127.0.0.1:15021", simAddr))
	pol = append(pol, must(runCLI(t, ctx, "policy", "approvers", "--group", "operators", filepath.Join(keyDir, "alice.public.json"),
		filepath.Join(keyDir, "bob.public.json"), filepath.Join(keyDir, "carol.public.json")))...)
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), pol, 0o600); err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile("../../deploy/examples/gridseal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	listen := map[string]string{"gw-1": freeAddr(t), "gw-2": freeAddr(t)}
	for _, gw := range []string{"gw-1", "gw-2"} {
		cfg := string(example)
		for old, repl := range map[string]string{
			"policy_root: policy-root.yaml": "insecure_unsigned_policy: true",
			"127.0.0.1:5021":                listen[gw],
			"writer: gw-1":                  "writer: " + gw,
			"keys/gw-1.private.json":        "keys/" + gw + ".private.json",
			"replicas: 1":                   "replicas: 3",
			"every: 10s":                    "every: 200ms",
			"keys/cp-1.checkpoint.key":      map[string]string{"gw-1": "keys/cp-1.checkpoint.key", "gw-2": ""}[gw],
		} {
			if !strings.Contains(cfg, old) {
				t.Fatalf("the example configuration has no %q to replace", old)
			}
			cfg = strings.Replace(cfg, old, repl, 1)
		}
		if err := os.WriteFile(filepath.Join(dir, gw+".yaml"), []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// Before the admin creates the streams there is no chain: with the
	// writers pinned, verify calls that tampering.
	code, out, stderr := as("analyst", "chain", "verify", "--trust", trust)
	if code != 1 || !strings.Contains(out, "the chain stream GRIDSEAL_CHAIN does not exist") || !strings.Contains(stderr, "chain verify FAILED") {
		t.Fatalf("verify of a missing chain: exit %d\n%s%s", code, out, stderr)
	}
	out = must(as("admin", "chain", "init", "--replicas", "3"))
	if strings.Count(out, "created, 3 replicas") != len(chainStreams) {
		t.Fatalf("chain init:\n%s", out)
	}
	if out = must(as("admin", "chain", "init", "--replicas", "3")); strings.Count(out, "already there, 3 replicas") != len(chainStreams) {
		t.Fatalf("chain init again:\n%s", out)
	}

	// Two proxies, each as its own user; gw-1 runs the checkpointer and a console.
	done := make(chan string, 2)
	for _, gw := range []string{"gw-1", "gw-2"} {
		httpAddr := "off"
		if gw == "gw-1" {
			httpAddr = freeAddr(t)
		}
		go func() {
			code, _, stderr := as(gw, "proxy", "--config", filepath.Join(dir, gw+".yaml"), "--data-dir", filepath.Join(dir, gw),
				"--http", httpAddr, "--log-format", "json")
			done <- fmt.Sprintf("%s exit %d: %s", gw, code, stderr)
		}()
	}
	defer func() {
		cancel()
		for range 2 {
			if msg := <-done; !strings.Contains(msg, " exit 0: ") {
				t.Error(msg)
			}
		}
	}()
	mb := map[string]*mbclient.ModbusClient{}
	for _, gw := range []string{"gw-1", "gw-2"} {
		waitListening(t, gw+" to listen", listen[gw])
		mb[gw] = modbusClient(t, listen[gw], simulators.UnitInverter)
		if _, err := mb[gw].ReadRegister(simulators.InverterPower, mbclient.HOLDING_REGISTER); err != nil {
			t.Fatalf("read through %s: %v", gw, err)
		}
	}
	if err := mb["gw-1"].WriteRegister(simulators.InverterLimitPct, 60); err != nil {
		t.Fatalf("allowed write through gw-1: %v", err)
	}
	if err := mb["gw-2"].WriteRegister(simulators.InverterLimitPct, 70); err != nil {
		t.Fatalf("allowed write through gw-2: %v", err)
	}

	// The operators approve a deep curtailment; gw-2 uses it, once.
	var id string
	testwait.For(t, "the operator to propose under the published policy", func() bool {
		code, out, _ := as("operator", "propose", "--device", "inverter-1", "--unit", "1", "--write-register", "40127=20",
			"--key", filepath.Join(keyDir, "alice.private.json"))
		if code == 0 {
			id = strings.Fields(out)[1]
		}
		return code == 0
	})
	for _, who := range []string{"bob", "carol"} {
		must(as("operator", "approve", id, "--key", filepath.Join(keyDir, who+".private.json"), "--yes"))
	}
	testwait.For(t, "the approved write to pass through gw-2", func() bool {
		return mb["gw-2"].WriteRegister(simulators.InverterLimitPct, 20) == nil
	})
	if err := mb["gw-1"].WriteRegister(simulators.InverterLimitPct, 20); err == nil {
		t.Fatal("the approval was used twice")
	}
	if out := must(as("operator", "approvals", "show", id)); !strings.Contains(out, "already used by gw-2") {
		t.Fatalf("approvals show:\n%s", out)
	}

	// The analyst sees both writers' records and verifies the whole chain
	// and gw-1's signed checkpoints.
	writers := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(must(as("analyst", "chain", "tail", "--json", "-n", "500"))), "\n") {
		var r chain.Record
		if json.Unmarshal([]byte(line), &r) == nil {
			writers[r.Writer] = true
		}
	}
	if !writers["gw-1"] || !writers["gw-2"] {
		t.Fatalf("analyst's tail shows writers %v, want gw-1 and gw-2", writers)
	}
	confirmed := regexp.MustCompile(`checkpoints: [1-9][0-9]* signed checkpoints match the stream`)
	var lastVerify string
	verified := func() bool {
		code, out, stderr := as("analyst", "chain", "verify", "--trust", trust)
		lastVerify = out + stderr
		return code == 0 && strings.Contains(out, "chain OK: 2 writers") && confirmed.MatchString(out)
	}
	testwait.NoError(t, "the analyst to verify the chain and a signed checkpoint", func() error {
		if !verified() {
			return fmt.Errorf("chain verify said:\n%s", lastVerify)
		}
		return nil
	})
	if v := viol.all(); len(v) > 0 {
		t.Fatalf("the roles' own work tripped permissions:\n%s", strings.Join(v, "\n"))
	}

	// Each role, refused what is not its own.
	conns := map[string]jetstream.JetStream{}
	for _, u := range shippedUsers {
		nc, err := nats.Connect(natsURL(u), nats.RootCAs(filepath.Join(dir, "ca.pem")),
			nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})) // violations are what this tests
		if err != nil {
			t.Fatalf("%s: %v", u, err)
		}
		t.Cleanup(nc.Close)
		conns[u], _ = jetstream.New(nc)
	}
	loosened := chain.StreamConfig(3)
	loosened.DenyDelete, loosened.DenyPurge = false, false
	pub := func(subject string) func(context.Context, jetstream.JetStream) error {
		return func(ctx context.Context, js jetstream.JetStream) error {
			_, err := js.Publish(ctx, subject, []byte("{}"))
			return err
		}
	}
	deleteChain := func(ctx context.Context, js jetstream.JetStream) error { return js.DeleteStream(ctx, chain.StreamName) }
	updateChain := func(ctx context.Context, js jetstream.JetStream) error {
		_, err := js.UpdateStream(ctx, loosened)
		return err
	}
	purgeChain := func(ctx context.Context, js jetstream.JetStream) error {
		s, err := js.Stream(ctx, chain.StreamName)
		if err == nil {
			err = s.Purge(ctx)
		}
		return err
	}
	use := "gridseal.approval.used." + strings.Repeat("ab", 32)
	refusals := []struct {
		name, user, subject string
		op                  func(context.Context, jetstream.JetStream) error
	}{
		{"gw-1 appends as gw-2", "gw-1", "gridseal.chain.gw-2", pub("gridseal.chain.gw-2")},
		{"gw-2 appends as gw-1", "gw-2", "gridseal.chain.gw-1", pub("gridseal.chain.gw-1")},
		{"gw-2 signs checkpoints as cp-1", "gw-2", "gridseal.checkpoint.cp-1", pub("gridseal.checkpoint.cp-1")},
		{"gw-2 takes gw-1's writer lease", "gw-2", "$KV.GRIDSEAL_WRITERS.gw-1", pub("$KV.GRIDSEAL_WRITERS.gw-1")},
		{"gw-1 deletes the chain stream", "gw-1", "$JS.API.STREAM.DELETE.GRIDSEAL_CHAIN", deleteChain},
		{"gw-1 purges the chain stream", "gw-1", "$JS.API.STREAM.PURGE.GRIDSEAL_CHAIN", purgeChain},
		{"gw-1 lets the chain stream delete", "gw-1", "$JS.API.STREAM.UPDATE.GRIDSEAL_CHAIN", updateChain},
		{"gw-1 creates a stream", "gw-1", "$JS.API.STREAM.CREATE.SHADOW", func(ctx context.Context, js jetstream.JetStream) error {
			_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "SHADOW", Subjects: []string{"shadow.>"}})
			return err
		}},
		{"gw-1 deletes the approvals bucket", "gw-1", "$JS.API.STREAM.DELETE.KV_GRIDSEAL_APPROVALS", func(ctx context.Context, js jetstream.JetStream) error {
			return js.DeleteKeyValue(ctx, approvals.Bucket)
		}},
		{"operator appends a block", "operator", "gridseal.chain.gw-1", pub("gridseal.chain.gw-1")},
		{"operator records a use", "operator", use, pub(use)},
		{"operator sets the policy", "operator", "$KV.GRIDSEAL_APPROVALS.policy.current", pub("$KV.GRIDSEAL_APPROVALS.policy.current")},
		{"operator deletes the chain stream", "operator", "$JS.API.STREAM.DELETE.GRIDSEAL_CHAIN", deleteChain},
		{"analyst appends a block", "analyst", "gridseal.chain.gw-2", pub("gridseal.chain.gw-2")},
		{"analyst records a use", "analyst", use, pub(use)},
		{"analyst writes an approval", "analyst", "$KV.GRIDSEAL_APPROVALS.p." + strings.Repeat("cd", 32), pub("$KV.GRIDSEAL_APPROVALS.p." + strings.Repeat("cd", 32))},
		{"analyst deletes the chain stream", "analyst", "$JS.API.STREAM.DELETE.GRIDSEAL_CHAIN", deleteChain},
		{"admin deletes the chain stream", "admin", "$JS.API.STREAM.DELETE.GRIDSEAL_CHAIN", deleteChain},
		{"admin lets the chain stream delete", "admin", "$JS.API.STREAM.UPDATE.GRIDSEAL_CHAIN", updateChain},
		{"admin appends a block", "admin", "gridseal.chain.gw-1", pub("gridseal.chain.gw-1")},
	}
	t.Run("refused", func(t *testing.T) {
		for _, tc := range refusals {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				octx, ocancel := context.WithTimeout(ctx, 2*time.Second)
				defer ocancel()
				if err := tc.op(octx, conns[tc.user]); err == nil {
					t.Fatalf("%s may publish to %s", tc.user, tc.subject)
				}
				testwait.For(t, "the server to log "+tc.user+"'s violation on "+tc.subject, func() bool { return viol.of(tc.user, tc.subject) > 0 })
			})
		}
	})
	if !verified() {
		t.Fatalf("the refused attempts changed the chain:\n%s", lastVerify)
	}
}
