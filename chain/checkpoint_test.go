package chain_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/mod/sumdb/note"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/chaintest"
	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/internal/testwait"
)

func TestRootAccMatchesRFC6962(t *testing.T) {
	var acc chain.RootAcc
	var leaves []chain.Hash
	var tree chain.Tree
	for i := 0; i < 300; i++ {
		data := []byte{byte(i), byte(i >> 8)}
		leaves = append(leaves, chain.LeafHash(data))
		acc.Append(chain.LeafHash(data))
		if err := tree.AppendLeaf(data); err != nil {
			t.Fatal(err)
		}
		want := chain.MerkleRoot(append([]chain.Hash(nil), leaves...))
		if acc.Root() != want {
			t.Fatalf("n=%d: incremental root differs", i+1)
		}
		if r, err := tree.Root(int64(i + 1)); err != nil || r != want {
			t.Fatalf("n=%d: tlog root differs: %v", i+1, err)
		}
	}
	// Inclusion of leaf 123 in the tree of 250.
	root, _ := tree.Root(250)
	p, err := tree.ProveInclusion(123, 250)
	if err != nil {
		t.Fatal(err)
	}
	if err := chain.CheckInclusion(p, 250, root, 123, leaves[123]); err != nil {
		t.Fatal(err)
	}
	if chain.CheckInclusion(p, 250, root, 124, leaves[123]) == nil {
		t.Fatal("a proof checked for the wrong index")
	}
}

// TestCheckpointsPinTheStream records events, lets the checkpointer sign
// the tree, and checks the signed checkpoints against the stream; a rebuilt
// stream that drops the last block is caught by the checkpoint alone.
func TestCheckpointsPinTheStream(t *testing.T) {
	e := newChain(t)
	r := e.recorder(t, "")
	cpk := keystest.NewCheckpointer(t, "checkpointer-1")
	known, js := cpk.Verifiers(), e.js
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	cpr := &chain.Checkpointer{Signer: cpk.Signer, Every: 50 * time.Millisecond, Log: nopLog()}
	go func() { _ = cpr.Run(ctx, js) }()
	for i := uint64(0); i < 40; i++ {
		if err := r.Record(t.Context(), event(i, audit.Allow), i%10 == 9); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	var latest *chain.Checkpoint
	testwait.For(t, "a checkpoint of all 40 events", func() bool {
		latest, _ = chain.LatestCheckpoint(t.Context(), js, known)
		return latest != nil && latest.Size == 40
	})
	cps, err := chain.Checkpoints(t.Context(), js, known)
	if err != nil || len(cps) == 0 {
		t.Fatalf("checkpoints: %d, %v", len(cps), err)
	}
	msgs := readAll(t, e.nc)
	check := chain.NewCheckpointCheck(cps)
	for _, m := range msgs {
		if err := check.Add(m); err != nil {
			t.Fatal(err)
		}
	}
	if err := check.Finish(); err != nil {
		t.Fatal(err)
	}
	// An attacker without the writer's key rebuilt the stream without its
	// last block: block signatures alone cannot tell, the checkpoint can.
	short := chain.NewCheckpointCheck([]*chain.Checkpoint{latest})
	for _, m := range msgs[:len(msgs)-1] {
		_ = short.Add(m)
	}
	var p *chain.Problem
	if err := short.Finish(); !errors.As(err, &p) {
		t.Fatalf("truncation behind a checkpoint not caught: %v", err)
	}
	// The newest checkpoint extends the tree of the first 17 events: the
	// proof checks against a root computed here from the stream's blocks,
	// and not against a wrong one or with a hash altered.
	var acc chain.RootAcc
	for _, m := range msgs {
		b, err := chain.ParseBlock(m.Data)
		if err != nil {
			continue
		}
		for _, ev := range b.Events {
			if acc.Size() < 17 {
				acc.Append(chain.LeafHash(ev))
			}
		}
	}
	c, err := chain.ProveConsistency(t.Context(), js, known, 17)
	if err != nil {
		t.Fatal(err)
	}
	if c.OldRoot != acc.Root() || c.New.Size != 40 || c.New.Root != latest.Root {
		t.Fatalf("consistency: old root %s (computed %s), new size %d", c.OldRoot, acc.Root(), c.New.Size)
	}
	if err := chain.CheckConsistency(c.Proof, c.New.Size, c.New.Root, 17, acc.Root()); err != nil {
		t.Fatalf("the proof does not check: %v", err)
	}
	if chain.CheckConsistency(c.Proof, c.New.Size, c.New.Root, 17, chain.Hash{1}) == nil {
		t.Fatal("the proof checks against a wrong old root")
	}
	c.Proof[0][0] ^= 1
	if chain.CheckConsistency(c.Proof, c.New.Size, c.New.Root, 17, acc.Root()) == nil {
		t.Fatal("an altered proof checks")
	}
	if _, err := chain.ProveConsistency(t.Context(), js, known, 41); !errors.Is(err, chain.ErrCheckpointMismatch) {
		t.Fatalf("a consistency proof from beyond the newest checkpoint: %v", err)
	}
	// A second, lagging checkpointer signs the first 17 events after the
	// first signed all 40: the newest message, but not the newest tree.
	cpk2 := keystest.NewCheckpointer(t, "checkpointer-2")
	lag, err := chain.SignCheckpoint(17, acc.Root(), cpk2.Signer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(t.Context(), "gridseal.checkpoint.checkpointer-2", lag.Note); err != nil {
		t.Fatal(err)
	}
	if got, err := chain.LatestCheckpoint(t.Context(), js, note.VerifierList(cpk.Verifier, cpk2.Verifier)); err != nil || got.Size != 40 {
		t.Fatalf("latest checkpoint with a lagging second checkpointer: %+v %v", got, err)
	}
	// A forged checkpoint (another key) is not accepted.
	forged, _ := chain.SignCheckpoint(1000, chain.Hash{}, keystest.NewCheckpointer(t, "checkpointer-1").Signer)
	if _, err := chain.OpenCheckpoint(forged.Note, known); err == nil {
		t.Fatal("a checkpoint signed by another key was accepted")
	}
}

// checkpointMsgs is how many messages the checkpoint stream holds.
func checkpointMsgs(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	return chaintest.StreamInfo(t, js, chain.CheckpointStream).State.Msgs
}

// TestCheckpointerSignsEveryPeriod records an event every 20 ms for 2 s
// while a checkpointer with a 200 ms period runs: about ten checkpoints,
// one a period. (Signing only when a whole period has passed since the
// last one signs every other tick: about five.)
func TestCheckpointerSignsEveryPeriod(t *testing.T) {
	e := newChain(t)
	r := e.recorder(t, "")
	js := e.js
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	cpr := &chain.Checkpointer{Signer: keystest.NewCheckpointer(t, "checkpointer-1").Signer, Every: 200 * time.Millisecond, Log: nopLog()}
	go func() { done <- cpr.Run(ctx, js) }()
	pace := time.NewTicker(20 * time.Millisecond)
	defer pace.Stop()
	for i, end := uint64(0), time.Now().Add(2*time.Second); time.Now().Before(end); i++ {
		<-pace.C
		if err := r.Record(t.Context(), event(i, audit.Allow), true); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := checkpointMsgs(t, js); n < 7 || n > 11 {
		t.Fatalf("%d checkpoints in 2 s with a 200 ms period, want about 10 (one a period)", n)
	}
}

// TestCheckpointStreamReplicas: the checkpoint stream is replicated as
// the checkpointer is told, so losing one node of three does not stop
// checkpoints.
func TestCheckpointStreamReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster")
	}
	nodes := natstest.RunCluster(t, 3)
	nc := natstest.Connect(t, natstest.ClusterURLs(nodes))
	js := jsOf(t, nc)
	if _, err := chain.EnsureStream(t.Context(), js, 3); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	cpr := &chain.Checkpointer{Signer: keystest.NewCheckpointer(t, "checkpointer-1").Signer, Every: time.Hour, Replicas: 3, Log: nopLog()}
	go func() { done <- cpr.Run(ctx, js) }()
	var info *jetstream.StreamInfo
	testwait.For(t, "the checkpoint stream", func() bool {
		s, err := js.Stream(t.Context(), chain.CheckpointStream)
		if err == nil {
			info, err = s.Info(t.Context())
		}
		return err == nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if info.Config.Replicas != 3 {
		t.Fatalf("checkpoint stream has %d replicas, want 3", info.Config.Replicas)
	}
}

// TestCheckpointerReportsFailures: a checkpointer whose checkpoints
// JetStream refuses (here the checkpoint stream takes another subject, as
// when permissions deny it) says so in Err and its metrics, and recovers
// when they are taken again.
func TestCheckpointerReportsFailures(t *testing.T) {
	e := newChain(t)
	r := e.recorder(t, "")
	js := e.js
	cfg := jetstream.StreamConfig{Name: chain.CheckpointStream, Subjects: []string{"gridseal.checkpoint.someone-else"}}
	if _, err := js.CreateStream(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	cpr := &chain.Checkpointer{Signer: keystest.NewCheckpointer(t, "checkpointer-1").Signer, Every: 50 * time.Millisecond, Log: nopLog()}
	cpr.RegisterMetrics(reg)
	testwait.Go(t, "checkpointer", func(ctx context.Context) error { return cpr.Run(ctx, js) })
	metric := func(name string) float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == name {
				m := mf.GetMetric()[0]
				return m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
		t.Fatalf("no metric %s", name)
		return 0
	}
	for i := uint64(0); i < 3; i++ {
		if err := r.Record(t.Context(), event(i, audit.Allow), true); err != nil {
			t.Fatal(err)
		}
	}
	testwait.For(t, "the checkpointer to report its failures", func() bool { return cpr.Err() != nil })
	if err := cpr.Err(); !strings.Contains(err.Error(), "checkpoints failing") || !strings.Contains(err.Error(), "none signed yet") {
		t.Fatalf("Err() = %v", err)
	}
	if n := metric("gridseal_checkpoint_failures_total"); n < 2 {
		t.Fatalf("gridseal_checkpoint_failures_total = %v, want at least 2", n)
	}
	if ts := metric("gridseal_checkpoint_last_success_timestamp_seconds"); ts != 0 {
		t.Fatalf("last success %v, want 0: none was published", ts)
	}
	cfg.Subjects = []string{"gridseal.checkpoint.>"}
	if _, err := js.UpdateStream(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "the checkpointer to recover", func() bool { return cpr.Err() == nil })
	if ts := metric("gridseal_checkpoint_last_success_timestamp_seconds"); ts < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Fatalf("last success %v, want about now", ts)
	}
}
