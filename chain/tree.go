package chain

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/mod/sumdb/tlog"
)

// Tree keeps every stored hash of the RFC 6962 tree over the stream's
// events (tlog's layout: 32 bytes each, about two per leaf), and, for
// trees built block by block, where each block's leaves start, so an
// inclusion proof costs O(log n) reads. A zero Tree keeps all in memory;
// OpenTreeFiles keeps it in two files instead, for trees as large as the
// chain. A Tree is safe for one writer and many readers at once.
type Tree struct {
	mu     sync.RWMutex
	hashes store // 32-byte stored hashes
	blocks store // 16-byte records: block stream sequence, first leaf
	n      int64 // leaves
	nb     int64 // blocks indexed
	closed bool
}

// store is where a Tree keeps fixed-size records.
type store interface {
	append(b []byte) error
	readAt(b []byte, off int64) error
	close() error
}

type memStore struct{ b []byte }

func (m *memStore) append(b []byte) error { m.b = append(m.b, b...); return nil }
func (m *memStore) readAt(b []byte, off int64) error {
	if off < 0 || off+int64(len(b)) > int64(len(m.b)) {
		return io.ErrUnexpectedEOF
	}
	copy(b, m.b[off:])
	return nil
}
func (m *memStore) close() error { m.b = nil; return nil }

type fileStore struct {
	f   *os.File
	end int64
}

func (s *fileStore) append(b []byte) error {
	if _, err := s.f.WriteAt(b, s.end); err != nil {
		return err
	}
	s.end += int64(len(b))
	return nil
}
func (s *fileStore) readAt(b []byte, off int64) error {
	_, err := s.f.ReadAt(b, off)
	return err
}
func (s *fileStore) close() error { return s.f.Close() }

// OpenTreeFiles starts an empty tree kept in two files in dir, unlinked as
// soon as they are open: only this process reaches them, and their space
// goes back when it closes them or ends, however it ends.
func OpenTreeFiles(dir, name string) (*Tree, error) {
	t := &Tree{}
	for _, ext := range []string{".hashes", ".blocks"} {
		path := dir + string(os.PathSeparator) + name + ext
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
		if err == nil {
			if err = os.Remove(path); err != nil {
				_ = f.Close()
			}
		}
		if err != nil {
			_ = t.Close()
			return nil, fmt.Errorf("tree file: %w", err)
		}
		if ext == ".hashes" {
			t.hashes = &fileStore{f: f}
		} else {
			t.blocks = &fileStore{f: f}
		}
	}
	return t, nil
}

// TempTreeFiles starts an empty tree kept in files in a new directory under
// parent (so several processes may share parent); Close removes it all.
func TempTreeFiles(parent string) (*Tree, error) {
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return nil, fmt.Errorf("tree files: %w", err)
	}
	dir, err := os.MkdirTemp(parent, "tree-")
	if err != nil {
		return nil, fmt.Errorf("tree files: %w", err)
	}
	t, err := OpenTreeFiles(dir, "events")
	if rerr := os.Remove(dir); err == nil && rerr != nil { // empty: the files are unlinked
		_ = t.Close()
		return nil, fmt.Errorf("tree files: %w", rerr)
	}
	return t, err
}

// ErrTreeClosed is returned by a closed tree.
var ErrTreeClosed = errors.New("tree closed")

// Close releases the tree's storage; reads after it fail with
// ErrTreeClosed.
func (t *Tree) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var errs []error
	for _, s := range []store{t.hashes, t.blocks} {
		if s != nil {
			errs = append(errs, s.close())
		}
	}
	t.hashes, t.blocks, t.n, t.nb, t.closed = nil, nil, 0, 0, true
	return errors.Join(errs...)
}

func (t *Tree) init() error {
	if t.closed {
		return ErrTreeClosed
	}
	if t.hashes == nil {
		t.hashes, t.blocks = &memStore{}, &memStore{}
	}
	return nil
}

// AppendLeaf adds the event's bytes as the next leaf.
func (t *Tree) AppendLeaf(event []byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.init(); err != nil {
		return err
	}
	return t.appendLeafLocked(event)
}

func (t *Tree) appendLeafLocked(event []byte) error {
	hs, err := tlog.StoredHashes(t.n, event, lockedReader{t})
	if err != nil {
		return err
	}
	b := make([]byte, 0, 32*len(hs))
	for _, h := range hs {
		b = append(b, h[:]...)
	}
	if err := t.hashes.append(b); err != nil {
		return fmt.Errorf("tree: %w", err)
	}
	t.n++
	return nil
}

// AppendBlock indexes the block stored at stream sequence seq and adds its
// events as leaves. Sequences must grow.
func (t *Tree) AppendBlock(seq uint64, events [][]byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.init(); err != nil {
		return err
	}
	var rec [16]byte
	binary.BigEndian.PutUint64(rec[:8], seq)
	binary.BigEndian.PutUint64(rec[8:], uint64(t.n))
	if err := t.blocks.append(rec[:]); err != nil {
		return fmt.Errorf("tree: %w", err)
	}
	t.nb++
	for _, e := range events {
		if err := t.appendLeafLocked(e); err != nil {
			return err
		}
	}
	return nil
}

// LeafOf returns the leaf index of event index of the block at seq, or -1
// if the tree has no such event.
func (t *Tree) LeafOf(seq uint64, index int) (int64, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.closed {
		return -1, ErrTreeClosed
	}
	if t.blocks == nil || index < 0 {
		return -1, nil
	}
	read := func(i int64) (uint64, int64, error) {
		var rec [16]byte
		if err := t.blocks.readAt(rec[:], 16*i); err != nil {
			return 0, 0, fmt.Errorf("tree block index: %w", err)
		}
		return binary.BigEndian.Uint64(rec[:8]), int64(binary.BigEndian.Uint64(rec[8:])), nil
	}
	return leafInIndex(read, t.nb, t.n, seq, index)
}

// lockedReader reads hashes while the caller holds t.mu.
type lockedReader struct{ t *Tree }

func (r lockedReader) ReadHashes(idx []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(idx))
	for i, x := range idx {
		if err := r.t.hashes.readAt(out[i][:], 32*x); err != nil {
			return nil, fmt.Errorf("hash %d not stored: %w", x, err)
		}
	}
	return out, nil
}

// ReadHashes implements tlog.HashReader.
func (t *Tree) ReadHashes(idx []int64) ([]tlog.Hash, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.closed {
		return nil, ErrTreeClosed
	}
	if t.hashes == nil {
		return nil, errors.New("empty tree")
	}
	return lockedReader{t}.ReadHashes(idx)
}

// Size is the number of leaves.
func (t *Tree) Size() int64 {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.n
}

// Root is the tree hash at size n.
func (t *Tree) Root(n int64) (Hash, error) { return rootOf(t, n) }

// LeafHash returns the stored hash of leaf i.
func (t *Tree) LeafHash(i int64) (Hash, error) { return leafHashOf(t, i) }

// rootOf is the tree hash at size n of the hashes r stores.
func rootOf(r tlog.HashReader, n int64) (Hash, error) {
	h, err := tlog.TreeHash(n, r)
	return Hash(h), err
}

// leafHashOf is the hash of leaf i that r stores.
func leafHashOf(r tlog.HashReader, i int64) (Hash, error) {
	hs, err := r.ReadHashes([]int64{tlog.StoredHashIndex(0, i)})
	if err != nil {
		return Hash{}, err
	}
	return Hash(hs[0]), nil
}

// ProveInclusion proves leaf i is in the tree of size n.
func (t *Tree) ProveInclusion(i, n int64) (tlog.RecordProof, error) { return tlog.ProveRecord(n, i, t) }
