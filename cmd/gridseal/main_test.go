package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	mbclient "github.com/simonvetter/modbus"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/eve/evetest"
	"github.com/gridseal/gridseal/internal/bench"
	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/internal/testnet"
	"github.com/gridseal/gridseal/internal/testpki"
	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/protocols/modbus"
	"github.com/gridseal/gridseal/simulators"
	"github.com/gridseal/gridseal/simulators/simtest"
)

// TestMain fails the run if it leaves a gridseal-data directory in this
// folder: the default --data-dir, which no test may write to.
//
// The test binary also stands in for gridseal where a command starts
// gridseal processes of its own (the bench's targets): with
// GRIDSEAL_TEST_AS_MAIN set it runs its arguments as gridseal would.
func TestMain(m *testing.M) {
	if os.Getenv("GRIDSEAL_TEST_AS_MAIN") != "" {
		main()
	}
	if err := os.Setenv("GRIDSEAL_TEST_AS_MAIN", "1"); err != nil { // for the processes the tests' commands start
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	if _, err := os.Stat("gridseal-data"); err == nil {
		fmt.Fprintln(os.Stderr, "FAIL: cmd/gridseal/gridseal-data exists after the tests: a command ran without --data-dir "+
			"(runCLI gives one a t.TempDir()); remove the directory once that is fixed")
		code = 1
	}
	os.Exit(code)
}

// runCLI runs gridseal with args. A command not given --data-dir gets a
// fresh temporary one, so no test writes to the default in this folder.
func runCLI(t *testing.T, ctx context.Context, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	if !slices.ContainsFunc(args, func(a string) bool { return a == "--data-dir" || strings.HasPrefix(a, "--data-dir=") }) {
		args = append(args, "--data-dir", t.TempDir())
	}
	var out, errb bytes.Buffer
	code = run(ctx, args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
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
	badPolicyRef := write("cfg.yaml", "policy: badpolicy.yaml\nlisteners:\n  - listen: 127.0.0.1:0\n    devices: [a]\nchain: {writer: gw-1, key: k.json}\ninsecure_unsigned_policy: true\n")
	write("good.yaml", "id: x\ndevices:\n  - name: a\n    upstream: 127.0.0.1:1\n")
	unknownDevice := write("cfg2.yaml", "policy: good.yaml\nlisteners:\n  - listen: 127.0.0.1:0\n    devices: [b]\nchain: {writer: gw-1, key: k.json}\ninsecure_unsigned_policy: true\n")
	noKey := write("cfg3.yaml", "policy: good.yaml\nlisteners:\n  - listen: 127.0.0.1:0\n    devices: [a]\nchain: {writer: gw-1}\n")
	missingKey := write("cfg4.yaml", "policy: good.yaml\nlisteners:\n  - listen: 127.0.0.1:0\n    devices: [a]\nchain: {writer: gw-1, key: nope.json}\ninsecure_unsigned_policy: true\n")
	badTLS := write("cfg7.yaml", "policy: good.yaml\nlisteners:\n  - listen: 127.0.0.1:0\n    devices: [a]\n    tls: {cert: nope.pem, key: nope-key.pem, ca: ca.pem}\nchain: {writer: gw-1, key: k.json}\ninsecure_unsigned_policy: true\n")
	noRoot := write("cfg5.yaml", "policy: good.yaml\nlisteners:\n  - listen: 127.0.0.1:0\n    devices: [a]\nchain: {writer: gw-1, key: k.json}\n")
	if code, _, stderr := runCLI(t, t.Context(), "keys", "new", "admin-1", "--dir", dir); code != 0 {
		t.Fatal(stderr)
	}
	_, rootYAML, _ := runCLI(t, t.Context(), "policy", "root", "--threshold", "1", filepath.Join(dir, "admin-1.public.json"))
	write("root.yaml", rootYAML)
	unsigned := write("cfg6.yaml", "policy: good.yaml\npolicy_root: root.yaml\nlisteners:\n  - listen: 127.0.0.1:0\n    devices: [a]\nchain: {writer: gw-1, key: k.json}\n")
	openConsole := write("cfg8.yaml", "policy: good.yaml\nlisteners:\n  - listen: 127.0.0.1:0\n    devices: [a]\nchain: {writer: gw-1, key: k.json}\ninsecure_unsigned_policy: true\nconsole: {listen: \"0.0.0.0:0\"}\n")
	write("shared-tokens", "soc-1 "+strings.Repeat("ab", 32)+"\n")
	if err := os.Chmod(filepath.Join(dir, "shared-tokens"), 0o644); err != nil {
		t.Fatal(err)
	}
	typeAndKey := write("typo2.yaml", "policy: p.yaml\nlimits:\n  idle_timeout: soon\n  max_conn: 3\n")
	badListen := write("cfg10.yaml", "policy: good.yaml\nlisteners:\n  - listen: 127.0.0.1:99999\n    devices: [a]\nchain: {writer: gw-1, key: k.json}\ninsecure_unsigned_policy: true\n")
	noPort := write("cfg11.yaml", "policy: good.yaml\nlisteners:\n  - listen: localhost\n    devices: [a]\nchain: {writer: gw-1, key: k.json}\ninsecure_unsigned_policy: true\n")
	goodListen := write("cfg12.yaml", "policy: good.yaml\nlisteners:\n  - listen: 127.0.0.1:0\n    devices: [a]\nchain: {writer: gw-1, key: k.json}\ninsecure_unsigned_policy: true\n")
	sharedTokens := write("cfg9.yaml", "policy: good.yaml\nlisteners:\n  - listen: 127.0.0.1:0\n    devices: [a]\nchain: {writer: gw-1, key: k.json}\ninsecure_unsigned_policy: true\nconsole: {listen: \"127.0.0.1:0\", tokens: shared-tokens}\n")

	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"proxy without config", []string{"proxy"}, 2, "--config FILE is required"},
		{"missing config file", []string{"proxy", "--config", filepath.Join(dir, "nope.yaml")}, 1, "no such file"},
		{"bad value in config", []string{"proxy", "--config", badYAML}, 1, badYAML + ":6:"},
		{"unknown config key", []string{"proxy", "--config", unknownKey}, 1, unknownKey + `:2: unknown key "listners" (allowed: policy, policy_root, candidate, insecure_unsigned_policy, allow_policy_rollback, listeners, limits, upstream, exceptions, chain, upstream_tls, checkpoint, console, eve, log)`},
		{"bad value and unknown key", []string{"proxy", "--config", typeAndKey}, 1, typeAndKey + ":3: idle_timeout: \"soon\" is not a duration (e.g. 30s, 5m)"},
		{"bad policy", []string{"proxy", "--config", badPolicyRef}, 1, `badpolicy.yaml:6: device "a" rule "r": allow must be read, write or diagnostic`},
		{"device not in policy", []string{"proxy", "--config", unknownDevice}, 1, `device "b" is not in policy x`},
		{"listener tls files missing", []string{"proxy", "--config", badTLS}, 1, "listener 127.0.0.1:0: tls: open"},
		{"policy without root", []string{"proxy", "--config", noRoot}, 1, "policy_root: name the admins' root file"},
		{"unsigned policy", []string{"proxy", "--config", unsigned}, 1, "policy not signed by enough admins: no signatures"},
		{"propose without a write", []string{"propose", "--device", "a", "--key", "k"}, 2, "give exactly one of --write-register"},
		{"propose bad register", []string{"propose", "--device", "a", "--key", "k", "--write-register", "40127"}, 2, `--write-register "40127": want ADDRESS=VALUE`},
		{"propose bad value", []string{"propose", "--device", "a", "--key", "k", "--write-register", "1=70000"}, 2, `value "70000" is not`},
		{"propose bad hex", []string{"propose", "--device", "a", "--key", "k", "--pdu", "zz"}, 2, `--pdu: "zz" is not hex`},
		{"propose malformed pdu", []string{"propose", "--device", "a", "--key", "k", "--pdu", "0600"}, 2, "--pdu 0600"},
		{"propose bad coil", []string{"propose", "--device", "a", "--key", "k", "--write-coil", "1=maybe"}, 2, "want on or off"},
		{"approve bad id", []string{"approve", "xyz", "--key", "k"}, 2, `approval id "xyz": want hex digits`},
		{"console open to the network", []string{"proxy", "--config", openConsole}, 1, "console: 0.0.0.0:0 is not a loopback address: set console.tls"},
		{"console token file readable", []string{"proxy", "--config", sharedTokens}, 1, "shared-tokens is readable by others"},
		{"console token without file", []string{"keys", "console-token", "soc-1"}, 2, "--file is required"},
		{"no chain key", []string{"proxy", "--config", noKey}, 1, "chain.key: the writer's private keyset (create one with: gridseal keys new gw-1"},
		{"missing key file", []string{"proxy", "--config", missingKey}, 1, "private keyset: stat"},
		{"verify without trust", []string{"chain", "verify", "--data-dir", dir}, 1, "trust file: open"},
		{"bad export format", []string{"chain", "export", "--format", "xml"}, 2, `--format "xml": want jsonl or eve`},
		{"bad verdict filter", []string{"chain", "tail", "--verdict", "maybe"}, 2, `--verdict "maybe"`},
		{"bad key name", []string{"keys", "new", "Bad.Name", "--dir", dir}, 2, "key name"},
		{"bad checkpoint key name", []string{"keys", "checkpoint", "Bad.Name", "--dir", dir}, 2, "usage: key name: "},
		{"bad console token name", []string{"keys", "console-token", "Bad.Name", "--file", filepath.Join(dir, "tokens")}, 2, "usage: token name: "},
		{"key name missing", []string{"keys", "new"}, 2, "accepts 1 arg(s), received 0"},
		{"unknown sim device", []string{"sim", "--device", "pump"}, 2, `unknown device "pump"`},
		{"bad log level", []string{"sim", "--log-level", "loud"}, 2, `--log-level "loud": want debug, info, warn or error`},
		{"bad log level, no logger", []string{"chain", "tail", "--log-level", "loud"}, 2, `--log-level "loud"`},
		{"bad log format", []string{"chain", "verify", "--log-format", "xml"}, 2, `--log-format "xml": want console, json or auto`},
		{"unknown command", []string{"frobnicate"}, 2, `unknown command "frobnicate" for "gridseal"`},
		{"unknown command, suggestion", []string{"chian", "tail"}, 2, `unknown command "chian" for "gridseal"; did you mean "chain"?`},
		{"unknown chain subcommand", []string{"chain", "tial"}, 2, `unknown command "tial" for "gridseal chain"; did you mean "tail"?`},
		{"unknown keys subcommand", []string{"keys", "foo"}, 2, `unknown command "foo" for "gridseal keys" (run gridseal keys --help)`},
		{"unknown policy subcommand", []string{"policy", "sgn"}, 2, `unknown command "sgn" for "gridseal policy"; did you mean "sign"?`},
		{"unknown approvals subcommand", []string{"approvals", "lst"}, 2, `did you mean "list"?`},
		{"extra argument", []string{"version", "now"}, 2, `unknown command "now" for "gridseal version"`},
		{"missing argument", []string{"approve", "--key", "k"}, 2, "accepts 1 arg(s), received 0"},
		{"unknown flag", []string{"chain", "tail", "--bogus"}, 2, "unknown flag: --bogus"},
		{"bad flag value", []string{"chain", "tail", "-n", "many"}, 2, `invalid argument "many" for "-n`},
		{"bad listen address", []string{"proxy", "--config", badListen}, 1, "listener 127.0.0.1:99999: invalid port"},
		{"listen address without port", []string{"proxy", "--config", noPort}, 1, `listener localhost: want HOST:PORT`},
		{"bad --http address", []string{"proxy", "--config", goodListen, "--http", "127.0.0.1:70000"}, 1, "console: listen 127.0.0.1:70000: invalid port"},
		{"no data directory", []string{"chain", "tail", "--data-dir", filepath.Join(dir, "nowhere")}, 1,
			"no gridseal data directory at " + filepath.Join(dir, "nowhere") + " (start the proxy or demo there, or pass --nats)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, t.Context(), tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d (stderr %q)", code, tc.code, stderr)
			}
			// One error line (log lines, JSON, may precede it).
			var errLines []string
			for _, l := range strings.Split(strings.TrimSpace(stderr), "\n") {
				if strings.HasPrefix(l, "gridseal: ") {
					errLines = append(errLines, l)
				}
			}
			if len(errLines) != 1 || !strings.Contains(errLines[0], tc.want) {
				t.Fatalf("stderr = %q; want one error line containing %q", stderr, tc.want)
			}
			if strings.Contains(stderr, "Usage:") {
				t.Fatalf("stderr holds the help text: %q", stderr)
			}
		})
	}
	// No command above may have started NATS: a command given a directory
	// that is not a gridseal data directory leaves it uncreated, and a
	// configuration's bad address is reported before the embedded server
	// starts (in runCLI's temporary data directory, never created here).
	if _, err := os.Stat(filepath.Join(dir, "nowhere")); !os.IsNotExist(err) {
		t.Errorf("chain tail created the data directory it was pointed at: %v", err)
	}
}

// TestBadAddressesBeforeNATS: a listener or console address that cannot
// work fails `gridseal proxy` before the embedded NATS server starts.
func TestBadAddressesBeforeNATS(t *testing.T) {
	dir := t.TempDir()
	if code, _, stderr := runCLI(t, t.Context(), "keys", "new", "gw-1", "--dir", dir); code != 0 {
		t.Fatal(stderr)
	}
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte("id: x\ndevices:\n  - name: a\n    upstream: 127.0.0.1:1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	config := func(listen string) string {
		p := filepath.Join(t.TempDir(), "gridseal.yaml")
		body := fmt.Sprintf("policy: %s\nlisteners:\n  - listen: %q\n    devices: [a]\nchain: {writer: gw-1, key: %s}\ninsecure_unsigned_policy: true\n",
			filepath.Join(dir, "policy.yaml"), listen, filepath.Join(dir, "gw-1.private.json"))
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"port out of range", []string{"--config", config("127.0.0.1:99999")}, "listener 127.0.0.1:99999: invalid port"},
		{"no port", []string{"--config", config("127.0.0.1")}, "listener 127.0.0.1: want HOST:PORT"},
		{"not a local address", []string{"--config", config("192.0.2.1:5020")}, "listener 192.0.2.1:5020: listen tcp 192.0.2.1:5020: bind"},
		{"console port out of range", []string{"--config", config("127.0.0.1:0"), "--http", "127.0.0.1:70000"}, "console: listen 127.0.0.1:70000: invalid port"},
		{"console not an address", []string{"--config", config("127.0.0.1:0"), "--http", "8080"}, "console: listen 8080: want HOST:PORT"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data := t.TempDir()
			code, _, stderr := runCLI(t, t.Context(), append(append([]string{"proxy"}, tc.args...), "--data-dir", data, "--log-format", "json")...)
			if code != 1 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit 1 and %q", code, stderr, tc.want)
			}
			if _, err := os.Stat(filepath.Join(data, "nats")); !os.IsNotExist(err) {
				t.Fatalf("the embedded NATS server was started before the address was checked (%v)", err)
			}
		})
	}
}

// TestLogLevelFlagOverridesConfig: --log-level, when given, wins over the
// configuration's log.level; without it the configuration's applies.
func TestLogLevelFlagOverridesConfig(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "gridseal.yaml")
	// The gateway warns of the unsigned policy, then fails to read it: the
	// warning shows whether warn or the configuration's error is in force.
	if err := os.WriteFile(cfg, []byte("policy: nope.yaml\nlisteners:\n  - listen: 127.0.0.1:0\n    devices: [a]\nchain: {writer: gw-1, key: k.json}\n"+
		"insecure_unsigned_policy: true\nlog: {level: error, format: json}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		args     []string
		wantWarn bool
	}{
		{"config's level", nil, false},
		{"flag wins", []string{"--log-level", "warn"}, true},
		{"flag at its default wins too", []string{"--log-level", "info"}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, t.Context(), append([]string{"proxy", "--config", cfg}, tc.args...)...)
			if code != 1 {
				t.Fatalf("exit %d, want 1: %s", code, stderr)
			}
			if got := strings.Contains(stderr, "running an UNSIGNED policy"); got != tc.wantWarn {
				t.Fatalf("warning logged: %v, want %v\n%s", got, tc.wantWarn, stderr)
			}
		})
	}
}

// TestVersion: gridseal version prints the version, the commit, the build
// date and the Go that built it, one per line.
func TestVersion(t *testing.T) {
	code, out, _ := runCLI(t, t.Context(), "version")
	shape := regexp.MustCompile(`^gridseal \S+\ncommit: \S+\nbuilt:  \S+\ngo:     go\S+ ` + runtime.GOOS + `/` + runtime.GOARCH + `\n$`)
	if code != 0 || !shape.MatchString(out) {
		t.Fatalf("version: exit %d, %q", code, out)
	}
}

// TestDemoTour runs the whole demo on free ports: simulators, proxy and the
// guided tour, which fails the command if any step behaves unexpectedly.
func TestDemoTour(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	data := t.TempDir()
	// Run as make demo runs it: the commands it prints start with bin/gridseal.
	var outb, errb bytes.Buffer
	code := runAs(ctx, "bin/gridseal", []string{"demo", "--listen", "127.0.0.1:0", "--sim-listen", "127.0.0.1:0",
		"--duration", "100ms", "--log-format", "json", "--data-dir", data, "--http", "127.0.0.1:0"}, strings.NewReader(""), &outb, &errb)
	out, stderr := outb.String(), errb.String()
	if code != 0 {
		t.Fatalf("demo exit %d\nstdout:\n%s\nstderr:\n%s", code, out, stderr)
	}
	for _, line := range strings.Split(out, "\n") {
		if l := strings.TrimSpace(line); strings.HasPrefix(l, "gridseal ") && !strings.HasPrefix(l, "gridseal demo") {
			t.Errorf("the demo prints a command as %q, not as it was run (bin/gridseal)", l)
		}
	}
	for _, want := range []string{
		"bin/gridseal propose --data-dir " + data,
		"bin/gridseal chain tail --data-dir " + data + " -n 40",
		"write 0 to 40126 to disconnect the inverter: denied by gridseal: illegal data address",
		"(standing rule power-limit-setpoint): forwarded",
		"write 30 to 40127: denied by gridseal: illegal function",
		"write 30 again: denied by gridseal",
		"carol approves too; write 30 again: forwarded",
		"the same write once more (replay): denied",
		"inverter output 30.0 kW",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}

	// The demo recorded every step in the chain: it verifies, and the
	// analyst's views show the tour's denies and the approval's life.
	code, out, stderr = runCLI(t, ctx, "chain", "verify", "--data-dir", data)
	if code != 0 || !strings.Contains(out, "chain OK: 1 writers") {
		t.Fatalf("chain verify after the demo: exit %d\n%s%s", code, out, stderr)
	}
	records := func(args ...string) []chain.Record {
		t.Helper()
		code, out, stderr := runCLI(t, ctx, append([]string{"chain", "tail", "--data-dir", data, "--json", "-n", "200"}, args...)...)
		if code != 0 {
			t.Fatalf("chain tail: exit %d: %s", code, stderr)
		}
		var rs []chain.Record
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			var r chain.Record
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("tail --json line %q: %v", line, err)
			}
			rs = append(rs, r)
		}
		return rs
	}
	var got []string
	for _, r := range records("--verdict", "deny") {
		got = append(got, fmt.Sprintf("%s/%d/%d", r.Device, r.Address, r.Exception))
	}
	want := "inverter-1/40126/2 inverter-1/40127/3 battery-1/0/3 /0/10 inverter-1/40127/1 inverter-1/40127/1 inverter-1/40127/1 breaker-1/1/1"
	if strings.Join(got, " ") != want {
		t.Fatalf("denies in the chain:\n %s\nwant\n %s", strings.Join(got, " "), want)
	}
	var steps []string
	var approval string
	for _, r := range records() {
		if r.Phase == "approval" {
			steps = append(steps, strings.Fields(r.Reason)[0]+" "+strings.Fields(r.Reason)[2])
			approval = r.Approval
		}
		if r.Verdict == "allow" && r.Phase == "request" && (len(r.Values) != 1 || r.Values[0] != 30 && r.Values[0] != 60) {
			t.Errorf("unexpected durable write record: %+v", r)
		}
	}
	if strings.Join(steps, ", ") != "proposed alice:, signed bob, signed carol, used demo-gw" {
		t.Fatalf("approval steps in the chain: %v", steps)
	}
	var usedBy int
	for _, r := range records("--device", "inverter-1") {
		if r.Approval == approval && r.Verdict == "allow" && r.Phase == "complete" && r.Exception == 0 {
			usedBy++
		}
	}
	if usedBy != 1 {
		t.Fatalf("%d forwarded writes name the approval, want exactly 1", usedBy)
	}
	code, out, _ = runCLI(t, ctx, "chain", "tail", "--data-dir", data, "--device", "inverter-1", "-n", "3")
	if code != 0 || !strings.Contains(out, "DEVICE") || strings.Count(out, "inverter-1") != 3 {
		t.Fatalf("chain tail table:\n%s", out)
	}
	code, out, _ = runCLI(t, ctx, "chain", "export", "--data-dir", data, "--format", "jsonl")
	if code != 0 || strings.Count(out, "\n") != len(records()) {
		t.Fatalf("export: exit %d, %d lines; tail saw %d", code, strings.Count(out, "\n"), len(records()))
	}
	// An alert per deny (8) and per approval step (4), every line valid
	// by Suricata's schema, the PLC's address from the published policy.
	code, out, _ = runCLI(t, ctx, "chain", "export", "--data-dir", data, "--format", "eve")
	if code != 0 || strings.Count(out, `"event_type":"alert"`) != 12 || !strings.Contains(out, `"function_code":"WrSingleReg"`) ||
		!strings.Contains(out, `"signature_id":9050007`) || !strings.Contains(out, `{"gridseal_plc":"127.0.0.1:`) {
		t.Fatalf("EVE export: exit %d, %d alerts\n%s", code, strings.Count(out, `"event_type":"alert"`), out)
	}
	evetest.Check(t, []byte(out))
	code, out, _ = runCLI(t, ctx, "approvals", "list", "--data-dir", data)
	if code != 0 || !strings.Contains(out, "already used by demo-gw") || !strings.Contains(out, "alice") {
		t.Fatalf("approvals list: exit %d\n%s", code, out)
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
	pol = bytes.ReplaceAll(pol, []byte("127.0.0.1:15021"), []byte(simAddr))
	cfg, err := os.ReadFile("../../deploy/examples/gridseal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	listen := freeAddr(t)
	cfg = bytes.ReplaceAll(cfg, []byte("127.0.0.1:5021"), []byte(listen))
	for name, body := range map[string][]byte{"policy.yaml": pol, "gridseal.yaml": cfg,
		"trust.yaml": []byte("writers:\n  - id: gw-1\n    keyset: keys/gw-1.public.json\n")} {
		if err := os.WriteFile(filepath.Join(dir, name), body, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The operators who approve what the example policy's requires: rules
	// name, the checkpointer's key, and two policy admins who sign the
	// policy, as the example configuration says.
	keyDir := filepath.Join(dir, "keys")
	var operators []string
	for _, a := range []string{"alice", "bob", "carol", "admin-1", "admin-2"} {
		if code, _, stderr := runCLI(t, t.Context(), "keys", "new", a, "--dir", keyDir); code != 0 {
			t.Fatal(stderr)
		}
		operators = append(operators, filepath.Join(keyDir, a+".public.json"))
	}
	code, approvers, stderr := runCLI(t, t.Context(), append([]string{"policy", "approvers", "--group", "operators"}, operators[:3]...)...)
	if code != 0 {
		t.Fatal(stderr)
	}
	pol = append(pol, approvers...)
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), pol, 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := runCLI(t, t.Context(), "keys", "checkpoint", "cp-1", "--dir", keyDir); code != 0 {
		t.Fatal(stderr)
	}
	code, rootYAML, stderr := runCLI(t, t.Context(), "policy", "root", "--threshold", "2",
		filepath.Join(keyDir, "admin-1.public.json"), filepath.Join(keyDir, "admin-2.public.json"))
	if code != 0 {
		t.Fatal(stderr)
	}
	if err := os.WriteFile(filepath.Join(dir, "policy-root.yaml"), []byte(rootYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	for i, a := range []string{"admin-1", "admin-2"} {
		code, out, stderr := runCLI(t, t.Context(), "policy", "verify", filepath.Join(dir, "policy.yaml"), "--root", filepath.Join(dir, "policy-root.yaml"))
		want := "no signatures"
		if i > 0 {
			want = fmt.Sprintf("%d of 2 required", i)
		}
		if code == 0 || !strings.Contains(stderr, want) {
			t.Fatalf("verify with %d signatures: exit %d %s%s", i, code, out, stderr)
		}
		if code, _, stderr := runCLI(t, t.Context(), "policy", "sign", filepath.Join(dir, "policy.yaml"), "--key", filepath.Join(keyDir, a+".private.json")); code != 0 {
			t.Fatal(stderr)
		}
	}
	// The console over HTTPS for analysts elsewhere: a client certificate
	// from the viewers' CA or a token from the token file admits them.
	ca := testpki.New(t)
	tlsDir := filepath.Join(dir, "tls")
	if err := os.MkdirAll(tlsDir, 0o700); err != nil {
		t.Fatal(err)
	}
	ca.WriteCA(filepath.Join(tlsDir, "viewers-ca.pem"))
	ca.WritePair(ca.Issue("gridseal-console", "", true), filepath.Join(tlsDir, "console.pem"), filepath.Join(tlsDir, "console-key.pem"))
	code, tokOut, stderr := runCLI(t, t.Context(), "keys", "console-token", "soc-1", "--file", filepath.Join(dir, "console-tokens"))
	if code != 0 {
		t.Fatal(stderr)
	}
	token := strings.TrimSpace(tokOut[strings.LastIndex(strings.TrimSpace(tokOut), "\n")+1:])
	if fi, err := os.Stat(filepath.Join(dir, "console-tokens")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "console-tokens")); strings.Contains(string(b), token) {
		t.Fatal("the token file holds the token itself")
	}
	web := freeAddr(t)
	cfgPath := filepath.Join(dir, "gridseal.yaml")
	withConsole := bytes.Replace(cfg, []byte("console:\n  listen: 127.0.0.1:8081\n"), fmt.Appendf(nil,
		"console:\n  listen: %s\n  tls: {cert: tls/console.pem, key: tls/console-key.pem, ca: tls/viewers-ca.pem}\n  tokens: console-tokens\n", web), 1)
	if bytes.Equal(withConsole, cfg) {
		t.Fatal("the example configuration has no console section to fill in")
	}
	if err := os.WriteFile(cfgPath, withConsole, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan int, 1)
	go func() {
		var code int
		code, _, stderr = runCLI(t, ctx, "proxy", "--config", cfgPath, "--data-dir", data, "--log-format", "json")
		done <- code
	}()
	waitListening(t, "the proxy to listen", listen)
	c := modbusClient(t, listen, 1)
	if _, err := c.ReadRegister(simulators.InverterPower, mbclient.HOLDING_REGISTER); err != nil {
		t.Fatalf("read through the proxy: %v", err)
	}
	if err := c.WriteRegister(simulators.InverterLimitPct, 60); err != nil {
		t.Fatalf("allowed write: %v", err)
	}
	if err := c.WriteRegister(simulators.InverterLimitPct, 40); err == nil {
		t.Fatal("a write the policy allows only with two operators' approval went through without")
	}
	if err := c.WriteRegister(simulators.InverterConn, 0); err == nil {
		t.Fatal("forbidden write went through")
	}
	consoleGet := func(bearer string, certs ...tls.Certificate) int {
		t.Helper()
		hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool, Certificates: certs}}}
		req, _ := http.NewRequest("GET", "https://"+web+"/api/status", nil)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("console: %v", err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := consoleGet(""); code != http.StatusUnauthorized {
		t.Fatalf("console without credentials: %d", code)
	}
	if code := consoleGet(token); code != http.StatusOK {
		t.Fatalf("console with the analyst's token: %d", code)
	}
	if code := consoleGet("", ca.Issue("analyst-2", "", false)); code != http.StatusOK {
		t.Fatalf("console with a viewer certificate: %d", code)
	}
	// Prometheus, with its token, sees the chain's storage grow toward the
	// disk's end: the chain never deletes.
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool}}}
	req, _ := http.NewRequest("GET", "https://"+web+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	scrape, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{"gridseal_chain_stream_bytes", "gridseal_chain_stream_messages", "gridseal_jetstream_storage_bytes", "gridseal_data_dir_free_bytes"} {
		re := regexp.MustCompile(`(?m)^` + m + ` ([0-9.e+]+)$`)
		v := re.FindSubmatch(scrape)
		if v == nil {
			t.Fatalf("/metrics lacks %s", m)
		}
		if f, _ := strconv.ParseFloat(string(v[1]), 64); f <= 0 {
			t.Fatalf("%s = %s, want > 0", m, v[1])
		}
	}
	// Every series the shipped Grafana dashboard queries exists (approval
	// steps too, at 0, before the first approval).
	dash, err := os.ReadFile("../../deploy/grafana/gridseal-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range regexp.MustCompile(`gridseal_[a-z_]+`).FindAllString(string(dash), -1) {
		if !regexp.MustCompile(`(?m)^` + name + `[ {]`).Match(scrape) {
			t.Errorf("the dashboard queries %s, which /metrics does not have", name)
		}
	}

	// SIGHUP reloads the policy: an edit without new signatures is refused
	// and the policy in force stays; a new version signed by both admins
	// goes into force.
	polPath := filepath.Join(dir, "policy.yaml")
	edited := bytes.Replace(pol, []byte("values: 50-100"), []byte("values: 40-60"), 1)
	if bytes.Equal(edited, pol) {
		t.Fatal("the example policy has no power-limit-setpoint range to edit")
	}
	if err := os.WriteFile(polPath, edited, 0o600); err != nil {
		t.Fatal(err)
	}
	hangup := func() {
		t.Helper()
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	hangup()
	time.Sleep(300 * time.Millisecond)
	if err := c.WriteRegister(simulators.InverterLimitPct, 50); err != nil {
		t.Fatalf("after a refused reload the old policy must stay: %v", err)
	}
	edited = bytes.Replace(edited, []byte("version: 1"), []byte("version: 2"), 1)
	if err := os.WriteFile(polPath, edited, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"admin-1", "admin-2"} {
		if code, _, stderr := runCLI(t, t.Context(), "policy", "sign", polPath, "--key", filepath.Join(keyDir, a+".private.json")); code != 0 {
			t.Fatal(stderr)
		}
	}
	hangup()
	testwait.For(t, "the signed version 2 to be in force", func() bool {
		return c.WriteRegister(simulators.InverterLimitPct, 70) != nil
	})
	if err := c.WriteRegister(simulators.InverterLimitPct, 40); err != nil {
		t.Fatalf("version 2 allows 40-60: %v", err)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("proxy exit %d: %s", code, stderr)
	}
	if !strings.Contains(stderr, "policy reload refused") || !strings.Contains(stderr, `"policy reloaded"`) {
		t.Fatalf("reloads not logged:\n%s", stderr)
	}
	code, out, errOut := runCLI(t, t.Context(), "chain", "verify", "--data-dir", data, "--trust", filepath.Join(dir, "trust.yaml"))
	_ = errOut
	if code != 0 || !strings.Contains(out, "writer gw-1") || !strings.Contains(out, "present)") {
		t.Fatalf("verify: exit %d\n%s%s", code, out, errOut)
	}
}

func freeAddr(t *testing.T) string { return testnet.FreeAddr(t) }

// waitListening waits until something accepts connections on addr.
func waitListening(t *testing.T, what, addr string) {
	t.Helper()
	testwait.NoError(t, what, func() error {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			_ = c.Close()
		}
		return err
	})
}

func modbusClient(t *testing.T, addr string, unit uint8) *mbclient.ModbusClient {
	t.Helper()
	return simtest.Client(t, addr, unit, 3*time.Second)
}

// TestProposeAndApproveCommands drives the approval commands against a
// running demo (no tour): propose, a refused confirmation, two approvals,
// then the approved write goes through the proxy exactly once.
func TestProposeAndApproveCommands(t *testing.T) {
	data := t.TempDir()
	listen := freeAddr(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan int, 1)
	var demoErr string
	go func() {
		code, _, stderr := runCLI(t, ctx, "demo", "--tour=false", "--listen", listen, "--sim-listen", "127.0.0.1:0",
			"--data-dir", data, "--log-format", "json", "--http", "off", "--checkpoint-every", "300ms")
		demoErr = stderr
		done <- code
	}()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("demo exit %d: %s", code, demoErr)
		}
	}()
	waitListening(t, "the demo proxy", listen)
	key := func(who string) string { return filepath.Join(data, "keys", who+".private.json") }
	// The embedded NATS admits only holders of the data directory's token.
	url, err := os.ReadFile(filepath.Join(data, "nats", "client.url"))
	if err != nil {
		t.Fatal(err)
	}
	if nc, err := nats.Connect(string(url), nats.Timeout(time.Second)); err == nil {
		nc.Close()
		t.Fatal("the embedded NATS accepted a client without its token")
	}
	if fi, err := os.Stat(filepath.Join(data, "nats", "token")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", fi, err)
	}
	cli := func(stdin string, args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := run(ctx, append(args, "--data-dir", data), strings.NewReader(stdin), &out, &errb)
		return code, out.String(), errb.String()
	}

	if code, _, stderr := cli("", "propose", "--device", "inverter-1", "--unit", "1", "--write-register", "40127=70", "--key", key("alice")); code != 1 || !strings.Contains(stderr, "already allows this command") {
		t.Fatalf("proposing a standing-rule command: exit %d %s", code, stderr)
	}
	if code, _, stderr := cli("", "propose", "--device", "inverter-1", "--unit", "1", "--write-register", "40127=20", "--key", key("admin-1")); code != 1 || !strings.Contains(stderr, "belongs to no approver") {
		t.Fatalf("proposing with a non-approver key: exit %d %s", code, stderr)
	}
	// Unit 0 is a broadcast: propose warns, and no rule of the demo's
	// policy names unit 0, so none can allow it.
	if code, _, stderr := cli("", "propose", "--device", "inverter-1", "--unit", "0", "--write-register", "40127=20", "--key", key("alice")); code != 1 ||
		!strings.Contains(stderr, "warning: unit 0 is the broadcast address") || !strings.Contains(stderr, "no rule of device inverter-1 allows") {
		t.Fatalf("proposing a broadcast: exit %d %s", code, stderr)
	}
	code, out, stderr := cli("", "propose", "--device", "inverter-1", "--unit", "1", "--write-register", "40127=20", "--key", key("alice"))
	if code != 0 {
		t.Fatalf("propose: exit %d %s", code, stderr)
	}
	id := strings.Fields(out)[1]
	if !strings.Contains(out, "inverter-1 unit 1: write single register (function 6) holding-registers 40127 = 20") || !strings.Contains(out, "needs 2 of operators") {
		t.Fatalf("propose output:\n%s", out)
	}
	if code, out, stderr := cli("no\n", "approve", id, "--key", key("bob")); code != 1 || !strings.Contains(stderr, "not confirmed") || !strings.Contains(out, "proposer  alice") {
		t.Fatalf("unconfirmed approval: exit %d\n%s%s", code, out, stderr)
	}
	if code, out, stderr := cli("yes\n", "approve", id, "--key", key("bob")); code != 0 || !strings.Contains(out, "1 of 2 operators signed (bob)") {
		t.Fatalf("bob approves: exit %d\n%s%s", code, out, stderr)
	}
	if code, _, stderr := cli("", "approve", id, "--key", key("alice"), "--yes"); code != 1 || !strings.Contains(stderr, "alice proposed this command") {
		t.Fatalf("self-approval: exit %d %s", code, stderr)
	}
	c := modbusClient(t, listen, 1)
	if err := c.WriteRegister(simulators.InverterLimitPct, 20); err == nil {
		t.Fatal("write allowed with one approval")
	}
	if code, out, stderr := cli("", "approve", id[:16], "--key", key("carol"), "--yes"); code != 0 || !strings.Contains(out, "2 of 2 operators signed (bob, carol)") {
		t.Fatalf("carol approves: exit %d\n%s%s", code, out, stderr)
	}
	testwait.For(t, "the approved write to pass", func() bool { return c.WriteRegister(simulators.InverterLimitPct, 20) == nil })
	if err := c.WriteRegister(simulators.InverterLimitPct, 20); err == nil {
		t.Fatal("the approval was used twice")
	}
	if code, out, _ := cli("", "approvals", "show", id); code != 0 || !strings.Contains(out, "already used by demo-gw") {
		t.Fatalf("approvals show: exit %d\n%s", code, out)
	}
	if code, _, stderr := cli("", "approve", id, "--key", key("carol"), "--yes"); code != 1 || !strings.Contains(stderr, "already used") {
		t.Fatalf("approving a used approval: exit %d %s", code, stderr)
	}

	// The demo's checkpointer signs the stream's tree: verify checks the
	// checkpoints, and one write's record is proven in the signed tree.
	var recs []chain.Record
	testwait.For(t, "a signed checkpoint covering the approved write", func() bool {
		code, out, _ := cli("", "chain", "verify")
		if code != 0 || !strings.Contains(out, "signed checkpoints match the stream") {
			return false
		}
		_, tail, _ := cli("", "chain", "tail", "--json", "-n", "500")
		recs = recs[:0]
		for _, line := range strings.Split(strings.TrimSpace(tail), "\n") {
			var r chain.Record
			if json.Unmarshal([]byte(line), &r) == nil {
				recs = append(recs, r)
			}
		}
		for _, r := range recs {
			if r.Approval == id && r.Verdict == "allow" && r.Phase == "complete" {
				code, out, _ := cli("", "chain", "prove", "--seq", fmt.Sprint(r.Seq), "--index", fmt.Sprint(r.Index))
				return code == 0 && strings.Contains(out, "is leaf") && strings.Contains(out, "— demo-checkpointer")
			}
		}
		return false
	})
	if code, _, stderr := cli("", "chain", "prove", "--seq", "999999", "--index", "0"); code != 1 || !strings.Contains(stderr, "is not in the newest signed checkpoint (") {
		t.Fatalf("proving an event that is not there: exit %d %s", code, stderr)
	}

	// A witness keeps today's signed checkpoint; after more traffic, the
	// newest checkpoint is proved to extend it.
	code, out, stderr = cli("", "chain", "prove", "--from-size", "1")
	_, kept, ok := strings.Cut(out, "checkpoint:\n")
	if code != 0 || !ok {
		t.Fatalf("prove --from-size 1: exit %d %s%s", code, out, stderr)
	}
	keptPath := filepath.Join(t.TempDir(), "witness.checkpoint")
	if err := os.WriteFile(keptPath, []byte(kept), 0o644); err != nil {
		t.Fatal(err)
	}
	keptSize := strings.Split(kept, "\n")[1]
	reader := modbusClient(t, listen, simulators.UnitInverter)
	for i := 0; i < 5; i++ {
		if _, err := reader.ReadRegister(simulators.InverterPower, mbclient.HOLDING_REGISTER); err != nil {
			t.Fatal(err)
		}
	}
	testwait.For(t, "a newer checkpoint that extends the kept one", func() bool {
		code, out, _ := cli("", "chain", "prove", "--from-checkpoint", keptPath)
		return code == 0 && strings.Contains(out, "extends the tree of "+keptSize+" events") &&
			!strings.Contains(out, "the signed tree of "+keptSize+" events")
	})
	// A witness's cron job keeps the newest once it is proved.
	code, out, stderr = cli("", "chain", "prove", "--from-checkpoint", keptPath, "--update")
	if code != 0 || !strings.Contains(out, "now keeps the checkpoint of") {
		t.Fatalf("prove --update: exit %d %s%s", code, out, stderr)
	}
	if b, _ := os.ReadFile(keptPath); strings.Split(string(b), "\n")[1] == keptSize {
		t.Fatalf("the kept checkpoint was not replaced:\n%s", b)
	}
	forged := strings.Replace(kept, "\n"+keptSize+"\n", "\n1\n", 1)
	if err := os.WriteFile(keptPath, []byte(forged), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := cli("", "chain", "prove", "--from-checkpoint", keptPath); code != 1 || !strings.Contains(stderr, "checkpoint signature") {
		t.Fatalf("an altered kept checkpoint: exit %d %s", code, stderr)
	}
	if code, _, stderr := cli("", "chain", "prove", "--from-size", "3", "--seq", "1"); code != 2 || !strings.Contains(stderr, "one of them") {
		t.Fatalf("two kinds of proof at once: exit %d %s", code, stderr)
	}

	// Someone with access to NATS injects a block on the demo's subject:
	// chain verify fails and names it.
	if code, out, stderr := cli("", "chain", "verify"); code != 0 {
		t.Fatalf("verify before tampering: exit %d\n%s%s", code, out, stderr)
	}
	token, err := os.ReadFile(filepath.Join(data, "nats", "token"))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(string(url), nats.Token(string(token)))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ack, err := js.Publish(ctx, "gridseal.chain.demo-gw", []byte("not a block"))
	if err != nil {
		t.Fatal(err)
	}
	code, out, stderr = cli("", "chain", "verify")
	want := fmt.Sprintf("chain verify FAILED at sequence %d (writer demo-gw", ack.Sequence)
	if code != 1 || !strings.Contains(stderr, want) || !strings.Contains(stderr, "unreadable block") {
		t.Fatalf("verify after an injected block: exit %d, want one line with %q\n%s%s", code, want, out, stderr)
	}

	// Someone with access to the bucket writes a proposal whose window
	// starts later (gridseal propose starts it now): approvers refuse it.
	store, err := approvals.OpenStore(ctx, js, 1, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	pol, err := store.PublishedPolicy(ctx)
	if err != nil {
		t.Fatal(err)
	}
	alice, err := keys.LoadSigner(key("alice"))
	if err != nil {
		t.Fatal(err)
	}
	for _, ahead := range []time.Duration{time.Hour, 10 * 365 * 24 * time.Hour} {
		pr, err := approvals.NewProposal(pol, "inverter-1", 1, modbus.AppendWriteSingleRegister(nil, simulators.InverterLimitPct, 21),
			15*time.Minute, "alice", time.Now().Add(ahead))
		if err != nil {
			t.Fatal(err)
		}
		sig, err := alice.Sign(approvals.ProposeInput(pr.ID()))
		if err != nil {
			t.Fatal(err)
		}
		future, err := store.Propose(ctx, pr, sig)
		if err != nil {
			t.Fatal(err)
		}
		code, _, stderr := cli("", "approve", future.String(), "--key", key("bob"), "--yes")
		if code != 1 || !strings.Contains(stderr, "not signed") || !strings.Contains(stderr, "starts in the future") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Fatalf("approving a proposal %v ahead: exit %d, want one line saying it starts in the future:\n%s", ahead, code, stderr)
		}
	}
}

// TestBenchJSON runs every self-hosted bench scenario briefly and checks the
// report a user (or CI dashboard) would read.
func TestBenchJSON(t *testing.T) {
	code, out, stderr := runCLI(t, t.Context(), "bench", "--duration", "300ms", "--rounds", "1", "--clients", "2", "--json")
	if code != 0 {
		t.Fatalf("bench: exit %d %s", code, stderr)
	}
	var rep bench.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("bench --json: %v\n%s", err, out)
	}
	seen := map[string]bool{}
	for _, s := range rep.Scenarios {
		seen[s.Name] = true
		for _, tr := range s.Targets {
			if tr.Errors != 0 || tr.Requests == 0 || tr.ThroughputRPS <= 0 || tr.P99us < tr.P50us {
				t.Errorf("%s/%s: %+v", s.Name, tr.Name, tr)
			}
			if tr.Name == "direct" && tr.RatioDirect != 1 {
				t.Errorf("direct ratio %v", tr.RatioDirect)
			}
		}
		if s.Name == "approved-writes" {
			// Every write was approved by 2 of 3 before it was sent, so
			// gridseal forwarded each one, as many as went direct.
			if len(s.Targets) != 2 || s.Targets[1].Exceptions != 0 || s.Targets[1].Requests != s.Targets[0].Requests || s.Extra["added_p99_us"] == "" {
				t.Errorf("approved writes: %+v", s)
			}
		}
		if s.Name == "overhead" && s.Extra["chain_kept_up"] != "true" {
			t.Errorf("the chain did not record every proxied operation: %v", s.Extra)
		}
	}
	for _, want := range []string{"overhead", "plc-like", "writes", "approved-writes", "idle"} {
		if !seen[want] {
			t.Errorf("scenario %s missing", want)
		}
	}
	// The disk under the journal comes with the figures it decides.
	if d := rep.Disk; d == nil || d.Dir != os.TempDir() || d.FS == "" || d.Samples == 0 || d.FsyncP99us < d.FsyncP50us {
		t.Errorf("disk %+v, want the fsync of %s", rep.Disk, os.TempDir())
	}
	if code, _, stderr := runCLI(t, t.Context(), "bench", "--mix", "read=80,write=30"); code != 2 || !strings.Contains(stderr, "add up to 100") {
		t.Fatalf("bad mix: exit %d %s", code, stderr)
	}
}
