package mirror_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/mirror"
)

// fillChain publishes blocks blocks of perBlock events of writer gw-1,
// signed with the keyring's writer key, into js's chain stream.
func fillChain(b *testing.B, js jetstream.JetStream, k *keyring, blocks, perBlock int) {
	b.Helper()
	if _, err := js.CreateStream(b.Context(), mirror.LocalStreamConfig()); err != nil {
		b.Fatal(err)
	}
	prev := chain.GenesisPrev("gw-1")
	op := uint64(0)
	for h := range blocks {
		events := make([][]byte, perBlock)
		for i := range events {
			events[i] = chain.AppendEvent(nil, event(op))
			op++
		}
		msg, hash, err := chain.EncodeBlock("gw-1", k.writer.Signer, uint64(h), prev, time.Unix(1764072000+int64(h), 0), events)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := js.PublishMsgAsync(&nats.Msg{Subject: chain.Subject("gw-1"), Data: msg}, jetstream.WithMsgID(hash.String())); err != nil {
			b.Fatal(err)
		}
		prev = hash
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("the chain was not stored")
	}
}

// BenchmarkMirrorVerify measures the mirror's verification rate in
// events/s over a chain of 800 blocks of 64 events (51 200 events, each
// block one Ed25519 signature): "copy" copies it from a source JetStream
// into the mirror's own and verifies it as it lands (a mirror catching
// up); "verify" verifies a copy already there (a mirror restarted). Both
// servers are in this process and fsync every write.
func BenchmarkMirrorVerify(b *testing.B) {
	const blocks, perBlock = 800, 64
	k := newKeyring(b)
	for _, mode := range []string{"copy", "verify"} {
		b.Run(mode, func(b *testing.B) {
			var total time.Duration
			for range b.N {
				b.StopTimer()
				src := natstest.RunJetStream(b)
				local := natstest.RunJetStream(b)
				sjs, _ := jetstream.New(natstest.Connect(b, src.URL()))
				ljs, _ := jetstream.New(natstest.Connect(b, local.URL()))
				cfg := mirror.Config{Trust: k.trust(), Cosigner: k.cosigner, Dir: b.TempDir(), Local: ljs, Poll: 5 * time.Millisecond, Log: zap.NewNop()}
				if mode == "copy" {
					fillChain(b, sjs, k, blocks, perBlock)
					cfg.Source = sjs
				} else {
					fillChain(b, ljs, k, blocks, perBlock)
				}
				m, err := mirror.New(cfg)
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				b.StartTimer()
				start := time.Now()
				go func() { done <- m.Run(ctx) }()
				for m.Status().Verified < blocks {
					time.Sleep(time.Millisecond)
				}
				total += time.Since(start)
				b.StopTimer()
				cancel()
				if err := <-done; err != nil {
					b.Fatal(err)
				}
				if st := m.Status(); st.Clean != blocks*perBlock || st.Alarms != 0 {
					b.Fatalf("status %+v", st)
				}
				_ = m.Close()
			}
			b.ReportMetric(float64(b.N*blocks*perBlock)/total.Seconds(), "events/s")
		})
	}
}
