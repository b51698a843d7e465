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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/gridseal/gridseal/internal/atomicfile"
)

// Tiler follows the chain stream, as the checkpointer does, and extends
// the tiles in its directory as blocks land: hashes, entries and the
// blocks index are appended to their files, and at each flush every file
// that grew is fsync'd once and the state written last, so a restart goes
// on from the last message tiled without reading the stream before it.
// At open the files are cut back to what the state covers (a crash may
// have left more, or torn); tiles that cannot give the state's root are
// rebuilt from the stream; a stream that no longer holds the message last
// tiled is ErrTilesMismatch, and the tiler stops.
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

	n       int64    // leaves appended
	seq     uint64   // last message appended
	msgHash Hash     // SHA-256 of its data
	nblocks int64    // blocks index records
	levels  [][]Hash // per level: the hashes of its partial tile
	blocks  *os.File
	dirty   bool
	// Appended since the last flush, not yet in the files: per level the
	// hashes (and how many the level's file holds), the entries (and the
	// entries' length in all), the bundle index records (and the file's).
	pend    [][]byte
	inFile  []int64
	entries []byte
	entLen  int64
	index   []byte
	indexN  int64

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

// load restores the tiler from the state file, cutting each file back to
// what the state covers.
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
	for l := 0; ; l++ {
		count := n >> (TileHeight * l)
		if err := cutTo(levelPath(t.dir, l), 32*count); err != nil {
			return err
		}
		if count == 0 {
			break // levels above the tree's: cut below, whatever their number
		}
		var hs []Hash
		if w := int(count % tileWidth); w > 0 {
			data, err := t.tiles.readTile(tlog.Tile{L: l, N: count / tileWidth, W: w}, st)
			if err != nil {
				return err
			}
			for i := 0; i < w; i++ {
				hs = append(hs, Hash(data[32*i:32*i+32]))
			}
		}
		t.levels = append(t.levels, hs)
		t.pend = append(t.pend, nil)
		t.inFile = append(t.inFile, count)
	}
	bundles := (n + tileWidth - 1) / tileWidth
	for path, size := range map[string]int64{entriesPath(t.dir): st.Entries, entriesIndexPath(t.dir): 8 * bundles,
		filepath.Join(t.dir, "blocks"): 16 * st.Blocks} {
		if err := cutTo(path, size); err != nil {
			return err
		}
	}
	if got, err := t.tiles.Root(n); err != nil || got != root {
		return fmt.Errorf("the tiles' root at %d is not the state's (%v)", n, err)
	}
	if err := t.checkLastBundle(st); err != nil {
		return err
	}
	var msg Hash
	if b, err := hex.DecodeString(st.Msg); err == nil && len(b) == 32 {
		copy(msg[:], b)
	} else if st.Seq > 0 {
		return fmt.Errorf("%w: state message hash %q", ErrFormat, st.Msg)
	}
	t.n, t.seq, t.msgHash, t.nblocks, t.flushed = n, st.Seq, msg, st.Blocks, st
	t.entLen, t.indexN = st.Entries, bundles
	return nil
}

// checkLastBundle checks the entries of the last bundle the state covers:
// they end where the state says and hash to the leaves' hashes (the root
// check covers the hashes only).
func (t *Tiler) checkLastBundle(st tilesState) error {
	if st.Size == 0 {
		return cutLevelsFrom(t.dir, 0)
	}
	tile := tlog.Tile{L: -1, N: (st.Size - 1) / tileWidth, W: int((st.Size-1)%tileWidth) + 1}
	idx, err := readAt(entriesIndexPath(t.dir), 8*tile.N, 8)
	if err != nil {
		return err
	}
	data, err := t.tiles.readTile(tile, st)
	if err != nil {
		return err
	}
	if int64(binary.BigEndian.Uint64(idx))+int64(len(data)) != st.Entries {
		return fmt.Errorf("%w: the entries do not end where the state says", ErrFormat)
	}
	es, err := Entries(data)
	if err != nil {
		return err
	}
	hashes, err := t.tiles.readTile(tlog.Tile{L: 0, N: tile.N, W: tile.W}, st)
	if err != nil {
		return err
	}
	for i, e := range es {
		if LeafHash(e) != Hash(hashes[32*i:32*i+32]) {
			return fmt.Errorf("%w: entry %d does not hash to its leaf", ErrFormat, tile.N*tileWidth+int64(i))
		}
	}
	return cutLevelsFrom(t.dir, len(t.levels))
}

// cutLevelsFrom removes the level files from level l up: levels a crash
// began above the state's tree.
func cutLevelsFrom(dir string, l int) error {
	names, err := tilerFiles(dir)
	if err != nil {
		return err
	}
	for _, name := range names {
		if k, err := strconv.Atoi(strings.TrimPrefix(name, "hashes.")); err == nil && k >= l {
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				return fmt.Errorf("tiles: %w", err)
			}
		}
	}
	return nil
}

// cutTo cuts the file at path to size bytes, removing it at 0; a file
// shorter than that (or missing, with size > 0) is an error.
func cutTo(path string, size int64) error {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist) && size == 0:
		return nil
	case err != nil:
		return fmt.Errorf("tiles: %w", err)
	case fi.Size() < size:
		return fmt.Errorf("tiles: %s holds %d bytes, the state covers %d", filepath.Base(path), fi.Size(), size)
	case size == 0:
		return os.Remove(path)
	case fi.Size() > size:
		return os.Truncate(path, size) // a crash after the writes, before the state
	}
	return nil
}

// tilerFiles lists the tiler's files in dir but the state: the fixed
// ones ("tile" is the first format's directory of tiles) and every
// hashes.<L>, L a number.
func tilerFiles(dir string) ([]string, error) {
	names := []string{"tile", "blocks", "entries", "entries.index", "state.tmp"}
	levels, err := filepath.Glob(filepath.Join(dir, "hashes.*"))
	if err != nil {
		return nil, fmt.Errorf("tiles: %w", err)
	}
	for _, path := range levels {
		name := filepath.Base(path)
		if l, err := strconv.Atoi(strings.TrimPrefix(name, "hashes.")); err == nil && l >= 0 && name == "hashes."+strconv.Itoa(l) {
			names = append(names, name)
		}
	}
	return names, nil
}

func (t *Tiler) resetIfLeftovers() error {
	names, err := tilerFiles(t.dir)
	if err != nil {
		return err
	}
	for _, name := range names {
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
	names, err := tilerFiles(t.dir)
	if err != nil {
		return err
	}
	for _, name := range append([]string{"state"}, names...) { // the state first: no state, no tiles
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
// stream. What it appends is held in memory and on disk after the next
// Flush (Close, or Run's next tick): a caller that appends much flushes
// now and then.
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
	if t.n%tileWidth == 0 { // a bundle begins
		t.index = binary.BigEndian.AppendUint64(t.index, uint64(t.entLen))
	}
	t.entries = binary.BigEndian.AppendUint16(t.entries, uint16(len(e)))
	t.entries = append(t.entries, e...)
	t.entLen += int64(2 + len(e))
	t.n++
	t.addHash(0, LeafHash(e))
	return nil
}

// addHash adds h, the hash of a full subtree of 256^l leaves, to level l;
// a tile it completes sends its root up.
func (t *Tiler) addHash(l int, h Hash) {
	if l == len(t.levels) {
		t.levels = append(t.levels, nil)
		t.pend = append(t.pend, nil)
		t.inFile = append(t.inFile, 0)
	}
	t.levels[l] = append(t.levels[l], h)
	t.pend[l] = append(t.pend[l], h[:]...)
	if len(t.levels[l]) < tileWidth {
		return
	}
	root := MerkleRoot(t.levels[l]) // 256: a perfect tree; reuses the slice
	t.levels[l] = t.levels[l][:0]
	t.addHash(l+1, root)
}

// Flush appends what grew to the files, fsyncs each once, then writes the
// state: from then on readers see the tiles at the new size. Run flushes
// on its own.
func (t *Tiler) Flush() error {
	if !t.dirty {
		return nil
	}
	if err := t.blocks.Sync(); err != nil {
		return fmt.Errorf("tiles blocks index: %w", err)
	}
	for l, hs := range t.pend {
		if err := appendSync(levelPath(t.dir, l), 32*t.inFile[l], hs); err != nil {
			return err
		}
		t.inFile[l] += int64(len(hs) / 32)
		t.pend[l] = hs[:0]
	}
	if err := appendSync(entriesPath(t.dir), t.entLen-int64(len(t.entries)), t.entries); err != nil {
		return err
	}
	if err := appendSync(entriesIndexPath(t.dir), 8*t.indexN, t.index); err != nil {
		return err
	}
	t.indexN += int64(len(t.index) / 8)
	t.entries, t.index = t.entries[:0], t.index[:0]
	st := tilesState{Format: tilesFormat, Origin: CheckpointOrigin, Size: t.n,
		Seq: t.seq, Msg: t.msgHash.String(), Blocks: t.nblocks, Entries: t.entLen}
	root, err := rootOf(t.tiles.at(st), t.n)
	if err != nil {
		return fmt.Errorf("tiles: root at %d: %w", t.n, err)
	}
	st.Root = root.String()
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
	return nil
}

// appendSync writes data at off of the file at path (its end) and fsyncs
// it, and its directory when it is new.
func appendSync(path string, off int64, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	flag := os.O_WRONLY | os.O_CREATE
	if off == 0 {
		flag |= os.O_TRUNC // a leftover of a reset a crash cut short
	}
	f, err := os.OpenFile(path, flag, 0o644)
	if err != nil {
		return fmt.Errorf("tiles: %w", err)
	}
	_, err = f.WriteAt(data, off)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && off == 0 {
		err = atomicfile.SyncDir(filepath.Dir(path))
	}
	if err != nil {
		return fmt.Errorf("tiles: %w", err)
	}
	return nil
}
