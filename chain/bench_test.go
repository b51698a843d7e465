package chain_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/natsembed"
	"github.com/gridseal/gridseal/internal/natstest"
)

// benchDurable records durable events from many goroutines at once, as many
// proxied writes would, and reports events/s and the p50/p99 time until a
// write's record is durable.
func benchDurable(b *testing.B, nc *nats.Conn, replicas, parallelism int) {
	benchDurableWith(b, nc, chain.Config{Replicas: replicas}, parallelism)
}

// benchDurableWith is benchDurable with cfg's settings (Writer, Signer and
// DurableTimeout are set here).
func benchDurableWith(b *testing.B, nc *nats.Conn, cfg chain.Config, parallelism int) {
	signer, _ := newKey(b)
	cfg.Writer, cfg.Signer, cfg.DurableTimeout = "bench", signer, 10*time.Second
	r, err := chain.Open(b.Context(), nc, cfg, nopLog())
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = r.Close(10 * time.Second) }()
	ev := event(1, audit.Allow)
	var mu sync.Mutex
	var lat []time.Duration
	b.SetParallelism(parallelism)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		var mine []time.Duration
		for pb.Next() {
			t0 := time.Now()
			if err := r.Record(b.Context(), ev, true); err != nil {
				b.Error(err)
				return
			}
			mine = append(mine, time.Since(t0))
		}
		mu.Lock()
		lat = append(lat, mine...)
		mu.Unlock()
	})
	el := time.Since(start)
	b.StopTimer()
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(len(lat))/el.Seconds(), "events/s")
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		b.ReportMetric(float64(r.Stats().Events.Load())/float64(max(1, r.Stats().Blocks.Load())), "events/block")
	}
}

func BenchmarkRecordDurableEmbedded(b *testing.B) {
	srv := natstest.RunJetStream(b)
	benchDurable(b, natstest.Connect(b, srv.URL()), 1, 256)
}

// BenchmarkRecordDurableAlone is one write at a time: the latency a lone
// operator's setpoint change pays for its durable record.
func BenchmarkRecordDurableAlone(b *testing.B) {
	srv := natstest.RunJetStream(b)
	benchDurable(b, natstest.Connect(b, srv.URL()), 1, 1)
}

// BenchmarkRecordDurableOwner is the recorder as gridseal proxy runs it:
// on the connection a data directory's owner opens to its own embedded
// server (natsembed.Connect with Own), one write at a time and 16 at once.
func BenchmarkRecordDurableOwner(b *testing.B) {
	for _, par := range []int{1, 16} {
		b.Run(fmt.Sprintf("writers=%d", par), func(b *testing.B) {
			conn, err := natsembed.Connect(b.Context(), natsembed.ConnectOptions{Name: "bench", DataDir: b.TempDir(), Own: true, Recorder: true})
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			benchDurable(b, conn.Recorder(), 1, par)
		})
	}
}

// BenchmarkRecordDurableJournaled is the recorder exactly as gridseal
// proxy runs it: on its own embedded server, and a write durable once its
// record is in the local journal (write + fdatasync, group commit), under
// a directory on the disk the benchmark runs on (set TMPDIR to measure
// another). One write at a time and 16 at once.
func BenchmarkRecordDurableJournaled(b *testing.B) {
	for _, par := range []int{1, 16} {
		b.Run(fmt.Sprintf("writers=%d", par), func(b *testing.B) {
			dir := b.TempDir()
			conn, err := natsembed.Connect(b.Context(), natsembed.ConnectOptions{Name: "bench", DataDir: dir, Own: true, Recorder: true})
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			benchDurableWith(b, conn.Recorder(), chain.Config{HeadDir: filepath.Join(dir, "heads"), Journal: true, LeaseTTL: -1}, par)
		})
	}
}

// BenchmarkRecordDurableBesideReader is the owner's recorder while a
// reader of the chain (the console's verifier, a search or an export)
// pulls the whole stream again and again on the same process's
// connections: the writers' durable records must not queue behind it.
func BenchmarkRecordDurableBesideReader(b *testing.B) {
	conn, err := natsembed.Connect(b.Context(), natsembed.ConnectOptions{Name: "bench", DataDir: b.TempDir(), Own: true, Recorder: true})
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	signer, _ := newKey(b)
	fill, err := chain.Open(b.Context(), conn.NC, chain.Config{Writer: "fill", Signer: signer}, nopLog())
	if err != nil {
		b.Fatal(err)
	}
	for i := range 200_000 {
		if err := fill.Record(b.Context(), event(uint64(i), audit.Allow), false); err != nil {
			b.Fatal(err)
		}
	}
	if err := fill.Close(time.Minute); err != nil {
		b.Fatal(err)
	}
	js := jsOf(b, conn.NC)
	ctx, stop := context.WithCancel(b.Context())
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			_ = chain.Scan(ctx, js, 1, false, func(*chain.Msg) error { return ctx.Err() })
		}
	})
	defer func() { stop(); wg.Wait() }()
	benchDurable(b, conn.Recorder(), 1, 16)
}

func BenchmarkRecordDurableCluster(b *testing.B) {
	nodes := natstest.RunCluster(b, 3)
	benchDurable(b, natstest.Connect(b, natstest.ClusterURLs(nodes)), 3, 256)
}

// BenchmarkRecordSpooled records non-durable events (reads) from one
// goroutine and waits until all are acknowledged.
func BenchmarkRecordSpooled(b *testing.B) {
	srv := natstest.RunJetStream(b)
	signer, _ := newKey(b)
	r, err := chain.Open(b.Context(), natstest.Connect(b, srv.URL()), chain.Config{Writer: "bench", Signer: signer}, nopLog())
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = r.Close(10 * time.Second) }()
	ev := event(1, audit.Deny)
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		if err := r.Record(b.Context(), ev, false); err != nil {
			b.Fatal(err)
		}
	}
	if err := r.Flush(b.Context()); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}

// BenchmarkVerify measures chain verification over an in-memory chain of
// 100 blocks of 1000 events, signatures and Merkle roots included: with
// Verifier.Add, one block at a time, and as VerifyStream verifies, each
// block's checks on its own on every core ahead of the checks in order.
func BenchmarkVerify(b *testing.B) {
	signer, wk := newKey(b)
	var msgs []*chain.Msg
	prev := chain.GenesisPrev("gw-1")
	for h := uint64(0); h < 100; h++ {
		events := make([][]byte, 1000)
		for i := range events {
			events[i] = chain.AppendEvent(nil, event(h*1000+uint64(i), audit.Allow))
		}
		msg, hash, err := chain.EncodeBlock("gw-1", signer, h, prev, time.Now(), events)
		if err != nil {
			b.Fatal(err)
		}
		msgs = append(msgs, &chain.Msg{Seq: h + 1, Subject: chain.Subject("gw-1"), Data: msg})
		prev = hash
	}
	trust := chain.Trust{Writers: map[string]chain.WriterKeys{"gw-1": wk}}
	b.Run("Add", func(b *testing.B) {
		start := time.Now()
		for b.Loop() {
			v := chain.NewVerifier(trust)
			for _, m := range msgs {
				if err := v.Add(m); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(b.N)*100000/time.Since(start).Seconds(), "events/s")
	})
	b.Run("pipeline", func(b *testing.B) {
		start := time.Now()
		for b.Loop() {
			v := chain.NewVerifier(trust)
			if err := chain.VerifyPipelined(v, msgs); err != nil {
				b.Fatal(err)
			}
			if v.Events != 100000 {
				b.Fatalf("%d events verified", v.Events)
			}
		}
		b.ReportMetric(float64(b.N)*100000/time.Since(start).Seconds(), "events/s")
	})
}
