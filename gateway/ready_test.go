package gateway

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/internal/testwait"
)

// TestReadyReportsCheckpointFailures: /readyz's check is not ready while
// the checkpointer cannot publish (here the checkpoint stream takes
// another subject, as when permissions deny it), though the chain itself
// is writable.
func TestReadyReportsCheckpointFailures(t *testing.T) {
	srv := natstest.RunJetStream(t)
	nc := natstest.Connect(t, srv.URL())
	rec, err := chain.Open(t.Context(), nc, chain.Config{Writer: "gw-1", Signer: keystest.Signer(t),
		DurableTimeout: 3 * time.Second}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rec.Close(time.Second) })
	g := &Gateway{rec: rec}
	if err := g.ready(); err != nil {
		t.Fatalf("ready with a writable chain and no checkpointer: %v", err)
	}
	js := natstest.JetStream(t, nc)
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: chain.CheckpointStream,
		Subjects: []string{"gridseal.checkpoint.someone-else"}}); err != nil {
		t.Fatal(err)
	}
	g.checkpointer = &chain.Checkpointer{Signer: keystest.NewCheckpointer(t, "cp-1").Signer, Every: 50 * time.Millisecond, Log: zap.NewNop()}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- g.checkpointer.Run(ctx, js) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	for i := uint64(1); i <= 3; i++ {
		ev := &audit.Event{Time: time.Now(), Op: i, Phase: audit.PhaseComplete, Device: "inverter-1", Unit: 1,
			Function: 3, Class: "read", Quantity: 1, PDU: []byte{3, 0, 0, 0, 1}, Verdict: audit.Allow}
		if err := rec.Record(t.Context(), ev, true); err != nil {
			t.Fatal(err)
		}
	}
	testwait.For(t, "not ready while checkpoints fail", func() bool { return g.ready() != nil })
	if err := g.ready(); !strings.Contains(err.Error(), "checkpoints failing") {
		t.Fatalf("ready() = %v, want the checkpoint failures", err)
	}
}
