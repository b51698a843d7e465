package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/chain"
)

// Streams are the streams InitStreams creates: the chain, the
// checkpoints, the approvals bucket's stream, the approvals' uses and the
// writers' leases.
func Streams() []string {
	return []string{chain.StreamName, chain.CheckpointStream, "KV_" + approvals.Bucket, approvals.UsedStream, "KV_" + chain.LeaseBucket}
}

// StreamState is one of the Streams after InitStreams: whether it was
// there before, and its replicas now.
type StreamState struct {
	Name     string
	Existed  bool
	Replicas int
}

// InitStreams creates the Streams with replicas each, once, before any
// proxy starts (as the NATS admin user: the proxies' users may not), and
// says what each was and is. A stream already there is left as it is.
func InitStreams(ctx context.Context, js jetstream.JetStream, replicas int) ([]StreamState, error) {
	names := Streams()
	existed := map[string]bool{}
	for _, name := range names {
		_, err := js.Stream(ctx, name)
		if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, fmt.Errorf("stream %s: %w", name, err)
		}
		existed[name] = err == nil
	}
	if _, err := chain.EnsureStream(ctx, js, replicas); err != nil {
		return nil, err
	}
	if err := chain.EnsureCheckpointStream(ctx, js, replicas); err != nil {
		return nil, fmt.Errorf("checkpoint stream %s: %w", chain.CheckpointStream, err)
	}
	if _, err := approvals.OpenStore(ctx, js, replicas, zap.NewNop()); err != nil {
		return nil, err
	}
	if _, err := chain.EnsureLeaseBucket(ctx, js, chain.DefaultLeaseTTL, replicas); err != nil {
		return nil, err
	}
	out := make([]StreamState, 0, len(names))
	for _, name := range names {
		s, err := js.Stream(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("stream %s: %w", name, err)
		}
		out = append(out, StreamState{Name: name, Existed: existed[name], Replicas: s.CachedInfo().Config.Replicas})
	}
	return out, nil
}

// WriteText writes st as chain init prints it, noting replicas other than
// want.
func (st StreamState) WriteText(w io.Writer, want int) {
	state := "created"
	if st.Existed {
		state = "already there"
	}
	fmt.Fprintf(w, "stream %-24s %s, %d replicas", st.Name, state, st.Replicas)
	if st.Replicas != want {
		fmt.Fprintf(w, " (not %d: a NATS administrator changes that with nats stream edit)", want)
	}
	fmt.Fprintln(w)
}
