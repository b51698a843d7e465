package chain_test

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/internal/testwait"
)

// leaseBucket creates the writers' lease bucket with ttl, as the first
// recorder would, so a test can write a holder into it.
func leaseBucket(t *testing.T, js jetstream.JetStream, ttl time.Duration) jetstream.KeyValue {
	t.Helper()
	kv, err := js.CreateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: chain.LeaseBucket, TTL: ttl, History: 1})
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

func holder(t *testing.T, host string, pid int) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"host": host, "pid": pid, "started": time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// deadPID returns the pid of a process that has exited.
func deadPID(t *testing.T) int {
	t.Helper()
	c := exec.Command("true")
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	return c.Process.Pid
}

func TestWriterLease(t *testing.T) {
	host, _ := os.Hostname()
	signer, _ := newKey(t)
	open := func(t *testing.T, srv *natstest.Server, ttl time.Duration) (*chain.Recorder, error) {
		r, err := chain.Open(t.Context(), natstest.Connect(t, srv.URL()), chain.Config{Writer: "gw-1", Signer: signer,
			LeaseTTL: ttl, DurableTimeout: 3 * time.Second}, nopLog())
		if err == nil {
			t.Cleanup(func() { _ = r.Close(time.Second) })
		}
		return r, err
	}

	t.Run("a second process is refused while the first lives, and starts once it stopped", func(t *testing.T) {
		srv := natstest.RunJetStream(t)
		a, err := open(t, srv, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Record(t.Context(), event(1, audit.Allow), true); err != nil {
			t.Fatal(err)
		}
		_, err = open(t, srv, 0)
		if !errors.Is(err, chain.ErrWriterBusy) || !strings.Contains(err.Error(), "stop that process first") {
			t.Fatalf("second recorder of gw-1: %v, want ErrWriterBusy naming the holder", err)
		}
		if err := a.Close(time.Second); err != nil {
			t.Fatal(err)
		}
		b, err := open(t, srv, 0)
		if err != nil {
			t.Fatalf("after the first stopped: %v", err)
		}
		if err := b.Record(t.Context(), event(2, audit.Allow), true); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a crashed holder on this host is taken over at once", func(t *testing.T) {
		srv := natstest.RunJetStream(t)
		kv := leaseBucket(t, jsOf(t, natstest.Connect(t, srv.URL())), time.Hour)
		if _, err := kv.Create(t.Context(), "gw-1", holder(t, host, deadPID(t))); err != nil {
			t.Fatal(err)
		}
		if _, err := open(t, srv, time.Hour); err != nil {
			t.Fatalf("lease of a dead process: %v", err)
		}
	})

	t.Run("a holder elsewhere that stopped renewing expires after the TTL", func(t *testing.T) {
		srv := natstest.RunJetStream(t)
		kv := leaseBucket(t, jsOf(t, natstest.Connect(t, srv.URL())), time.Second)
		if _, err := kv.Create(t.Context(), "gw-1", holder(t, "another-host", 1)); err != nil {
			t.Fatal(err)
		}
		if _, err := open(t, srv, time.Second); !errors.Is(err, chain.ErrWriterBusy) {
			t.Fatalf("live lease of another host: %v, want ErrWriterBusy", err)
		}
		testwait.For(t, "the other host's lease to expire", func() bool {
			_, err := open(t, srv, time.Second)
			return err == nil
		})
	})

	t.Run("a lease taken while running stops the recorder", func(t *testing.T) {
		srv := natstest.RunJetStream(t)
		a, err := open(t, srv, 600*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		kv, err := jsOf(t, natstest.Connect(t, srv.URL())).KeyValue(t.Context(), chain.LeaseBucket)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(t.Context(), "gw-1", holder(t, "another-host", 1)); err != nil {
			t.Fatal(err)
		}
		testwait.For(t, "the recorder to notice its lease is gone", func() bool { return a.Failed() != nil })
		if err := a.Record(t.Context(), event(3, audit.Allow), false); !errors.Is(err, chain.ErrFenced) {
			t.Fatalf("record after the lease was taken: %v, want ErrFenced", err)
		}
	})

	t.Run("a lease taken while blocks are in flight stops every writer and Close", func(t *testing.T) {
		// The lease is lost in keepLease, concurrently with the committer:
		// a block acknowledged just after must neither touch the emptied
		// spool nor tell its waiters a second time.
		srv := natstest.RunJetStream(t)
		a, err := open(t, srv, 300*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		kv, err := jsOf(t, natstest.Connect(t, srv.URL())).KeyValue(t.Context(), chain.LeaseBucket)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for w := range 16 {
			wg.Go(func() {
				for i := range 20_000 { // bounded; the lease goes within a second
					if a.Record(t.Context(), event(uint64(w*20_000+i), audit.Allow), true) != nil {
						return
					}
				}
			})
		}
		time.Sleep(150 * time.Millisecond)
		if _, err := kv.Put(t.Context(), "gw-1", holder(t, "another-host", 1)); err != nil {
			t.Fatal(err)
		}
		stopped := make(chan struct{})
		go func() { wg.Wait(); _ = a.Close(time.Second); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(10 * time.Second):
			t.Fatal("writers or Close still blocked 10 s after the lease was taken")
		}
		if !errors.Is(a.Failed(), chain.ErrFenced) {
			t.Fatalf("recorder after its lease was taken: %v, want ErrFenced", a.Failed())
		}
	})
}
