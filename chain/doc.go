// Package chain is gridseal's tamper-evident record: every operation the
// proxy sees is an event in a block, every block is one message in the
// JetStream stream GRIDSEAL_CHAIN, and every block names the hash of the
// block before it and is signed by its writer's Tink key.
//
// The byte formats — event, block header, block message, the Merkle tree
// over the events and the signed checkpoints of the whole stream — are
// specified in docs/FORMAT.md, with test vectors in chain/testdata that
// another implementation can check itself against.
//
// Each writer appends to its own subject gridseal.chain.<writer>, so writers
// never race for one head; the stream sequence orders all writers. A block
// is published with Nats-Msg-Id = hex block hash (a retried publish is a
// duplicate, not a second block) and Nats-Expected-Last-Subject-Sequence =
// the writer's last sequence, so a second process with the same writer id
// is fenced out.
//
// The Recorder writes (group commit, durable before a write moves, reads
// spooled through NATS outages); VerifyStream checks a whole stream against
// a trust file; the Checkpointer signs the tree; the Tiler keeps it as
// C2SP tlog-tiles (Tiles reads them) and TlogProof is one event's offline
// proof; ProveEvent and ProveConsistency answer a witness.
package chain
