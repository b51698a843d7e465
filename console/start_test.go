package console_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/console"
	"github.com/gridseal/gridseal/internal/chaintest"
	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// longChain records n reads as gw-1, in blocks of up to 4096, and returns
// the stream and a trust that pins the writer's key.
func longChain(t testing.TB, n int) (jetstream.JetStream, chain.Trust) {
	t.Helper()
	ns := natstest.RunJetStream(t)
	nc := natstest.Connect(t, ns.URL())
	k := keystest.New(t)
	rec := chaintest.Open(t, nc, chain.Config{Signer: k.Signer, MaxBlockEvents: 4096, SpoolBytes: 256 << 20, DurableTimeout: time.Minute})
	recordReads(t, rec, 1, n)
	return natstest.JetStream(t, nc), chain.Trust{Writers: map[string]chain.WriterKeys{"gw-1": {Verifier: k.Verifier, KeyIDs: k.Verifier.KeyIDs}}}
}

// recordReads records reads with operation numbers from..to, every
// 100 000th and the last durable.
func recordReads(t testing.TB, rec *chain.Recorder, from, to int) {
	t.Helper()
	ev := audit.Event{Time: time.Now(), Phase: audit.PhaseComplete, Client: netip.MustParseAddrPort("10.0.0.1:50000"),
		Listener: "127.0.0.1:502", Device: "plc", Unit: 1, Function: 3, Class: "read", Address: 40000, Quantity: 2,
		Verdict: audit.Allow, Rule: "reads", Reason: "rule reads allows it", Response: []byte{3, 4, 0, 1, 0, 2}}
	ev.PDU = modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 40000, 2)
	for i := from; i <= to; i++ {
		ev.Op = uint64(i)
		if err := rec.Record(t.Context(), &ev, i%100_000 == 0 || i == to); err != nil {
			t.Fatal(err)
		}
	}
}

// TestConsoleShowsNoForgedBlock: a block signed by a key the trust file
// does not pin never reaches the live view — not even before the
// verifier, which reports it, gets there.
func TestConsoleShowsNoForgedBlock(t *testing.T) {
	js, trust := longChain(t, 10)
	// Block 1 of gw-1 again, with op 1000, signed by a key the trust file
	// does not pin: the newest block in the stream.
	ev := audit.Event{Time: time.Now(), Op: 1000, Phase: audit.PhaseComplete, Client: netip.MustParseAddrPort("10.0.0.1:50000"),
		Listener: "127.0.0.1:502", Device: "plc", Unit: 1, Function: 3, Class: "read", Verdict: audit.Allow}
	forged, hash, err := chain.EncodeBlock("gw-1", keystest.New(t).Signer, 1, chain.GenesisPrev("gw-1"), time.Now(), [][]byte{chain.AppendEvent(nil, &ev)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(t.Context(), chain.Subject("gw-1"), forged, jetstream.WithMsgID(hash.String())); err != nil {
		t.Fatal(err)
	}
	base, _ := startConsole(t, js, trust)
	ops := liveOps(t, base, func(op uint64) bool { return op == 10 }, 500*time.Millisecond)
	if ops[len(ops)-1] != 10 || slices.Contains(ops, 1000) {
		t.Fatalf("live view shows ops %v: want the genuine 1..10 and not the forged block's 1000", ops)
	}
	testwait.For(t, "the verifier to report the forged block", func() bool {
		st := chainStatus(t, base)
		return !st.Verified && strings.Contains(st.Problem, "not a pinned key")
	})
}

// liveOps opens the live event stream and returns the operation numbers
// it sends until done says so of one: then at once with quiet 0, else once
// nothing more came for quiet (a backlog comes in one write: what follows
// in it comes at once).
func liveOps(t testing.TB, base string, done func(op uint64) bool, quiet time.Duration) []uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/api/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				select {
				case lines <- data:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	var ops []uint64
	var silence <-chan time.Time
	for {
		select {
		case data, ok := <-lines:
			if !ok {
				t.Fatalf("the live stream ended after ops %v", ops)
			}
			var r chain.Record
			if err := json.Unmarshal([]byte(data), &r); err != nil {
				t.Fatal(err)
			}
			ops = append(ops, r.Op)
			if done(r.Op) {
				if quiet == 0 {
					return ops
				}
				silence = time.After(quiet)
			}
		case <-silence:
			return ops
		case <-ctx.Done():
			t.Fatalf("the live stream did not finish in 30 s; got ops %v", ops)
		}
	}
}

// firstLiveOp opens the live event stream and returns the operation
// number of the first event it sends.
func firstLiveOp(t testing.TB, base string) uint64 {
	t.Helper()
	return liveOps(t, base, func(uint64) bool { return true }, 0)[0]
}

// chainStatus is the console's /api/status.
func chainStatus(t testing.TB, base string) console.ChainStatus {
	t.Helper()
	resp, err := http.Get(base + "/api/status")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	var st console.ChainStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// startConsole serves a console of js until stop is called or the test
// ends.
func startConsole(t testing.TB, js jetstream.JetStream, trust chain.Trust) (base string, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := console.New(console.Config{JetStream: js, Trust: trust, Log: zap.NewNop(), TreeDir: t.TempDir()})
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	web := httptest.NewServer(c.Handler())
	var once sync.Once
	stop = func() { once.Do(func() { web.Close(); cancel(); <-done }) }
	t.Cleanup(stop)
	return web.URL, stop
}

// TestConsoleStartsAtTheNewestEvents: a console started on a long chain
// shows the newest events at once — a viewer that connects right away
// gets the newest 500 first, not the chain's history replayed from its
// start — while its verifier reads every block from the first and the
// status ends up counting them all, verified.
func TestConsoleStartsAtTheNewestEvents(t *testing.T) {
	const n = 100_000
	js, trust := longChain(t, n)
	base, _ := startConsole(t, js, trust)
	if op := firstLiveOp(t, base); op <= n-500 {
		t.Fatalf("the first live event is op %d: the console replays the chain from its start instead of showing its newest events (%d..%d)", op, n-499, n)
	}
	testwait.For(t, "the verifier to count every event", func() bool {
		st := chainStatus(t, base)
		if !st.Verified {
			t.Fatalf("the chain is not verified: %s", st.Problem)
		}
		return st.Events == n
	})
}

// BenchmarkConsoleStart measures, on a chain of GRIDSEAL_CONSOLE_EVENTS
// events (default 1 000 000), how long a console takes from its start to
// the first event (one of the newest 500) on the live stream of a viewer
// that connects at once, and how long chain tail -n 10 takes
// (chain.LastRecords). Building the chain is not timed; a 10 M-event chain
// takes about a minute and 2 GB.
func BenchmarkConsoleStart(b *testing.B) {
	n := 1_000_000
	if s := os.Getenv("GRIDSEAL_CONSOLE_EVENTS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil {
			b.Fatal(err)
		}
	}
	js, trust := longChain(b, n)
	b.Run(fmt.Sprintf("console-first-event/%d", n), func(b *testing.B) {
		for b.Loop() {
			start := time.Now()
			base, stop := startConsole(b, js, trust)
			op := firstLiveOp(b, base)
			took := time.Since(start)
			b.StopTimer()
			stop() // its verifier and tiler would compete with the next start
			b.StartTimer()
			if op <= uint64(n-500) {
				b.Fatalf("first live event op %d", op)
			}
			b.ReportMetric(float64(took.Microseconds())/1000, "ms")
		}
	})
	b.Run(fmt.Sprintf("tail-10/%d", n), func(b *testing.B) {
		for b.Loop() {
			recs, _, err := chain.LastRecords(b.Context(), js, 10, nil)
			if err != nil || len(recs) != 10 || recs[9].Op != uint64(n) {
				b.Fatalf("%d records: %v", len(recs), err)
			}
		}
	})
}
