// Package natstest runs real in-process nats-servers with JetStream for
// tests: one server, or a cluster on loopback, each stopped with the test.
package natstest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gridseal/gridseal/internal/natsembed"
	"github.com/gridseal/gridseal/internal/testnet"
	"github.com/gridseal/gridseal/internal/testwait"
)

// Server is a running embedded server that a test can stop and restart on
// the same port and store.
type Server struct {
	*server.Server
	t    testing.TB
	opts natsembed.Options
}

// RunJetStream starts one JetStream server (fsync always) on a loopback
// port the server picks (-1, as nats-server's own tests do) with its store
// in a temporary directory.
func RunJetStream(t testing.TB) *Server {
	t.Helper()
	return run(t, natsembed.Options{Port: -1, StoreDir: t.TempDir(), SyncAlways: true})
}

// run starts a server with o, stopped with the test. The port it bound is
// kept in opts, so Restart comes back on the same one.
func run(t testing.TB, o natsembed.Options) *Server {
	t.Helper()
	s, err := natsembed.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	o.Port = s.Addr().(*net.TCPAddr).Port
	srv := &Server{Server: s, t: t, opts: o}
	t.Cleanup(func() { srv.Shutdown() })
	return srv
}

// RunConfig starts a server from a nats-server configuration file (the
// shipped deployment files, say), stopped with the test.
func RunConfig(t testing.TB, path string) *server.Server {
	t.Helper()
	o, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatal(err)
	}
	o.NoLog, o.NoSigs = true, true
	s, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	t.Cleanup(s.Shutdown)
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatalf("nats-server with %s did not start", path)
	}
	return s
}

// URL is the client URL; it stays the same across Restart.
func (s *Server) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", s.opts.Port) }

// Stop shuts the server down and waits for it.
func (s *Server) Stop() {
	s.Shutdown()
	s.WaitForShutdown()
}

// Restart starts the server again on the same port and store.
func (s *Server) Restart() {
	s.t.Helper()
	// The old listener may take a moment to let go of the port.
	testwait.NoError(s.t, "nats-server to restart", func() (err error) {
		var ns *server.Server
		if ns, err = natsembed.Start(s.opts); err == nil {
			s.Server = ns
		}
		return err
	})
}

// Connect returns a client that reconnects forever, closed with the test.
func Connect(t testing.TB, urls string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(urls, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond),
		nats.RetryOnFailedConnect(true), nats.Timeout(2*time.Second), nats.ReconnectBufSize(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// JetStream returns nc's JetStream context.
func JetStream(t testing.TB, nc *nats.Conn) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// RunCluster starts n clustered JetStream servers on loopback and waits
// until they have a meta leader.
func RunCluster(t testing.TB, n int) []*Server {
	t.Helper()
	ports := make([]int, n)
	routes := make([]string, n)
	for i := range ports {
		ports[i] = testnet.FreePort(t) // route ports must be known before any node starts
		routes[i] = fmt.Sprintf("nats-route://127.0.0.1:%d", ports[i])
	}
	out := make([]*Server, n)
	for i := 0; i < n; i++ {
		out[i] = run(t, natsembed.Options{
			Name: fmt.Sprintf("n%d", i+1), Port: -1, StoreDir: t.TempDir(), SyncAlways: true,
			Cluster: "gridseal-test", ClusterPort: ports[i], Routes: routes,
		})
	}
	ss := make([]*server.Server, n)
	for i, s := range out {
		ss[i] = s.Server
	}
	WaitClusterReady(t, ss)
	return out
}

// WaitClusterReady waits until the cluster has a JetStream meta leader
// and that leader sees every one of ss online with current stats: only
// then will it place an R3 stream (before, a create is refused with
// "no suitable peers for placement, peer offline").
func WaitClusterReady(t testing.TB, ss []*server.Server) {
	t.Helper()
	testwait.For(t, "the cluster's meta leader to see every peer online", func() bool {
		for _, s := range ss {
			if s.Running() && s.JetStreamIsLeader() {
				return len(s.JetStreamClusterPeers()) == len(ss)
			}
		}
		return false
	})
}

// ClusterURLs joins the servers' client URLs for nats.Connect.
func ClusterURLs(ss []*Server) string {
	u := ""
	for i, s := range ss {
		if i > 0 {
			u += ","
		}
		u += s.URL()
	}
	return u
}

// CorruptRecord stops the server, flips one byte inside the stored record
// of stream that holds data (its last 32 bytes must be unique in the
// store), and restarts it: the record's checksum then fails, as after a
// disk error. It fails the test if no record holds data.
func (s *Server) CorruptRecord(stream string, data []byte) {
	s.t.Helper()
	dir := filepath.Join(s.StoreDir(), "$G", "streams", stream, "msgs")
	s.Stop()
	blks, err := filepath.Glob(filepath.Join(dir, "*.blk"))
	if err != nil {
		s.t.Fatal(err)
	}
	tail := data[max(len(data)-32, 0):]
	done := false
	for _, path := range blks {
		b, err := os.ReadFile(path)
		if err != nil {
			s.t.Fatal(err)
		}
		if i := bytes.Index(b, tail); i >= 0 && !done {
			b[i+len(tail)/2] ^= 0x01
			if err := os.WriteFile(path, b, 0o600); err != nil {
				s.t.Fatal(err)
			}
			done = true
		}
	}
	if !done {
		s.t.Fatalf("no record of stream %s under %s holds the data to corrupt", stream, dir)
	}
	s.Restart()
}
