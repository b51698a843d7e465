package chain_test

import (
	"strings"
	"testing"
	"time"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/natstest"
)

// TestVerifyStreamReportsAMissingStream: with writers pinned, a chain
// stream that is not there is tampering (someone deleted it), reported as
// a problem for each pinned writer, not an error of NATS.
func TestVerifyStreamReportsAMissingStream(t *testing.T) {
	for _, tc := range []struct {
		name      string
		record    bool // record a block, keep its head, then delete the stream
		wantProbs int
	}{
		{name: "never created", wantProbs: 1},
		{name: "deleted after recording", record: true, wantProbs: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := natstest.RunJetStream(t)
			nc := natstest.Connect(t, srv.URL())
			js := jsOf(t, nc)
			signer, wk := newKey(t)
			trust := chain.Trust{Writers: map[string]chain.WriterKeys{"gw-1": wk}, Heads: map[string]chain.Head{}}
			if tc.record {
				heads := t.TempDir()
				r := openRecorder(t, nc, "gw-1", signer, heads)
				if err := r.Record(t.Context(), event(1, audit.Allow), true); err != nil {
					t.Fatal(err)
				}
				if err := r.Close(time.Second); err != nil {
					t.Fatal(err)
				}
				h, ok, err := chain.LoadHead(heads, "gw-1")
				if err != nil || !ok {
					t.Fatalf("local head: %v %v", ok, err)
				}
				trust.Heads["gw-1"] = h
				if err := js.DeleteStream(t.Context(), chain.StreamName); err != nil {
					t.Fatal(err)
				}
			}
			rep, err := chain.VerifyStream(t.Context(), js, chain.VerifyOptions{Trust: trust})
			if err != nil {
				t.Fatalf("a missing stream is a finding, not an error: %v", err)
			}
			if len(rep.Problems) != tc.wantProbs || rep.Problems[0].Writer != "gw-1" ||
				!strings.Contains(rep.Problems[0].Error(), "the chain stream GRIDSEAL_CHAIN does not exist") {
				t.Fatalf("problems %v, want first: the chain stream GRIDSEAL_CHAIN does not exist", rep.Problems)
			}
		})
	}
}
