// Package chain is gridseal's tamper-evident record: every operation the
// proxy sees is an event in a block, every block is one message in the
// JetStream stream GRIDSEAL_CHAIN, and every block names the hash of the
// block before it and is signed by its writer's Tink key.
//
// # Formats (version 1)
//
// All integers are big-endian. lp8, lp16 and lp32 are byte strings preceded
// by their length in 1, 2 or 4 bytes. Hashes are SHA-256.
//
// Event (one audit.Event, as stored; hashed as stored, never re-encoded):
//
//	u8 version=2 (1 is still read: it lacks the role) | i64 unix-nanoseconds | u64 op | u8 phase | u8 verdict
//	| lp16 client | lp16 listener | lp16 device | u8 unit | u8 function
//	| lp8 class | u16 address | u16 quantity | lp16 pdu | lp16 rule
//	| lp16 reason | lp16 policy | lp16 approval | u8 exception
//	| lp16 response | u64 upstream-nanoseconds | u8 flags (bit 0: closed)
//	| lp8 role (version 2: the client certificate's Modbus/TCP Security role)
//
// Phase: 1 request (a write's record before it is forwarded), 2 complete
// (an operation with its answer), 3 approval (a step of an m-of-n
// approval), 4 dropped-reply (a device reply passed to no client: it matched
// no request, or came after its request timed out). Verdict: 1 allow,
// 2 deny, 3 malformed. Other values are a format error.
//
// Block header:
//
//	"GSB1" | lp8 writer | u32 key-id | u64 height | [32] previous block hash
//	| i64 unix-nanoseconds | u32 event count | [32] Merkle root of the events
//
// The block hash is SHA-256 of the header bytes. The Merkle root is the
// RFC 6962 tree hash over the events (leaf = SHA-256(0x00 ‖ event),
// node = SHA-256(0x01 ‖ left ‖ right)). The genesis block (height 0) names
// SHA-256("gridseal/chain/v1/genesis\x00" ‖ writer) as its previous hash.
//
// Block message: lp16 header | lp16 signature | u32 count, then count × lp32
// event. The signature is the writer's Tink signature (its 5-byte output
// prefix names the key) over "gridseal/chain/v1/block\x00" ‖ block hash.
//
// Each writer appends to its own subject gridseal.chain.<writer>, so writers
// never race for one head; the stream sequence orders all writers. A block
// is published with Nats-Msg-Id = hex block hash (a retried publish is a
// duplicate, not a second block) and Nats-Expected-Last-Subject-Sequence =
// the writer's last sequence, so a second process with the same writer id
// is fenced out.
package chain
