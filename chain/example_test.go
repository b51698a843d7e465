package chain_test

import (
	"fmt"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/gridseal/gridseal/chain"
)

// Every event in the stream is a leaf of one RFC 6962 Merkle tree. An
// inclusion proof shows one event is in a tree of a given size and root —
// the size and root a signed checkpoint states — and anyone can check it
// with golang.org/x/mod/sumdb/tlog, without gridseal's code: the leaf hash
// is SHA-256(0x00 ‖ event as stored).
func ExampleTree_ProveInclusion() {
	events := [][]byte{[]byte("event 0"), []byte("event 1"), []byte("event 2"), []byte("event 3"), []byte("event 4")}
	var tree chain.Tree // a zero Tree keeps its hashes in memory
	for _, e := range events {
		if err := tree.AppendLeaf(e); err != nil {
			fmt.Println(err)
			return
		}
	}
	n := tree.Size()
	root, err := tree.Root(n)
	if err != nil {
		fmt.Println(err)
		return
	}
	proof, err := tree.ProveInclusion(3, n)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("tree of %d events, root %.16s…, proof of event 3: %d hashes\n", n, root, len(proof))

	// The verifier's side: the event's bytes, its index, the proof, and
	// the size and root it trusts.
	leaf := tlog.RecordHash(events[3])
	fmt.Println("event 3:", tlog.CheckRecord(proof, n, tlog.Hash(root), 3, leaf))
	fmt.Println("event 3 claimed at index 2:", tlog.CheckRecord(proof, n, tlog.Hash(root), 2, leaf))
	fmt.Println("edited event 3:", tlog.CheckRecord(proof, n, tlog.Hash(root), 3, tlog.RecordHash([]byte("event 3!"))))

	// The root is the one chain.MerkleRoot computes over the leaf hashes.
	leaves := make([]chain.Hash, len(events))
	for i, e := range events {
		leaves[i] = chain.LeafHash(e)
	}
	fmt.Println("same root as MerkleRoot:", chain.MerkleRoot(leaves) == root)
	// Output:
	// tree of 5 events, root b5af9c41186dda13…, proof of event 3: 3 hashes
	// event 3: <nil>
	// event 3 claimed at index 2: invalid transparency proof
	// edited event 3: invalid transparency proof
	// same root as MerkleRoot: true
}
