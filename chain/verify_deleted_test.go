package chain_test

import (
	"strings"
	"testing"

	"github.com/gridseal/gridseal/chain"
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
			e := newChain(t)
			trust := e.trust()
			if tc.record {
				trust = e.trustHead(t, e.recordClosed(t, 1, 1))
				if err := e.js.DeleteStream(t.Context(), chain.StreamName); err != nil {
					t.Fatal(err)
				}
			}
			rep, err := chain.VerifyStream(t.Context(), e.js, chain.VerifyOptions{Trust: trust})
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
