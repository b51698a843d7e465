package chain

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/gridseal/gridseal/internal/atomicfile"
)

// Tiler follows the chain stream, as the checkpointer does, and extends
// the tiles in its directory as blocks land: each completed tile is
// written once, the partial ones as they grow, and at each flush the
// completed tiles are fsync'd together and the state written last, so a
// restart goes on from the last message tiled without reading the stream
// before it. Tiles a crash left inconsistent (a partial tile
// not on disk, a root that does not match the state) are rebuilt from the
// stream; a stream that no longer holds the message last tiled is
// ErrTilesMismatch, and the tiler stops.
//
// One Tiler writes a directory at a time (the console's process owns it);
// Tiles reads it meanwhile.
type Tiler struct {
	dir   string
	log   *zap.Logger
	tiles *Tiles

	mu sync.Mutex // guards flushed
	// flushed is the state as last written: what readers of the
	// directory see.
	flushed tilesState

	n       int64  // leaves appended
	seq     uint64 // last message appended
	msgHash Hash   // SHA-256 of its data
	nblocks int64  // blocks index records
	levels  [][]Hash
	written []int // per level: width of the partial tile last written
	bundle  []byte
	bundleN int
	bundleW int // width of the partial bundle last written
	blocks  *os.File
	dirty   bool
	// full holds the completed tiles written since the last flush, made
	// durable (together: one fsync each at a time the disk is quiet, not
	// one between every two writes) before the state that covers them.
	full atomicfile.Batch
	// covered are the partial tiles' directories of the completed tiles
	// written since the last flush, removed once the state covers them.
	covered []string

	read atomic.Int64 // stream messages read by Run
	err  atomic.Pointer[error]
}

// tilerFlushEvery bounds how long tiles lag the stream while blocks land,
// and tilerFlushLeaves how many leaves the tiler appends between writes of
// the partial tiles and the state.
const (
	tilerFlushEvery  = 200 * time.Millisecond
	tilerFlushLeaves = 4096
)

// OpenTiler opens the tiles in dir (created if missing) to extend them.
// Tiles it cannot continue from — no state, or a state the tiles do not
// match — are removed, and Run then tiles the stream from its start.
func OpenTiler(dir string, log *zap.Logger) (*Tiler, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("tiles: %w", err)
	}
	t := &Tiler{dir: dir, log: log, tiles: &Tiles{dir: dir}}
	if err := t.load(); err != nil {
		log.Warn("tiles cannot be continued; rebuilding them from the stream", zap.String("dir", dir), zap.Error(err))
		if err := t.reset(); err != nil {
			return nil, err
		}
	}
	f, err := os.OpenFile(filepath.Join(dir, "blocks"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("tiles: %w", err)
	}
	if err := f.Truncate(16 * t.nblocks); err != nil { // records past the state: a crash before it
		_ = f.Close()
		return nil, fmt.Errorf("tiles: %w", err)
	}
	t.blocks = f
	if _, err := t.tiles.state(); err != nil { // a new directory: readers see an empty tree
		t.dirty = true
		if err := t.Flush(); err != nil {
			_ = f.Close()
			return nil, err
		}
	}
	return t, nil
}

// load restores the tiler from the state file and the partial tiles.
func (t *Tiler) load() error {
	st, err := t.tiles.state()
	if errors.Is(err, os.ErrNotExist) {
		return t.resetIfLeftovers()
	}
	if err != nil {
		return err
	}
	root, err := rootHex(st.Root)
	if err != nil {
		return err
	}
	n := st.Size
	if err := t.removeFullBeyond(n); err != nil {
		return err
	}
	for l := 0; n>>(TileHeight*l) > 0; l++ {
		count := n >> (TileHeight * l)
		var hs []Hash
		if w := int(count % tileWidth); w > 0 {
			data, err := t.tiles.ReadTile(tlog.Tile{L: l, N: count / tileWidth, W: w})
			if err != nil {
				return err
			}
			for i := 0; i < w; i++ {
				hs = append(hs, Hash(data[32*i:32*i+32]))
			}
		}
		t.levels = append(t.levels, hs)
		t.written = append(t.written, len(hs))
	}
	if w := int(n % tileWidth); w > 0 {
		data, err := t.tiles.ReadTile(tlog.Tile{L: -1, N: n / tileWidth, W: w})
		if err != nil {
			return err
		}
		t.bundle, t.bundleN, t.bundleW = append([]byte(nil), data...), w, w
	}
	if got, err := t.tiles.Root(n); err != nil || got != root {
		return fmt.Errorf("the tiles' root at %d is not the state's (%v)", n, err)
	}
	var msg Hash
	if b, err := hex.DecodeString(st.Msg); err == nil && len(b) == 32 {
		copy(msg[:], b)
	} else if st.Seq > 0 {
		return fmt.Errorf("%w: state message hash %q", ErrFormat, st.Msg)
	}
	t.n, t.seq, t.msgHash, t.nblocks, t.flushed = n, st.Seq, msg, st.Blocks, st
	return nil
}

func (t *Tiler) resetIfLeftovers() error {
	for _, name := range []string{"tile", "blocks"} {
		if _, err := os.Stat(filepath.Join(t.dir, name)); err == nil {
			return errors.New("tiles without a state file")
		}
	}
	t.flushed = t.emptyState()
	return nil
}

func (t *Tiler) emptyState() tilesState {
	return tilesState{Format: tilesFormat, Origin: CheckpointOrigin, Root: MerkleRoot(nil).String()}
}

// reset removes the tiler's files from its directory (nothing else) and
// starts over from an empty tree.
func (t *Tiler) reset() error {
	for _, name := range []string{"state", "tile", "blocks"} {
		if err := os.RemoveAll(filepath.Join(t.dir, name)); err != nil {
			return fmt.Errorf("tiles: %w", err)
		}
	}
	*t = Tiler{dir: t.dir, log: t.log, tiles: t.tiles, flushed: t.emptyState()}
	return nil
}

// Close writes what was appended and releases the blocks index.
func (t *Tiler) Close() error {
	err := t.Flush()
	if t.blocks != nil {
		err = errors.Join(err, t.blocks.Close())
		t.blocks = nil
	}
	return err
}

// Tiles reads the tiler's directory.
func (t *Tiler) Tiles() *Tiles { return t.tiles }

// Size is the number of leaves readers of the directory see.
func (t *Tiler) Size() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.flushed.Size
}

// Read is how many stream messages Run has read, in all.
func (t *Tiler) Read() int64 { return t.read.Load() }

// Err is why the tiler stopped for good (ErrTilesMismatch), or nil.
func (t *Tiler) Err() error {
	if p := t.err.Load(); p != nil {
		return *p
	}
	return nil
}

// Run follows the stream from the message after the last tiled until ctx
// ends (nil), the stream cannot be read (that error: call Run again), or
// the stream does not hold what was tiled (ErrTilesMismatch: the tiler
// stops for good, and Err says so from then on).
func (t *Tiler) Run(ctx context.Context, js jetstream.JetStream) (err error) {
	if err := t.Err(); err != nil {
		return err
	}
	parent := ctx
	defer func() {
		if ferr := t.Flush(); err == nil && parent.Err() == nil {
			err = ferr
		}
		if errors.Is(err, ErrTilesMismatch) {
			t.err.Store(&err)
			t.log.Error("tiles stopped: the stream does not hold what they were made from; they are not served", zap.Error(err))
		}
		if parent.Err() != nil && !errors.Is(err, ErrTilesMismatch) {
			err = nil
		}
	}()
	if t.seq > 0 {
		s, err := js.Stream(ctx, StreamName)
		if err != nil {
			return fmt.Errorf("chain stream %s: %w", StreamName, err)
		}
		m, err := s.GetMsg(ctx, t.seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("%w: the stream has no message %d, the last tiled", ErrTilesMismatch, t.seq)
		}
		if err != nil {
			return fmt.Errorf("read chain sequence %d: %w", t.seq, err)
		}
		if sha256.Sum256(m.Data) != t.msgHash {
			return fmt.Errorf("%w: message %d of the stream is not the one tiled", ErrTilesMismatch, t.seq)
		}
	}
	msgs, errc, stop := followStream(ctx, js, t.seq+1, 256)
	defer stop()
	tick := time.NewTicker(tilerFlushEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			if err == nil {
				err = errors.New("the chain stream's scan ended")
			}
			return err
		case <-tick.C:
			if err := t.Flush(); err != nil {
				return err
			}
		case m := <-msgs:
			t.read.Add(1)
			if err := t.Append(m.Seq, m.Data); err != nil {
				return err
			}
			if t.n-t.Size() >= tilerFlushLeaves {
				if err := t.Flush(); err != nil {
					return err
				}
			}
		}
	}
}

// Append tiles the stream message at seq (its events, if it is a block;
// a message that is not a block has no leaves). Sequences must follow one
// another; Run calls it, and benchmarks and tools that tile without a
// stream. What it appends is on disk after the next Flush (Close, or Run's
// next tick).
func (t *Tiler) Append(seq uint64, data []byte) error {
	if seq != t.seq+1 {
		return fmt.Errorf("tiles: message %d after %d", seq, t.seq)
	}
	if b, err := ParseBlock(data); err == nil {
		for i, e := range b.Events {
			if len(e) > maxEntry {
				return fmt.Errorf("tiles: event %d of the block at sequence %d has %d bytes; an entry bundle holds at most %d", i, seq, len(e), maxEntry)
			}
		}
		var rec [16]byte
		binary.BigEndian.PutUint64(rec[:8], seq)
		binary.BigEndian.PutUint64(rec[8:], uint64(t.n))
		if _, err := t.blocks.WriteAt(rec[:], 16*t.nblocks); err != nil {
			return fmt.Errorf("tiles blocks index: %w", err)
		}
		t.nblocks++
		for _, e := range b.Events {
			if err := t.appendLeaf(e); err != nil {
				return err
			}
		}
	}
	t.seq, t.msgHash, t.dirty = seq, sha256.Sum256(data), true
	return nil
}

func (t *Tiler) appendLeaf(e []byte) error {
	t.bundle = binary.BigEndian.AppendUint16(t.bundle, uint16(len(e)))
	t.bundle = append(t.bundle, e...)
	t.bundleN++
	if t.bundleN == tileWidth {
		if err := t.writeFull(tlog.Tile{L: -1, N: t.n / tileWidth, W: tileWidth}, t.bundle); err != nil {
			return err
		}
		t.bundle, t.bundleN, t.bundleW = t.bundle[:0], 0, 0
	}
	t.n++
	return t.addHash(0, LeafHash(e))
}

// addHash adds h, the hash of a full subtree of 256^l leaves, to level l's
// partial tile; a tile it completes is written and its root goes up.
func (t *Tiler) addHash(l int, h Hash) error {
	if l == len(t.levels) {
		t.levels = append(t.levels, nil)
		t.written = append(t.written, 0)
	}
	t.levels[l] = append(t.levels[l], h)
	if len(t.levels[l]) < tileWidth {
		return nil
	}
	count := t.n >> (TileHeight * l) // hashes at level l, this one included
	data := make([]byte, 0, 32*tileWidth)
	for _, x := range t.levels[l] {
		data = append(data, x[:]...)
	}
	if err := t.writeFull(tlog.Tile{L: l, N: count/tileWidth - 1, W: tileWidth}, data); err != nil {
		return err
	}
	root := MerkleRoot(t.levels[l]) // 256: a perfect tree; reuses the slice
	t.levels[l], t.written[l] = t.levels[l][:0], 0
	return t.addHash(l+1, root)
}

// writeFull writes a completed tile, once: one already there must hold the
// same bytes (a restart after a crash writes it again).
func (t *Tiler) writeFull(tile tlog.Tile, data []byte) error {
	path := filepath.Join(t.dir, filepath.FromSlash(TilePath(tile)))
	if old, err := os.ReadFile(path); err == nil {
		if string(old) != string(data) {
			return fmt.Errorf("%w: full tile %s differs from the one written before", ErrTilesMismatch, TilePath(tile))
		}
	} else if err := t.full.Write(path, data, 0o644); err != nil {
		return fmt.Errorf("tiles: %w", err)
	}
	// Its partials go once a state covers it: until then a restart
	// continues from them (and removes this tile, see removeFullBeyond).
	t.covered = append(t.covered, path+".p")
	return nil
}

// writePartial replaces tile's partial with one w wide, and removes the
// narrower ones (readers take a prefix of the widest).
func (t *Tiler) writePartial(tile tlog.Tile, data []byte, old int) error {
	full := filepath.Join(t.dir, filepath.FromSlash(TilePath(tlog.Tile{L: tile.L, N: tile.N, W: tileWidth})))
	dir := full + ".p"
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("tiles: %w", err)
	}
	path := filepath.Join(dir, strconv.Itoa(tile.W))
	// Not fsync'd: the state's root is checked against the partial tiles
	// when the tiler opens them, and they are rebuilt if a crash lost one.
	if err := os.WriteFile(path+".tmp", data, 0o644); err != nil {
		return fmt.Errorf("tiles: %w", err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return fmt.Errorf("tiles: %w", err)
	}
	if old > 0 && old != tile.W {
		_ = os.Remove(filepath.Join(dir, strconv.Itoa(old)))
	}
	return nil
}

// Flush writes the partial tiles that grew, then the state: from then on
// readers see the tiles at the new size. Run flushes on its own.
func (t *Tiler) Flush() error {
	if !t.dirty {
		return nil
	}
	if err := t.blocks.Sync(); err != nil {
		return fmt.Errorf("tiles blocks index: %w", err)
	}
	for l, hs := range t.levels {
		if len(hs) == 0 || len(hs) == t.written[l] {
			continue
		}
		count := t.n >> (TileHeight * l)
		data := make([]byte, 0, 32*len(hs))
		for _, x := range hs {
			data = append(data, x[:]...)
		}
		if err := t.writePartial(tlog.Tile{L: l, N: count / tileWidth, W: len(hs)}, data, t.written[l]); err != nil {
			return err
		}
		t.written[l] = len(hs)
	}
	if t.bundleN > 0 && t.bundleN != t.bundleW {
		if err := t.writePartial(tlog.Tile{L: -1, N: t.n / tileWidth, W: t.bundleN}, t.bundle, t.bundleW); err != nil {
			return err
		}
		t.bundleW = t.bundleN
	}
	root, err := t.tiles.Root(t.n)
	if err != nil {
		return fmt.Errorf("tiles: root at %d: %w", t.n, err)
	}
	if err := t.full.Sync(); err != nil {
		return fmt.Errorf("tiles: %w", err)
	}
	st := tilesState{Format: tilesFormat, Origin: CheckpointOrigin, Size: t.n, Root: root.String(),
		Seq: t.seq, Msg: t.msgHash.String(), Blocks: t.nblocks}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(t.dir, "state"), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("tiles: %w", err)
	}
	t.mu.Lock()
	t.flushed = st
	t.mu.Unlock()
	t.dirty = false
	for _, dir := range t.covered {
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("tiles: %w", err)
		}
	}
	t.covered = t.covered[:0]
	return nil
}

// removeFullBeyond removes the completed tiles a tree of n leaves does not
// reach: written after the state of size n, they were not yet fsync'd, so
// a crash may have cut them short. They are written again as the tree
// grows past them.
func (t *Tiler) removeFullBeyond(n int64) error {
	for l := -1; l < 8; l++ { // 256^9 leaves: more than a chain holds
		count := n >> (TileHeight * max(l, 0)) // leaves, or hashes at level l
		for i := count / tileWidth; ; i++ {
			path := filepath.Join(t.dir, filepath.FromSlash(TilePath(tlog.Tile{L: l, N: i, W: tileWidth})))
			err := os.Remove(path)
			if errors.Is(err, os.ErrNotExist) {
				break // written in order: none further
			}
			if err != nil {
				return fmt.Errorf("tiles: %w", err)
			}
		}
	}
	return nil
}
