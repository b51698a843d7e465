package eve_test

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/eve"
	"github.com/gridseal/gridseal/internal/goldentest"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// eveEvents are the kinds of operation an EVE consumer must ingest.
func eveEvents() []*audit.Event {
	at := time.Date(2026, 11, 25, 12, 0, 0, 123456000, time.UTC)
	client := netip.MustParseAddrPort("10.1.2.3:50211")
	read := modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 40084, 2)
	write := modbus.AppendWriteMultipleRegisters(nil, 40127, []uint16{30})
	coil := modbus.AppendWriteSingleCoil(nil, 1, true)
	return []*audit.Event{
		{Time: at, Op: 1, Phase: audit.PhaseComplete, Client: client, Listener: "10.9.9.9:502", Device: "inverter-1", Unit: 1,
			Function: 3, Class: "read", Address: 40084, Quantity: 2, PDU: read, Verdict: audit.Allow, Rule: "telemetry",
			Reason: "telemetry", Response: []byte{3, 4, 0x0b, 0xb8, 0, 0}, Upstream: 900 * time.Microsecond},
		{Time: at.Add(time.Second), Op: 2, Phase: audit.PhaseRequest, Client: client, Device: "inverter-1", Unit: 1,
			Function: 16, Class: "write", PDU: write, Verdict: audit.Allow, Approval: "ab12"},
		{Time: at.Add(time.Second), Op: 2, Phase: audit.PhaseComplete, Client: client, Listener: "10.9.9.9:502", Device: "inverter-1",
			Unit: 1, Function: 16, Class: "write", Address: 40127, Quantity: 1, PDU: write, Verdict: audit.Allow,
			Rule: "deep-curtailment", Reason: "deep-curtailment: approval ab12… by bob, carol", Approval: "ab12",
			Response: []byte{16, 0x9c, 0xbf, 0, 1}},
		{Time: at.Add(2 * time.Second), Op: 3, Phase: audit.PhaseComplete, Client: client, Listener: "10.9.9.9:502", Device: "breaker-1",
			Unit: 3, Function: 5, Class: "write", Address: 1, Quantity: 1, PDU: coil, Verdict: audit.Deny,
			Reason: "no rule of device breaker-1 allows function 5 (write single coil, a write)", Exception: 1},
		{Time: at.Add(3 * time.Second), Op: 4, Phase: audit.PhaseComplete, Client: client, Listener: "10.9.9.9:502", Unit: 1,
			Function: 3, PDU: []byte{3, 0, 0, 0, 0}, Verdict: audit.Malformed, Reason: "modbus: quantity outside the specification's limits", Exception: 3},
		{Time: at.Add(4 * time.Second), Op: 0, Phase: audit.PhaseApproval, Device: "inverter-1", PDU: write, Verdict: audit.Allow, Reason: "signed by bob"},
		{Time: at.Add(5 * time.Second), Op: 5, Phase: audit.PhaseDroppedReply, Client: netip.MustParseAddrPort("10.9.9.20:502"),
			Listener: "10.9.9.9:41822", Device: "inverter-1", Unit: 1, Function: 3, Verdict: audit.Deny,
			Reason: "device reply (transaction 77, unit 1) matches no request; dropped", Response: []byte{3, 2, 0xde, 0xad}},
		{Time: at.Add(6 * time.Second), Op: 6, Phase: audit.PhaseDroppedReply, Client: client, Listener: "10.9.9.9:502", Device: "inverter-1",
			Unit: 1, Function: 16, Class: "write", Address: 40127, Quantity: 1, PDU: write, Verdict: audit.Deny,
			Reason: "late reply from the device, after the request timed out and was answered 0x0B; dropped", Response: []byte{16, 0x9c, 0xbf, 0, 1}},
	}
}

func TestExportGolden(t *testing.T) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for i, ev := range eveEvents() {
		rec := chain.Record{Writer: "gw-1", Seq: 7, Height: 6, Block: "b10c", Index: i}
		for _, e := range eve.For(&rec, ev) {
			if err := enc.Encode(e); err != nil {
				t.Fatal(err)
			}
		}
	}
	golden(t, "export.eve.jsonl", buf.Bytes())

	// Every line parses as JSON with the fields EVE consumers key on.
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 8 { // read, write, deny + alert, malformed + alert, two dropped-reply alerts; no line for the pre-forward record or the approval step
		t.Fatalf("%d EVE lines, want 8", len(lines))
	}
	alerts := 0
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not JSON: %s", l)
		}
		for _, k := range []string{"timestamp", "event_type", "src_ip", "src_port", "dest_ip", "dest_port", "proto", "modbus"} {
			if _, ok := m[k]; !ok {
				t.Errorf("line lacks %q: %s", k, l)
			}
		}
		if _, err := time.Parse("2006-01-02T15:04:05.000000-0700", m["timestamp"].(string)); err != nil {
			t.Errorf("timestamp %v: %v", m["timestamp"], err)
		}
		if m["event_type"] == "alert" {
			alerts++
			if a, ok := m["alert"].(map[string]any); !ok || a["action"] != "blocked" || a["signature"] == "" {
				t.Errorf("alert record: %s", l)
			}
		}
	}
	if alerts != 4 {
		t.Fatalf("%d alerts, want one per refused request and per dropped reply (4)", alerts)
	}
}

// golden compares got with testdata/name (or writes it, with -update).
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	goldentest.Check(t, name, got, "the EVE export is a contract others parse")
}

// TestBreakGlassAlert: a write forwarded on a break-glass quorum is a
// modbus event flagged break_glass and an alert of its own, at the highest
// severity; the same write on a full quorum raises none.
func TestBreakGlassAlert(t *testing.T) {
	coil := modbus.AppendWriteSingleCoil(nil, 1, true)
	for _, tc := range []struct {
		name       string
		breakGlass bool
		lines      int
	}{{"break-glass quorum", true, 2}, {"full quorum", false, 1}} {
		t.Run(tc.name, func(t *testing.T) {
			ev := &audit.Event{Time: time.Unix(1764072000, 0), Op: 9, Phase: audit.PhaseComplete, Client: netip.MustParseAddrPort("10.1.2.3:50211"),
				Listener: "10.9.9.9:502", Device: "breaker-1", Unit: 1, Function: 5, Class: "write", Address: 1, Quantity: 1, PDU: coil,
				Verdict: audit.Allow, Rule: "open-breaker", Approval: "ab12", BreakGlass: tc.breakGlass,
				Reason: "BREAK-GLASS open-breaker: approval ab12… by alice (1 of 2)", Response: coil}
			out := eve.For(&chain.Record{Writer: "gw-1", Seq: 3}, ev)
			if len(out) != tc.lines {
				t.Fatalf("%d EVE lines, want %d: %+v", len(out), tc.lines, out)
			}
			if out[0].EventType != "modbus" || out[0].Gridseal.BreakGlass != tc.breakGlass {
				t.Fatalf("modbus event: %+v", out[0])
			}
			if !tc.breakGlass {
				return
			}
			a := out[1].Alert
			if out[1].EventType != "alert" || a == nil || a.SignatureID != 9050005 || a.Severity != 1 || a.Action != "allowed" ||
				a.Category != "gridseal: break-glass approval used" || !strings.Contains(a.Signature, "BREAK-GLASS") {
				t.Fatalf("break-glass alert: %+v %+v", out[1], a)
			}
			b, err := json.Marshal(out[1])
			if err != nil || !strings.Contains(string(b), `"break_glass":true`) {
				t.Fatalf("alert JSON lacks break_glass: %s %v", b, err)
			}
		})
	}
}
