package bench_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gridseal/gridseal/internal/bench"
	"github.com/gridseal/gridseal/internal/loadgen"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// serve runs bench.Serve until the test ends and returns the address it
// says it listens on.
func serve(t *testing.T, kind, upstream string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- bench.Serve(ctx, pw, kind, "127.0.0.1:0", upstream, 1, &loadgen.Device{}) }()
	t.Cleanup(func() {
		cancel()
		_ = pr.Close()
		if err := <-done; err != nil {
			t.Errorf("serve %s: %v", kind, err)
		}
	})
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if !ok {
		t.Fatalf("first line %q", line)
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	return addr
}

// TestServe: bench-serve's device answers a read and the relay passes it
// through; an unknown target or a relay with nowhere to go is a
// UsageError.
func TestServe(t *testing.T) {
	dev := serve(t, "device", "")
	relay := serve(t, "relay", dev)
	for _, tc := range []struct{ name, addr string }{{"device", dev}, {"relay", relay}} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", tc.addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(modbus.AppendFrame(nil, 7, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0, 2))); err != nil {
				t.Fatal(err)
			}
			f, err := modbus.NewReader(c).ReadFrame()
			if err != nil || f.Transaction != 7 || len(f.PDU) == 0 || f.PDU[0] != byte(modbus.ReadHoldingRegisters) {
				t.Fatalf("reply %+v, %v", f, err)
			}
		})
	}
	for _, tc := range []struct{ name, kind, upstream, want string }{
		{"unknown target", "plc", "", `bench-serve "plc": want device or relay`},
		{"relay to nowhere", "relay", "", "relay needs --to ADDR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := bench.Serve(t.Context(), io.Discard, tc.kind, "127.0.0.1:0", tc.upstream, 1, &loadgen.Device{})
			var ue *bench.UsageError
			if !errors.As(err, &ue) || err.Error() != tc.want {
				t.Fatalf("err %v, want UsageError %q", err, tc.want)
			}
		})
	}
}

// TestParseClients: a comma list of counts, each 1..4096.
func TestParseClients(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []int
	}{
		{"one", "16", []int{16}},
		{"list with spaces", "1, 16,256", []int{1, 16, 256}},
		{"zero", "0", nil},
		{"too many", "4097", nil},
		{"not a number", "1,x", nil},
		{"empty", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := bench.ParseClients(tc.in)
			if tc.want == nil {
				if err == nil || err.Error() != "want numbers 1..4096" {
					t.Fatalf("%q: %v, %v; want an error", tc.in, got, err)
				}
				return
			}
			if err != nil || len(got) != len(tc.want) {
				t.Fatalf("%q: %v, %v", tc.in, got, err)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("%q: %v, want %v", tc.in, got, tc.want)
				}
			}
		})
	}
}

// TestCustom: the custom bench measures the direct device and the target
// in front of it, once per client count.
func TestCustom(t *testing.T) {
	dev := serve(t, "device", "")
	relay := serve(t, "relay", dev)
	b := &bench.Bencher{Stderr: io.Discard, Duration: 100 * time.Millisecond, Rounds: 1, Pipeline: 1, Quiet: true}
	rep, err := b.Custom(t.Context(), dev, relay, []int{1, 2}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Scenarios) != 2 {
		t.Fatalf("%d scenarios, want one per client count", len(rep.Scenarios))
	}
	for _, sc := range rep.Scenarios {
		if len(sc.Targets) != 2 || sc.Targets[0].Name != "direct" || sc.Targets[1].Name != "gridseal" {
			t.Fatalf("scenario %+v", sc)
		}
		for _, tr := range sc.Targets {
			if tr.Requests == 0 || tr.WriteP99us != 0 {
				t.Errorf("%s at %d clients, reads only: %d requests, write p99 %v", tr.Name, sc.Clients, tr.Requests, tr.WriteP99us)
			}
		}
	}
	// In a mix the writes' own latency is reported beside that of all.
	mix, err := b.Custom(t.Context(), dev, relay, []int{2}, 20)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	bench.PrintReport(&out, &mix)
	for _, tr := range mix.Scenarios[0].Targets {
		if tr.WriteP50us <= 0 || tr.WriteP99us < tr.WriteP50us ||
			!strings.Contains(out.String(), fmt.Sprintf("%s writes p50 %.0f µs, p99 %.0f µs", tr.Name, tr.WriteP50us, tr.WriteP99us)) {
			t.Errorf("%s with 20 %% writes: write p50 %v p99 %v; report:\n%s", tr.Name, tr.WriteP50us, tr.WriteP99us, out.String())
		}
	}
}
