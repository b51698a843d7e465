package chain

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// Tiles: the tree of every event (see Checkpoint) kept for C2SP tlog-tiles
// (c2sp.org/tlog-tiles) in a directory of append-only files, one a level,
// from which any tile is a slice:
//
//	hashes.<L>     every hash of level 8·L, 32 bytes each, in order: tile
//	               L/N of width W is bytes 32·256·N … +32·W
//	entries        every event as recorded, u16 length ‖ bytes, in order
//	entries.index  u64 offset in entries of leaf 256·N, a record per bundle
//	blocks         16-byte records: a block's stream sequence, its first leaf
//	state          JSON: the tiled size, root, entries' length, the last
//	               message tiled
//
// A Tiler appends to them and fsyncs each file once a flush, then writes
// the state; Tiles reads them, also from another process, never past what
// the state says (those bytes were on the disk before the state was, and
// never change).

// TileHeight is the height of a tile: 256 hashes, or entries, a full tile.
const TileHeight = 8

const tileWidth = 1 << TileHeight

// maxEntry is the largest event an entry bundle can hold (its u16 length).
const maxEntry = 0xFFFF

// ErrTilesMismatch says the stream no longer holds what was tiled from it:
// the stream was rewritten, or recreated. The tiles are not served.
var ErrTilesMismatch = fmt.Errorf("%w: the tiles were made from other messages", ErrCheckpointMismatch)

// ErrNoTile says the tiles have no such tile (yet).
var ErrNoTile = errors.New("no such tile")

// TilePath is the tlog-tiles path of t: tile/<L>/<N>[.p/<W>], or for L = -1
// the entry bundle tile/entries/<N>[.p/<W>]. N is written in 3-digit
// groups, all but the last prefixed with x (tile/0/x001/234).
func TilePath(t tlog.Tile) string {
	p := tlog.Tile{H: TileHeight, L: t.L, N: t.N, W: t.W}.Path() // tile/8/<L or data>/...
	if t.L == -1 {
		return "tile/entries/" + strings.TrimPrefix(p, "tile/8/data/")
	}
	return "tile/" + strings.TrimPrefix(p, "tile/8/")
}

// ParseTilePath parses a path TilePath writes, and only such a path (no
// leading zeros, no other spelling of the same tile).
func ParseTilePath(p string) (tlog.Tile, error) {
	var q string
	switch {
	case strings.HasPrefix(p, "tile/entries/"):
		q = "tile/8/data/" + strings.TrimPrefix(p, "tile/entries/")
	case strings.HasPrefix(p, "tile/"):
		q = "tile/8/" + strings.TrimPrefix(p, "tile/")
	default:
		return tlog.Tile{}, fmt.Errorf("tile path %q: want tile/<L>/<N>[.p/<W>] or tile/entries/<N>[.p/<W>]", p)
	}
	t, err := tlog.ParseTilePath(q)
	if err != nil || t.L > 63 || TilePath(t) != p {
		return tlog.Tile{}, fmt.Errorf("tile path %q: want tile/<L>/<N>[.p/<W>] or tile/entries/<N>[.p/<W>]", p)
	}
	return t, nil
}

// tilesState is what the state file holds: how far the tiles reach.
type tilesState struct {
	Format string `json:"format"` // tilesFormat
	Origin string `json:"origin"`
	Size   int64  `json:"size"`   // leaves tiled
	Root   string `json:"root"`   // hex tree hash at Size
	Seq    uint64 `json:"seq"`    // stream sequence of the last message tiled; 0: none
	Msg    string `json:"msg"`    // hex SHA-256 of that message's data
	Blocks int64  `json:"blocks"` // records of the blocks index that count
	// Entries is the length of the entries file the Size leaves take.
	Entries int64 `json:"entries"`
}

// tilesFormat names the layout above. The first (gridseal-tiles-v1) kept
// a file per tile; a directory in it is rebuilt from the stream.
const tilesFormat = "gridseal-tiles-v2"

// Tiles reads the tiles in a directory, as a Tiler left them. It is safe
// for concurrent use, and while a Tiler (in this process or another)
// extends them: it reads no byte the state file does not cover.
type Tiles struct {
	dir string
}

// levelPath is the file of level l's hashes (tile level l: tree level 8·l).
func levelPath(dir string, l int) string {
	return filepath.Join(dir, "hashes."+strconv.Itoa(l))
}

// entriesPath and entriesIndexPath are the entries and their bundle index.
func entriesPath(dir string) string      { return filepath.Join(dir, "entries") }
func entriesIndexPath(dir string) string { return filepath.Join(dir, "entries.index") }

// OpenTiles reads the tiles in dir; it fails if dir holds none.
func OpenTiles(dir string) (*Tiles, error) {
	ts := &Tiles{dir: dir}
	if _, err := ts.state(); err != nil {
		return nil, err
	}
	return ts, nil
}

// Dir is the directory the tiles are kept in.
func (ts *Tiles) Dir() string { return ts.dir }

func (ts *Tiles) state() (tilesState, error) {
	var st tilesState
	b, err := os.ReadFile(filepath.Join(ts.dir, "state"))
	if err != nil {
		return st, fmt.Errorf("tiles in %s: %w", ts.dir, err)
	}
	if err := json.Unmarshal(b, &st); err != nil || st.Format != tilesFormat || st.Origin != CheckpointOrigin || st.Size < 0 {
		return st, fmt.Errorf("tiles in %s: %w: state file is not %s of %s", ts.dir, ErrFormat, tilesFormat, CheckpointOrigin)
	}
	return st, nil
}

// Size is the number of leaves tiled, 0 if the state cannot be read (the
// other methods then say why).
func (ts *Tiles) Size() int64 {
	st, err := ts.state()
	if err != nil {
		return 0
	}
	return st.Size
}

// ReadTile returns the data of tile t, exactly t.W hashes (or entries)
// wide: a full tile's or a partial one's prefix, as tlog-tiles allows (a
// tile's first W hashes never change). It returns an error matching
// ErrNoTile if the tiles do not reach that far.
func (ts *Tiles) ReadTile(t tlog.Tile) ([]byte, error) {
	if t.W < 1 || t.W > tileWidth || t.N < 0 || t.L < -1 || t.L > 63 {
		return nil, fmt.Errorf("%w: tile %+v", ErrNoTile, t)
	}
	st, err := ts.state()
	if err != nil {
		return nil, err
	}
	return ts.readTile(t, st)
}

// readTile reads tile t of the tiles as of state st.
func (ts *Tiles) readTile(t tlog.Tile, st tilesState) ([]byte, error) {
	count := st.Size // leaves, or hashes at level t.L
	if t.L >= 0 {
		count = st.Size >> (TileHeight * t.L)
	}
	if t.N > count/tileWidth || t.N*tileWidth+int64(t.W) > count {
		return nil, fmt.Errorf("%w: %s", ErrNoTile, TilePath(t))
	}
	if t.L >= 0 {
		return readAt(levelPath(ts.dir, t.L), 32*tileWidth*t.N, 32*t.W)
	}
	bundles := (st.Size + tileWidth - 1) / tileWidth
	idx, err := readAt(entriesIndexPath(ts.dir), 8*t.N, 8*int(min(2, bundles-t.N)))
	if err != nil {
		return nil, err
	}
	from, to := int64(binary.BigEndian.Uint64(idx)), st.Entries
	if len(idx) == 16 {
		to = int64(binary.BigEndian.Uint64(idx[8:]))
	}
	if from < 0 || to < from || to > st.Entries || to-from > int64(tileWidth*(2+maxEntry)) {
		return nil, fmt.Errorf("%w: entry bundle %s at bytes %d..%d of %d", ErrFormat, TilePath(t), from, to, st.Entries)
	}
	data, err := readAt(entriesPath(ts.dir), from, int(to-from))
	if err != nil {
		return nil, err
	}
	return tilePrefix(t, data)
}

// readAt reads n bytes of the file at path from off; fewer is ErrFormat.
func readAt(path string, off int64, n int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("tiles: %w", err)
	}
	defer func() { _ = f.Close() }()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("%w: %s holds no %d bytes at %d: %v", ErrFormat, filepath.Base(path), n, off, err)
	}
	return b, nil
}

// tilePrefix returns the first t.W hashes or entries of data.
func tilePrefix(t tlog.Tile, data []byte) ([]byte, error) {
	if t.L >= 0 {
		if len(data) < 32*t.W || len(data)%32 != 0 {
			return nil, fmt.Errorf("%w: tile %s holds %d bytes", ErrFormat, TilePath(t), len(data))
		}
		return data[:32*t.W], nil
	}
	off := 0
	for range t.W {
		if off+2 > len(data) {
			return nil, fmt.Errorf("%w: entry bundle %s is short", ErrFormat, TilePath(t))
		}
		off += 2 + int(binary.BigEndian.Uint16(data[off:]))
		if off > len(data) {
			return nil, fmt.Errorf("%w: entry bundle %s is short", ErrFormat, TilePath(t))
		}
	}
	return data[:off], nil
}

// Entries splits an entry bundle into its entries (they alias data).
func Entries(data []byte) ([][]byte, error) {
	var out [][]byte
	for len(data) > 0 {
		if len(data) < 2 {
			return nil, fmt.Errorf("%w: entry bundle: %d trailing bytes", ErrFormat, len(data))
		}
		n := int(binary.BigEndian.Uint16(data))
		if 2+n > len(data) {
			return nil, fmt.Errorf("%w: entry bundle: entry of %d bytes past the end", ErrFormat, n)
		}
		out = append(out, data[2:2+n])
		data = data[2+n:]
	}
	return out, nil
}

// ReadHashes implements tlog.HashReader from the tiles, unverified: a
// caller checks the root it computes against a signed checkpoint.
func (ts *Tiles) ReadHashes(idx []int64) ([]tlog.Hash, error) {
	st, err := ts.state()
	if err != nil {
		return nil, err
	}
	return ts.readHashes(idx, st)
}

// at reads the tiles as of state st (the Tiler's, before it writes it).
func (ts *Tiles) at(st tilesState) tlog.HashReaderFunc {
	return func(idx []int64) ([]tlog.Hash, error) { return ts.readHashes(idx, st) }
}

func (ts *Tiles) readHashes(idx []int64, st tilesState) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(idx))
	cache := map[tlog.Tile][]byte{}
	for i, x := range idx {
		t := tlog.TileForIndex(TileHeight, x)
		data, ok := cache[t]
		if !ok {
			var err error
			if data, err = ts.readTile(t, st); err != nil {
				return nil, fmt.Errorf("hash %d: %w", x, err)
			}
			cache[t] = data
		}
		h, err := tlog.HashFromTile(t, data, x)
		if err != nil {
			return nil, err
		}
		out[i] = h
	}
	return out, nil
}

// Root is the tree hash at size n (n at most Size).
func (ts *Tiles) Root(n int64) (Hash, error) { return rootOf(ts, n) }

// LeafHash returns the hash of leaf i.
func (ts *Tiles) LeafHash(i int64) (Hash, error) { return leafHashOf(ts, i) }

// Entry returns leaf i's event as recorded, from its entry bundle.
func (ts *Tiles) Entry(i int64) ([]byte, error) {
	t := tlog.Tile{L: -1, N: i / tileWidth, W: int(i%tileWidth) + 1}
	data, err := ts.ReadTile(t)
	if err != nil {
		return nil, err
	}
	es, err := Entries(data)
	if err != nil {
		return nil, err
	}
	return es[len(es)-1], nil
}

// ProveInclusion proves leaf i is in the tree of size n.
func (ts *Tiles) ProveInclusion(i, n int64) (tlog.RecordProof, error) {
	return tlog.ProveRecord(n, i, ts)
}

// ProveTree proves the tree of size n extends the tree of size old.
func (ts *Tiles) ProveTree(n, old int64) (tlog.TreeProof, error) {
	return tlog.ProveTree(n, old, ts)
}

// LeafOf returns the leaf index of event index of the block at stream
// sequence seq, or -1 if the tiles hold no such event: a binary search of
// the blocks index, O(log n) reads.
func (ts *Tiles) LeafOf(seq uint64, index int) (int64, error) {
	st, err := ts.state()
	if err != nil {
		return -1, err
	}
	if index < 0 || st.Blocks == 0 {
		return -1, nil
	}
	bi, err := ts.openBlocks()
	if err != nil {
		return -1, err
	}
	defer bi.close()
	return leafInIndex(bi.read, st.Blocks, st.Size, seq, index)
}

// rootHex parses a state file's hex root.
func rootHex(s string) (Hash, error) {
	var h Hash
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(h) {
		return h, fmt.Errorf("%w: root %q", ErrFormat, s)
	}
	copy(h[:], b)
	return h, nil
}

// ProofTree is a tree of every event that proofs are read from: a Tree
// built from the stream, or Tiles.
type ProofTree interface {
	tlog.HashReader
	Size() int64
	LeafOf(seq uint64, index int) (int64, error)
	Root(n int64) (Hash, error)
	LeafHash(i int64) (Hash, error)
	ProveInclusion(i, n int64) (tlog.RecordProof, error)
}

// ProveEventInTiles is ProveEvent from tiles: the newest checkpoint signed
// by a known key, and O(log n) reads of the tiles, not of the stream. The
// tiles must reach the checkpoint (ErrNotCheckpointed otherwise) and have
// its root (ErrCheckpointMismatch otherwise).
func ProveEventInTiles(ctx context.Context, js jetstream.JetStream, known note.Verifiers, ts *Tiles, seq uint64, index int) (*Inclusion, error) {
	cp, err := LatestCheckpoint(ctx, js, known)
	if err != nil {
		return nil, err
	}
	if cp == nil {
		return nil, fmt.Errorf("event %d of the block at sequence %d is %w: there is none yet", index, seq, ErrNotCheckpointed)
	}
	return ProveInTree(ts, cp, seq, index)
}

// ProveConsistencyInTiles is ProveConsistency from tiles: it proves the
// newest checkpoint signed by a known key extends the first oldSize
// events, and checks the proof.
func ProveConsistencyInTiles(ctx context.Context, js jetstream.JetStream, known note.Verifiers, ts *Tiles, oldSize int64) (*Consistency, error) {
	cp, err := LatestCheckpoint(ctx, js, known)
	if err != nil {
		return nil, err
	}
	if cp == nil {
		return nil, errors.New("no signed checkpoint yet")
	}
	return ConsistencyInTree(ts, cp, oldSize)
}

// ConsistencyInTree proves the checkpoint cp extends the tree's first
// oldSize events: it checks the tree has cp's root, and checks the proof.
func ConsistencyInTree(tree ProofTree, cp *Checkpoint, oldSize int64) (*Consistency, error) {
	if oldSize > cp.Size {
		return nil, fmt.Errorf("%w: a checkpoint of %d events was signed, the newest now covers %d: the chain was rolled back, or the checkpointer lags",
			ErrCheckpointMismatch, oldSize, cp.Size)
	}
	if oldSize < 1 {
		return nil, fmt.Errorf("old size %d: want 1..%d (the newest checkpoint's size)", oldSize, cp.Size)
	}
	if tree.Size() < cp.Size {
		return nil, fmt.Errorf("%w: the tree has %d of the checkpoint's %d events", ErrNotCheckpointed, tree.Size(), cp.Size)
	}
	if root, err := tree.Root(cp.Size); err != nil {
		return nil, err
	} else if root != cp.Root {
		return nil, fmt.Errorf("%w: the root of the first %d events differs", ErrCheckpointMismatch, cp.Size)
	}
	oldRoot, err := tree.Root(oldSize)
	if err != nil {
		return nil, err
	}
	proof, err := tlog.ProveTree(cp.Size, oldSize, tree)
	if err != nil {
		return nil, err
	}
	if err := tlog.CheckTree(proof, cp.Size, tlog.Hash(cp.Root), oldSize, tlog.Hash(oldRoot)); err != nil {
		return nil, fmt.Errorf("%w: consistency proof does not check: %v", ErrCheckpointMismatch, err)
	}
	c := &Consistency{OldSize: oldSize, OldRoot: oldRoot, New: cp, Proof: make([]Hash, len(proof))}
	for i, h := range proof {
		c.Proof[i] = Hash(h)
	}
	return c, nil
}
