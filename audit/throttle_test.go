package audit

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/gridseal/gridseal/internal/testwait"
)

// counted sums what the lines of logs stand for: one each, or the count a
// summary line carries.
func counted(logs *observer.ObservedLogs) int {
	n := 0
	for _, e := range logs.AllUntimed() {
		if c, ok := e.ContextMap()["count"].(int64); ok {
			n += int(c)
		} else {
			n++
		}
	}
	return n
}

func TestLogThrottleSummarisesRepeats(t *testing.T) {
	cases := []struct {
		name  string
		kinds int // distinct reasons, warned about in turn
		each  int // warnings per reason
		lines int // log lines, with Close's summaries
	}{
		{"one reason", 1, 500, 2},
		{"two reasons", 2, 250, 4},
		{"once each", 3, 1, 3},
		// Past maxThrottleKinds, new kinds share one count: the first of
		// them is logged, the rest summarised as "other kinds".
		{"more kinds than are counted apart", maxThrottleKinds + 44, 1, maxThrottleKinds + 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			core, logs := observer.New(zapcore.InfoLevel)
			th := NewLogThrottle(zap.New(core), time.Hour)
			for i := range tc.each {
				for k := range tc.kinds {
					th.Warn("connection refused", zap.String("reason", fmt.Sprint("limit ", k)), zap.Int("attempt", i))
				}
			}
			th.Close()
			if n := logs.Len(); n != tc.lines {
				t.Fatalf("%d log lines, want %d:\n%v", n, tc.lines, logs.AllUntimed())
			}
			if n := counted(logs); n != tc.kinds*tc.each {
				t.Fatalf("the lines stand for %d warnings, want %d", n, tc.kinds*tc.each)
			}
			for _, e := range logs.AllUntimed() {
				if e.Level != zapcore.WarnLevel {
					t.Fatalf("line %q at %v, want warn", e.Message, e.Level)
				}
				if c, ok := e.ContextMap()["count"]; ok && !strings.HasPrefix(e.Message, fmt.Sprint(c, " more: ")) {
					t.Fatalf("summary line %q does not say how many more", e.Message)
				}
			}
		})
	}
}

// TestLogThrottleSummarisesEachInterval: the count is logged when the
// interval ends, not only at Close, and counting goes on after it.
func TestLogThrottleSummarisesEachInterval(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	th := NewLogThrottle(zap.New(core), 20*time.Millisecond)
	t.Cleanup(th.Close)
	for range 10 {
		th.Warn("connection refused", zap.String("reason", "limit"))
	}
	// On a loaded machine the loop may outlast an interval: then there are
	// two summaries, but still ten warnings.
	testwait.For(t, "the interval's summary", func() bool { return counted(logs) == 10 })
	if n := logs.FilterFieldKey("count").Len(); n == 0 {
		t.Fatalf("%d lines, %d of them summaries", logs.Len(), n)
	}
	th.Warn("connection refused", zap.String("reason", "limit"))
	testwait.For(t, "the next interval's summary or first line", func() bool { return counted(logs) == 11 })
}

func TestLogRecorderSummarisesMalformedOperations(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	r := NewLogRecorder(zap.New(core), time.Hour)
	client := netip.MustParseAddrPort("127.0.0.1:5000")
	for i := range 500 {
		ev := Event{Op: uint64(i), Phase: PhaseComplete, Client: client, Verdict: Malformed,
			Reason: "frame not completed within read timeout", Closed: true}
		if err := r.Record(t.Context(), &ev, false); err != nil {
			t.Fatal(err)
		}
	}
	deny := Event{Op: 501, Phase: PhaseComplete, Device: "breaker-1", Function: 5, Verdict: Deny, Reason: "no rule"}
	for range 3 {
		if err := r.Record(t.Context(), &deny, false); err != nil {
			t.Fatal(err)
		}
	}
	r.Close()
	entries := logs.AllUntimed()
	if len(entries) != 5 || counted(logs) != 503 {
		t.Fatalf("%d lines standing for %d operations, want 5 for 503: %v", len(entries), counted(logs), entries)
	}
	first := entries[0].ContextMap()
	if first["verdict"] != "malformed" || first["reason"] != "frame not completed within read timeout" || first["client"] != client.String() {
		t.Fatalf("first malformed line fields = %v", first)
	}
	sum := logs.FilterFieldKey("count").AllUntimed()
	if len(sum) != 1 || sum[0].Message != "499 more: modbus operation" || sum[0].ContextMap()["reason"] != "frame not completed within read timeout" {
		t.Fatalf("summary = %v", sum)
	}
}
