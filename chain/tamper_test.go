package chain_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/keys"
)

// genuineChain builds six blocks of ten events for writer gw-1, in memory,
// as the recorder would, and returns them as stored messages.
func genuineChain(t *testing.T, s *keys.Signer) []*chain.Msg {
	t.Helper()
	return blocksInMemory(t, s, 6, 10, func(uint64) uint64 { return 10 })
}

// blocksInMemory builds blocks signed by s for writer gw-1, in memory, as
// the recorder would: count(h) events in block h, numbered from h*stride,
// and returns them as stored messages.
func blocksInMemory(t *testing.T, s chain.BlockSigner, blocks, stride uint64, count func(h uint64) uint64) []*chain.Msg {
	t.Helper()
	var msgs []*chain.Msg
	prev := chain.GenesisPrev("gw-1")
	for h := range blocks {
		var events [][]byte
		for i := range count(h) {
			events = append(events, chain.AppendEvent(nil, event(h*stride+i, audit.Allow)))
		}
		msg, hash, err := chain.EncodeBlock("gw-1", s, h, prev, time.Unix(1764072000+int64(h), 0), events)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, &chain.Msg{Seq: h + 1, Subject: chain.Subject("gw-1"), Data: msg, MsgID: hash.String()})
		prev = hash
	}
	return msgs
}

func renumber(msgs []*chain.Msg) []*chain.Msg {
	out := make([]*chain.Msg, len(msgs))
	for i, m := range msgs {
		cp := *m
		cp.Seq = uint64(i + 1)
		out[i] = &cp
	}
	return out
}

func TestTamperingIsDetected(t *testing.T) {
	signer, wk := newKey(t)
	attacker, _ := newKey(t)
	genuine := genuineChain(t, signer)
	head := func(msgs []*chain.Msg) chain.Head {
		b, err := chain.ParseBlock(msgs[len(msgs)-1].Data)
		if err != nil {
			t.Fatal(err)
		}
		return chain.Head{Writer: "gw-1", Height: b.Height, Hash: b.Hash.String()}
	}
	pinned := head(genuine)
	trust := chain.Trust{Writers: map[string]chain.WriterKeys{"gw-1": wk}, Heads: map[string]chain.Head{"gw-1": pinned}}
	if _, err := verify(trust, genuine); err != nil {
		t.Fatalf("genuine chain: %v", err)
	}
	block := func(i int) *chain.Block {
		b, err := chain.ParseBlock(genuine[i].Data)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	resigned := func(s chain.BlockSigner) []*chain.Msg {
		m := copyMsgs(genuine)
		resign(t, m, 2, s)
		return m
	}
	cases := []struct {
		name   string
		tamper func() []*chain.Msg
		seq    uint64 // first bad message (0: found at the end)
		height uint64
		reason string
	}{
		{"edited event byte", func() []*chain.Msg {
			m := copyMsgs(genuine)
			d := m[2].Data
			d[len(d)-30] ^= 0x01 // inside the last event of block 2
			return m
		}, 3, 2, "do not match the signed Merkle root"},
		{"block re-signed with another key", func() []*chain.Msg { return resigned(attacker) }, 3, 2, "not a pinned key"},
		{"header claims the pinned key id, signed by another", func() []*chain.Msg {
			return resigned(forgedKeyID{Signer: attacker, id: signer.KeyID})
		}, 3, 2, "signature"},
		{"removed block, stream rebuilt", func() []*chain.Msg {
			m := copyMsgs(genuine)
			return renumber(append(m[:3:3], m[4:]...))
		}, 4, 4, "blocks 3..3 are missing"},
		{"removed block, sequence gap", func() []*chain.Msg {
			m := copyMsgs(genuine)
			return append(m[:3:3], m[4:]...)
		}, 4, 0, "stream sequence jumps from 3 to 5: messages are missing"},
		{"reordered blocks", func() []*chain.Msg {
			m := copyMsgs(genuine)
			m[2], m[3] = m[3], m[2]
			return renumber(m)
		}, 3, 3, "blocks 2..2 are missing"},
		{"forked height", func() []*chain.Msg {
			m := copyMsgs(genuine)
			b := block(3)
			alt := append([][]byte(nil), b.Events[:5]...)
			msg, hash, err := chain.EncodeBlock("gw-1", signer, 3, b.Prev, b.Time.Add(time.Millisecond), alt)
			if err != nil {
				t.Fatal(err)
			}
			fork := &chain.Msg{Subject: chain.Subject("gw-1"), Data: msg, MsgID: hash.String()}
			return renumber(append(append(m[:4:4], fork), m[4:]...))
		}, 5, 3, "fork: block 3 appears again"},
		{"truncated tail", func() []*chain.Msg {
			return copyMsgs(genuine)[:4]
		}, 0, 4, "blocks 4..5 were truncated"},
		{"whole stream rebuilt by another key", func() []*chain.Msg {
			var out []*chain.Msg
			prev := chain.GenesisPrev("gw-1")
			for h := uint64(0); h < 6; h++ {
				b := block(int(h))
				msg, hash, err := chain.EncodeBlock("gw-1", attacker, h, prev, b.Time, b.Events)
				if err != nil {
					t.Fatal(err)
				}
				out = append(out, &chain.Msg{Seq: h + 1, Subject: chain.Subject("gw-1"), Data: msg, MsgID: hash.String()})
				prev = hash
			}
			return out
		}, 1, 0, "not a pinned key"},
		{"block moved to another writer's subject", func() []*chain.Msg {
			m := copyMsgs(genuine)
			m[1].Subject = chain.Subject("gw-2")
			return m
		}, 2, 1, "stored under gridseal.chain.gw-2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := verify(trust, tc.tamper())
			var p *chain.Problem
			if !errors.As(err, &p) {
				t.Fatalf("tampering not detected: %v", err)
			}
			if p.Seq != tc.seq || p.Height != tc.height || !strings.Contains(p.Reason, tc.reason) {
				t.Fatalf("problem = %v\nwant sequence %d, block %d, reason containing %q", p, tc.seq, tc.height, tc.reason)
			}
		})
	}
}

// forgedKeyID signs with one key but claims another's id in the header.
type forgedKeyID struct {
	*keys.Signer
	id uint32
}

func (f forgedKeyID) PrimaryKeyID() uint32 { return f.id }

// TestDeletedAndRebuiltStream deletes the real stream and rebuilds it from
// the genuine blocks minus the newest: verification through NATS catches it
// against the head the writer kept locally.
func TestDeletedAndRebuiltStream(t *testing.T) {
	e := newChain(t)
	heads := e.recordClosed(t, 5, 1)
	genuine := readAll(t, e.nc)
	if len(genuine) < 2 {
		t.Fatalf("only %d blocks", len(genuine))
	}
	ctx := t.Context()
	if err := e.js.DeleteStream(ctx, chain.StreamName); err != nil {
		t.Fatal(err)
	}
	if _, err := chain.EnsureStream(ctx, e.js, 1); err != nil {
		t.Fatal(err)
	}
	for _, m := range genuine[:len(genuine)-1] {
		if _, err := e.js.PublishMsg(ctx, &nats.Msg{Subject: m.Subject, Data: m.Data}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := verify(e.trustHead(t, heads), readAll(t, e.nc))
	var p *chain.Problem
	if !errors.As(err, &p) || !strings.Contains(p.Reason, "truncated") {
		t.Fatalf("rebuilt stream: %v, want truncation against the local head", err)
	}
	// The writer itself refuses to continue on the rebuilt stream.
	_, err = chain.Open(context.Background(), e.nc, chain.Config{Writer: "gw-1", Signer: e.signer, HeadDir: heads, LeaseTTL: -1}, nopLog())
	if !errors.Is(err, chain.ErrTruncated) {
		t.Fatalf("recorder on a truncated stream: %v, want ErrTruncated", err)
	}
}

// A block injected on a writer's subject by someone without its key: the
// writer refuses to build on it.
func TestWriterRefusesAForeignHead(t *testing.T) {
	e := newChain(t)
	e.recordClosed(t, 1, 1)
	attacker, _ := newKey(t)
	msg, _, err := chain.EncodeBlock("gw-1", attacker, 1_000_000, chain.Hash{}, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.PublishMsg(t.Context(), &nats.Msg{Subject: chain.Subject("gw-1"), Data: msg}); err != nil {
		t.Fatal(err)
	}
	_, err = chain.Open(t.Context(), e.nc, chain.Config{Writer: "gw-1", Signer: e.signer, LeaseTTL: -1}, nopLog())
	if !errors.Is(err, chain.ErrForeignHead) {
		t.Fatalf("recorder on a forged head: %v, want ErrForeignHead", err)
	}
}
