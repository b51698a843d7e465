package chain_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/internal/natstest"
)

// corruptChain records six blocks of two events each, signs a checkpoint
// of them all, then flips a byte inside the stored record of the block at
// sequence bad: what a disk error leaves.
func corruptChain(t *testing.T, bad int) (jetstream.JetStream, chain.Trust) {
	t.Helper()
	e := newChain(t)
	heads := e.recordClosed(t, 12, 2)
	msgs := readAll(t, e.nc)
	if len(msgs) != 6 {
		t.Fatalf("%d blocks recorded, want 6", len(msgs))
	}
	acc := rootOf(t, msgs)
	cpk := keystest.NewCheckpointer(t, "checkpointer-1")
	cp, err := chain.SignCheckpoint(acc.Size(), acc.Root(), cpk.Signer)
	if err != nil {
		t.Fatal(err)
	}
	if err := chain.EnsureCheckpointStream(t.Context(), e.js, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.Publish(t.Context(), "gridseal.checkpoint.checkpointer-1", cp.Note); err != nil {
		t.Fatal(err)
	}
	trust := e.trustHead(t, heads)
	trust.Checkpointers = cpk.Verifiers()
	e.srv.CorruptRecord(chain.StreamName, msgs[bad-1].Data)
	return jsOf(t, natstest.Connect(t, e.srv.URL())), trust
}

// TestUnreadableLastBlock: when the stream's last record is corrupt on
// disk, JetStream never delivers it. Every reader must say which sequence
// it cannot read, within seconds, not wait for it forever.
func TestUnreadableLastBlock(t *testing.T) {
	js, trust := corruptChain(t, 6)
	cases := []struct {
		name string
		read func(ctx context.Context) error
	}{
		{"verify", func(ctx context.Context) error {
			rep, err := chain.VerifyStream(ctx, js, chain.VerifyOptions{Trust: trust})
			if err != nil {
				return err
			}
			if len(rep.Problems) != 1 {
				t.Errorf("%d problems, want the one unreadable sequence: %v", len(rep.Problems), rep.Problems)
			}
			if len(rep.Problems) == 0 {
				return nil
			}
			return rep.Problems[0]
		}},
		{"records", func(ctx context.Context) error {
			return chain.ScanRecords(ctx, js, 1, false, nil, func(*chain.Record, *audit.Event) error { return nil })
		}},
		{"prove", func(ctx context.Context) error {
			_, err := chain.ProveEvent(ctx, js, trust.Checkpointers, 1, 0)
			return err
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
			defer cancel()
			err := tc.read(ctx)
			if ctx.Err() != nil {
				t.Fatalf("still reading after 15 s: %v", err)
			}
			if err == nil || !strings.HasPrefix(err.Error(), "sequence 6: ") || !strings.Contains(err.Error(), "unreadable") {
				t.Fatalf("error = %v, want one naming sequence 6 unreadable", err)
			}
			if strings.Contains(err.Error(), "truncated") || strings.Contains(err.Error(), "block 0") {
				t.Fatalf("error = %v: the record is unreadable, not truncated, and its height is unknown", err)
			}
			var p *chain.Problem
			if !errors.As(err, &p) && !errors.Is(err, chain.ErrUnreadable) {
				t.Fatalf("error = %v, want chain.ErrUnreadable", err)
			}
		})
	}
}

// TestUnreadableBlockInTheMiddle: JetStream skips a corrupt record it can
// deliver past. Verification names it once and counts the blocks that
// follow it; export refuses to skip it silently.
func TestUnreadableBlockInTheMiddle(t *testing.T) {
	js, trust := corruptChain(t, 3)
	rep, err := chain.VerifyStream(t.Context(), js, chain.VerifyOptions{Trust: trust})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) != 1 {
		t.Fatalf("%d problems, want 1: %v", len(rep.Problems), rep.Problems)
	}
	want := "sequence 3: stream sequence jumps from 2 to 4: messages are missing"
	if p := rep.Problems[0]; !strings.HasPrefix(p.Error(), want) || p.Later != 3 ||
		!strings.HasSuffix(p.Error(), "; and 3 later blocks not verified because they follow this one") {
		t.Fatalf("problem = %v (later %d)\nwant %q…, and the 3 later blocks counted", p, p.Later, want)
	}
	err = chain.ScanRecords(t.Context(), js, 1, false, nil, func(*chain.Record, *audit.Event) error { return nil })
	if !errors.Is(err, chain.ErrUnreadable) || !strings.HasPrefix(err.Error(), "sequence 3: ") {
		t.Fatalf("export over an unreadable record: %v, want an error naming sequence 3", err)
	}
}

// TestProblemError: a problem names what is known of where it is, and
// never a height it does not know.
func TestProblemError(t *testing.T) {
	cases := []struct {
		name string
		p    chain.Problem
		want string
	}{
		{"block", chain.Problem{Seq: 3, Writer: "gw-1", Height: 2, HasHeight: true, Reason: "bad"},
			"sequence 3 (writer gw-1, block 2): bad"},
		{"genesis block", chain.Problem{Seq: 1, Writer: "gw-1", Height: 0, HasHeight: true, Reason: "bad"},
			"sequence 1 (writer gw-1, block 0): bad"},
		{"unreadable block", chain.Problem{Seq: 3, Writer: "gw-1", Reason: "unreadable block"},
			"sequence 3 (writer gw-1): unreadable block"},
		{"missing sequence", chain.Problem{Seq: 3, Reason: "missing"}, "sequence 3: missing"},
		{"writer", chain.Problem{Writer: "gw-1", Height: 4, HasHeight: true, Reason: "truncated"}, "writer gw-1: truncated"},
		{"stream", chain.Problem{Reason: "a checkpoint covers more"}, "a checkpoint covers more"},
		{"one later", chain.Problem{Seq: 3, Reason: "missing", Later: 1},
			"sequence 3: missing; and 1 later block not verified because it follows this one"},
		{"later", chain.Problem{Seq: 3, Reason: "missing", Later: 9},
			"sequence 3: missing; and 9 later blocks not verified because they follow this one"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.p.Error(); got != tc.want {
				t.Fatalf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}
