package chain

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"time"
)

const blockMagic = "GSB1"

// Domain tags keep gridseal's hashes and signatures from meaning anything
// in another protocol.
const (
	genesisTag = "gridseal/chain/v1/genesis\x00"
	signTag    = "gridseal/chain/v1/block\x00"
)

// Header is a block header.
type Header struct {
	Writer string
	KeyID  uint32
	Height uint64
	Prev   Hash
	Time   time.Time
	Count  uint32
	Root   Hash
}

// String renders a hash as hex.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// GenesisPrev is the previous-hash of a writer's first block.
func GenesisPrev(writer string) Hash {
	return sha256.Sum256([]byte(genesisTag + writer))
}

// AppendHeader appends the stored encoding of h.
func AppendHeader(dst []byte, h *Header) []byte {
	dst = append(dst, blockMagic...)
	dst = append(dst, byte(len(h.Writer)))
	dst = append(dst, h.Writer...)
	dst = binary.BigEndian.AppendUint32(dst, h.KeyID)
	dst = binary.BigEndian.AppendUint64(dst, h.Height)
	dst = append(dst, h.Prev[:]...)
	dst = binary.BigEndian.AppendUint64(dst, uint64(h.Time.UnixNano()))
	dst = binary.BigEndian.AppendUint32(dst, h.Count)
	return append(dst, h.Root[:]...)
}

func parseHeader(b []byte) (Header, error) {
	r := reader{b: b}
	var h Header
	if m := r.take(4); r.err == nil && string(m) != blockMagic {
		return h, fmt.Errorf("%w: block magic %q", ErrFormat, m)
	}
	h.Writer = string(r.lp8())
	h.KeyID = r.u32()
	h.Height = r.u64()
	copy(h.Prev[:], r.take(32))
	h.Time = time.Unix(0, int64(r.u64())).UTC()
	h.Count = r.u32()
	copy(h.Root[:], r.take(32))
	return h, r.end()
}

// SigningInput is what a writer signs for a block hash.
func SigningInput(blockHash Hash) []byte {
	return append([]byte(signTag), blockHash[:]...)
}

// Block is a parsed block message. Its slices alias the message.
type Block struct {
	Header
	HeaderBytes []byte
	Hash        Hash // SHA-256 of HeaderBytes
	Signature   []byte
	Events      [][]byte
}

// ParseBlock parses a block message without checking its signature or root.
func ParseBlock(msg []byte) (*Block, error) {
	r := reader{b: msg}
	b := &Block{HeaderBytes: r.lp16(), Signature: r.lp16()}
	n := r.u32()
	if r.err != nil {
		return nil, r.err
	}
	if uint64(n) > uint64(len(r.b))/4 {
		return nil, fmt.Errorf("%w: %d events cannot fit in %d bytes", ErrFormat, n, len(r.b))
	}
	b.Events = make([][]byte, 0, n)
	for i := uint32(0); i < n; i++ {
		b.Events = append(b.Events, r.lp32())
	}
	if err := r.end(); err != nil {
		return nil, err
	}
	h, err := parseHeader(b.HeaderBytes)
	if err != nil {
		return nil, err
	}
	b.Header = h
	b.Hash = sha256.Sum256(b.HeaderBytes)
	return b, nil
}

// ComputeRoot returns the Merkle root of the block's events.
func (b *Block) ComputeRoot() Hash {
	leaves := make([]Hash, len(b.Events))
	for i, e := range b.Events {
		leaves[i] = LeafHash(e)
	}
	return MerkleRoot(leaves)
}

// EncodeBlock encodes a block of events after prev, signed by s. It is how
// the recorder builds blocks, exported for tools and test vectors.
func EncodeBlock(writer string, s BlockSigner, height uint64, prev Hash, t time.Time, events [][]byte) (msg []byte, hash Hash, err error) {
	return buildBlock(writer, s.PrimaryKeyID(), s, height, prev, t, events, nil)
}

// buildBlock encodes a signed block of events after prev; *scratch, if
// not nil, is reused for the leaf hashes and kept for the next block.
func buildBlock(writer string, keyID uint32, s BlockSigner, height uint64, prev Hash, t time.Time, events [][]byte, scratch *[]Hash) (msg []byte, hash Hash, err error) {
	var leaves []Hash
	if scratch != nil {
		leaves = (*scratch)[:0]
		defer func() { *scratch = leaves }()
	}
	size := 0
	for _, e := range events {
		leaves = append(leaves, LeafHash(e))
		size += 4 + len(e)
	}
	h := Header{Writer: writer, KeyID: keyID, Height: height, Prev: prev, Time: t,
		Count: uint32(len(events)), Root: MerkleRoot(leaves)}
	hdr := AppendHeader(make([]byte, 0, 128), &h)
	hash = sha256.Sum256(hdr)
	sig, err := s.Sign(SigningInput(hash))
	if err != nil {
		return nil, hash, fmt.Errorf("sign block %d: %w", height, err)
	}
	msg = make([]byte, 0, 2+len(hdr)+2+len(sig)+4+size)
	msg = lp16(msg, string(hdr))
	msg = lp16(msg, string(sig))
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(events)))
	for _, e := range events {
		msg = binary.BigEndian.AppendUint32(msg, uint32(len(e)))
		msg = append(msg, e...)
	}
	return msg, hash, nil
}
