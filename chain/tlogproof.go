package chain

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// TlogProofHeader is the first line of a c2sp.org/tlog-proof file.
const TlogProofHeader = "c2sp.org/tlog-proof@v1"

// maxProofHashes bounds an inclusion proof: a tree of 2^63 leaves needs 63.
const maxProofHashes = 63

// TlogProof is an offline proof that one event is in a checkpointed tree,
// in the C2SP tlog-proof text format. gridseal puts the event as recorded
// in the extra data, so the proof carries what it proves: its leaf hash is
// LeafHash(Extra).
type TlogProof struct {
	Extra      []byte // the event as recorded; may be empty in others' proofs
	Index      int64  // the leaf's index in the tree
	Proof      []Hash // RFC 6962 inclusion proof, leaf's sibling first
	Checkpoint []byte // the checkpoint note, with every signature, verbatim
}

// NewTlogProof is the tlog-proof of an inclusion proof, for event.
func NewTlogProof(inc *Inclusion, event []byte) *TlogProof {
	return &TlogProof{Extra: event, Index: inc.Leaf, Proof: inc.Proof, Checkpoint: inc.Checkpoint.Note}
}

// Marshal encodes the proof as a tlog-proof file.
func (p *TlogProof) Marshal() []byte {
	var b bytes.Buffer
	b.WriteString(TlogProofHeader + "\n")
	if len(p.Extra) > 0 {
		b.WriteString("extra " + base64.StdEncoding.EncodeToString(p.Extra) + "\n")
	}
	b.WriteString("index " + strconv.FormatInt(p.Index, 10) + "\n")
	for _, h := range p.Proof {
		b.WriteString(base64.StdEncoding.EncodeToString(h[:]) + "\n")
	}
	b.WriteString("\n")
	b.Write(p.Checkpoint)
	return b.Bytes()
}

// ParseTlogProof parses a tlog-proof file. It checks the form only; Verify
// checks what it says.
func ParseTlogProof(data []byte) (*TlogProof, error) {
	bad := func(what string) (*TlogProof, error) {
		return nil, fmt.Errorf("%w: tlog-proof: %s", ErrFormat, what)
	}
	rest := string(data)
	line := func() (string, bool) {
		i := strings.IndexByte(rest, '\n')
		if i < 0 {
			return "", false
		}
		l := rest[:i]
		rest = rest[i+1:]
		return l, true
	}
	if l, ok := line(); !ok || l != TlogProofHeader {
		return bad("the first line is not " + TlogProofHeader)
	}
	p := &TlogProof{}
	l, ok := line()
	if ok && strings.HasPrefix(l, "extra ") {
		extra, err := base64.StdEncoding.Strict().DecodeString(strings.TrimPrefix(l, "extra "))
		if err != nil || len(extra) == 0 {
			return bad("extra data is not base64")
		}
		p.Extra = extra
		l, ok = line()
	}
	idx, found := strings.CutPrefix(l, "index ")
	if !ok || !found {
		return bad(`no "index N" line`)
	}
	n, err := strconv.ParseInt(idx, 10, 64)
	if err != nil || n < 0 || strconv.FormatInt(n, 10) != idx {
		return bad(fmt.Sprintf("index %q: want a decimal number without leading zeros", idx))
	}
	p.Index = n
	for {
		l, ok := line()
		if !ok {
			return bad("no blank line before the checkpoint")
		}
		if l == "" {
			break
		}
		if len(p.Proof) == maxProofHashes {
			return bad(fmt.Sprintf("more than %d proof hashes", maxProofHashes))
		}
		h, err := base64.StdEncoding.Strict().DecodeString(l)
		if err != nil || len(h) != 32 {
			return bad(fmt.Sprintf("proof line %d is not a base64 SHA-256 hash", len(p.Proof)+1))
		}
		p.Proof = append(p.Proof, Hash(h))
	}
	if rest == "" {
		return bad("no checkpoint")
	}
	p.Checkpoint = []byte(rest)
	return p, nil
}

// Verify checks the proof with the known checkpointer keys: the checkpoint
// is signed by one, and the event in Extra is leaf Index of its tree. It
// returns the checkpoint (Signers: every known key that signed it).
func (p *TlogProof) Verify(known note.Verifiers) (*Checkpoint, error) {
	cp, err := OpenCheckpoint(p.Checkpoint, known)
	if err != nil {
		return nil, err
	}
	if p.Index >= cp.Size {
		return nil, fmt.Errorf("%w: leaf %d is past the checkpoint's %d events", ErrCheckpointMismatch, p.Index, cp.Size)
	}
	proof := make(tlog.RecordProof, len(p.Proof))
	for i, h := range p.Proof {
		proof[i] = tlog.Hash(h)
	}
	if err := CheckInclusion(proof, cp.Size, cp.Root, p.Index, LeafHash(p.Extra)); err != nil {
		return nil, fmt.Errorf("%w: the event is not leaf %d of the checkpoint's tree: %v", ErrCheckpointMismatch, p.Index, err)
	}
	return cp, nil
}
