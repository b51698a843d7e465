package chain

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// Checkpoints: every event of every block, in stream order, is a leaf of
// one RFC 6962 Merkle tree over the whole stream (leaf i = LeafHash of the
// event as stored). A checkpointer signs the tree's size and root in the
// C2SP tlog-checkpoint signed-note format, with its own key, to the stream
// GRIDSEAL_CHECKPOINTS. A verifier that pinned a checkpoint can prove that
// the stream still holds exactly those events; an inclusion proof shows one
// command is in a checkpointed tree.
const (
	CheckpointStream  = "GRIDSEAL_CHECKPOINTS"
	checkpointSubject = "gridseal.checkpoint."
	// CheckpointOrigin names gridseal's tree in checkpoint notes.
	CheckpointOrigin = "gridseal/chain/" + StreamName
)

// Checkpoint is a signed statement of the tree's size and root.
type Checkpoint struct {
	Size    int64
	Root    Hash
	Note    []byte   // the whole signed note, as stored
	Signers []string // names of the known keys whose signatures verified
	// Stored is when the checkpoint stream stored it; zero if it was not
	// read from the stream (a pinned file). The note itself has no time.
	Stored time.Time
}

// Body is the checkpoint's text, as signed.
func (c *Checkpoint) Body() string {
	return fmt.Sprintf("%s\n%d\n%s\n", CheckpointOrigin, c.Size, base64.StdEncoding.EncodeToString(c.Root[:]))
}

// SignCheckpoint signs size and root with s.
func SignCheckpoint(size int64, root Hash, s note.Signer) (*Checkpoint, error) {
	c := &Checkpoint{Size: size, Root: root}
	signed, err := note.Sign(&note.Note{Text: c.Body()}, s)
	if err != nil {
		return nil, fmt.Errorf("sign checkpoint: %w", err)
	}
	c.Note = signed
	return c, nil
}

// OpenCheckpoint verifies a signed checkpoint with the known keys and parses it.
func OpenCheckpoint(msg []byte, known note.Verifiers) (*Checkpoint, error) {
	n, err := note.Open(msg, known)
	if err != nil {
		return nil, fmt.Errorf("checkpoint signature: %w", err)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 || lines[0] != CheckpointOrigin {
		return nil, fmt.Errorf("%w: checkpoint origin %q", ErrFormat, lines[0])
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 {
		return nil, fmt.Errorf("%w: checkpoint size %q", ErrFormat, lines[1])
	}
	raw, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(raw) != 32 {
		return nil, fmt.Errorf("%w: checkpoint root %q", ErrFormat, lines[2])
	}
	c := &Checkpoint{Size: size, Note: append([]byte(nil), msg...)}
	copy(c.Root[:], raw)
	for _, sig := range n.Sigs {
		c.Signers = append(c.Signers, sig.Name)
	}
	return c, nil
}

// RootAcc computes the RFC 6962 root of a growing tree in O(log n) memory:
// the roots of the perfect subtrees along the tree's right edge.
type RootAcc struct {
	n     int64
	stack []Hash // perfect subtree roots, largest first
}

// Append adds one leaf hash.
func (a *RootAcc) Append(leaf Hash) {
	a.stack = append(a.stack, leaf)
	// Merge equal-sized subtrees: as many as trailing one bits of n.
	for m := a.n; m&1 == 1; m >>= 1 {
		k := len(a.stack)
		a.stack = append(a.stack[:k-2], nodeHash(a.stack[k-2], a.stack[k-1]))
	}
	a.n++
}

// Size is the number of leaves.
func (a *RootAcc) Size() int64 { return a.n }

// Root is the tree hash of the leaves so far.
func (a *RootAcc) Root() Hash {
	if a.n == 0 {
		return MerkleRoot(nil)
	}
	r := a.stack[len(a.stack)-1]
	for i := len(a.stack) - 2; i >= 0; i-- {
		r = nodeHash(a.stack[i], r)
	}
	return r
}

// CheckInclusion checks an inclusion proof of the leaf with hash leaf at
// index i in a tree of size n and root.
func CheckInclusion(p tlog.RecordProof, n int64, root Hash, i int64, leaf Hash) error {
	return tlog.CheckRecord(p, n, tlog.Hash(root), i, tlog.Hash(leaf))
}

// EnsureCheckpointStream creates the checkpoint stream (no deletes, no purges).
func EnsureCheckpointStream(ctx context.Context, js jetstream.JetStream, replicas int) error {
	_, err := js.Stream(ctx, CheckpointStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: CheckpointStream, Subjects: []string{checkpointSubject + ">"},
			Storage: jetstream.FileStorage, Replicas: max(replicas, 1), DenyDelete: true, DenyPurge: true, AllowDirect: true})
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			err = nil
		}
	}
	return err
}

// latestWindow is how many of the newest checkpoint messages
// LatestCheckpoint reads: with several checkpointers, the last message may
// come from one that lags.
const latestWindow = 256

// ErrCheckpointMismatch says the stream does not hold what a signed
// checkpoint says it held: a rewritten or truncated chain.
var ErrCheckpointMismatch = errors.New("the stream does not match a signed checkpoint")

// LatestCheckpoint returns the largest checkpoint signed by a known key
// among the newest latestWindow checkpoint messages, or nil.
func LatestCheckpoint(ctx context.Context, js jetstream.JetStream, known note.Verifiers) (*Checkpoint, error) {
	s, st, err := checkpointStream(ctx, js)
	if s == nil || err != nil {
		return nil, err
	}
	var best *Checkpoint
	// At most latestWindow messages are read, verified or not: messages
	// signed by a retired key, or junk, cannot make this read the stream.
	for seq, read := st.LastSeq, 0; seq >= st.FirstSeq && seq > 0 && read < latestWindow; seq, read = seq-1, read+1 {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			continue
		}
		c, err := OpenCheckpoint(m.Data, known)
		if err != nil {
			continue
		}
		if best == nil || c.Size > best.Size {
			best = c
		}
	}
	return best, nil
}

// checkpointStream returns the checkpoint stream and its state, or a nil
// stream when there is none yet.
func checkpointStream(ctx context.Context, js jetstream.JetStream) (jetstream.Stream, jetstream.StreamState, error) {
	s, err := js.Stream(ctx, CheckpointStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, jetstream.StreamState{}, nil
	}
	if err != nil {
		return nil, jetstream.StreamState{}, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, jetstream.StreamState{}, err
	}
	return s, info.State, nil
}

// Checkpointer follows the chain, folds every event into the tree and signs
// a checkpoint every Every (when the tree grew) or every EveryEvents events,
// whichever comes first.
type Checkpointer struct {
	Signer      note.Signer
	Every       time.Duration
	EveryEvents int64
	// Replicas of the checkpoint stream, when Run creates it: as many as
	// the chain stream's, so losing a node does not stop checkpoints.
	Replicas int
	Log      *zap.Logger
	// Witnesses are asked to cosign each checkpoint before it is published
	// (c2sp.org/tlog-witness); the checkpoint is published with every
	// cosignature that came within WitnessTimeout (default 5s), however
	// few: a witness that is down delays checkpoints by at most that, and
	// stops nothing. WitnessQuorum is how many cosignatures make a
	// checkpoint count as witnessed, for Witnessed and the metrics.
	Witnesses      []Witness
	WitnessQuorum  int
	WitnessTimeout time.Duration
	// TreeDir, if set, keeps the tree the consistency proofs for witnesses
	// come from in files under it rather than in memory (about 64 bytes
	// an event). Only used with Witnesses.
	TreeDir string
	// HTTPClient talks to the witnesses; nil: a client of its own.
	HTTPClient *http.Client

	witnesses   []*witnessClient // made by Run; fixed from then on
	mu          sync.Mutex
	lastCosigs  int       // cosignatures on the last checkpoint published
	witnessedAt time.Time // when the last checkpoint with a quorum was published
	failures    uint64    // attempts that failed, in all
	inARow      int       // attempts that failed since the last success
	lastErr     error
	lastSuccess time.Time
	stopped     error // why Run stopped, if it failed
}

// failingAfter is how many checkpoint attempts in a row must fail before
// Err reports the checkpointer failing: one may meet a leader election.
const failingAfter = 2

// failed counts a failed attempt to sign or publish a checkpoint.
func (c *Checkpointer) failed(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failures++
	c.inARow++
	c.lastErr = err
}

func (c *Checkpointer) succeeded() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inARow, c.lastErr, c.lastSuccess = 0, nil, time.Now()
}

// Err says why the checkpointer is failing: Run stopped with an error, or
// its last attempts to publish a checkpoint failed. It is nil while
// checkpoints are signed (or nothing new needed one). Safe to call from
// any goroutine, as readiness checks do.
func (c *Checkpointer) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	since := "none signed yet"
	if !c.lastSuccess.IsZero() {
		since = "the last signed at " + c.lastSuccess.Format(time.RFC3339)
	}
	switch {
	case c.stopped != nil:
		return fmt.Errorf("checkpointer stopped (%s): %w", since, c.stopped)
	case c.inARow >= failingAfter:
		return fmt.Errorf("checkpoints failing: %d attempts in a row (%s): %w", c.inARow, since, c.lastErr)
	}
	return nil
}

// Status returns how many checkpoint attempts failed in all and when a
// checkpoint was last published (zero if never).
func (c *Checkpointer) Status() (failures uint64, lastSuccess time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failures, c.lastSuccess
}

// Run checkpoints until ctx ends, then returns nil. An error it stops with
// before that is also what Err reports from then on.
func (c *Checkpointer) Run(ctx context.Context, js jetstream.JetStream) (err error) {
	parent := ctx
	defer func() {
		if parent.Err() != nil {
			err = nil // stopped, not failed
			return
		}
		if err != nil {
			c.mu.Lock()
			c.stopped = err
			c.mu.Unlock()
		}
	}()
	if err := EnsureCheckpointStream(ctx, js, c.Replicas); err != nil {
		return fmt.Errorf("checkpoint stream: %w", err)
	}
	every := c.Every
	if every <= 0 {
		every = 10 * time.Second
	}
	var acc RootAcc
	var tree *Tree // with witnesses: every hash, for consistency proofs
	if len(c.Witnesses) > 0 {
		if tree, err = c.startWitnesses(); err != nil {
			return err
		}
		defer func() { _ = tree.Close() }()
	}
	var signed int64
	tick := time.NewTicker(every)
	defer tick.Stop()
	publish := func() {
		if acc.Size() == signed {
			return
		}
		cp, err := SignCheckpoint(acc.Size(), acc.Root(), c.Signer)
		cosigs := 0
		if err == nil && tree != nil {
			cp.Note, cosigs = witnessRound(ctx, c.witnesses, cp, func(old int64) ([]Hash, error) {
				p, err := tlog.ProveTree(cp.Size, old, tree)
				out := make([]Hash, len(p))
				for i, h := range p {
					out[i] = Hash(h)
				}
				return out, err
			}, c.witnessTimeout(), c.Log)
		}
		if err == nil {
			_, err = js.Publish(ctx, checkpointSubject+c.Signer.Name(), cp.Note)
		}
		if err != nil {
			c.failed(err)
			c.Log.Warn("checkpoint not published", zap.Error(err))
			return
		}
		c.succeeded()
		c.mu.Lock()
		c.lastCosigs = cosigs
		if tree != nil && cosigs >= max(c.WitnessQuorum, 1) {
			c.witnessedAt = time.Now()
		}
		c.mu.Unlock()
		signed = acc.Size()
		// A checkpoint signed for EveryEvents restarts the period.
		tick.Reset(every)
	}
	// The scan ends with Run: Run stops it and waits for it, so nothing
	// of the checkpointer outlives the call. A message the store cannot
	// return stops the checkpointer: a tree without its events must not be
	// signed.
	events, errc, stop := followStream(ctx, js, 1, 64)
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return err
		case <-tick.C:
			publish()
		case m := <-events:
			b, err := ParseBlock(m.Data)
			if err != nil {
				continue // not a block: no leaves (verifiers skip it alike)
			}
			for _, e := range b.Events {
				acc.Append(LeafHash(e))
				if tree != nil {
					if err := tree.AppendLeaf(e); err != nil {
						return fmt.Errorf("checkpoint tree: %w", err)
					}
				}
			}
			if c.EveryEvents > 0 && acc.Size()-signed >= c.EveryEvents {
				publish()
			}
		}
	}
}

// leavesOf returns a block message's leaves in order; none for a message
// that is not a block.
func leavesOf(data []byte) [][]byte {
	b, err := ParseBlock(data)
	if err != nil {
		return nil
	}
	return b.Events
}

// Inclusion is the proof that one recorded event is in a signed checkpoint.
type Inclusion struct {
	Checkpoint *Checkpoint
	Leaf       int64 // the event's index in the tree
	LeafHash   Hash
	Proof      []Hash // RFC 6962 audit path, leaf to root
}

// ErrNotCheckpointed says no signed checkpoint covers the event (yet).
var ErrNotCheckpointed = errors.New("not in the newest signed checkpoint")

// treeAtCheckpoint reads the stream from the start, block by block, into a
// tree that covers the newest checkpoint signed by a known key, and checks
// the tree has the signed root. It returns a nil checkpoint if none is
// signed yet.
func treeAtCheckpoint(ctx context.Context, js jetstream.JetStream, known note.Verifiers) (*Checkpoint, *Tree, error) {
	cp, err := LatestCheckpoint(ctx, js, known)
	if err != nil || cp == nil {
		return nil, nil, err
	}
	tree, err := readTree(ctx, js, cp.Size)
	if err != nil {
		return nil, nil, err
	}
	if tree.Size() < cp.Size {
		return nil, nil, fmt.Errorf("%w: the stream holds %d events, the checkpoint %d", ErrCheckpointMismatch, tree.Size(), cp.Size)
	}
	if root, err := tree.Root(cp.Size); err != nil || root != cp.Root {
		return nil, nil, fmt.Errorf("%w: the root of the first %d events differs", ErrCheckpointMismatch, cp.Size)
	}
	return cp, tree, nil
}

// ProveEvent proves that event index of the block at stream sequence seq
// is in the newest checkpoint signed by a known key. It reads the stream
// from the start up to the checkpoint's size, checks that the stream's
// tree has the signed root, and checks the proof it returns.
func ProveEvent(ctx context.Context, js jetstream.JetStream, known note.Verifiers, seq uint64, index int) (*Inclusion, error) {
	cp, tree, err := treeAtCheckpoint(ctx, js, known)
	if err != nil {
		return nil, err
	}
	if cp == nil {
		return nil, fmt.Errorf("event %d of the block at sequence %d is %w: there is none yet", index, seq, ErrNotCheckpointed)
	}
	return ProveInTree(tree, cp, seq, index)
}

// ProveInTree proves event index of the block at stream sequence seq is in
// the checkpoint cp, from a tree built block by block from the stream
// (Tree.AppendBlock, or tiles): it checks the tree has the checkpoint's root, and checks
// the proof it returns.
func ProveInTree(tree ProofTree, cp *Checkpoint, seq uint64, index int) (*Inclusion, error) {
	leaf, err := tree.LeafOf(seq, index)
	if err != nil {
		return nil, err
	}
	if leaf < 0 || leaf >= cp.Size {
		return nil, fmt.Errorf("event %d of the block at sequence %d is %w (%d events)", index, seq, ErrNotCheckpointed, cp.Size)
	}
	if tree.Size() < cp.Size {
		return nil, fmt.Errorf("event %d of the block at sequence %d: %w: this tree has read %d of its %d events",
			index, seq, ErrNotCheckpointed, tree.Size(), cp.Size)
	}
	root, err := tree.Root(cp.Size)
	if err != nil {
		return nil, err // the tree could not be read: no evidence either way
	}
	if root != cp.Root {
		return nil, fmt.Errorf("%w: the root of the first %d events differs", ErrCheckpointMismatch, cp.Size)
	}
	leafHash, err := tree.LeafHash(leaf)
	if err != nil {
		return nil, err
	}
	proof, err := tree.ProveInclusion(leaf, cp.Size)
	if err != nil {
		return nil, err
	}
	if err := CheckInclusion(proof, cp.Size, cp.Root, leaf, leafHash); err != nil {
		return nil, fmt.Errorf("%w: proof does not check: %v", ErrCheckpointMismatch, err)
	}
	inc := &Inclusion{Checkpoint: cp, Leaf: leaf, LeafHash: leafHash, Proof: make([]Hash, len(proof))}
	for i, h := range proof {
		inc.Proof[i] = Hash(h)
	}
	return inc, nil
}

// Consistency proves the newest signed checkpoint's tree extends the tree
// of OldSize events with root OldRoot (RFC 6962 consistency proof).
type Consistency struct {
	OldSize int64
	OldRoot Hash
	New     *Checkpoint
	Proof   []Hash
}

// ProveConsistency proves the newest checkpoint signed by a known key
// extends the stream's first oldSize events, and checks the proof. A
// holder of an older checkpoint compares its root with OldRoot.
func ProveConsistency(ctx context.Context, js jetstream.JetStream, known note.Verifiers, oldSize int64) (*Consistency, error) {
	cp, tree, err := treeAtCheckpoint(ctx, js, known)
	if err != nil {
		return nil, err
	}
	if cp == nil {
		return nil, errors.New("no signed checkpoint yet")
	}
	return ConsistencyInTree(tree, cp, oldSize)
}

// CheckConsistency checks a consistency proof between two tree heads.
func CheckConsistency(proof []Hash, newSize int64, newRoot Hash, oldSize int64, oldRoot Hash) error {
	p := make(tlog.TreeProof, len(proof))
	for i, h := range proof {
		p[i] = tlog.Hash(h)
	}
	return tlog.CheckTree(p, newSize, tlog.Hash(newRoot), oldSize, tlog.Hash(oldRoot))
}
