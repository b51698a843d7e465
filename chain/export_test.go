package chain_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
)

// TestScanRecordsFilters records operations of two devices and three
// verdicts and checks which ones each filter lets through, in stream order.
func TestScanRecordsFilters(t *testing.T) {
	e := newChain(t)
	r := e.recorder(t, "")
	verdicts := []audit.Verdict{audit.Allow, audit.Deny, audit.Malformed}
	for i := uint64(0); i < 12; i++ {
		ev := event(i, verdicts[i%3])
		if i%2 == 1 {
			ev.Device = "breaker-1"
		}
		if err := r.Record(t.Context(), ev, i%5 == 4); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Close(time.Second); err != nil {
		t.Fatal(err)
	}
	js := e.js
	at := func(n int) time.Time { return event(uint64(n), audit.Allow).Time }
	cases := []struct {
		name string
		f    *chain.Filter
		want []uint64
	}{
		{"nil filter", nil, []uint64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}},
		{"zero filter", &chain.Filter{}, []uint64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}},
		{"device", &chain.Filter{Device: "breaker-1"}, []uint64{1, 3, 5, 7, 9, 11}},
		{"verdict", &chain.Filter{Verdict: audit.Deny}, []uint64{1, 4, 7, 10}},
		{"device and verdict", &chain.Filter{Device: "inverter-1", Verdict: audit.Malformed}, []uint64{2, 8}},
		{"since is inclusive", &chain.Filter{Since: at(9)}, []uint64{9, 10, 11}},
		{"until is exclusive", &chain.Filter{Until: at(3)}, []uint64{0, 1, 2}},
		{"window", &chain.Filter{Since: at(4), Until: at(8), Verdict: audit.Allow}, []uint64{6}},
		{"no match", &chain.Filter{Device: "meter-9"}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got []uint64
			err := chain.ScanRecords(t.Context(), js, 1, false, tc.f, func(r *chain.Record, ev *audit.Event) error {
				if r.Op != ev.Op || r.Device != ev.Device || r.Verdict != ev.Verdict.String() || r.Writer != "gw-1" {
					t.Errorf("record %+v does not describe event %+v", r, ev)
				}
				got = append(got, r.Op)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("ops %v, want %v", got, tc.want)
			}
		})
	}
	t.Run("an error from fn stops the scan", func(t *testing.T) {
		stop := errors.New("stop")
		n := 0
		err := chain.ScanRecords(t.Context(), js, 1, false, nil, func(*chain.Record, *audit.Event) error {
			n++
			if n == 3 {
				return stop
			}
			return nil
		})
		if !errors.Is(err, stop) || n != 3 {
			t.Fatalf("err %v after %d records, want stop after 3", err, n)
		}
	})
}

// TestRecordWriteRow: chain tail's rows line up under its header whatever
// they hold, values are cut to their column, and a pre-forward record, a
// dropped reply and an observed request are marked as such.
func TestRecordWriteRow(t *testing.T) {
	var hdr strings.Builder
	chain.WriteTailHeader(&hdr)
	base := chain.Record{Time: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC), Client: "10.0.0.1:50200", Device: "inverter-1",
		Unit: 1, Function: 6, Address: 40127, Quantity: 1, Values: []uint16{30}, Phase: "complete", Verdict: "allow", Reason: "setpoint"}
	for _, tc := range []struct {
		name                 string
		edit                 func(*chain.Record)
		values, verdict, exc string
		reason               string
	}{
		{"allowed write", func(*chain.Record) {}, "30", "allow", "", "setpoint"},
		{"long values", func(r *chain.Record) { r.Values = []uint16{1000, 2000, 3000, 4000, 5000, 6000, 7000} }, "1000,2000,3000,4000,5...", "allow", "", "setpoint"},
		{"denied", func(r *chain.Record) { r.Verdict, r.Exception = "deny", 2 }, "30", "deny", "0x02", "setpoint"},
		{"pre-forward record", func(r *chain.Record) { r.Phase = "request" }, "30", "allow", "", "(durable before forwarding) setpoint"},
		{"dropped reply", func(r *chain.Record) { r.Phase = "dropped-reply" }, "30", "dropped-reply", "", "setpoint"},
		{"observed", func(r *chain.Record) { r.Verdict, r.Observed = "allow", true }, "30", "WOULD-DENY", "", "setpoint"},
		{"no values", func(r *chain.Record) { r.Values = nil }, "", "allow", "", "setpoint"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := base
			tc.edit(&r)
			var b strings.Builder
			r.WriteRow(&b)
			row, h := b.String(), hdr.String()
			if len(row) != len(h)-len("REASON")+len(tc.reason) || !strings.HasSuffix(row, "  "+tc.reason+"\n") {
				t.Fatalf("row does not line up with the header:\n%s%s", h, row)
			}
			col := func(name string, width int) string {
				i := strings.Index(h, name)
				return strings.TrimSpace(row[i : i+width])
			}
			for _, c := range []struct{ name, got, want string }{
				{"time", col("TIME", 12), r.Time.Local().Format("15:04:05.000")},
				{"client", col("CLIENT", 21), "10.0.0.1:50200"},
				{"device", col("DEVICE", 16), "inverter-1"},
				{"addr", col("ADDR+QTY", 11), "40127+1"},
				{"values", col("VALUES", 24), tc.values},
				{"verdict", col("VERDICT", 13), tc.verdict},
				{"exc", col("EXC", 4), tc.exc},
			} {
				if c.got != c.want {
					t.Errorf("%s %q, want %q:\n%s%s", c.name, c.got, c.want, h, row)
				}
			}
		})
	}
}

// TestScanEvents: every recorded event is handed over decoded, in order,
// from a time on or from the start.
func TestScanEvents(t *testing.T) {
	e := newChain(t)
	e.recordClosed(t, 12, 4)
	for _, tc := range []struct {
		name  string
		from  time.Time
		first uint64
	}{{"all", time.Time{}, 0}, {"from op 5's time", event(5, audit.Allow).Time, 5}, {"after the last", event(12, audit.Allow).Time, 12}} {
		t.Run(tc.name, func(t *testing.T) {
			var ops []uint64
			err := chain.ScanEvents(t.Context(), e.js, tc.from, func(ev *audit.Event) {
				if ev.Device != "inverter-1" {
					t.Errorf("op %d: device %q", ev.Op, ev.Device)
				}
				ops = append(ops, ev.Op)
			})
			if err != nil {
				t.Fatal(err)
			}
			var want []uint64
			for op := tc.first; op < 12; op++ {
				want = append(want, op)
			}
			if !slices.Equal(ops, want) {
				t.Fatalf("ops %v, want %v", ops, want)
			}
		})
	}
}
