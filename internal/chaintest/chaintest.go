// Package chaintest opens chain recorders for tests and benchmarks, on
// the JetStream servers internal/natstest runs, and reads back what the
// chain's streams hold.
package chaintest

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/keys/keystest"
)

// Open opens a recorder on nc as cfg says, and closes it (waiting up to a
// second for what it holds) when the test ends; closing it before is
// harmless. An unset Writer is gw-1, an unset Signer a fresh key's.
func Open(t testing.TB, nc *nats.Conn, cfg chain.Config) *chain.Recorder {
	t.Helper()
	if cfg.Writer == "" {
		cfg.Writer = "gw-1"
	}
	if cfg.Signer == nil {
		cfg.Signer = keystest.Signer(t)
	}
	rec, err := chain.Open(t.Context(), nc, cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rec.Close(time.Second) })
	return rec
}

// StreamInfo is the configuration and state of the stream named name
// (chain.StreamName, chain.CheckpointStream) on js.
func StreamInfo(t testing.TB, js jetstream.JetStream, name string) *jetstream.StreamInfo {
	t.Helper()
	s, err := js.Stream(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// OpenTiler opens the tiler of dir, failing the test if it cannot; the
// caller closes it.
func OpenTiler(t testing.TB, dir string) *chain.Tiler {
	t.Helper()
	tl, err := chain.OpenTiler(dir, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	return tl
}

// OpenTiles opens the tiles of dir for reading, failing the test if it
// cannot.
func OpenTiles(t testing.TB, dir string) *chain.Tiles {
	t.Helper()
	ts, err := chain.OpenTiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}
