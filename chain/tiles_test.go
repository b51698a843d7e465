package chain_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/chaintest"
	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/internal/testwait"
)

func TestTilePaths(t *testing.T) {
	for _, tc := range []struct {
		name string
		tile tlog.Tile
		path string
	}{
		{"first full tile", tlog.Tile{L: 0, N: 0, W: 256}, "tile/0/000"},
		{"3-digit groups with x", tlog.Tile{L: 0, N: 1234067, W: 256}, "tile/0/x001/x234/067"},
		{"partial", tlog.Tile{L: 1, N: 1234, W: 5}, "tile/1/x001/234.p/5"},
		{"entry bundle", tlog.Tile{L: -1, N: 1234, W: 256}, "tile/entries/x001/234"},
		{"partial entry bundle", tlog.Tile{L: -1, N: 0, W: 255}, "tile/entries/000.p/255"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := chain.TilePath(tc.tile); got != tc.path {
				t.Fatalf("TilePath = %q, want %q", got, tc.path)
			}
			got, err := chain.ParseTilePath(tc.path)
			if err != nil || got.L != tc.tile.L || got.N != tc.tile.N || got.W != tc.tile.W {
				t.Fatalf("ParseTilePath = %+v, %v", got, err)
			}
		})
	}
	for _, bad := range []string{"tile/0/1234", "tile/0/x001/x234", "tile/0/0000", "tile/0/000.p/0", "tile/0/000.p/256",
		"tile/0/000.p/05", "tile/64/000", "tile/data/000", "tile/8/0/000", "tile/entries/x000/001", "tile/00/000", "checkpoint", "tile/-1/000"} {
		t.Run("refuses "+bad, func(t *testing.T) {
			if tl, err := chain.ParseTilePath(bad); err == nil {
				t.Fatalf("ParseTilePath(%q) = %+v, want an error", bad, tl)
			}
		})
	}
}

// placed is where an event sits: its block's sequence, its index there.
type placed struct {
	seq   uint64
	index int
}

func blockMsg(t testing.TB, s *keys.Signer, height uint64, events [][]byte) []byte {
	t.Helper()
	msg, _, err := chain.EncodeBlock("gw-1", s, height, chain.GenesisPrev("gw-1"), time.Unix(1764072000, 0), events)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// TestTilerMatchesTree: tiles appended block by block (messages that are
// not blocks among them) give the roots, leaf positions, entries and
// checkable proofs of the in-memory tree, at every size they reach; a
// reopened tiler continues where the last one closed.
func TestTilerMatchesTree(t *testing.T) {
	dir := t.TempDir()
	signer, _ := newKey(t)
	tl := chaintest.OpenTiler(t, dir)
	var tree chain.Tree
	var where []placed
	var events [][]byte
	rng := rand.New(rand.NewPCG(3, 4))
	seq := uint64(0)
	for b := 0; len(events) < 70_000; b++ {
		seq++
		if b%17 == 5 { // not a block: no leaves
			if err := tl.Append(seq, []byte("junk")); err != nil {
				t.Fatal(err)
			}
			continue
		}
		n := 1 + rng.IntN(600)
		var evs [][]byte
		for i := range n {
			e := fmt.Appendf(nil, "event %d of block %d", i, seq)
			evs = append(evs, e)
			where = append(where, placed{seq, i})
		}
		events = append(events, evs...)
		if err := tl.Append(seq, blockMsg(t, signer, uint64(b), evs)); err != nil {
			t.Fatal(err)
		}
		if err := tree.AppendBlock(seq, evs); err != nil {
			t.Fatal(err)
		}
		if b == 40 { // reopen midway
			if err := tl.Close(); err != nil {
				t.Fatal(err)
			}
			tl = chaintest.OpenTiler(t, dir)
			if tl.Size() != tree.Size() {
				t.Fatalf("reopened at %d leaves, want %d", tl.Size(), tree.Size())
			}
		}
	}
	if err := tl.Close(); err != nil {
		t.Fatal(err)
	}
	ts := chaintest.OpenTiles(t, dir)
	size := int64(len(events))
	if ts.Size() != size {
		t.Fatalf("tiles hold %d leaves, want %d", ts.Size(), size)
	}
	for _, n := range []int64{1, 2, 255, 256, 257, 65535, 65536, 65537, size - 1, size} {
		got, err1 := ts.Root(n)
		want, err2 := tree.Root(n)
		if err1 != nil || err2 != nil || got != want {
			t.Fatalf("root at %d: %s, want %s (%v %v)", n, got, want, err1, err2)
		}
	}
	for k := 0; k < 200; k++ {
		i := rng.Int64N(size)
		if k == 0 {
			i = size - 1
		}
		leaf, err := ts.LeafOf(where[i].seq, where[i].index)
		if err != nil || leaf != i {
			t.Fatalf("LeafOf(%d, %d) = %d, %v; want %d", where[i].seq, where[i].index, leaf, err, i)
		}
		e, err := ts.Entry(i)
		if err != nil || string(e) != string(events[i]) {
			t.Fatalf("entry %d = %q, %v", i, e, err)
		}
		n := i + 1 + rng.Int64N(size-i)
		p, err := ts.ProveInclusion(i, n)
		if err != nil {
			t.Fatal(err)
		}
		root, _ := tree.Root(n)
		if err := chain.CheckInclusion(p, n, root, i, chain.LeafHash(events[i])); err != nil {
			t.Fatalf("inclusion of %d in %d: %v", i, n, err)
		}
	}
	if leaf, err := ts.LeafOf(where[len(where)-1].seq, where[len(where)-1].index+1); err != nil || leaf != -1 {
		t.Fatalf("an event past its block's end: leaf %d, %v", leaf, err)
	}
	if leaf, err := ts.LeafOf(6, 0); err != nil || leaf != -1 { // sequence 6 is junk
		t.Fatalf("a message that is not a block: leaf %d, %v", leaf, err)
	}
}

// publishBlocks appends blocks of the given sizes to the chain stream
// directly (no recorder), with op numbers from op on.
func publishBlocks(t testing.TB, js jetstream.JetStream, s *keys.Signer, height uint64, prev chain.Hash, op uint64, sizes ...int) (uint64, chain.Hash, uint64) {
	t.Helper()
	if _, err := chain.EnsureStream(t.Context(), js, 1); err != nil {
		t.Fatal(err)
	}
	for _, n := range sizes {
		evs := make([][]byte, n)
		for i := range evs {
			evs[i] = chain.AppendEvent(nil, event(op, audit.Allow))
			op++
		}
		msg, hash, err := chain.EncodeBlock("gw-1", s, height, prev, time.Now(), evs)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.Publish(t.Context(), chain.Subject("gw-1"), msg, jetstream.WithMsgID(hash.String())); err != nil {
			t.Fatal(err)
		}
		height, prev = height+1, hash
	}
	return height, prev, op
}

func runTiler(t *testing.T, tl *chain.Tiler, js jetstream.JetStream) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- tl.Run(ctx, js) }()
	return func() error {
		cancel()
		return <-done
	}
}

// TestTilerFollowsAndRestarts: the tiler follows a real stream as blocks
// land; stopped and opened again it reads only the blocks that came since,
// and its tiles have the root a checkpointer signed over the whole stream.
func TestTilerFollowsAndRestarts(t *testing.T) {
	srv := natstest.RunJetStream(t)
	js := jsOf(t, natstest.Connect(t, srv.URL()))
	signer, _ := newKey(t)
	dir := t.TempDir()
	h, prev, op := publishBlocks(t, js, signer, 0, chain.GenesisPrev("gw-1"), 0, 700, 300, 1, 1000)
	tl := chaintest.OpenTiler(t, dir)
	stop := runTiler(t, tl, js)
	testwait.For(t, "2001 events tiled", func() bool { return tl.Size() == 2001 })
	h, prev, op = publishBlocks(t, js, signer, h, prev, op, 50, 49) // while it follows
	testwait.For(t, "2100 events tiled", func() bool { return tl.Size() == 2100 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if err := tl.Close(); err != nil {
		t.Fatal(err)
	}
	if tl.Read() != 6 {
		t.Fatalf("read %d messages, want 6", tl.Read())
	}
	_, _, _ = publishBlocks(t, js, signer, h, prev, op, 900, 1, 99)
	tl = chaintest.OpenTiler(t, dir)
	stop = runTiler(t, tl, js)
	testwait.For(t, "3100 events tiled", func() bool { return tl.Size() == 3100 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	_ = tl.Close()
	if tl.Read() != 3 {
		t.Fatalf("the restarted tiler read %d messages, want the 3 new ones", tl.Read())
	}
	var acc chain.RootAcc
	for _, m := range readAll(t, natstest.Connect(t, srv.URL())) {
		b, _ := chain.ParseBlock(m.Data)
		for _, e := range b.Events {
			acc.Append(chain.LeafHash(e))
		}
	}
	if root, err := tl.Tiles().Root(3100); err != nil || root != acc.Root() {
		t.Fatalf("tiles' root %s, stream's %s (%v)", root, acc.Root(), err)
	}
}

// TestTilerRefusesAnotherStream: tiles made from one stream are not
// continued on a stream that no longer holds the message last tiled (the
// chain deleted and recreated with other blocks): Run fails with
// ErrTilesMismatch, for good.
func TestTilerRefusesAnotherStream(t *testing.T) {
	srv := natstest.RunJetStream(t)
	js := jsOf(t, natstest.Connect(t, srv.URL()))
	signer, _ := newKey(t)
	dir := t.TempDir()
	publishBlocks(t, js, signer, 0, chain.GenesisPrev("gw-1"), 0, 10, 10, 10)
	tl := chaintest.OpenTiler(t, dir)
	stop := runTiler(t, tl, js)
	testwait.For(t, "30 events tiled", func() bool { return tl.Size() == 30 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	_ = tl.Close()
	if err := js.DeleteStream(t.Context(), chain.StreamName); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		sizes []int
	}{
		{"shorter", []int{10, 10}},
		{"same length, other events", []int{1}}, // with the 2 above: 3 messages, the third other
	} {
		t.Run(tc.name, func(t *testing.T) {
			publishBlocks(t, js, signer, 0, chain.GenesisPrev("gw-1"), 1000, tc.sizes...)
			tl := chaintest.OpenTiler(t, dir)
			defer func() { _ = tl.Close() }()
			err := tl.Run(t.Context(), js)
			if !errors.Is(err, chain.ErrTilesMismatch) || !errors.Is(tl.Err(), chain.ErrTilesMismatch) {
				t.Fatalf("Run = %v, Err = %v; want ErrTilesMismatch", err, tl.Err())
			}
			if tl.Size() != 30 {
				t.Fatalf("tiles changed: %d leaves", tl.Size())
			}
		})
	}
}

// TestTilerRebuildsLostTiles: hashes the state covers lost (a level's
// file cut short) make the tiler start over from the stream, not serve a
// tree the state does not describe.
func TestTilerRebuildsLostTiles(t *testing.T) {
	srv := natstest.RunJetStream(t)
	js := jsOf(t, natstest.Connect(t, srv.URL()))
	signer, _ := newKey(t)
	dir := t.TempDir()
	publishBlocks(t, js, signer, 0, chain.GenesisPrev("gw-1"), 0, 300, 5)
	tl := chaintest.OpenTiler(t, dir)
	stop := runTiler(t, tl, js)
	testwait.For(t, "305 events tiled", func() bool { return tl.Size() == 305 })
	_ = stop()
	_ = tl.Close()
	want, _ := tl.Tiles().Root(305)
	if err := os.Truncate(filepath.Join(dir, "hashes.0"), 32*300); err != nil {
		t.Fatal(err)
	}
	tl = chaintest.OpenTiler(t, dir)
	if tl.Size() != 0 {
		t.Fatalf("continued from %d leaves without their tile", tl.Size())
	}
	stop = runTiler(t, tl, js)
	testwait.For(t, "305 events tiled again", func() bool { return tl.Size() == 305 })
	_ = stop()
	_ = tl.Close()
	if got, err := tl.Tiles().Root(305); err != nil || got != want {
		t.Fatalf("rebuilt root %s, want %s (%v)", got, want, err)
	}
}

// TestTilerCutsWhatACrashLeftPastTheState: each file is appended to and
// fsync'd before the state that covers it, so a crash may leave any of
// them longer than the state says, the excess torn; the tiler cuts it off,
// goes on from the state, and serves the tree the stream holds.
func TestTilerCutsWhatACrashLeftPastTheState(t *testing.T) {
	srv := natstest.RunJetStream(t)
	js := jsOf(t, natstest.Connect(t, srv.URL()))
	signer, _ := newKey(t)
	dir := t.TempDir()
	height, prev, op := publishBlocks(t, js, signer, 0, chain.GenesisPrev("gw-1"), 0, 300, 5)
	tl := chaintest.OpenTiler(t, dir)
	stop := runTiler(t, tl, js)
	testwait.For(t, "305 events tiled", func() bool { return tl.Size() == 305 })
	_ = stop()
	_ = tl.Close()
	// What a crash after the next flush's writes, before its state, may
	// leave: every file longer, its tail torn; a level begun above.
	for name, tail := range map[string][]byte{"hashes.0": {1, 2, 3}, "hashes.1": make([]byte, 40), "hashes.2": {9},
		"entries": {0, 7, 1}, "entries.index": {0, 0, 0, 0, 0, 0, 0x30}, "blocks": {1}} {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(tail); err != nil {
			t.Fatal(err)
		}
		_ = f.Close()
	}
	publishBlocks(t, js, signer, height, prev, op, 250, 50)
	tl = chaintest.OpenTiler(t, dir)
	if tl.Size() != 305 {
		t.Fatalf("reopened at %d leaves, want the state's 305", tl.Size())
	}
	stop = runTiler(t, tl, js)
	testwait.For(t, "605 events tiled", func() bool { return tl.Size() == 605 || tl.Err() != nil })
	_ = stop()
	_ = tl.Close()
	if tl.Err() != nil {
		t.Fatalf("tiler stopped: %v", tl.Err())
	}
	fresh := chaintest.OpenTiler(t, t.TempDir())
	stop = runTiler(t, fresh, js)
	testwait.For(t, "605 events tiled afresh", func() bool { return fresh.Size() == 605 })
	_ = stop()
	_ = fresh.Close()
	want, _ := fresh.Tiles().Root(605)
	if got, err := tl.Tiles().Root(605); err != nil || got != want {
		t.Fatalf("root %s after the cut, want %s (%v)", got, want, err)
	}
	for _, name := range []string{"hashes.0", "hashes.1", "entries", "entries.index", "blocks"} {
		a, _ := os.ReadFile(filepath.Join(dir, name))
		b, _ := os.ReadFile(filepath.Join(fresh.Tiles().Dir(), name))
		if len(a) == 0 || string(a) != string(b) {
			t.Fatalf("%s holds %d bytes, not the %d of the stream's", name, len(a), len(b))
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "hashes.2")); err == nil {
		t.Fatal("hashes.2, a level the tree does not reach, is still there")
	}
}

// FuzzParseTilePath: a path from the network parses only if it is the one
// spelling TilePath writes.
func FuzzParseTilePath(f *testing.F) {
	for _, s := range []string{"tile/0/x001/x234/067", "tile/1/000.p/5", "tile/entries/x001/234.p/255", "tile/0/0000"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		tl, err := chain.ParseTilePath(p)
		if err == nil && chain.TilePath(tl) != p {
			t.Fatalf("%q parsed as %+v, written %q", p, tl, chain.TilePath(tl))
		}
	})
}

// TestTilerContinuesAfterAKill: a process killed between a tile's
// completion and the next flush (no Close, no crash of the disk) leaves
// the state at the last flush; the tiler opens there, from the partial
// tile the state names, instead of rebuilding every tile.
func TestTilerContinuesAfterAKill(t *testing.T) {
	signer, _ := newKey(t)
	dir := t.TempDir()
	tl := chaintest.OpenTiler(t, dir)
	prev, op := chain.GenesisPrev("gw-1"), uint64(0)
	block := func(seq uint64, n int) {
		evs := make([][]byte, n)
		for i := range evs {
			evs[i] = chain.AppendEvent(nil, event(op, audit.Allow))
			op++
		}
		msg, hash, err := chain.EncodeBlock("gw-1", signer, seq-1, prev, time.Now(), evs)
		if err != nil {
			t.Fatal(err)
		}
		if err := tl.Append(seq, msg); err != nil {
			t.Fatal(err)
		}
		prev = hash
	}
	block(1, 305)
	if err := tl.Flush(); err != nil {
		t.Fatal(err)
	}
	block(2, 300) // completes the tiles that reach 512 leaves, not flushed
	// Killed here: reopen without Close.
	again := chaintest.OpenTiler(t, dir)
	defer func() { _ = again.Close() }()
	if again.Size() != 305 {
		t.Fatalf("reopened at %d leaves, want the flushed 305", again.Size())
	}
}

// TestTilerRebuildsWhatItCannotTrust: a directory of the first format (a
// file per tile), or a state whose entries' length the files do not bear
// out, is tiled again from the stream — and what else the directory holds
// stays.
func TestTilerRebuildsWhatItCannotTrust(t *testing.T) {
	srv := natstest.RunJetStream(t)
	js := jsOf(t, natstest.Connect(t, srv.URL()))
	signer, _ := newKey(t)
	publishBlocks(t, js, signer, 0, chain.GenesisPrev("gw-1"), 0, 300, 5)
	tileAll := func(dir string) *chain.Tiler {
		tl := chaintest.OpenTiler(t, dir)
		stop := runTiler(t, tl, js)
		testwait.For(t, "305 events tiled", func() bool { return tl.Size() == 305 })
		_ = stop()
		_ = tl.Close()
		return tl
	}
	want, _ := tileAll(t.TempDir()).Tiles().Root(305)
	for name, spoil := range map[string]func(dir string) error{
		"first format": func(dir string) error {
			if err := os.MkdirAll(filepath.Join(dir, "tile", "0"), 0o700); err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(dir, "tile", "0", "000"), make([]byte, 8192), 0o644); err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dir, "state"), []byte(`{"format":"gridseal-tiles-v1","origin":"`+chain.CheckpointOrigin+`","size":256}`), 0o644)
		},
		"entries' length off": func(dir string) error {
			tileAll(dir)
			b, err := os.ReadFile(filepath.Join(dir, "state"))
			if err != nil {
				return err
			}
			var st map[string]any
			if err := json.Unmarshal(b, &st); err != nil {
				return err
			}
			st["entries"] = st["entries"].(float64) - 1
			b, _ = json.Marshal(st)
			return os.WriteFile(filepath.Join(dir, "state"), b, 0o644)
		},
		"blocks index short": func(dir string) error {
			tileAll(dir)
			return os.Truncate(filepath.Join(dir, "blocks"), 16)
		},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := spoil(dir); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "hashes.txt"), []byte("mine"), 0o644); err != nil {
				t.Fatal(err)
			}
			tl := chaintest.OpenTiler(t, dir)
			if tl.Size() != 0 {
				t.Fatalf("continued from %d leaves", tl.Size())
			}
			_ = tl.Close()
			if got, err := tileAll(dir).Tiles().Root(305); err != nil || got != want {
				t.Fatalf("root %s, want %s (%v)", got, want, err)
			}
			if _, err := os.Stat(filepath.Join(dir, "tile")); err == nil {
				t.Fatal("the first format's tile directory is still there")
			}
			if b, err := os.ReadFile(filepath.Join(dir, "hashes.txt")); err != nil || string(b) != "mine" {
				t.Fatalf("a file not the tiler's: %q, %v", b, err)
			}
		})
	}
}
