package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/eve/evetest"
	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// recordedChain is a chain on a real JetStream server, recorded by writer
// gw-1, with a trust file that pins it.
type recordedChain struct {
	srv   *natstest.Server
	rec   *chain.Recorder
	trust string   // trust file path
	blks  [][]byte // each block as stored, by sequence - 1
	ops   uint64   // events recorded: ops 1..ops
}

// recordChain records blocks blocks of perBlock events each; event n
// writes the value n, which chain tail's VALUES column shows.
func recordChain(t *testing.T, blocks, perBlock int) *recordedChain {
	t.Helper()
	dir := t.TempDir()
	if code, _, stderr := runCLI(t, t.Context(), "keys", "new", "gw-1", "--dir", dir); code != 0 {
		t.Fatalf("keys new: %s", stderr)
	}
	signer, err := keys.LoadSigner(filepath.Join(dir, "gw-1.private.json"))
	if err != nil {
		t.Fatal(err)
	}
	c := &recordedChain{srv: natstest.RunJetStream(t), trust: filepath.Join(dir, "trust.yaml")}
	if err := chain.WriteTrust(c.trust, "gw-1", filepath.Join(dir, "gw-1.public.json")); err != nil {
		t.Fatal(err)
	}
	nc := natstest.Connect(t, c.srv.URL())
	// Each block's last event is durable and closes it; the others linger
	// for it however slow the machine (the default 2 ms linger ended a
	// block early once under -race on a loaded machine).
	c.rec, err = chain.Open(t.Context(), nc, chain.Config{Writer: "gw-1", Signer: signer, HeadDir: t.TempDir(),
		DurableTimeout: 3 * time.Second, Linger: time.Hour}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.rec.Close(time.Second) })
	for b := 0; b < blocks; b++ {
		for i := 0; i < perBlock; i++ {
			c.record(t, i == perBlock-1)
		}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	err = chain.Scan(t.Context(), js, 1, false, func(m *chain.Msg) error {
		c.blks = append(c.blks, bytes.Clone(m.Data))
		return nil
	})
	if err != nil || len(c.blks) != blocks {
		t.Fatalf("%d blocks recorded, want %d: %v", len(c.blks), blocks, err)
	}
	return c
}

// record records the next event; durable ends its block.
func (c *recordedChain) record(t *testing.T, durable bool) {
	t.Helper()
	c.ops++
	pdu := modbus.AppendWriteSingleRegister(nil, 40127, uint16(c.ops))
	ev := &audit.Event{Time: time.Now(), Op: c.ops, Phase: audit.PhaseComplete,
		Client: netip.MustParseAddrPort("127.0.0.1:50200"), Listener: "127.0.0.1:5020", Device: "inverter-1",
		Unit: 1, Function: 6, Class: "write", Address: 40127, Quantity: 1, PDU: pdu, Response: pdu,
		Verdict: audit.Allow, Rule: "setpoint", Reason: "setpoint"}
	if err := c.rec.Record(t.Context(), ev, durable); err != nil {
		t.Fatal(err)
	}
}

// cli runs a chain command against the chain's server, for at most 15 s.
func (c *recordedChain) cli(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	code, stdout, stderr = runCLI(t, ctx, append(args, "--nats", c.srv.URL())...)
	if ctx.Err() != nil {
		t.Fatalf("gridseal %s still running after 15 s", strings.Join(args, " "))
	}
	return code, stdout, stderr
}

// follow runs the following chain command args against the chain until
// lines counts first lines of its output (what names them), records two
// events in one block, waits until lines counts more, and stops it; it
// returns what the command printed, and fails the test unless it exited 0.
func (c *recordedChain) follow(t *testing.T, lines func(out string) int, what string, first, more int, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out, errb syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append(args, "--nats", c.srv.URL(), "--data-dir", t.TempDir()), strings.NewReader(""), &out, &errb)
	}()
	testwait.For(t, what, func() bool { return lines(out.String()) >= first })
	c.record(t, false)
	c.record(t, true)
	testwait.For(t, "what was recorded while following", func() bool { return lines(out.String()) >= more })
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	return out.String()
}

// jsonValues returns the first written value of each JSON line.
func jsonValues(t *testing.T, out string) []string {
	t.Helper()
	var vals []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var r chain.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil || len(r.Values) == 0 {
			t.Fatalf("line %q: %v", line, err)
		}
		vals = append(vals, fmt.Sprint(r.Values[0]))
	}
	return vals
}

// tableValues checks every row of chain tail's table lines up with the
// header, and returns each row's VALUES column.
func tableValues(t *testing.T, out string) []string {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	header := lines[0]
	vcol, rcol := strings.Index(header, "VALUES"), strings.Index(header, "VERDICT")
	if !strings.HasPrefix(header, "TIME") || vcol < 0 || rcol < 0 {
		t.Fatalf("header %q", header)
	}
	var vals []string
	for _, row := range lines[1:] {
		if len(row) < rcol+5 || row[rcol:rcol+5] != "allow" || row[vcol-1] != ' ' || row[rcol-1] != ' ' {
			t.Fatalf("row out of line with the header:\n%s\n%s", header, row)
		}
		vals = append(vals, strings.Fields(row[vcol:])[0])
	}
	return vals
}

// TestChainTail: -n N prints exactly the newest N events, oldest first,
// in a table whose columns line up with the header; a chain whose early
// blocks cannot be read still tails, as tail reads from the end.
func TestChainTail(t *testing.T) {
	c := recordChain(t, 40, 3) // 120 events
	cases := []struct {
		name string
		args []string
		want []string
		json bool
	}{
		{"json", []string{"--json", "-n", "2"}, []string{"119", "120"}, true},
		{"table", []string{"-n", "5"}, []string{"116", "117", "118", "119", "120"}, false},
		{"more than the chain", []string{"--json", "-n", "500"}, nil, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := c.cli(t, append([]string{"chain", "tail"}, tc.args...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			var got []string
			if tc.json {
				got = jsonValues(t, out)
			} else {
				got = tableValues(t, out)
			}
			if tc.want == nil {
				if len(got) != 120 || got[0] != "1" || got[119] != "120" {
					t.Fatalf("got %d events %v…, want all 120 in order", len(got), got[:min(3, len(got))])
				}
				return
			}
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Fatalf("values %v, want %v\n%s", got, tc.want, out)
			}
		})
	}
	// Block 1 unreadable: export, which reads it, names it; tail -n 2,
	// which reads only the last block, does not need it.
	c.srv.CorruptRecord(chain.StreamName, c.blks[0])
	if code, _, stderr := c.cli(t, "chain", "export"); code != 1 || !strings.Contains(stderr, "sequence 1: unreadable") {
		t.Fatalf("export over an unreadable first block: exit %d: %s", code, stderr)
	}
	code, out, stderr := c.cli(t, "chain", "tail", "--json", "-n", "2")
	if got := strings.Join(jsonValues(t, out), " "); code != 0 || got != "119 120" {
		t.Fatalf("tail -n 2 with the first block unreadable: exit %d, values %s: %s", code, got, stderr)
	}
}

// syncBuffer is a bytes.Buffer a command writes while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestChainTailFollow: --follow -n 2 prints the newest two, then what is
// recorded after them, in columns that stay in line with the header, and
// not the whole chain.
func TestChainTailFollow(t *testing.T) {
	c := recordChain(t, 20, 3)
	rows := func(out string) int { return strings.Count(out, "\n") - 1 }
	out := c.follow(t, rows, "the newest two events", 2, 4, "chain", "tail", "--follow", "-n", "2")
	if got := strings.Join(tableValues(t, out), " "); got != "59 60 61 62" {
		t.Fatalf("followed values %s, want 59 60 61 62\n%s", got, out)
	}
}

// TestChainCommandsOnUnreadableLastBlock: when the stream's last record is
// corrupt on disk, verify, export and tail say which sequence they cannot
// read and exit 1, within seconds.
func TestChainCommandsOnUnreadableLastBlock(t *testing.T) {
	c := recordChain(t, 5, 2)
	c.srv.CorruptRecord(chain.StreamName, c.blks[4])
	cases := []struct {
		name string
		args []string
	}{
		{"verify", []string{"chain", "verify", "--trust", c.trust}},
		{"export", []string{"chain", "export"}},
		{"tail", []string{"chain", "tail"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := c.cli(t, tc.args...)
			if code != 1 || !strings.Contains(stderr, "sequence 5") || !strings.Contains(stderr+out, "unreadable") ||
				strings.Contains(stderr+out, "block 0") {
				t.Fatalf("exit %d, want 1 naming sequence 5 unreadable:\n%s%s", code, out, stderr)
			}
		})
	}
}

// TestChainExportEVEFollow: export --format eve --follow --from SEQ starts
// at that block, goes on with blocks recorded while it runs, and every
// line validates against Suricata's schema and names its block's sequence.
func TestChainExportEVEFollow(t *testing.T) {
	c := recordChain(t, 5, 2) // events 1..10, blocks at sequences 1..5
	lines := func(out string) int { return strings.Count(out, "\n") }
	out := c.follow(t, lines, "blocks 4 and 5", 4, 6, "chain", "export", "--format", "eve", "--follow", "--from", "4")
	if n := evetest.Check(t, []byte(out)); n != 6 {
		t.Fatalf("%d lines, want 6:\n%s", n, out)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var e struct {
			Metadata struct {
				PktVars []map[string]string `json:"pktvars"`
			} `json:"metadata"`
		}
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatal(err)
		}
		vars := map[string]string{}
		for _, v := range e.Metadata.PktVars {
			maps.Copy(vars, v)
		}
		got = append(got, vars["gridseal_seq"]+"/"+vars["gridseal_values"])
	}
	if want := "4/7 4/8 5/9 5/10 6/11 6/12"; strings.Join(got, " ") != want {
		t.Fatalf("seq/value of the lines %v, want %s", got, want)
	}
	if code, _, stderr := c.cli(t, "chain", "export", "--from", "0"); code != 2 || !strings.Contains(stderr, "--from 0") {
		t.Fatalf("--from 0: exit %d %s", code, stderr)
	}
}

// TestChainVerifyEVE: verify --eve FILE appends an alert line per problem
// (signature 9050014), each valid by Suricata's schema, and still fails.
func TestChainVerifyEVE(t *testing.T) {
	c := recordChain(t, 3, 2)
	// A trust file pinning another key for gw-1: every block's signature fails.
	dir := t.TempDir()
	if code, _, stderr := runCLI(t, t.Context(), "keys", "new", "gw-1", "--dir", dir); code != 0 {
		t.Fatalf("keys new: %s", stderr)
	}
	wrong := filepath.Join(dir, "trust.yaml")
	if err := chain.WriteTrust(wrong, "gw-1", filepath.Join(dir, "gw-1.public.json")); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "eve.json")
	if err := os.WriteFile(file, []byte(`{"timestamp":"2026-01-01T00:00:00.000000+0000","event_type":"stats"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := c.cli(t, "chain", "verify", "--trust", wrong, "--eve", file)
	if code != 1 || !strings.Contains(stderr, "FAILED") {
		t.Fatalf("verify with the wrong key: exit %d\n%s%s", code, out, stderr)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	problems := strings.Count(out, "  problem ")
	if len(lines) != 1+problems || problems == 0 || !strings.Contains(lines[0], `"stats"`) {
		t.Fatalf("%d lines after the one that was there, want one per problem (%d):\n%s", len(lines)-1, problems, b)
	}
	for _, l := range lines[1:] {
		if !strings.Contains(l, `"signature_id":9050014`) || !strings.Contains(l, `"gridseal_writer":"gw-1"`) {
			t.Fatalf("verify alert: %s", l)
		}
	}
	evetest.Check(t, b)
	if code, _, _ := c.cli(t, "chain", "verify", "--trust", c.trust, "--eve", file); code != 0 {
		t.Fatalf("verify with the right key: exit %d", code)
	}
	if after, _ := os.ReadFile(file); !bytes.Equal(after, b) {
		t.Fatal("a chain that verifies appended alerts")
	}
}
