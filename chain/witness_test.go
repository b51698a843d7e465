package chain_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"golang.org/x/mod/sumdb/note"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/internal/witnesstest"
)

// witnessedLog is one chain stream with a checkpointer that asks one
// litewitness to cosign.
type witnessedLog struct {
	js     jetstream.JetStream
	wk     chain.WriterKeys
	rec    *chain.Recorder
	cpr    *chain.Checkpointer
	known  note.Verifiers
	next   uint64 // the next event's op number
	events int64
	cancel context.CancelFunc
	done   chan struct{}
}

func checkpointKey(t *testing.T) (note.Signer, note.Verifier, string) {
	t.Helper()
	k := keystest.NewCheckpointer(t, "gridseal.test/checkpointer")
	return k.Signer, k.Verifier, k.VerifierKey
}

// litewitnessed is a litewitness named witness.test/w1 that knows a
// fresh checkpointer key (s, v), and the verifier of its cosignatures.
type litewitnessed struct {
	s  note.Signer
	v  note.Verifier
	lw *witnesstest.Litewitness
	ws []*chain.CosignatureVerifier
}

func startLitewitness(t *testing.T) *litewitnessed {
	t.Helper()
	s, v, vkey := checkpointKey(t)
	lw := witnesstest.Start(t, "witness.test/w1", chain.CheckpointOrigin, vkey)
	wv, err := chain.NewCosignatureVerifier(lw.VKey)
	if err != nil {
		t.Fatal(err)
	}
	return &litewitnessed{s: s, v: v, lw: lw, ws: []*chain.CosignatureVerifier{wv}}
}

// startLog starts a fresh chain whose checkpointer asks the witness.
func (w *litewitnessed) startLog(t *testing.T) *witnessedLog {
	t.Helper()
	return startWitnessedLog(t, w.s, w.v, chain.Witness{URL: w.lw.URL, Verifier: w.ws[0]})
}

// startWitnessedLog runs a fresh JetStream server (a fresh chain) and a
// checkpointer signing with s that asks the witnesses.
func startWitnessedLog(t *testing.T, s note.Signer, v note.Verifier, ws ...chain.Witness) *witnessedLog {
	t.Helper()
	srv := natstest.RunJetStream(t)
	nc := natstest.Connect(t, srv.URL())
	signer, wk := newKey(t)
	l := &witnessedLog{wk: wk, js: jsOf(t, nc), rec: openRecorder(t, nc, "gw-1", signer, ""), known: note.VerifierList(v), done: make(chan struct{})}
	l.cpr = &chain.Checkpointer{Signer: s, Every: 30 * time.Millisecond, Log: zap.NewNop(),
		Witnesses: ws, WitnessQuorum: 1, WitnessTimeout: 3 * time.Second, TreeDir: t.TempDir()}
	var ctx context.Context
	ctx, l.cancel = context.WithCancel(context.Background())
	go func() {
		defer close(l.done)
		_ = l.cpr.Run(ctx, l.js)
	}()
	t.Cleanup(l.stop)
	return l
}

func (l *witnessedLog) stop() {
	l.cancel()
	<-l.done
}

// record appends n events and waits for a checkpoint of all of them.
func (l *witnessedLog) record(t *testing.T, n int) *chain.Checkpoint {
	t.Helper()
	for range n {
		if err := l.rec.Record(t.Context(), event(l.next, audit.Allow), false); err != nil {
			t.Fatal(err)
		}
		l.next++
		l.events++
	}
	if err := l.rec.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	var cp *chain.Checkpoint
	testwait.For(t, "a checkpoint of every event", func() bool {
		cp, _ = chain.LatestCheckpoint(t.Context(), l.js, l.known)
		return cp != nil && cp.Size == l.events
	})
	return cp
}

// TestLitewitnessCosignsCheckpoints: litewitness, a witness nobody here
// wrote, cosigns the checkpointer's checkpoints — the first from nothing,
// the next with our consistency proof from the size it kept — and the
// published checkpoint carries its cosignature, which verifies with the
// witness's key and not after the checkpoint is altered; a verifier that
// knows only the checkpointer's key still accepts the note.
func TestLitewitnessCosignsCheckpoints(t *testing.T) {
	w := startLitewitness(t)
	lw, wv := w.lw, w.ws[0]
	if wv.String() != lw.VKey {
		t.Fatalf("verifier key %s re-encodes as %s", lw.VKey, wv.String())
	}
	l := w.startLog(t)
	for _, n := range []int{10, 7, 1, 33} {
		cp := l.record(t, n)
		before := time.Now().Add(-time.Minute)
		cosigs, err := chain.Cosignatures(cp.Note, []*chain.CosignatureVerifier{wv})
		if err != nil || len(cosigs) != 1 || cosigs[0].Witness != "witness.test/w1" || cosigs[0].Time.Before(before) {
			t.Fatalf("size %d: cosignatures %+v, %v; want one by witness.test/w1, now", cp.Size, cosigs, err)
		}
		if len(cp.Signers) != 1 || cp.Signers[0] != "gridseal.test/checkpointer" {
			t.Fatalf("size %d: a verifier that knows only the checkpointer sees signers %v", cp.Size, cp.Signers)
		}
	}
	st := l.cpr.WitnessStatus()
	if len(st) != 1 || st[0].Size != 51 || st[0].LastErr != nil || st[0].Cosignatures < 4 {
		t.Fatalf("witness status %+v", st)
	}
	t.Logf("litewitness add-checkpoint round trip (the last one, 51 events): %v", st[0].RoundTrip)
	if n, at := l.cpr.Witnessed(); n != 1 || at.IsZero() {
		t.Fatalf("Witnessed() = %d, %v", n, at)
	}

	cp, _ := chain.LatestCheckpoint(t.Context(), l.js, l.known)
	// Another key under the witness's name does not verify its lines: they
	// are ignored, not counted.
	other := otherWitnessKey(t, "witness.test/w1")
	if cs, err := chain.Cosignatures(cp.Note, []*chain.CosignatureVerifier{other}); err != nil || len(cs) != 0 {
		t.Fatalf("a different key's cosignatures: %+v, %v", cs, err)
	}
	// The same checkpoint with another root: the witness's line names its
	// key and fails, so the note is refused.
	lines := strings.SplitN(string(cp.Note), "\n", 4)
	lines[2] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
	forged := []byte(strings.Join(lines, "\n"))
	if _, err := chain.Cosignatures(forged, []*chain.CosignatureVerifier{wv}); !errors.Is(err, chain.ErrBadCosignature) {
		t.Fatalf("a cosignature on an altered checkpoint: %v, want ErrBadCosignature", err)
	}
}

func otherWitnessKey(t *testing.T, name string) *chain.CosignatureVerifier {
	t.Helper()
	raw := make([]byte, 33)
	raw[0] = 0x04
	_, _ = rand.Read(raw[1:])
	id := sha256.Sum256(append([]byte(name+"\n"), raw...))
	v, err := chain.NewCosignatureVerifier(fmt.Sprintf("%s+%x+%s", name, id[:4], base64.StdEncoding.EncodeToString(raw)))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestLitewitnessRefusesRollback: once litewitness cosigned a tree of 20
// events, a chain started again from an older state — fewer events, then
// more than 20 that are not the same — gets no cosignature: the first is
// older than what the witness kept, the second does not extend it. The
// checkpoints are still published, without a cosignature.
func TestLitewitnessRefusesRollback(t *testing.T) {
	w := startLitewitness(t)
	ws := w.ws
	first := w.startLog(t)
	if cs, _ := chain.Cosignatures(first.record(t, 20).Note, ws); len(cs) != 1 {
		t.Fatal("the first chain's checkpoint of 20 events is not cosigned")
	}
	first.stop()

	rolled := w.startLog(t)
	rolled.next = 1000 // other events: a tree of the same events would be the same tree
	cp := rolled.record(t, 12)
	if cs, _ := chain.Cosignatures(cp.Note, ws); len(cs) != 0 {
		t.Fatal("a tree older than the witness's was cosigned")
	}
	testwait.For(t, "the witness's refusal of the older tree", func() bool {
		st := rolled.cpr.WitnessStatus()[0]
		return st.Size == 20 && errors.Is(st.LastErr, chain.ErrWitnessRefused) && strings.Contains(st.LastErr.Error(), "rolled back")
	})
	cp = rolled.record(t, 20) // 32 events, of which the first 20 differ
	if cs, _ := chain.Cosignatures(cp.Note, ws); len(cs) != 0 {
		t.Fatal("a tree that does not extend the witness's was cosigned")
	}
	testwait.For(t, "the witness's refusal of the fork", func() bool {
		st := rolled.cpr.WitnessStatus()[0]
		return st.LastErr != nil && strings.Contains(st.LastErr.Error(), "does not check")
	})
	if n, at := rolled.cpr.Witnessed(); n != 0 || !at.IsZero() {
		t.Fatalf("Witnessed() = %d, %v after refusals only", n, at)
	}
}

// TestWitnessDownDoesNotStopCheckpoints: with its witness stopped, the
// checkpointer still publishes checkpoints (uncosigned); once the witness
// is back, the next checkpoint is cosigned again.
func TestWitnessDownDoesNotStopCheckpoints(t *testing.T) {
	w := startLitewitness(t)
	lw, ws := w.lw, w.ws
	l := w.startLog(t)
	l.record(t, 5)
	lw.Stop()
	cp := l.record(t, 5)
	if cs, _ := chain.Cosignatures(cp.Note, ws); len(cs) != 0 {
		t.Fatal("cosigned by a stopped witness")
	}
	if st := l.cpr.WitnessStatus()[0]; st.LastErr == nil || st.Failures == 0 {
		t.Fatalf("a stopped witness shows no failure: %+v", st)
	}
	lw.Restart()
	testwait.For(t, "a cosigned checkpoint after the witness is back", func() bool {
		cp := l.record(t, 1)
		cs, _ := chain.Cosignatures(cp.Note, ws)
		return len(cs) == 1
	})
	if !bytes.Contains([]byte(lw.Log()), []byte("listening")) {
		t.Fatalf("litewitness log: %s", lw.Log())
	}
}

// TestVerifyRequiresWitnessQuorum: chain verify applies the trust file's
// witness policy to the newest checkpoint. With one witness up
// (litewitness) and one down, a quorum of 1 verifies, a quorum of 2 does
// not, nor a quorum whose cosignature is older than the bound, nor a
// checkpoint whose cosignature is not by a pinned witness.
func TestVerifyRequiresWitnessQuorum(t *testing.T) {
	s, v, vkey := checkpointKey(t)
	lw := witnesstest.Start(t, "witness.test/up", chain.CheckpointOrigin, vkey)
	up, _ := chain.NewCosignatureVerifier(lw.VKey)
	down := otherWitnessKey(t, "witness.test/down")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	downURL := "http://" + ln.Addr().String()
	_ = ln.Close() // nothing listens there
	l := startWitnessedLog(t, s, v, chain.Witness{URL: downURL, Verifier: down}, chain.Witness{URL: lw.URL, Verifier: up})
	cp := l.record(t, 25)
	if cs, _ := chain.Cosignatures(cp.Note, []*chain.CosignatureVerifier{up, down}); len(cs) != 1 {
		t.Fatalf("cosignatures %+v: want the one of the witness that is up", cs)
	}
	for _, tc := range []struct {
		name      string
		witnesses []*chain.CosignatureVerifier
		quorum    int
		maxAge    time.Duration
		want      string // "" verifies
	}{
		{"one of two", []*chain.CosignatureVerifier{up, down}, 1, time.Hour, ""},
		{"two of two", []*chain.CosignatureVerifier{up, down}, 2, time.Hour, "carries 1 valid cosignatures"},
		{"too old", []*chain.CosignatureVerifier{up, down}, 1, time.Nanosecond, "was cosigned by a quorum at"},
		{"not a pinned witness", []*chain.CosignatureVerifier{down}, 1, time.Hour, "carries 0 valid cosignatures"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			trust := chain.Trust{Writers: map[string]chain.WriterKeys{"gw-1": l.wk}, Checkpointers: l.known,
				Witnesses: tc.witnesses, WitnessQuorum: tc.quorum, WitnessMaxAge: tc.maxAge}
			rep, err := chain.VerifyStream(t.Context(), l.js, chain.VerifyOptions{Trust: trust})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range rep.Problems {
				got = append(got, p.Error())
			}
			switch {
			case tc.want == "" && len(got) > 0:
				t.Fatalf("problems: %v", got)
			case tc.want != "" && (len(got) != 1 || !strings.Contains(got[0], tc.want)):
				t.Fatalf("problems %v, want one saying %q", got, tc.want)
			}
		})
	}
}
