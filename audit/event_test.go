package audit

import (
	"net/netip"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestLogRecorderWritesOneLinePerOperation(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	r := NewLogRecorder(zap.New(core), 0)
	allow := Event{Op: 1, Phase: PhaseComplete, Client: netip.MustParseAddrPort("127.0.0.1:5000"),
		Device: "inverter-1", Unit: 1, Function: 3, PDU: []byte{3, 0, 0, 0, 1}, Verdict: Allow}
	deny := Event{Op: 2, Phase: PhaseComplete, Device: "breaker-1", Function: 5, Verdict: Deny,
		Reason: "no rule", Exception: 1}
	for _, ev := range []*Event{&allow, &deny} {
		if err := r.Record(t.Context(), ev, false); err != nil {
			t.Fatal(err)
		}
	}
	entries := logs.AllUntimed()
	if len(entries) != 2 {
		t.Fatalf("%d log lines, want 2", len(entries))
	}
	if entries[0].Level != zapcore.InfoLevel || entries[1].Level != zapcore.WarnLevel {
		t.Fatalf("levels %v %v: a deny must stand out as a warning", entries[0].Level, entries[1].Level)
	}
	f := entries[1].ContextMap()
	if f["verdict"] != "deny" || f["device"] != "breaker-1" || f["reason"] != "no rule" || f["exception"] != uint8(1) {
		t.Fatalf("deny line fields = %v", f)
	}
	if entries[0].ContextMap()["pdu"] != "0300000001" {
		t.Fatalf("pdu field = %v", entries[0].ContextMap()["pdu"])
	}
}

func TestZeroVerdictIsInvalid(t *testing.T) {
	var v Verdict
	if v == Allow || v.String() != "invalid" {
		t.Fatal("the zero Verdict must not read as allow")
	}
}

// TestParseVerdict: every verdict's name parses back to it; nothing else
// (not "invalid", the zero verdict's name) is a verdict.
func TestParseVerdict(t *testing.T) {
	for _, tc := range []struct {
		name string
		want Verdict
		ok   bool
	}{
		{"allow", Allow, true},
		{"deny", Deny, true},
		{"malformed", Malformed, true},
		{"invalid", 0, false},
		{"", 0, false},
		{"Allow", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if v, ok := ParseVerdict(tc.name); v != tc.want || ok != tc.ok {
				t.Fatalf("ParseVerdict(%q) = %v, %v; want %v, %v", tc.name, v, ok, tc.want, tc.ok)
			}
		})
	}
}
