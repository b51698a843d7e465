package chain_test

import (
	"errors"
	"slices"
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
