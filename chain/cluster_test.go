package chain_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/natstest"
)

// TestClusterNodeLossKeepsEveryAcknowledgedEvent records continuously into
// an R3 stream on a real 3-node cluster while one node is killed and
// restarted. Every durable record that was acknowledged, and every
// non-durable one, must be in the chain afterwards, and the chain verifies.
func TestClusterNodeLossKeepsEveryAcknowledgedEvent(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster")
	}
	nodes := natstest.RunCluster(t, 3)
	nc := natstest.Connect(t, natstest.ClusterURLs(nodes))
	signer, wk := newKey(t)
	r, err := chain.Open(t.Context(), nc, chain.Config{Writer: "gw-1", Signer: signer, Replicas: 3,
		DurableTimeout: 5 * time.Second, PublishTimeout: 2 * time.Second}, nopLog())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.Close(5 * time.Second) }()

	var (
		mu      sync.Mutex
		acked   = map[uint64]bool{} // durable records acknowledged
		spooled = map[uint64]bool{} // non-durable records accepted
		next    atomic.Uint64
		stop    = make(chan struct{})
		wg      sync.WaitGroup
	)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				op := next.Add(1)
				durable := op%4 == 0
				err := r.Record(t.Context(), event(op, audit.Allow), durable)
				mu.Lock()
				switch {
				case err == nil && durable:
					acked[op] = true
				case err == nil:
					spooled[op] = true
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(20 * time.Millisecond) // a refused write: the client retries later
				}
			}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	// Kill the stream's leader: the hardest node to lose.
	victim := nodes[1]
	if s, err := jsOf(t, nc).Stream(t.Context(), chain.StreamName); err == nil && s.CachedInfo().Cluster != nil {
		for _, n := range nodes {
			if n.Name() == s.CachedInfo().Cluster.Leader {
				victim = n
			}
		}
	}
	t.Logf("killing %s", victim.Name())
	victim.Stop()
	time.Sleep(time.Second)
	victim.Restart()
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	evs, err := verify(chain.Trust{Writers: map[string]chain.WriterKeys{"gw-1": wk}}, readAll(t, nc))
	if err != nil {
		t.Fatal(err)
	}
	in := map[uint64]bool{}
	for _, e := range evs {
		if in[e.Op] {
			t.Fatalf("op %d recorded twice", e.Op)
		}
		in[e.Op] = true
	}
	mu.Lock()
	defer mu.Unlock()
	if len(acked) < 50 {
		t.Fatalf("only %d durable records acknowledged: the cluster did not keep recording", len(acked))
	}
	for op := range acked {
		if !in[op] {
			t.Fatalf("acknowledged op %d is missing after the node loss", op)
		}
	}
	for op := range spooled {
		if !in[op] {
			t.Fatalf("spooled op %d is missing", op)
		}
	}
	t.Logf("%d events, %d durable acknowledged, %d blocks; retries %d", len(evs), len(acked), r.Stats().Blocks.Load(), r.Stats().Retries.Load())
}
