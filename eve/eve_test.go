package eve_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/eve"
	"github.com/gridseal/gridseal/eve/evetest"
	"github.com/gridseal/gridseal/internal/goldentest"
	"github.com/gridseal/gridseal/protocols/modbus"
)

var (
	at       = time.Date(2026, 11, 25, 12, 0, 0, 123456000, time.UTC)
	client   = netip.MustParseAddrPort("10.1.2.3:50211")
	listener = "10.9.9.9:502"
	mapper   = &eve.Mapper{Devices: map[string]string{"inverter-1": "10.20.0.11:502", "breaker-1": "10.20.0.13:502"}}
)

// kinds is one recorded event of every kind an EVE consumer must ingest,
// with the alert it raises (0: none) and the EVE lines it becomes.
var kinds = []struct {
	name  string
	ev    audit.Event
	sid   int
	lines int
}{
	{"allowed read", audit.Event{Op: 1, Phase: audit.PhaseComplete, Device: "inverter-1", Unit: 1, Function: 3, Class: "read",
		Address: 40084, Quantity: 2, PDU: modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 40084, 2), Verdict: audit.Allow,
		Rule: "telemetry", Reason: "telemetry", Policy: "9f86d0", Response: []byte{3, 4, 0x0b, 0xb8, 0, 0}, Upstream: 900 * time.Microsecond}, 0, 1},
	{"write's pre-forward record", audit.Event{Op: 2, Phase: audit.PhaseRequest, Device: "inverter-1", Unit: 1, Function: 16, Class: "write",
		PDU: modbus.AppendWriteMultipleRegisters(nil, 40127, []uint16{30}), Verdict: audit.Allow, Approval: "ab12"}, 0, 0},
	{"approved write", audit.Event{Op: 2, Phase: audit.PhaseComplete, Device: "inverter-1", Unit: 1, Function: 16, Class: "write",
		Address: 40127, Quantity: 1, PDU: modbus.AppendWriteMultipleRegisters(nil, 40127, []uint16{30}), Verdict: audit.Allow,
		Rule: "deep-curtailment", Reason: "deep-curtailment: approval ab12… by bob, carol", Approval: "ab12", Policy: "9f86d0",
		Response: []byte{16, 0x9c, 0xbf, 0, 1}}, 0, 1},
	{"write denied by rule", audit.Event{Op: 3, Phase: audit.PhaseComplete, Device: "breaker-1", Unit: 3, Function: 5, Class: "write",
		Address: 1, Quantity: 1, PDU: modbus.AppendWriteSingleCoil(nil, 1, true), Verdict: audit.Deny, Policy: "9f86d0",
		Reason: "no rule of device breaker-1 allows function 5 (write single coil, a write)", Exception: 1}, 9050001, 2},
	{"read denied", audit.Event{Op: 4, Phase: audit.PhaseComplete, Device: "inverter-1", Unit: 1, Function: 4, Class: "read",
		Address: 0, Quantity: 10, PDU: modbus.AppendReadRequest(nil, modbus.ReadInputRegisters, 0, 10), Verdict: audit.Deny,
		Rule: "telemetry", Reason: "rule telemetry: input-registers 0+10 outside 30000-30100", Exception: 2}, 9050006, 2},
	{"needs an approval", audit.Event{Op: 5, Phase: audit.PhaseComplete, Device: "inverter-1", Unit: 1, Function: 16, Class: "write",
		Address: 40127, Quantity: 1, PDU: modbus.AppendWriteMultipleRegisters(nil, 40127, []uint16{30}), Verdict: audit.Deny,
		Rule: "deep-curtailment", Reason: "rule deep-curtailment: needs an approval by 2 of operators for exactly this command (gridseal propose)",
		Exception: 1}, 9050007, 2},
	{"approval not usable", audit.Event{Op: 6, Phase: audit.PhaseComplete, Device: "inverter-1", Unit: 1, Function: 16, Class: "write",
		Address: 40127, Quantity: 1, PDU: modbus.AppendWriteMultipleRegisters(nil, 40127, []uint16{30}), Verdict: audit.Deny,
		Rule: "deep-curtailment", Approval: "ab12", Reason: "rule deep-curtailment: approval ab12…: already used", Exception: 1}, 9050007, 2},
	{"malformed request", audit.Event{Op: 7, Phase: audit.PhaseComplete, Unit: 1, Function: 3, PDU: []byte{3, 0, 0, 0, 0},
		Verdict: audit.Malformed, Reason: "modbus: quantity outside the specification's limits", Exception: 3}, 9050002, 2},
	{"unreadable frame", audit.Event{Op: 8, Phase: audit.PhaseComplete, Unit: 1, Verdict: audit.Malformed,
		Reason: "modbus: protocol id is not 0", Closed: true}, 9050002, 1},
	{"rate limited", audit.Event{Op: 9, Phase: audit.PhaseComplete, Device: "", Unit: 1, Function: 3, Class: "read", Address: 1, Quantity: 1,
		PDU: modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 1, 1), Verdict: audit.Deny,
		Reason: "client over its request rate limit", Exception: 6}, 9050008, 2},
	{"unrecorded", audit.Event{Op: 10, Phase: audit.PhaseComplete, Device: "breaker-1", Unit: 3, Function: 5, Class: "write", Address: 1, Quantity: 1,
		PDU: modbus.AppendWriteSingleCoil(nil, 1, false), Verdict: audit.Deny, Rule: "open-breaker",
		Reason: "refused: the record is unavailable (chain: durable timeout)", Exception: 6}, 9050009, 2},
	{"break-glass write", audit.Event{Op: 11, Phase: audit.PhaseComplete, Device: "breaker-1", Unit: 3, Function: 5, Class: "write", Address: 1,
		Quantity: 1, PDU: modbus.AppendWriteSingleCoil(nil, 1, true), Verdict: audit.Allow, Rule: "open-breaker", Approval: "cd34",
		BreakGlass: true, Reason: "BREAK-GLASS open-breaker: approval cd34… by alice (1 of 2)", Response: modbus.AppendWriteSingleCoil(nil, 1, true)}, 9050005, 2},
	{"approval proposed", audit.Event{Phase: audit.PhaseApproval, Class: "approval", Device: "inverter-1", Unit: 1, Function: 16,
		PDU: modbus.AppendWriteMultipleRegisters(nil, 40127, []uint16{30}), Verdict: audit.Allow, Approval: "ab12", Policy: "9f86d0",
		Reason: "proposed by alice: write 30 to 40127, valid 2026-11-25T12:00:00Z to 2026-11-25T12:15:00Z"}, 9050010, 1},
	{"approval signed", audit.Event{Phase: audit.PhaseApproval, Class: "approval", Device: "inverter-1", Unit: 1, Function: 16,
		PDU: modbus.AppendWriteMultipleRegisters(nil, 40127, []uint16{30}), Verdict: audit.Allow, Approval: "ab12",
		Reason: "signed by bob (key 1234)"}, 9050011, 1},
	{"approval used", audit.Event{Phase: audit.PhaseApproval, Class: "approval", Device: "inverter-1", Unit: 1, Function: 16,
		PDU: modbus.AppendWriteMultipleRegisters(nil, 40127, []uint16{30}), Verdict: audit.Allow, Approval: "ab12",
		Reason: "used by gw-1 for operation 2"}, 9050012, 1},
	{"approval refused", audit.Event{Phase: audit.PhaseApproval, Class: "approval", Approval: "ef56", Verdict: audit.Deny,
		Reason: "refused: bucket entry p.ef56 is not a valid proposal: bad id"}, 9050013, 1},
	{"reply to no request", audit.Event{Op: 12, Phase: audit.PhaseDroppedReply, Device: "inverter-1", Unit: 1, Function: 3,
		Verdict: audit.Deny, Reason: "device reply (transaction 77, unit 1) matches no request; dropped", Response: []byte{3, 2, 0xde, 0xad}}, 9050003, 1},
	{"late reply", audit.Event{Op: 13, Phase: audit.PhaseDroppedReply, Device: "inverter-1", Unit: 1, Function: 16, Class: "write",
		Address: 40127, Quantity: 1, PDU: modbus.AppendWriteMultipleRegisters(nil, 40127, []uint16{30}), Verdict: audit.Deny,
		Reason: "late reply from the device, after the request timed out and was answered 0x0B; dropped", Response: []byte{16, 0x9c, 0xbf, 0, 1}}, 9050004, 1},
	{"gap", audit.Event{Phase: audit.PhaseGap, Class: "gap", Verdict: audit.Deny, Reason: "1200 operations not recorded: the spool was full"}, 9050015, 1},
	{"diagnostic", audit.Event{Op: 14, Phase: audit.PhaseComplete, Device: "inverter-1", Unit: 1, Function: 8, Class: "diagnostic",
		PDU: []byte{8, 0, 0, 0xa5, 0x37}, Verdict: audit.Allow, Rule: "echo", Response: []byte{8, 0, 0, 0xa5, 0x37}}, 0, 1},
	{"write of many registers", audit.Event{Op: 15, Phase: audit.PhaseComplete, Device: "inverter-1", Unit: 1, Function: 16,
		Class: "write", Address: 40127, Quantity: 2, PDU: modbus.AppendWriteMultipleRegisters(nil, 40127, []uint16{30, 31}),
		Verdict: audit.Allow, Rule: "r", Response: []byte{16, 0x9c, 0xbf, 0, 2}}, 0, 1},
	{"mask write", audit.Event{Op: 16, Phase: audit.PhaseComplete, Device: "inverter-1", Unit: 1, Function: 22, Class: "write",
		PDU: []byte{22, 0, 4, 0, 0xf2, 0, 0x25}, Verdict: audit.Deny, Rule: "r",
		Reason: "rule r: mask write with a non-zero AND mask: the result depends on the current value", Exception: 3}, 9050001, 2},
}

// export renders every kind as chain export does, event i at index i of
// one block.
func export(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for i, k := range kinds {
		ev := k.ev
		ev.Time = at.Add(time.Duration(i) * time.Second)
		if ev.Phase != audit.PhaseApproval && ev.Phase != audit.PhaseGap {
			ev.Client, ev.Listener = client, listener
		}
		rec := chain.Record{Writer: "gw-1", Seq: 7, Height: 6, Block: "b10c", Index: i}
		if err := mapper.Encode(enc, &rec, &ev); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

// TestExportGolden pins the export of every kind of event, and checks every
// line against Suricata's schema.
func TestExportGolden(t *testing.T) {
	out := export(t)
	golden(t, "export.eve.jsonl", out)
	want := 0
	for _, k := range kinds {
		want += k.lines
	}
	if n := evetest.Check(t, out); n != want {
		t.Fatalf("%d EVE lines, want %d", n, want)
	}
}

// TestAlertKinds: each kind raises its own signature id, with the table's
// fixed signature string, category and severity, the event's values in
// alert.metadata and pktvars, and nothing of the event in the string.
func TestAlertKinds(t *testing.T) {
	table := map[int]eve.Signature{}
	for _, s := range eve.Signatures() {
		if _, dup := table[s.ID]; dup {
			t.Fatalf("signature id %d twice", s.ID)
		}
		table[s.ID] = s
	}
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			ev := k.ev
			ev.Time, ev.Client, ev.Listener = at, client, listener
			out := mapper.For(&chain.Record{Writer: "gw-1", Seq: 3}, &ev)
			if len(out) != k.lines {
				t.Fatalf("%d lines, want %d: %+v", len(out), k.lines, out)
			}
			var alerts []*eve.Alert
			for _, e := range out {
				if e.EventType == "alert" {
					alerts = append(alerts, e.Alert)
				}
			}
			if k.sid == 0 {
				if len(alerts) != 0 {
					t.Fatalf("raises %+v, want no alert", alerts[0])
				}
				return
			}
			if len(alerts) != 1 {
				t.Fatalf("%d alerts, want 1", len(alerts))
			}
			a, s := alerts[0], table[k.sid]
			if a.SignatureID != k.sid || a.Signature != s.Text || a.Category != s.Category || a.Severity != s.Severity || a.GID != eve.GID {
				t.Fatalf("alert %+v, want signature %+v", a, s)
			}
			if got := a.Metadata[eve.CtxReason]; ev.Reason != "" && (len(got) != 1 || got[0] != ev.Reason) {
				t.Fatalf("alert.metadata reason %v, want %q", got, ev.Reason)
			}
			if a.Metadata[eve.CtxKind][0] != s.Kind || a.Metadata[eve.CtxWriter][0] != "gw-1" || a.Metadata[eve.CtxSeq][0] != "3" {
				t.Fatalf("alert.metadata %v", a.Metadata)
			}
			if want := map[bool]string{true: "allowed", false: "blocked"}[s.Allowed]; a.Action != want {
				t.Fatalf("action %q, want %q", a.Action, want)
			}
		})
	}
}

// TestSeverities: break-glass and unrecorded requests are high, read
// denials low, and severities differ between kinds.
func TestSeverities(t *testing.T) {
	if eve.SigBreakGlass.Severity != 1 || eve.SigUnrecorded.Severity != 1 || eve.SigReadDenied.Severity != 3 ||
		eve.SigWriteDenied.Severity != 2 || eve.SigVerifyFailed.Severity != 1 {
		t.Fatalf("severities: %+v", eve.Signatures())
	}
	texts := map[string]bool{}
	for _, s := range eve.Signatures() {
		if texts[s.Text] {
			t.Fatalf("signature %q used by two ids", s.Text)
		}
		texts[s.Text] = true
	}
}

// TestModbusFields: what the schema has typed fields for is in them — a
// coil write's value as the PDU carries it (65280 for on), a read's answer,
// the client's and the PLC's addresses, a flow id.
func TestModbusFields(t *testing.T) {
	var lines []map[string]any
	for l := range bytes.Lines(export(t)) {
		var m map[string]any
		if err := json.Unmarshal(l, &m); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, m)
	}
	get := func(m map[string]any, path string) any {
		var v any = m
		for p := range strings.SplitSeq(path, ".") {
			o, _ := v.(map[string]any)
			v = o[p]
		}
		return v
	}
	for _, tc := range []struct {
		name, path string
		line       int
		want       any
	}{
		{"read's answer", "modbus.response.read.data", 0, "0bb80000"},
		{"read's range", "modbus.request.read.address", 0, float64(40084)},
		{"single-register FC 16 value", "modbus.request.write.data", 1, float64(30)},
		{"coil on", "modbus.request.write.data", 2, float64(65280)},
		{"protocol id", "modbus.request.protocol_id", 2, float64(0)},
		{"client", "alert.source.ip", 3, "10.1.2.3"},
		{"PLC", "alert.target.ip", 3, "10.20.0.13"},
		{"PLC port", "alert.target.port", 3, float64(502)},
		{"dropped verdict", "verdict.action", 3, "drop"},
		{"passed verdict", "verdict.action", 0, "pass"},
		{"sensor", "host", 0, "gw-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := get(lines[tc.line], tc.path); got != tc.want {
				t.Fatalf("line %d %s = %v, want %v", tc.line, tc.path, got, tc.want)
			}
		})
	}
	// Every line of the client connection has one flow id; the approval
	// steps and the gap, of no connection, have none.
	flows := map[any]int{}
	for _, l := range lines {
		flows[l["flow_id"]]++
	}
	if len(flows) != 2 || flows[nil] != 5 {
		t.Fatalf("flow ids %v: want one for the connection and none on the 5 lines of no connection", flows)
	}
}

// TestFlowID: one id per client connection (writer, listener, client
// address and port), positive and within 51 bits.
func TestFlowID(t *testing.T) {
	base := eve.FlowID("gw-1", listener, client)
	for _, tc := range []struct {
		name     string
		writer   string
		listener string
		client   netip.AddrPort
		same     bool
	}{
		{"same connection", "gw-1", listener, client, true},
		{"other client port", "gw-1", listener, netip.MustParseAddrPort("10.1.2.3:50212"), false},
		{"other client", "gw-1", listener, netip.MustParseAddrPort("10.1.2.4:50211"), false},
		{"other listener", "gw-1", "10.9.9.9:802", client, false},
		{"other writer", "gw-2", listener, client, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := eve.FlowID(tc.writer, tc.listener, tc.client)
			if id <= 0 || id >= 1<<51 {
				t.Fatalf("flow id %d outside 1..2^51-1", id)
			}
			if (id == base) != tc.same {
				t.Fatalf("flow id %d vs %d: same=%v, want %v", id, base, id == base, tc.same)
			}
		})
	}
}

// TestCheckerRejects: the schema checker fails what Suricata's schema
// forbids — the export's old form among them — so passing it means
// something.
func TestCheckerRejects(t *testing.T) {
	s, err := evetest.Load()
	if err != nil {
		t.Fatal(err)
	}
	old, err := os.ReadFile("testdata/export-v1-line.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, line, want string
	}{
		{"gridseal's old export", string(old), `property "gridseal" is not allowed`},
		{"write data as a list", `{"timestamp":"2026-11-25T12:00:00.1+0000","event_type":"modbus","modbus":{"request":{"write":{"address":1,"data":[1]}}}}`, "want integer"},
		{"write quantity", `{"timestamp":"2026-11-25T12:00:00.1+0000","event_type":"modbus","modbus":{"request":{"write":{"address":1,"quantity":1}}}}`, `"quantity" is not allowed`},
		{"no timestamp", `{"event_type":"alert"}`, `required property "timestamp"`},
		{"timestamp pattern", `{"timestamp":"2026-11-25 12:00:00","event_type":"alert"}`, "does not match"},
		{"fractional port", `{"timestamp":"2026-11-25T12:00:00.1+0000","event_type":"alert","src_port":1.5}`, "want integer"},
		{"alert metadata not strings", `{"timestamp":"2026-11-25T12:00:00.1+0000","event_type":"alert","alert":{"metadata":{"policy":[1]}}}`, "want string"},
		{"enum", `{"timestamp":"2026-11-25T12:00:00.1+0000","event_type":"alert","alert":{"engine":"x"}}`, "is not one of"},
		{"verdict oneOf", `{"timestamp":"2026-11-25T12:00:00.1+0000","event_type":"alert","verdict":{"reject_target":"nowhere"}}`, "oneOf"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			probs := s.Validate([]byte(tc.line))
			if !strings.Contains(strings.Join(probs, "\n"), tc.want) {
				t.Fatalf("problems %q, want one with %q", probs, tc.want)
			}
		})
	}
}

// TestREADMETable: README.md's alert table is this package's, row by row.
func TestREADMETable(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range eve.Signatures() {
		action := "blocked"
		if s.Allowed {
			action = "allowed"
		}
		row := fmt.Sprintf("| %d | %s | %s | %d | %s |", s.ID, s.Kind, s.Text, s.Severity, action)
		if !strings.Contains(string(readme), row+"\n") {
			t.Errorf("README.md lacks the row\n%s", row)
		}
	}
}

// golden compares got with testdata/name (or writes it, with -update).
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	goldentest.Check(t, name, got, "the EVE export is a contract others parse")
}
