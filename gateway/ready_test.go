package gateway

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/mod/sumdb/note"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/chaintest"
	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/internal/testwait"
)

// TestReadyReportsCheckpointFailures: /readyz's check is not ready while
// the checkpointer cannot publish (here the checkpoint stream takes
// another subject, as when permissions deny it), though the chain itself
// is writable.
func TestReadyReportsCheckpointFailures(t *testing.T) {
	rec, js := readyChain(t)
	g := &Gateway{rec: rec}
	if err := g.ready(); err != nil {
		t.Fatalf("ready with a writable chain and no checkpointer: %v", err)
	}
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: chain.CheckpointStream,
		Subjects: []string{"gridseal.checkpoint.someone-else"}}); err != nil {
		t.Fatal(err)
	}
	g.checkpointer = &chain.Checkpointer{Signer: keystest.NewCheckpointer(t, "cp-1").Signer, Every: 50 * time.Millisecond, Log: zap.NewNop()}
	runCheckpointer(t, g.checkpointer, js)
	recordReads(t, rec, 3)
	testwait.For(t, "not ready while checkpoints fail", func() bool { return g.ready() != nil })
	if err := g.ready(); !strings.Contains(err.Error(), "checkpoints failing") {
		t.Fatalf("ready() = %v, want the checkpoint failures", err)
	}
}

// TestReadyWitnessPolicy: with a witness that is down, checkpoints are
// still published and /readyz stays ready by default; with
// checkpoint.require_witnessed it is not ready once that long passed
// without a witnessed checkpoint, and says which witness fails. The
// witness's state is in /metrics.
func TestReadyWitnessPolicy(t *testing.T) {
	for _, tc := range []struct {
		name    string
		require time.Duration
		ready   bool
	}{
		{"default: witnesses do not decide readiness", 0, true},
		{"require_witnessed", 200 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec, js := readyChain(t)
			skey, _, _ := note.GenerateKey(rand.Reader, "cp-1")
			s, _ := note.NewSigner(skey)
			// A witness nobody runs: a closed loopback port.
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			down := "http://" + ln.Addr().String()
			_ = ln.Close()
			wv, err := chain.NewCosignatureVerifier(witnessKey(t, "witness.test/down"))
			if err != nil {
				t.Fatal(err)
			}
			g := &Gateway{rec: rec, requireWitnessed: tc.require, checkpointStarted: time.Now()}
			g.checkpointer = &chain.Checkpointer{Signer: s, Every: 50 * time.Millisecond, Log: zap.NewNop(),
				Witnesses: []chain.Witness{{URL: down, Verifier: wv}}, WitnessQuorum: 1}
			reg := prometheus.NewRegistry()
			g.checkpointer.RegisterMetrics(reg)
			runCheckpointer(t, g.checkpointer, js)
			recordReads(t, rec, 1)
			testwait.For(t, "a checkpoint published despite the witness", func() bool {
				_, last := g.checkpointer.Status()
				return !last.IsZero()
			})
			if !tc.ready {
				testwait.For(t, "not ready once require_witnessed passed", func() bool { return g.ready() != nil })
			}
			err = g.ready()
			if tc.ready && err != nil {
				t.Fatalf("ready() = %v; want ready: a witness being down does not stop the proxy", err)
			}
			if !tc.ready && (err == nil || !strings.Contains(err.Error(), "witness.test/down failing")) {
				t.Fatalf("ready() = %v; want not ready, naming the failing witness", err)
			}
			if got := witnessUp(t, reg); got != 0 {
				t.Fatalf("gridseal_witness_up = %v for a witness that is down", got)
			}
		})
	}
}

// readyChain is a writer gw-1's recorder on a JetStream server of its own.
func readyChain(t *testing.T) (*chain.Recorder, jetstream.JetStream) {
	t.Helper()
	nc := natstest.Connect(t, natstest.RunJetStream(t).URL())
	return chaintest.Open(t, nc, chain.Config{DurableTimeout: 3 * time.Second}), natstest.JetStream(t, nc)
}

// runCheckpointer runs c on js until the test ends, and fails the test if
// it stops with an error.
func runCheckpointer(t *testing.T, c *chain.Checkpointer, js jetstream.JetStream) {
	t.Helper()
	testwait.Go(t, "checkpointer", func(ctx context.Context) error { return c.Run(ctx, js) })
}

// recordReads records n reads of inverter-1, operations 1 to n, durably.
func recordReads(t *testing.T, rec *chain.Recorder, n uint64) {
	t.Helper()
	for i := uint64(1); i <= n; i++ {
		ev := &audit.Event{Time: time.Now(), Op: i, Phase: audit.PhaseComplete, Device: "inverter-1", Unit: 1,
			Function: 3, Class: "read", Quantity: 1, PDU: []byte{3, 0, 0, 0, 1}, Verdict: audit.Allow}
		if err := rec.Record(t.Context(), ev, true); err != nil {
			t.Fatal(err)
		}
	}
}

func witnessUp(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "gridseal_witness_up" && len(mf.GetMetric()) == 1 && mf.GetMetric()[0].GetLabel()[0].GetValue() == "witness.test/down" {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatal("no gridseal_witness_up{witness=\"witness.test/down\"} in the metrics")
	return -1
}

// witnessKey is a cosignature/v1 verifier key of a new random key.
func witnessKey(t *testing.T, name string) string {
	t.Helper()
	raw := make([]byte, 33)
	raw[0] = 0x04
	_, _ = rand.Read(raw[1:])
	id := sha256.Sum256(append([]byte(name+"\n"), raw...))
	return fmt.Sprintf("%s+%x+%s", name, id[:4], base64.StdEncoding.EncodeToString(raw))
}
