package natsembed

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
)

// TestRestartDoesNotHoldTheClient: while the owner's server restarts (here
// slowly: its port is taken for a while), its in-process client is
// reconnecting, and a publish fails at once, as it does over TCP to a
// server that is down — it does not wait for the restart to end.
func TestRestartDoesNotHoldTheClient(t *testing.T) {
	w, err := startOwned(Options{Port: -1, StoreDir: t.TempDir()}, zap.NewNop(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Shutdown)
	nc, err := nats.Connect(w.ClientURL(), nats.InProcessServer(w), nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond), nats.ReconnectBufSize(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	// The store broke: the server goes down, and its port is someone
	// else's for a while (restart tries again; a Start on a taken port
	// waits 10 s for a server that never becomes ready).
	w.srv.Shutdown()
	w.srv.WaitForShutdown()
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(w.opts.Port))
	if err != nil {
		t.Fatal(err)
	}
	restarted := make(chan error, 1)
	go func() { restarted <- w.restart() }()
	time.AfterFunc(2*time.Second, func() { _ = ln.Close() })
	time.Sleep(700 * time.Millisecond) // past the client's reconnect wait
	start := time.Now()
	err = nc.Publish("x", []byte("y"))
	if took := time.Since(start); took > 300*time.Millisecond {
		t.Errorf("a publish during the restart took %v (%v): the client waits for the server's restart", took.Round(time.Millisecond), err)
	}
	if err := <-restarted; err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !nc.IsConnected() {
		if time.Now().After(deadline) {
			t.Fatal("the client did not reconnect after the restart")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := nc.Publish("x", []byte("y")); err != nil {
		t.Fatal(err)
	}
}
