package chain_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/keys/keystest"
)

// TestVerifyStreamCleanChain verifies what the recorder wrote: no problems,
// every block and event counted, the writer's state, progress reported.
func TestVerifyStreamCleanChain(t *testing.T) {
	e := newChain(t)
	trust := e.trustHead(t, e.recordClosed(t, 25, 10))
	h := trust.Heads["gw-1"]
	var progress []uint64
	rep, err := chain.VerifyStream(t.Context(), e.js, chain.VerifyOptions{
		Trust: trust, ProgressEvery: time.Nanosecond,
		Progress: func(blocks, _ uint64) { progress = append(progress, blocks) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) > 0 {
		t.Fatalf("clean chain: problems %v", rep.Problems)
	}
	st, ok := rep.Writers["gw-1"]
	if len(rep.Writers) != 1 || !ok || st.Events != 25 || st.Height != h.Height || st.Hash.String() != h.Hash {
		t.Fatalf("writers = %+v, want gw-1 with 25 events up to the local head %+v", rep.Writers, h)
	}
	if rep.Events != 25 || rep.Blocks != st.Blocks || rep.First.IsZero() || rep.Last.Before(rep.First) {
		t.Fatalf("report: %d blocks, %d events, %v … %v", rep.Blocks, rep.Events, rep.First, rep.Last)
	}
	if rep.Checkpoints != nil {
		t.Fatalf("checkpoints reported without checkpointer keys: %+v", rep.Checkpoints)
	}
	if len(progress) == 0 || progress[0] != 0 {
		t.Fatalf("progress %v, want a call per block from 0", progress)
	}
	for i := 1; i < len(progress); i++ {
		if progress[i] < progress[i-1] {
			t.Fatalf("progress goes back: %v", progress)
		}
	}
}

// publish stores msgs in a fresh chain stream, as a recorder (or an
// attacker with access to NATS) would.
func publish(t *testing.T, js jetstream.JetStream, msgs []*chain.Msg) {
	t.Helper()
	if _, err := chain.EnsureStream(t.Context(), js, 1); err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if _, err := js.Publish(t.Context(), m.Subject, m.Data, jetstream.WithMsgID(m.MsgID)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestVerifyStreamFindsTampering stores the genuine six-block chain, or a
// tampered copy, in JetStream and checks what VerifyStream reports: the
// first problem names the bad block, later ones are still found, and the
// signed checkpoints (in the stream or pinned) catch a truncation.
func TestVerifyStreamFindsTampering(t *testing.T) {
	signer, wk := newKey(t)
	genuine := genuineChain(t, signer)
	last, err := chain.ParseBlock(genuine[len(genuine)-1].Data)
	if err != nil {
		t.Fatal(err)
	}
	head := chain.Head{Writer: "gw-1", Height: last.Height, Hash: last.Hash.String()}
	acc := rootOf(t, genuine)
	cpk := keystest.NewCheckpointer(t, "checkpointer-1")
	all, err := chain.SignCheckpoint(acc.Size(), acc.Root(), cpk.Signer)
	if err != nil {
		t.Fatal(err)
	}
	forged, _ := chain.SignCheckpoint(acc.Size(), acc.Root(), keystest.NewCheckpointer(t, "checkpointer-1").Signer)

	edited := func() []*chain.Msg {
		out := copyMsgs(genuine)
		d := out[2].Data
		d[len(d)-30] ^= 0x01 // inside the last event of block 2
		return out
	}
	cases := []struct {
		name        string
		msgs        []*chain.Msg
		checkpoints bool   // trust pins the checkpointer key
		inStream    []byte // checkpoint published in the stream
		pinned      []byte // pinned checkpoint file's contents
		problems    int    // -1: at least one
		first       string // the first problem, as printed
		confirmed   int
		newest      int64
		err         string
		never       string // in no problem
	}{
		{name: "genuine", msgs: genuine},
		{name: "edited event byte", msgs: edited(), problems: -1,
			first: "sequence 3 (writer gw-1, block 2): events do not match the signed Merkle root"},
		{name: "truncated tail", msgs: genuine[:4], problems: 1,
			first: "writer gw-1: chain ends at block 3, but the local head is block 5: blocks 4..5 were truncated"},
		{name: "genuine, checkpoint in the stream", msgs: genuine, checkpoints: true, inStream: all.Note,
			confirmed: 1, newest: all.Size},
		{name: "edited event byte, checkpoint in the stream", msgs: edited(), checkpoints: true, inStream: all.Note,
			problems: 2, first: "sequence 3 (writer gw-1, block 2): events do not match the signed Merkle root", newest: all.Size,
			never: "truncated"},
		{name: "genuine, pinned checkpoint", msgs: genuine, checkpoints: true, pinned: all.Note,
			confirmed: 1, newest: all.Size},
		{name: "truncated behind the pinned checkpoint", msgs: genuine[:4], checkpoints: true, pinned: all.Note,
			problems: 2, first: "writer gw-1: chain ends at block 3", newest: all.Size},
		{name: "forged pinned checkpoint", msgs: genuine, checkpoints: true, pinned: forged.Note,
			err: "pinned checkpoint "},
		{name: "no pinned checkpoint file", msgs: genuine, checkpoints: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			js := newChain(t).js
			publish(t, js, tc.msgs)
			opts := chain.VerifyOptions{Trust: chain.Trust{Writers: map[string]chain.WriterKeys{"gw-1": wk},
				Heads: map[string]chain.Head{"gw-1": head}}}
			if tc.checkpoints {
				opts.Trust.Checkpointers = cpk.Verifiers()
				opts.PinnedCheckpoint = filepath.Join(t.TempDir(), "checkpoint.pinned")
			}
			if tc.inStream != nil {
				if err := chain.EnsureCheckpointStream(t.Context(), js, 1); err != nil {
					t.Fatal(err)
				}
				if _, err := js.Publish(t.Context(), "gridseal.checkpoint.checkpointer-1", tc.inStream); err != nil {
					t.Fatal(err)
				}
			}
			if tc.pinned != nil {
				if err := os.WriteFile(opts.PinnedCheckpoint, tc.pinned, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			rep, err := chain.VerifyStream(t.Context(), js, opts)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error = %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if n := len(rep.Problems); tc.problems == -1 && n == 0 || tc.problems >= 0 && n != tc.problems {
				t.Fatalf("%d problems, want %d: %v", n, tc.problems, rep.Problems)
			}
			if tc.first != "" && !strings.HasPrefix(rep.Problems[0].Error(), tc.first) {
				t.Fatalf("first problem = %v, want %q", rep.Problems[0], tc.first)
			}
			for _, p := range rep.Problems {
				if tc.never != "" && strings.Contains(p.Error(), tc.never) {
					t.Fatalf("problem %q says %q: %v", p, tc.never, rep.Problems)
				}
			}
			if !tc.checkpoints {
				if rep.Checkpoints != nil {
					t.Fatalf("checkpoints reported without checkpointer keys: %+v", rep.Checkpoints)
				}
				return
			}
			cp := rep.Checkpoints
			if cp == nil || cp.Confirmed != tc.confirmed || (cp.Newest == nil) != (tc.newest == 0) ||
				cp.Newest != nil && cp.Newest.Size != tc.newest {
				t.Fatalf("checkpoints = %+v, want %d confirmed, newest of size %d", cp, tc.confirmed, tc.newest)
			}
		})
	}
}

// TestVerifyStreamReportsEveryProblem: a bad block does not hide the
// blocks after it that are bad in themselves, and the blocks that only
// follow a bad one are counted in its problem, not each listed.
func TestVerifyStreamReportsEveryProblem(t *testing.T) {
	signer, wk := newKey(t)
	attacker, _ := newKey(t)
	msgs := genuineChain(t, signer)
	resign(t, msgs, 4, attacker)
	first := *msgs[1]
	first.Data = append([]byte(nil), msgs[1].Data...)
	first.Data[len(first.Data)-30] ^= 0x01
	msgs[1] = &first

	js := newChain(t).js
	publish(t, js, msgs)
	rep, err := chain.VerifyStream(t.Context(), js, chain.VerifyOptions{
		Trust: chain.Trust{Writers: map[string]chain.WriterKeys{"gw-1": wk}}})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range rep.Problems {
		got = append(got, fmt.Sprintf("%d+%d", p.Seq, p.Later))
	}
	if len(got) != 2 || got[0] != "2+2" || got[1] != "5+1" || !strings.Contains(rep.Problems[0].Reason, "Merkle root") ||
		!strings.Contains(rep.Problems[1].Reason, "not a pinned key") {
		t.Fatalf("problems (sequence+later blocks) %v: %v\nwant 2+2 (edited, then blocks 2 and 3 follow it), 5+1 (re-signed by another key, block 5 follows it)",
			got, rep.Problems)
	}
	if want := "and 2 later blocks not verified because they follow this one"; !strings.HasSuffix(rep.Problems[0].Error(), want) {
		t.Fatalf("first problem = %q, want it to end %q", rep.Problems[0], want)
	}
}

// TestVerifyStreamReportsTheBadBlockInAWindow: VerifyStream checks blocks
// on several goroutines at once, yet reports exactly what one block at a
// time does, in stream order. A large edited block in the middle of the
// blocks in flight takes far longer to check than the small ones after it
// (one re-signed by another key, one edited): it is still the first
// problem, and the later blocks are counted and reported as Verifier.Add
// reports them.
func TestVerifyStreamReportsTheBadBlockInAWindow(t *testing.T) {
	signer, wk := newKey(t)
	attacker, _ := newKey(t)
	msgs := blocksInMemory(t, signer, 30, 10_000, func(h uint64) uint64 {
		if h == 12 {
			return 4000 // under 1 MB, NATS's largest message
		}
		return 2
	})
	for _, i := range []int{12, 21} {
		msgs[i].Data[len(msgs[i].Data)-30] ^= 0x01 // inside the last event
	}
	resign(t, msgs, 14, attacker)
	trust := chain.Trust{Writers: map[string]chain.WriterKeys{"gw-1": wk}}
	var found []*chain.Problem
	v := chain.NewVerifier(trust)
	for _, m := range msgs {
		var p *chain.Problem
		if err := v.Add(m); errors.As(err, &p) {
			found = append(found, p)
		}
	}
	var want []string // once all are in: later blocks count in their Later
	for _, p := range found {
		want = append(want, p.Error())
	}
	if len(want) != 3 || !strings.HasPrefix(want[0], "sequence 13 (writer gw-1, block 12): events do not match the signed Merkle root") {
		t.Fatalf("one block at a time: %q, want sequences 13, 15 and 22, the edited block 12 first", want)
	}

	js := newChain(t).js
	publish(t, js, msgs)
	for range 3 {
		rep, err := chain.VerifyStream(t.Context(), js, chain.VerifyOptions{Trust: trust})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, p := range rep.Problems {
			got = append(got, p.Error())
		}
		if !slices.Equal(got, want) {
			t.Fatalf("VerifyStream reports\n  %s\nwant, as one block at a time,\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
		}
		if rep.Blocks != v.Blocks || rep.Events != v.Events {
			t.Fatalf("VerifyStream verified %d blocks, %d events; one block at a time %d, %d", rep.Blocks, rep.Events, v.Blocks, v.Events)
		}
	}
}

// TestVerifyStreamCheckpointAge: with a pinned checkpointer, an event
// stored longer ago than MaxCheckpointAge that no signed checkpoint covers
// fails verification; covered events, or the check off, do not.
func TestVerifyStreamCheckpointAge(t *testing.T) {
	signer, wk := newKey(t)
	genuine := genuineChain(t, signer) // six blocks of ten events
	cpk := keystest.NewCheckpointer(t, "checkpointer-1")
	signed := func(blocks int) []byte {
		acc := rootOf(t, genuine[:blocks])
		cp, err := chain.SignCheckpoint(acc.Size(), acc.Root(), cpk.Signer)
		if err != nil {
			t.Fatal(err)
		}
		return cp.Note
	}
	cases := []struct {
		name       string
		checkpoint []byte
		maxAge     time.Duration
		first      string // "": no problem
	}{
		{"no checkpoint", nil, time.Nanosecond,
			"sequence 1 (writer gw-1): recorded "},
		{"no checkpoint, check off", nil, 0, ""},
		{"no checkpoint, events younger", nil, time.Hour, ""},
		{"every event covered", signed(6), time.Nanosecond, ""},
		{"the last two blocks not covered", signed(4), time.Nanosecond,
			"sequence 5 (writer gw-1): recorded "},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			js := newChain(t).js
			publish(t, js, genuine)
			if err := chain.EnsureCheckpointStream(t.Context(), js, 1); err != nil {
				t.Fatal(err)
			}
			if tc.checkpoint != nil {
				if _, err := js.Publish(t.Context(), "gridseal.checkpoint.checkpointer-1", tc.checkpoint); err != nil {
					t.Fatal(err)
				}
			}
			rep, err := chain.VerifyStream(t.Context(), js, chain.VerifyOptions{MaxCheckpointAge: tc.maxAge,
				Trust: chain.Trust{Writers: map[string]chain.WriterKeys{"gw-1": wk}, Checkpointers: cpk.Verifiers()}})
			if err != nil {
				t.Fatal(err)
			}
			if tc.first == "" {
				if len(rep.Problems) > 0 {
					t.Fatalf("problems: %v", rep.Problems)
				}
				return
			}
			if len(rep.Problems) != 1 || !strings.HasPrefix(rep.Problems[0].Error(), tc.first) ||
				!strings.Contains(rep.Problems[0].Reason, "the checkpointer is not running or cannot publish") {
				t.Fatalf("problems: %v\nwant one starting %q", rep.Problems, tc.first)
			}
		})
	}
}

// TestReportText: chain verify's lines of a report — at most 20 problems
// and a count of the rest, the summary with checkpoints and cosignatures,
// a line per writer in id order saying whether a local head is kept.
func TestReportText(t *testing.T) {
	var problems []*chain.Problem
	for i := range 22 {
		problems = append(problems, &chain.Problem{Seq: uint64(i + 1), Reason: "bad signature"})
	}
	for _, tc := range []struct {
		name  string
		n     int
		lines int
		last  string
	}{{"one", 1, 1, "  problem 1: " + problems[0].Error()}, {"twenty", 20, 20, "  problem 20: " + problems[19].Error()}, {"22", 22, 21, "  … and 2 more"}} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			(&chain.Report{Problems: problems[:tc.n]}).WriteProblems(&b)
			lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
			if len(lines) != tc.lines || lines[len(lines)-1] != tc.last {
				t.Fatalf("%d lines, last %q; want %d, %q", len(lines), lines[len(lines)-1], tc.lines, tc.last)
			}
		})
	}
	first, last := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC), time.Date(2026, 11, 25, 13, 0, 0, 0, time.UTC)
	rep := &chain.Report{
		Writers: map[string]chain.WriterState{"gw-2": {Height: 3, Events: 7}, "gw-1": {Height: 9, Events: 40}},
		Blocks:  14, Events: 47, First: first, Last: last,
		Checkpoints: &chain.CheckpointReport{Confirmed: 4, Events: 47, Cosignatures: []chain.Cosignature{{Witness: "witness.test/w1", Time: last}}},
	}
	var b strings.Builder
	rep.WriteSummary(&b, 1234567*time.Microsecond)
	want := "chain OK: 2 writers, 14 blocks, 47 events, " + first.Format(time.RFC3339) + " … " + last.Format(time.RFC3339) + " (verified in 1.235s)\n" +
		"  checkpoints: 4 signed checkpoints match the stream (47 events in the tree)\n" +
		"  witness witness.test/w1 cosigned the newest checkpoint at 2026-11-25T13:00:00Z\n"
	if b.String() != want {
		t.Errorf("summary:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	(&chain.Report{Writers: map[string]chain.WriterState{}}).WriteSummary(&b, time.Millisecond)
	if want := "chain OK: 0 writers, 0 blocks, 0 events (verified in 1ms)\n"; b.String() != want {
		t.Errorf("empty chain's summary %q, want %q", b.String(), want)
	}
	b.Reset()
	rep.WriteWriters(&b, map[string]chain.Head{"gw-2": {Height: 3}})
	lines := strings.Split(b.String(), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "  writer gw-1             blocks 0..9  events 40  last hash ") ||
		!strings.HasSuffix(lines[0], "(no local head)") || !strings.HasSuffix(lines[1], "(local head 3 present)") {
		t.Errorf("writers:\n%s", b.String())
	}
}
