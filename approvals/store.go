package approvals

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/policy"
)

// Bucket is the JetStream key-value bucket holding proposals, their
// signatures and their consumption, and the Published policy.
const Bucket = "GRIDSEAL_APPROVALS"

// UsedStream records each approval's one use as the first and only message
// on gridseal.approval.used.<id>, in a stream that forbids deletes and
// purges. It, not the bucket, is the authority on single use: a bucket
// entry can be rewritten from its history, a stream message cannot be
// taken back.
const (
	UsedStream  = "GRIDSEAL_APPROVALS_USED"
	usedSubject = "gridseal.approval.used."
)

// Errors of the approval store.
var (
	ErrNotFound = errors.New("no such approval")
	ErrConsumed = errors.New("approval already used")
	ErrReplay   = ErrConsumed
)

// Signature is one approver's signature as stored.
type Signature struct {
	Sig []byte    `json:"sig"`
	At  time.Time `json:"at"`
}

// Consumption records the one use of an approval.
type Consumption struct {
	At time.Time `json:"at"`
	By string    `json:"by"` // the proxy (writer id) that forwarded the command
	Op uint64    `json:"op,omitempty"`
}

// Entry is the stored state of one proposal. Proposal holds the exact
// signing bytes, never a re-encoding.
type Entry struct {
	Proposal    []byte       `json:"proposal"`
	ProposerSig []byte       `json:"proposer_sig"`
	Signatures  []Signature  `json:"signatures"`
	Consumed    *Consumption `json:"consumed,omitempty"`
}

// Stored is an entry with its decoded proposal and KV revision. A Stored
// value never changes: each revision is a new one, so what is learnt about
// its signatures can be cached on it.
type Stored struct {
	ID       ID
	Revision uint64
	Entry    Entry
	Proposal *Proposal
	// Seen is when the proposal was first seen: when this process first
	// indexed it (or, if earlier, when NATS stored the revision it first
	// read), or when Get loaded it. A proposal whose window starts more than
	// Skew after Seen is refused (Proposal.CheckStart). Zero: unknown.
	Seen time.Time
	sigs atomic.Pointer[sigResult]
}

// sigResult caches the signature checks of one Stored under one policy.
type sigResult struct {
	digest      string
	rule        *policy.Rule
	approvers   []string
	ignored     []string
	proposerErr error
}

// Published is the policy a proxy has in force, as it publishes it in the
// bucket so that CLI tools propose under the right policy. (A proxy's own
// record of the newest policy it accepted is policy.Accepted, on its disk.)
type Published struct {
	ID      string    `json:"id"`
	Version int       `json:"version"`
	Digest  string    `json:"digest"`
	YAML    []byte    `json:"yaml"`
	Since   time.Time `json:"since"`
}

// Store keeps approvals in the JetStream key-value bucket. After Watch, it
// also keeps an in-memory index by exact command, so deciding a write does
// not wait for NATS until the approval is consumed.
type Store struct {
	kv   jetstream.KeyValue
	js   jetstream.JetStream
	used jetstream.Stream
	log  *zap.Logger

	mu      sync.RWMutex
	byID    map[ID]*Stored
	byMatch map[string][]*Stored
	usedIDs map[ID]*Consumption // uses seen by this process: never forgotten
	// OnChange, if set before Watch, sees every change: before is nil for a
	// new proposal.
	OnChange func(before, after *Stored)
	// OnInvalid, if set before Watch, sees every change to a proposal's key
	// that is not a valid proposal stored under its own id (an entry altered
	// in the bucket); the index ignores it.
	OnInvalid func(key string, err error)
	// warm, if set, pre-verifies each new revision's signatures off the
	// request path.
	warm atomic.Pointer[func(*Stored)]
	// refused, if set, is why no approval may be consumed (Refuse).
	refused atomic.Pointer[error]
}

func key(id ID) string { return "p." + id.String() }

// OpenStore opens (creating if needed) the approvals bucket.
func OpenStore(ctx context.Context, js jetstream.JetStream, replicas int, log *zap.Logger) (*Store, error) {
	if replicas <= 0 {
		replicas = 1
	}
	kv, err := js.KeyValue(ctx, Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: Bucket, Description: "gridseal m-of-n approvals",
			History: 16, Storage: jetstream.FileStorage, Replicas: replicas,
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, Bucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("approvals bucket: %w", err)
	}
	used, err := js.Stream(ctx, UsedStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		used, err = js.CreateStream(ctx, jetstream.StreamConfig{
			Name: UsedStream, Description: "gridseal: each approval's single use",
			Subjects: []string{usedSubject + ">"}, Storage: jetstream.FileStorage, Replicas: replicas,
			DenyDelete: true, DenyPurge: true, AllowDirect: true, MaxMsgsPerSubject: 1, Discard: jetstream.DiscardNew,
		})
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			used, err = js.Stream(ctx, UsedStream)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("approvals use stream: %w", err)
	}
	if c := used.CachedInfo().Config; !c.DenyDelete || !c.DenyPurge || c.AllowRollup || c.MaxAge > 0 {
		return nil, fmt.Errorf("approvals use stream %s allows deletes, purges, rollups or expiry: refusing it", UsedStream)
	}
	return &Store{kv: kv, js: js, used: used, log: log, byID: map[ID]*Stored{}, byMatch: map[string][]*Stored{}}, nil
}

// Used reports whether the approval's single use is recorded, and by whom.
func (s *Store) Used(ctx context.Context, id ID) (*Consumption, error) {
	m, err := s.used.GetLastMsgForSubject(ctx, usedSubject+id.String())
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read approval use: %w", err)
	}
	var c Consumption
	if err := json.Unmarshal(m.Data, &c); err != nil {
		return nil, fmt.Errorf("approval use record %s: %w", id, err)
	}
	return &c, nil
}

// Propose stores a new proposal with the proposer's signature.
func (s *Store) Propose(ctx context.Context, p *Proposal, proposerSig []byte) (ID, error) {
	id := p.ID()
	e := Entry{Proposal: p.SigningBytes(), ProposerSig: proposerSig}
	data, err := json.Marshal(e)
	if err != nil {
		return id, err
	}
	if _, err := s.kv.Create(ctx, key(id), data); err != nil {
		return id, fmt.Errorf("store proposal: %w", err)
	}
	return id, nil
}

// Get reads one approval from the bucket, marked used if the use stream
// says so whatever the bucket entry claims.
func (s *Store) Get(ctx context.Context, id ID) (*Stored, error) {
	st, err := s.getRaw(ctx, id)
	if err != nil || st.Entry.Consumed != nil {
		return st, err
	}
	used, err := s.Used(ctx, id)
	if err != nil {
		return nil, err
	}
	st.Entry.Consumed = used
	return st, nil
}

// getRaw reads the bucket entry as it is.
func (s *Store) getRaw(ctx context.Context, id ID) (*Stored, error) {
	kve, err := s.kv.Get(ctx, key(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("read approval: %w", err)
	}
	st, err := decodeStored(id, kve.Value(), kve.Revision())
	if err != nil {
		return nil, err
	}
	st.Seen = seenAt(kve)
	return st, nil
}

// seenAt is when kve was seen: when NATS stored it, or now if that is
// unknown or later.
func seenAt(kve jetstream.KeyValueEntry) time.Time {
	now := time.Now()
	if c := kve.Created(); !c.IsZero() && c.Before(now) {
		return c
	}
	return now
}

func decodeStored(id ID, value []byte, rev uint64) (*Stored, error) {
	var e Entry
	if err := json.Unmarshal(value, &e); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrProposal, id, err)
	}
	p, err := DecodeProposal(e.Proposal)
	if err != nil {
		return nil, err
	}
	if p.ID() != id {
		return nil, fmt.Errorf("%w: stored under %s but its id is %s", ErrProposal, id, p.ID())
	}
	return &Stored{ID: id, Revision: rev, Entry: e, Proposal: p}, nil
}

// update applies fn to the stored entry with compare-and-set on its
// revision, retrying when another writer changed it meanwhile.
func (s *Store) update(ctx context.Context, id ID, fn func(*Stored) error) (*Stored, error) {
	for attempt := 0; attempt < 16; attempt++ {
		st, err := s.getRaw(ctx, id)
		if err != nil {
			return nil, err
		}
		if err := fn(st); err != nil {
			return nil, err
		}
		data, err := json.Marshal(st.Entry)
		if err != nil {
			return nil, err
		}
		rev, err := s.kv.Update(ctx, key(id), data, st.Revision)
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("update approval %s: %w", id, err)
		}
		st.Revision = rev
		return st, nil
	}
	return nil, fmt.Errorf("update approval %s: too many concurrent changes", id)
}

// AddSignature appends sig to the approval, unless it is consumed or the
// same signature is already there.
func (s *Store) AddSignature(ctx context.Context, id ID, sig []byte) (*Stored, error) {
	if used, err := s.Used(ctx, id); err != nil || used != nil {
		if err == nil {
			err = ErrConsumed
		}
		return nil, err
	}
	return s.update(ctx, id, func(st *Stored) error {
		if st.Entry.Consumed != nil {
			return ErrConsumed
		}
		for _, x := range st.Entry.Signatures {
			if string(x.Sig) == string(sig) {
				return errors.New("this signature is already on the approval")
			}
		}
		st.Entry.Signatures = append(st.Entry.Signatures, Signature{Sig: sig, At: time.Now().UTC()})
		return nil
	})
}

// Consume marks st used. The use is the first message on the approval's
// subject of the use stream, published with Nats-Expected-Last-Subject-
// Sequence 0: of two proxies racing for one approval exactly one succeeds,
// and no later rewrite of the bucket can make a used approval usable again.
// The bucket entry is updated afterwards for people reading it.
func (s *Store) Consume(ctx context.Context, st *Stored, by string, op uint64) error {
	if err := s.Failed(); err != nil {
		return err
	}
	c := Consumption{At: time.Now().UTC(), By: by, Op: op}
	data, err := json.Marshal(c)
	if err != nil {
		return err
	}
	_, err = s.js.Publish(ctx, usedSubject+st.ID.String(), data, jetstream.WithExpectLastSequencePerSubject(0))
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return ErrConsumed
	}
	if err != nil {
		return fmt.Errorf("consume approval %s: %w", st.ID, err)
	}
	s.markUsed(st.ID, &c)
	// The bucket entry follows, off the request path: the command is
	// forwarded as soon as the use is durable.
	go func() {
		uctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := s.update(uctx, st.ID, func(cur *Stored) error {
			if cur.Entry.Consumed != nil {
				return ErrConsumed
			}
			cur.Entry.Consumed = &c
			return nil
		}); err != nil && !errors.Is(err, ErrConsumed) {
			s.log.Warn("approval used, but its bucket entry could not say so", zap.String("approval", st.ID.String()), zap.Error(err))
		}
	}()
	return nil
}

// Refuse makes every later Consume fail with err: the store can no longer
// tell whether an approval was used. It cannot be undone but by a restart.
func (s *Store) Refuse(err error) { s.refused.CompareAndSwap(nil, &err) }

// Failed returns why the store refuses to consume approvals, or nil.
func (s *Store) Failed() error {
	if e := s.refused.Load(); e != nil {
		return *e
	}
	return nil
}

// RestoreUses makes sure every use in uses — what the chain records as
// used, read by the caller — is known to be used: at once in this store's
// index, and in the use stream for every proxy, where a use record that is
// missing (the stream deleted and created anew, empty) is published again.
// It returns the ids whose use record it restored; on an error, some may be
// missing from the stream still (though never from this store's index).
func (s *Store) RestoreUses(ctx context.Context, uses map[ID]Consumption) ([]ID, error) {
	for id, c := range uses {
		s.markUsed(id, &c)
	}
	var restored []ID
	for id, c := range uses {
		got, err := s.Used(ctx, id)
		if err != nil {
			return restored, err
		}
		if got != nil {
			continue
		}
		data, err := json.Marshal(c)
		if err != nil {
			return restored, err
		}
		_, err = s.js.Publish(ctx, usedSubject+id.String(), data, jetstream.WithExpectLastSequencePerSubject(0))
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			continue // restored meanwhile, by another proxy
		}
		if err != nil {
			return restored, fmt.Errorf("restore the use of approval %s: %w", id, err)
		}
		restored = append(restored, id)
		s.log.Error("approval use record was missing from the use stream, though the chain records the use: restored it",
			zap.String("approval", id.String()), zap.String("used_by", c.By), zap.Uint64("op", c.Op))
	}
	return restored, nil
}

// markUsed remembers in the index that id was used, whatever the bucket says later.
func (s *Store) markUsed(id ID, c *Consumption) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.usedIDs == nil {
		s.usedIDs = map[ID]*Consumption{}
	}
	s.usedIDs[id] = c
}

// List returns every approval in the bucket, newest window first.
func (s *Store) List(ctx context.Context) ([]*Stored, error) {
	keys, err := s.kv.ListKeysFiltered(ctx, "p.*")
	if err != nil {
		return nil, fmt.Errorf("list approvals: %w", err)
	}
	var out []*Stored
	for k := range keys.Keys() {
		id, err := ParseID(strings.TrimPrefix(k, "p."))
		if err != nil {
			continue
		}
		st, err := s.Get(ctx, id)
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				continue
			}
			return nil, err
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Proposal.NotBefore.After(out[j].Proposal.NotBefore) })
	return out, nil
}

// PublishPolicy stores p, the policy in force, as the Published policy for
// CLI tools.
func (s *Store) PublishPolicy(ctx context.Context, p *policy.Policy) error {
	data, err := json.Marshal(Published{ID: p.ID, Version: p.Version, Digest: p.Digest, YAML: p.Bytes(), Since: time.Now().UTC()})
	if err != nil {
		return err
	}
	_, err = s.kv.Put(ctx, "policy.current", data)
	return err
}

// PublishedPolicy reads the policy the proxies publish, and parses it.
func (s *Store) PublishedPolicy(ctx context.Context) (*policy.Policy, error) {
	kve, err := s.kv.Get(ctx, "policy.current")
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, errors.New("no proxy has published its policy yet: start gridseal proxy (or demo) first")
	}
	if err != nil {
		return nil, err
	}
	var pf Published
	if err := json.Unmarshal(kve.Value(), &pf); err != nil {
		return nil, fmt.Errorf("policy in force: %w", err)
	}
	return policy.Parse("policy "+pf.ID+" (in force)", pf.YAML)
}

// OpenPublished opens the approvals bucket as a client (one replica, no
// log) and reads the policy the proxies publish: what gridseal propose,
// approve and the approvals commands work with.
func OpenPublished(ctx context.Context, js jetstream.JetStream) (*Store, *policy.Policy, error) {
	store, err := OpenStore(ctx, js, 1, zap.NewNop())
	if err != nil {
		return nil, nil, err
	}
	pol, err := store.PublishedPolicy(ctx)
	if err != nil {
		return nil, nil, err
	}
	return store, pol, nil
}

// PublishedDevices maps each device of the policy the proxies published to
// its PLC's host:port, for the EVE export's PLC address; nil when no proxy
// published one (or the bucket is not there). Unlike OpenStore it creates
// nothing.
func PublishedDevices(ctx context.Context, js jetstream.JetStream) map[string]string {
	kv, err := js.KeyValue(ctx, Bucket)
	if err != nil {
		return nil
	}
	p, err := (&Store{kv: kv}).PublishedPolicy(ctx)
	if err != nil {
		return nil
	}
	out := make(map[string]string, len(p.Devices))
	for _, d := range p.Devices {
		out[d.Name] = d.Upstream
	}
	return out
}

// Watch keeps the in-memory index up to date until ctx ends. It returns
// once the index holds every approval stored when it was called.
func (s *Store) Watch(ctx context.Context) error {
	w, err := s.kv.Watch(ctx, "p.*")
	if err != nil {
		return fmt.Errorf("watch approvals: %w", err)
	}
	ready := make(chan struct{})
	go func() {
		defer func() { _ = w.Stop() }()
		initial := true
		for {
			select {
			case <-ctx.Done():
				return
			case kve, ok := <-w.Updates():
				if !ok {
					return
				}
				if kve == nil { // end of the initial values
					if initial {
						initial = false
						close(ready)
					}
					continue
				}
				s.apply(kve, !initial)
			}
		}
	}()
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Store) apply(kve jetstream.KeyValueEntry, live bool) {
	id, err := ParseID(strings.TrimPrefix(kve.Key(), "p."))
	if err != nil {
		return
	}
	if kve.Operation() != jetstream.KeyValuePut {
		s.mu.Lock()
		s.removeLocked(id)
		s.mu.Unlock()
		return
	}
	st, err := decodeStored(id, kve.Value(), kve.Revision())
	if err != nil {
		s.log.Warn("ignoring an invalid approval entry", zap.String("key", kve.Key()), zap.Error(err))
		if live && s.OnInvalid != nil {
			s.OnInvalid(kve.Key(), err)
		}
		return
	}
	st.Seen = seenAt(kve)
	if w := s.warm.Load(); w != nil {
		(*w)(st)
	}
	s.mu.Lock()
	before := s.byID[id]
	if before != nil && !before.Seen.IsZero() && before.Seen.Before(st.Seen) {
		st.Seen = before.Seen
	}
	if st.Entry.Consumed == nil {
		// A used approval stays used, whatever a later revision says.
		if c := s.usedIDs[id]; c != nil {
			st.Entry.Consumed = c
		} else if before != nil && before.Entry.Consumed != nil {
			st.Entry.Consumed = before.Entry.Consumed
			if s.usedIDs == nil {
				s.usedIDs = map[ID]*Consumption{}
			}
			s.usedIDs[id] = before.Entry.Consumed
			s.log.Error("approval entry rewritten to look unused; it stays used", zap.String("approval", id.String()))
		}
	}
	s.removeLocked(id)
	s.byID[id] = st
	m := MatchKey(st.Proposal.Device, st.Proposal.Unit, st.Proposal.PDU)
	s.byMatch[m] = append(s.byMatch[m], st)
	s.mu.Unlock()
	if live && s.OnChange != nil {
		s.OnChange(before, st)
	}
}

func (s *Store) removeLocked(id ID) {
	old := s.byID[id]
	if old == nil {
		return
	}
	delete(s.byID, id)
	m := MatchKey(old.Proposal.Device, old.Proposal.Unit, old.Proposal.PDU)
	list := s.byMatch[m]
	for i, x := range list {
		if x.ID == id {
			s.byMatch[m] = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(s.byMatch[m]) == 0 {
		delete(s.byMatch, m)
	}
}

// Candidates returns the approvals for exactly this command.
func (s *Store) Candidates(device string, unit byte, pdu []byte) []*Stored {
	s.mu.RLock()
	defer s.mu.RUnlock()
	list := s.byMatch[MatchKey(device, unit, pdu)]
	out := make([]*Stored, 0, len(list))
	for _, st := range list {
		if st.Proposal.Device == device && st.Proposal.Unit == unit && string(st.Proposal.PDU) == string(pdu) {
			if c := s.usedIDs[st.ID]; c != nil && st.Entry.Consumed == nil {
				used := &Stored{ID: st.ID, Revision: st.Revision, Entry: st.Entry, Proposal: st.Proposal, Seen: st.Seen}
				used.Entry.Consumed = c
				st = used
			}
			out = append(out, st)
		}
	}
	return out
}

// Pending returns the approvals in the index that are not consumed.
func (s *Store) Pending() []*Stored {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*Stored
	for _, st := range s.byID {
		if st.Entry.Consumed == nil {
			out = append(out, st)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Proposal.NotBefore.After(out[j].Proposal.NotBefore) })
	return out
}
