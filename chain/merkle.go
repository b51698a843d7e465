package chain

import "crypto/sha256"

// Hash is a SHA-256 digest.
type Hash [32]byte

// LeafHash is the RFC 6962 hash of one event as stored.
func LeafHash(event []byte) Hash {
	h := sha256.New()
	h.Write([]byte{0})
	h.Write(event)
	var out Hash
	h.Sum(out[:0])
	return out
}

func nodeHash(l, r Hash) Hash {
	var buf [65]byte
	buf[0] = 1
	copy(buf[1:], l[:])
	copy(buf[33:], r[:])
	return sha256.Sum256(buf[:])
}

// MerkleRoot is the RFC 6962 Merkle tree hash of leaves (the hash of the
// empty string for no leaves). It reuses leaves as scratch space.
func MerkleRoot(leaves []Hash) Hash {
	if len(leaves) == 0 {
		return sha256.Sum256(nil)
	}
	// RFC 6962 splits at the largest power of two below n; pairing adjacent
	// nodes level by level and promoting an odd last node gives the same tree.
	n := len(leaves)
	for n > 1 {
		j := 0
		for i := 0; i+1 < n; i += 2 {
			leaves[j] = nodeHash(leaves[i], leaves[i+1])
			j++
		}
		if n%2 == 1 {
			leaves[j] = leaves[n-1]
			j++
		}
		n = j
	}
	return leaves[0]
}
