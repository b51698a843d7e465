package approvals_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/policy/decision"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// approvalPolicy: operators alice, bob, carol (2 of them for a setpoint,
// break-glass 1 for the breaker); dave is an engineer, not an operator.
func approvalPolicy(t testing.TB, people []*keystest.Person, revoked []uint32, extra string) []byte {
	t.Helper()
	var b strings.Builder
	b.WriteString("id: plant\nversion: 3\napprovers:\n")
	for _, p := range people {
		group := "operators"
		if p.Name == "dave" {
			group = "engineers"
		}
		policy.WriteKeysetEntry(&b, p.Name, []string{group}, p.PublicJSON(t))
	}
	if len(revoked) > 0 {
		fmt.Fprintf(&b, "revoked_keys: %v\n", strings.ReplaceAll(fmt.Sprint(revoked), " ", ", "))
	}
	b.WriteString(`devices:
  - name: inverter-1
    upstream: 127.0.0.1:1
    units: [1, 2]
    rules:
      - {name: telemetry, allow: read, functions: [3]}
      - name: setpoint
        allow: write
        functions: [6, 16, 22, 23]
        addresses: 40127-40128
        values: 0-100
        requires: {group: operators, m: 2}
        max_ttl: 1h
  - name: breaker-1
    upstream: 127.0.0.1:1
    rules:
      - name: open-breaker
        allow: write
        functions: [5]
        addresses: 1
        values: "on"
        requires: {group: operators, m: 2}
        break_glass: {m: 1}
  - name: rtu-1
    upstream: 127.0.0.1:1
    rules:
      - name: listen-only
        allow: diagnostic
        functions: [8]
        subfunctions: [4]
        requires: {group: operators, m: 2}
`)
	b.WriteString(extra)
	return []byte(b.String())
}

type rig struct {
	t                       testing.TB
	alice, bob, carol, dave *keystest.Person
	aliceKey2               *keys.Signer
	pol                     *policy.Policy
	store                   *approvals.Store
	engine                  *policy.Engine
	js                      jetstream.JetStream
	now                     time.Time
}

func newRigB(b *testing.B) *rig { return newRig(b, false) }

// waitIndexed waits until the store's index holds id's latest revision.
func (r *rig) waitIndexed(id approvals.ID) { r.waitIndexedIn(r.store, id) }

// waitIndexedIn waits until st's index holds id's latest revision.
func (r *rig) waitIndexedIn(st *approvals.Store, id approvals.ID) {
	r.t.Helper()
	want, err := r.store.Get(r.t.Context(), id)
	if err != nil {
		r.t.Fatal(err)
	}
	testwait.For(r.t, "the approval index to catch up", func() bool {
		for _, c := range st.Candidates(want.Proposal.Device, want.Proposal.Unit, want.Proposal.PDU) {
			if c.ID == id && c.Revision >= want.Revision {
				return true
			}
		}
		return false
	})
}

func newRig(t testing.TB, revokeCarol bool) *rig {
	t.Helper()
	r := &rig{t: t, alice: keystest.NewPerson(t, "alice"), bob: keystest.NewPerson(t, "bob"), carol: keystest.NewPerson(t, "carol"), dave: keystest.NewPerson(t, "dave")}
	r.aliceKey2 = r.alice.SecondKey(t)
	var revoked []uint32
	if revokeCarol {
		revoked = []uint32{r.carol.Signer.KeyID}
	}
	pol, err := policy.Parse("plant.yaml", approvalPolicy(t, []*keystest.Person{r.alice, r.bob, r.carol, r.dave}, revoked, ""))
	if err != nil {
		t.Fatal(err)
	}
	r.pol = pol
	srv := natstest.RunJetStream(t)
	nc := natstest.Connect(t, srv.URL())
	if r.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	r.store = r.openStore()
	r.engine = r.newEngine(r.store, "gw-1")
	r.now = time.Now()
	return r
}

func (r *rig) openStore() *approvals.Store {
	st, err := approvals.OpenStore(r.t.Context(), r.js, 1, zap.NewNop())
	if err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.t.Cleanup(cancel)
	if err := st.Watch(ctx); err != nil {
		r.t.Fatal(err)
	}
	return st
}

func (r *rig) newEngine(st *approvals.Store, writer string) *policy.Engine {
	e := policy.NewEngine(r.pol, zap.NewNop())
	approvals.Use(e, st, writer)
	e.SetClock(func() time.Time { return r.now })
	return e
}

// propose stores a proposal by p for pdu on device/unit, valid from now for ttl.
func (r *rig) propose(p *keystest.Person, device string, unit byte, pdu []byte, start time.Time, ttl time.Duration) approvals.ID {
	r.t.Helper()
	pr, err := approvals.NewProposal(r.pol, device, unit, pdu, ttl, p.Name, start)
	if err != nil {
		r.t.Fatal(err)
	}
	sig, err := p.Signer.Sign(approvals.ProposeInput(pr.ID()))
	if err != nil {
		r.t.Fatal(err)
	}
	id, err := r.store.Propose(r.t.Context(), pr, sig)
	if err != nil {
		r.t.Fatal(err)
	}
	return id
}

func (r *rig) sign(id approvals.ID, s *keys.Signer) {
	r.t.Helper()
	sig, err := s.Sign(approvals.ApproveInput(id))
	if err != nil {
		r.t.Fatal(err)
	}
	r.addRaw(id, sig)
}

func (r *rig) addRaw(id approvals.ID, sig []byte) {
	r.t.Helper()
	if _, err := r.store.AddSignature(r.t.Context(), id, sig); err != nil {
		r.t.Fatal(err)
	}
}

// decide asks the engine, once the store's index has seen revision-level
// changes for id.
func (r *rig) decide(e *policy.Engine, st *approvals.Store, device string, unit byte, pdu []byte, id approvals.ID) decision.Result {
	r.t.Helper()
	if id != (approvals.ID{}) {
		r.waitIndexedIn(st, id)
	}
	req, err := modbus.ParseRequest(pdu)
	if err != nil {
		r.t.Fatal(err)
	}
	return e.Decide(r.t.Context(), &decision.Input{Device: device, Unit: unit, Request: req, Op: 7})
}

var setpoint30 = modbus.AppendWriteSingleRegister(nil, 40127, 30)

func TestApprovalQuorum(t *testing.T) {
	cases := []struct {
		name    string
		signers func(r *rig) []*keys.Signer
		allow   bool
		why     string
	}{
		{"no signatures", func(*rig) []*keys.Signer { return nil }, false, "0 of 2 operators signed"},
		{"one (m-1)", func(r *rig) []*keys.Signer { return []*keys.Signer{r.alice.Signer} }, false, "1 of 2 operators signed (alice)"},
		{"two (m)", func(r *rig) []*keys.Signer { return []*keys.Signer{r.alice.Signer, r.carol.Signer} }, true, "by alice, carol"},
		{"three (m+1)", func(r *rig) []*keys.Signer {
			return []*keys.Signer{r.alice.Signer, r.carol.Signer, r.dave.Signer}
		}, true, "by alice, carol"},
		{"one approver, two keys", func(r *rig) []*keys.Signer { return []*keys.Signer{r.alice.Signer, r.aliceKey2} }, false, "1 of 2"},
		{"proposer approves own command", func(r *rig) []*keys.Signer { return []*keys.Signer{r.bob.Signer, r.alice.Signer} }, false, "1 of 2 operators signed (alice)"},
		{"approver outside the group", func(r *rig) []*keys.Signer { return []*keys.Signer{r.dave.Signer, r.alice.Signer} }, false, "1 of 2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, false)
			id := r.propose(r.bob, "inverter-1", 1, setpoint30, r.now, 15*time.Minute)
			for _, s := range tc.signers(r) {
				r.sign(id, s)
			}
			v := r.decide(r.engine, r.store, "inverter-1", 1, setpoint30, id)
			if v.Allowed() != tc.allow || !strings.Contains(v.Reason, tc.why) {
				t.Fatalf("verdict %v: %s\nwant allowed=%v with %q", v.Verdict, v.Reason, tc.allow, tc.why)
			}
			if !tc.allow && v.Denial != decision.DenyApproval {
				t.Fatalf("denial = %v, want approval", v.Denial)
			}
			if tc.allow {
				if v.Approval != id.String() {
					t.Fatalf("verdict names approval %s, want %s", v.Approval, id)
				}
				// Single use: the same command again is a replay.
				again := r.decide(r.engine, r.store, "inverter-1", 1, setpoint30, id)
				if again.Allowed() || !strings.Contains(again.Reason, "already used by gw-1") {
					t.Fatalf("replay: %v %s", again.Verdict, again.Reason)
				}
			}
		})
	}
}

func TestApprovalBadSignatures(t *testing.T) {
	r := newRig(t, true) // carol's key is revoked
	id := r.propose(r.bob, "inverter-1", 1, setpoint30, r.now, 15*time.Minute)
	mallory := keystest.NewPerson(t, "mallory")
	forged := make([]byte, 69)
	_, _ = rand.Read(forged)
	forged[0] = 1
	copy(forged[1:5], []byte{byte(r.alice.Signer.KeyID >> 24), byte(r.alice.Signer.KeyID >> 16), byte(r.alice.Signer.KeyID >> 8), byte(r.alice.Signer.KeyID)})
	good, _ := r.alice.Signer.Sign(approvals.ApproveInput(id))
	other, _ := r.alice.Signer.Sign(approvals.ApproveInput(approvals.ID{1, 2, 3}))

	r.sign(id, r.carol.Signer) // revoked
	r.addRaw(id, forged)       // random bytes behind alice's key id
	r.addRaw(id, good[:len(good)-3])
	r.addRaw(id, other)        // alice's signature over another approval
	r.sign(id, mallory.Signer) // key in no policy
	r.addRaw(id, []byte{1, 2}) // too short to carry a key id
	r.sign(id, r.alice.Signer) // the only one that counts
	v := r.decide(r.engine, r.store, "inverter-1", 1, setpoint30, id)
	if v.Allowed() || !strings.Contains(v.Reason, "1 of 2 operators signed (alice)") {
		t.Fatalf("verdict %v: %s", v.Verdict, v.Reason)
	}
	st, err := r.store.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	ev := approvals.Evaluate(r.pol, st, r.now)
	joined := strings.Join(ev.Ignored, "\n")
	for _, want := range []string{"revoked", "does not verify with alice", "belongs to no approver", "malformed"} {
		if !strings.Contains(joined, want) {
			t.Errorf("ignored signatures do not say %q:\n%s", want, joined)
		}
	}
}

func TestApprovalWindowAndPolicy(t *testing.T) {
	r := newRig(t, false)
	both := func(id approvals.ID) {
		r.sign(id, r.alice.Signer)
		r.sign(id, r.carol.Signer)
	}
	expired := r.propose(r.bob, "inverter-1", 1, setpoint30, r.now.Add(-20*time.Minute), 15*time.Minute)
	both(expired)
	if v := r.decide(r.engine, r.store, "inverter-1", 1, setpoint30, expired); v.Allowed() || !strings.Contains(v.Reason, "expired") {
		t.Fatalf("expired: %v %s", v.Verdict, v.Reason)
	}
	// A window that starts within the skew of when it is proposed: not
	// valid on a clock more than the skew behind it, valid on one within.
	future := modbus.AppendWriteSingleRegister(nil, 40127, 31)
	early := r.propose(r.bob, "inverter-1", 1, future, r.now.Add(20*time.Second), 15*time.Minute)
	both(early)
	proposedAt := r.now
	r.now = proposedAt.Add(-time.Minute)
	if v := r.decide(r.engine, r.store, "inverter-1", 1, future, early); v.Allowed() || !strings.Contains(v.Reason, "not valid before") {
		t.Fatalf("not yet valid: %v %s", v.Verdict, v.Reason)
	}
	r.now = proposedAt // within the 30 s skew
	if v := r.decide(r.engine, r.store, "inverter-1", 1, future, early); !v.Allowed() {
		t.Fatalf("inside the skew: %v %s", v.Verdict, v.Reason)
	}
	long := modbus.AppendWriteSingleRegister(nil, 40127, 32)
	tooLong := r.propose(r.bob, "inverter-1", 1, long, r.now, 2*time.Hour)
	both(tooLong)
	if v := r.decide(r.engine, r.store, "inverter-1", 1, long, tooLong); v.Allowed() || !strings.Contains(v.Reason, "longer than rule setpoint allows") {
		t.Fatalf("window over max_ttl: %v %s", v.Verdict, v.Reason)
	}
	// The policy changes after the proposal: the approval no longer counts.
	changed := modbus.AppendWriteSingleRegister(nil, 40127, 33)
	stale := r.propose(r.bob, "inverter-1", 1, changed, r.now, 15*time.Minute)
	both(stale)
	newer, err := policy.Parse("plant.yaml", append(approvalPolicy(t, []*keystest.Person{r.alice, r.bob, r.carol, r.dave}, nil, ""), "# v4\n"...))
	if err != nil {
		t.Fatal(err)
	}
	r.engine.Swap(newer)
	r.pol = newer
	if v := r.decide(r.engine, r.store, "inverter-1", 1, changed, stale); v.Allowed() || !strings.Contains(v.Reason, "is in force") {
		t.Fatalf("policy changed: %v %s", v.Verdict, v.Reason)
	}
}

// TestFutureProposalIsRefused: only gridseal propose ties a window's start
// to now; a proposal written into the bucket with a window that starts an
// hour or ten years later is refused for good — even once the clock
// reaches its start — and the refusal says why.
func TestFutureProposalIsRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ahead time.Duration
	}{
		{"one hour ahead", time.Hour},
		{"ten years ahead", 10 * 365 * 24 * time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, false)
			start := time.Now().Add(tc.ahead)
			id := r.propose(r.bob, "inverter-1", 1, setpoint30, start, 15*time.Minute)
			r.sign(id, r.alice.Signer)
			r.sign(id, r.carol.Signer)
			for _, at := range []struct {
				name string
				now  time.Time
			}{{"now", r.now}, {"at its start", start.Add(time.Second)}, {"inside its window", start.Add(5 * time.Minute)}} {
				r.now = at.now
				v := r.decide(r.engine, r.store, "inverter-1", 1, setpoint30, id)
				if v.Allowed() || !strings.Contains(v.Reason, "starts in the future") || !strings.Contains(v.Reason, "refused for good") {
					t.Fatalf("%s: %v %s", at.name, v.Verdict, v.Reason)
				}
			}
			st, err := r.store.Get(t.Context(), id)
			if err != nil {
				t.Fatal(err)
			}
			if err := approvals.VerifyProposal(r.pol, st); !errors.Is(err, approvals.ErrFutureStart) {
				t.Fatalf("an approver loading it: %v, want ErrFutureStart", err)
			}
		})
	}
}

func TestApprovalNearMatchesAreDenied(t *testing.T) {
	r := newRig(t, false)
	fc16 := modbus.AppendWriteMultipleRegisters(nil, 40127, []uint16{30})
	id := r.propose(r.bob, "inverter-1", 1, fc16, r.now, 15*time.Minute)
	r.sign(id, r.alice.Signer)
	r.sign(id, r.carol.Signer)
	fc23 := func(v uint16) []byte {
		return []byte{23, 0x9C, 0xBF, 0, 1, 0x9C, 0xBF, 0, 1, 2, byte(v >> 8), byte(v)}
	}
	near := []struct {
		name string
		unit byte
		pdu  []byte
	}{
		{"other value", 1, modbus.AppendWriteMultipleRegisters(nil, 40127, []uint16{31})},
		{"other address", 1, modbus.AppendWriteMultipleRegisters(nil, 40128, []uint16{30})},
		{"other unit", 2, fc16},
		{"fc16 covering more registers", 1, modbus.AppendWriteMultipleRegisters(nil, 40127, []uint16{30, 30})},
		{"same write as fc6", 1, setpoint30},
		{"same write as fc22", 1, []byte{22, 0x9C, 0xBF, 0, 0, 0, 30}},
		{"same write as fc23", 1, fc23(30)},
	}
	for _, tc := range near {
		t.Run(tc.name, func(t *testing.T) {
			v := r.decide(r.engine, r.store, "inverter-1", tc.unit, tc.pdu, approvals.ID{})
			if v.Allowed() {
				t.Fatalf("near match allowed: %s", v.Reason)
			}
		})
	}
	if v := r.decide(r.engine, r.store, "inverter-1", 1, fc16, id); !v.Allowed() {
		t.Fatalf("the exact command: %s", v.Reason)
	}
}

func TestTwoProxiesRaceForOneApproval(t *testing.T) {
	r := newRig(t, false)
	id := r.propose(r.bob, "inverter-1", 1, setpoint30, r.now, 15*time.Minute)
	r.sign(id, r.alice.Signer)
	r.sign(id, r.carol.Signer)
	other := r.openStore()
	engines := []*policy.Engine{r.engine, r.newEngine(other, "gw-2")}
	stores := []*approvals.Store{r.store, other}
	for i := range engines { // both indexes hold the signed approval
		_ = r.decide(engines[i], stores[i], "inverter-1", 9, setpoint30, id)
	}
	var wg sync.WaitGroup
	verdicts := make([]decision.Result, 2)
	for i := range engines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := modbus.ParseRequest(setpoint30)
			verdicts[i] = engines[i].Decide(context.Background(), &decision.Input{Device: "inverter-1", Unit: 1, Request: req})
		}()
	}
	wg.Wait()
	if verdicts[0].Allowed() == verdicts[1].Allowed() {
		t.Fatalf("both or neither allowed: %s | %s", verdicts[0].Reason, verdicts[1].Reason)
	}
	st, _ := r.store.Get(t.Context(), id)
	if st.Entry.Consumed == nil {
		t.Fatal("approval not marked used")
	}
}

func TestBreakGlass(t *testing.T) {
	r := newRig(t, false)
	open := modbus.AppendWriteSingleCoil(nil, 1, true)
	id := r.propose(r.bob, "breaker-1", 1, open, r.now, 15*time.Minute)
	r.sign(id, r.alice.Signer)
	v := r.decide(r.engine, r.store, "breaker-1", 1, open, id)
	if !v.Allowed() || !v.BreakGlass || !strings.HasPrefix(v.Reason, "BREAK-GLASS") || !strings.Contains(v.Reason, "(1 of 2)") {
		t.Fatalf("break-glass: %+v", v)
	}
	closing := modbus.AppendWriteSingleCoil(nil, 1, false)
	if v := r.decide(r.engine, r.store, "breaker-1", 1, closing, approvals.ID{}); v.Allowed() {
		t.Fatal("closing is not allowed by any rule")
	}
}

func TestProposalEncoding(t *testing.T) {
	r := newRig(t, false)
	pr, err := approvals.NewProposal(r.pol, "inverter-1", 1, setpoint30, 15*time.Minute, "bob", time.Unix(1764072000, 0))
	if err != nil {
		t.Fatal(err)
	}
	pr.Nonce = [16]byte{0: 0xAA, 15: 0x55}
	pr.PolicyDigest = [32]byte{0: 1, 31: 2}
	b := pr.SigningBytes()
	back, err := approvals.DecodeProposal(b)
	if err != nil || !bytes.Equal(back.SigningBytes(), b) || back.ID() != pr.ID() {
		t.Fatalf("round trip: %v", err)
	}
	vector := fmt.Sprintf("signing-bytes %x\nid %s\napprove-input %x\n", b, pr.ID(), approvals.ApproveInput(pr.ID()))
	path := filepath.Join("testdata", "proposal-v1.txt")
	if os.Getenv("GRIDSEAL_UPDATE_GOLDEN") != "" {
		_ = os.WriteFile(path, []byte(vector), 0o644)
	}
	want, err := os.ReadFile(path)
	if err != nil || string(want) != vector {
		t.Fatalf("proposal test vector changed (set GRIDSEAL_UPDATE_GOLDEN=1 to rewrite):\n%s", vector)
	}
	for i := range b {
		if _, err := approvals.DecodeProposal(b[:i]); err == nil {
			t.Fatalf("a %d-byte prefix decoded", i)
		}
	}
	if _, err := approvals.NewProposal(r.pol, "inverter-1", 1, modbus.AppendReadRequest(nil, 3, 0, 1), time.Minute, "bob", time.Now()); err == nil {
		t.Fatal("a read was accepted as a proposal")
	}
	if _, err := approvals.NewProposal(r.pol, "pump", 1, setpoint30, time.Minute, "bob", time.Now()); err == nil {
		t.Fatal("an unknown device was accepted")
	}
}

func FuzzDecodeProposal(f *testing.F) {
	pr := &approvals.Proposal{PolicyID: "plant", Device: "inverter-1", Unit: 1, PDU: setpoint30,
		NotBefore: time.Unix(1, 0), NotAfter: time.Unix(100, 0), Proposer: "bob", MaxUses: 1}
	f.Add(pr.SigningBytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := approvals.DecodeProposal(b)
		if err != nil {
			return
		}
		if !bytes.Equal(p.SigningBytes(), b) {
			t.Fatalf("non-canonical proposal accepted: %x", b)
		}
	})
}

// TestUsedApprovalStaysUsedWhenTheBucketIsRewritten: an insider with write
// access to the bucket puts the pre-use entry back from its history; the
// approval must not allow the command again, on this proxy or a fresh one.
func TestUsedApprovalStaysUsedWhenTheBucketIsRewritten(t *testing.T) {
	r := newRig(t, false)
	id := r.propose(r.bob, "inverter-1", 1, setpoint30, r.now, 15*time.Minute)
	r.sign(id, r.alice.Signer)
	r.sign(id, r.carol.Signer)
	if v := r.decide(r.engine, r.store, "inverter-1", 1, setpoint30, id); !v.Allowed() {
		t.Fatal(v.Reason)
	}
	kv, err := r.js.KeyValue(t.Context(), approvals.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	hist, err := kv.History(t.Context(), "p."+id.String())
	if err != nil {
		t.Fatal(err)
	}
	var preUse []byte
	for _, h := range hist {
		if !strings.Contains(string(h.Value()), `"consumed"`) {
			preUse = h.Value()
		}
	}
	if _, err := kv.Put(t.Context(), "p."+id.String(), preUse); err != nil {
		t.Fatal(err)
	}
	fresh := r.openStore()
	for _, e := range []struct {
		name string
		eng  *policy.Engine
		st   *approvals.Store
	}{{"same proxy", r.engine, r.store}, {"fresh proxy", r.newEngine(fresh, "gw-2"), fresh}} {
		if v := r.decide(e.eng, e.st, "inverter-1", 1, setpoint30, id); v.Allowed() {
			t.Fatalf("%s: replay after the bucket was rewritten: %s", e.name, v.Reason)
		}
	}
	if st, err := r.store.Get(t.Context(), id); err != nil || st.Entry.Consumed == nil || st.Entry.Consumed.By != "gw-1" {
		t.Fatalf("Get must report the use from the use stream: %+v %v", st, err)
	}
	if _, err := r.store.AddSignature(t.Context(), id, []byte{1, 2, 3, 4, 5, 6}); !errors.Is(err, approvals.ErrConsumed) {
		t.Fatalf("signing a used approval: %v", err)
	}
}

// TestApprovedDiagnostics: forcing a device into listen-only mode (function
// 8, sub-function 4) silences it on the bus; a policy can demand a quorum
// for it as for a write, and the same rules hold: m distinct operators,
// single use, exactly that command.
func TestApprovedDiagnostics(t *testing.T) {
	r := newRig(t, false)
	listenOnly := []byte{8, 0, 4, 0, 0}
	restart := []byte{8, 0, 1, 0, 0}
	if v := r.decide(r.engine, r.store, "rtu-1", 1, listenOnly, approvals.ID{}); v.Allowed() || v.Denial != decision.DenyApproval {
		t.Fatalf("listen-only without an approval: %v %s", v.Verdict, v.Reason)
	}
	id := r.propose(r.bob, "rtu-1", 1, listenOnly, r.now, 15*time.Minute)
	st, err := r.store.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	if d := st.Proposal.Describe(); !strings.Contains(d, "sub-function 4 (force listen-only mode)") {
		t.Fatalf("the approver sees %q", d)
	}
	r.sign(id, r.alice.Signer)
	if v := r.decide(r.engine, r.store, "rtu-1", 1, listenOnly, id); v.Allowed() || !strings.Contains(v.Reason, "1 of 2") {
		t.Fatalf("one signature: %v %s", v.Verdict, v.Reason)
	}
	r.sign(id, r.carol.Signer)
	if v := r.decide(r.engine, r.store, "rtu-1", 1, restart, approvals.ID{}); v.Allowed() {
		t.Fatalf("another sub-function rode on the approval: %s", v.Reason)
	}
	if v := r.decide(r.engine, r.store, "rtu-1", 1, listenOnly, id); !v.Allowed() || v.Approval != id.String() {
		t.Fatalf("two signatures: %v %s", v.Verdict, v.Reason)
	}
	if v := r.decide(r.engine, r.store, "rtu-1", 1, listenOnly, id); v.Allowed() {
		t.Fatal("replayed")
	}
	// Diagnostics that change nothing need no approval and take none.
	if _, err := approvals.NewProposal(r.pol, "rtu-1", 1, []byte{8, 0, 0, 0x12, 0x34}, time.Minute, "bob", r.now); err == nil {
		t.Fatal("an echo (sub-function 0) was accepted as a proposal")
	}
}

func TestRequiresOnlyOnStateChangingRules(t *testing.T) {
	alice := keystest.NewPerson(t, "alice")
	for name, rule := range map[string]string{
		"read rule":              "{name: r, allow: read, functions: [3], requires: {group: operators, m: 2}}",
		"echo diagnostics":       "{name: r, allow: diagnostic, functions: [8], subfunctions: [0, 4], requires: {group: operators, m: 2}}",
		"diagnostics beyond fc8": "{name: r, allow: diagnostic, functions: [8, 17], subfunctions: [4], requires: {group: operators, m: 2}}",
	} {
		extra := "  - name: d\n    upstream: 127.0.0.1:1\n    rules:\n      - " + rule + "\n"
		y := approvalPolicy(t, []*keystest.Person{alice}, nil, extra)
		if _, err := policy.Parse("p.yaml", y); err == nil || !strings.Contains(err.Error(), "requires applies to") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestRefusedStoreConsumesNothing: a store that can no longer tell whether
// an approval was used (Refuse) denies every approved write, saying why.
func TestRefusedStoreConsumesNothing(t *testing.T) {
	r := newRig(t, false)
	id := r.propose(r.bob, "inverter-1", 1, setpoint30, r.now, 15*time.Minute)
	r.sign(id, r.alice.Signer)
	r.sign(id, r.carol.Signer)
	why := errors.New("approvals refused: the use stream could not be checked")
	r.store.Refuse(why)
	if v := r.decide(r.engine, r.store, "inverter-1", 1, setpoint30, id); v.Allowed() || !strings.Contains(v.Reason, why.Error()) {
		t.Fatalf("refused store: %v %s", v.Verdict, v.Reason)
	}
	if !errors.Is(r.store.Failed(), why) {
		t.Fatalf("Failed() = %v", r.store.Failed())
	}
	if used, err := r.store.Used(t.Context(), id); err != nil || used != nil {
		t.Fatalf("a refused store consumed the approval: %+v %v", used, err)
	}
}

// TestObserveModeStillConsumesApprovals: on a device in observe mode an
// approval that matches is judged and consumed as under enforcement; only
// what the rules would deny is forwarded, flagged, and names no approval.
func TestObserveModeStillConsumesApprovals(t *testing.T) {
	r := newRig(t, false)
	b := strings.Replace(string(r.pol.Bytes()), "    units: [1, 2]\n", "    units: [1, 2]\n    mode: observe\n", 1)
	pol, err := policy.Parse("plant.yaml", []byte(b))
	if err != nil {
		t.Fatal(err)
	}
	r.pol = pol
	r.engine = r.newEngine(r.store, "gw-1")
	id := r.propose(r.bob, "inverter-1", 1, setpoint30, r.now, 15*time.Minute)
	r.sign(id, r.alice.Signer)
	r.sign(id, r.carol.Signer)
	v := r.decide(r.engine, r.store, "inverter-1", 1, setpoint30, id)
	if !v.Allowed() || v.Observed || v.Approval != id.String() {
		t.Fatalf("approved write in observe mode: %+v", v)
	}
	st, err := r.store.Get(t.Context(), id)
	if err != nil || st.Entry.Consumed == nil {
		t.Fatalf("approval not consumed: %+v %v", st, err)
	}
	again := r.decide(r.engine, r.store, "inverter-1", 1, setpoint30, id)
	if !again.Allowed() || !again.Observed || again.Approval != "" || again.Denial != decision.DenyApproval ||
		!strings.HasPrefix(again.Reason, "OBSERVE would deny: rule setpoint: approval") || !strings.Contains(again.Reason, "already used by gw-1") {
		t.Fatalf("replay in observe mode: %+v", again)
	}
}

// TestPublishedDevices: the EVE export's device addresses are the policy a
// proxy published, and nothing (nil, no error, no bucket created) before
// there is a bucket or a published policy.
func TestPublishedDevices(t *testing.T) {
	srv := natstest.RunJetStream(t)
	js, err := jetstream.New(natstest.Connect(t, srv.URL()))
	if err != nil {
		t.Fatal(err)
	}
	if got := approvals.PublishedDevices(t.Context(), js); got != nil {
		t.Fatalf("no bucket: %v", got)
	}
	if _, err := js.KeyValue(t.Context(), approvals.Bucket); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("PublishedDevices created the bucket: %v", err)
	}
	r := newRig(t, false)
	if got := approvals.PublishedDevices(t.Context(), r.js); got != nil {
		t.Fatalf("nothing published: %v", got)
	}
	if err := r.store.PublishPolicy(t.Context(), r.pol); err != nil {
		t.Fatal(err)
	}
	got := approvals.PublishedDevices(t.Context(), r.js)
	want := map[string]string{}
	for _, d := range r.pol.Devices {
		want[d.Name] = d.Upstream
	}
	if len(got) != len(r.pol.Devices) || !maps.Equal(got, want) || got["inverter-1"] != "127.0.0.1:1" {
		t.Fatalf("published devices %v, want %v", got, want)
	}
}

// TestParseWrite: each of propose's specs builds the PDU it names, and a
// spec that is missing, doubled or wrong gets one line naming its flag.
func TestParseWrite(t *testing.T) {
	for _, tc := range []struct {
		name, regs, coil, pdu string
		want                  []byte
		wantErr               string
	}{
		{"one register", "40127=30", "", "", modbus.AppendWriteSingleRegister(nil, 40127, 30), ""},
		{"negative register value", "0x10=-1", "", "", modbus.AppendWriteSingleRegister(nil, 16, 0xffff), ""},
		{"several registers", "0=20, 1", "", "", modbus.AppendWriteMultipleRegisters(nil, 0, []uint16{20, 1}), ""},
		{"coil on", "", "7=on", "", modbus.AppendWriteSingleCoil(nil, 7, true), ""},
		{"coil off", "", "7=FALSE", "", modbus.AppendWriteSingleCoil(nil, 7, false), ""},
		{"pdu", "", "", "05 0001 ff00", modbus.AppendWriteSingleCoil(nil, 1, true), ""},
		{"none", "", "", "", nil, "give exactly one of --write-register A=V[,V…], --write-coil A=on|off, --pdu HEX"},
		{"two", "1=2", "1=on", "", nil, "give exactly one of"},
		{"no value", "40127", "", "", nil, `--write-register "40127": want ADDRESS=VALUE`},
		{"bad address", "", "70000=on", "", nil, `--write-coil: address "70000" is not 0..65535`},
		{"bad value", "1=65536", "", "", nil, `--write-register: value "65536" is not -32768..65535`},
		{"too many values", "0=" + strings.Repeat("1,", modbus.MaxWriteRegisters) + "1", "", "", nil, "--write-register: at most 123 values"},
		{"bad coil value", "", "1=maybe", "", nil, `--write-coil: value "maybe": want on or off`},
		{"not hex", "", "", "zz", nil, `--pdu: "zz" is not hex`},
		{"not a request", "", "", "06 00", nil, "--pdu 0600: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := approvals.ParseWrite(tc.regs, tc.coil, tc.pdu)
			if tc.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !bytes.Equal(got, tc.want) {
				t.Fatalf("pdu %x, %v; want %x", got, err, tc.want)
			}
		})
	}
}

// TestApproverSigner: a keyset names its approver in the policy; a key of
// no approver is refused naming the key and the policy.
func TestApproverSigner(t *testing.T) {
	r := newRig(t, false)
	dir := t.TempDir()
	bobPriv, _, err := keys.WritePair(dir, "bob", r.bob.Handle)
	if err != nil {
		t.Fatal(err)
	}
	s, who, err := approvals.ApproverSigner(r.pol, bobPriv)
	if err != nil || who != "bob" || s.KeyID != r.bob.Signer.KeyID {
		t.Fatalf("signer %v, %q, %v; want bob's", s, who, err)
	}
	other, _, err := keys.WritePair(dir, "mallory", keystest.New(t).Handle)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := approvals.ApproverSigner(r.pol, other); err == nil || !strings.Contains(err.Error(), "(mallory.private.json) belongs to no approver of policy") {
		t.Fatalf("a stranger's key: %v", err)
	}
}

// TestResolveAndShow: approvals are found by a unique prefix and listed
// and shown with their state; a short or shared prefix is ErrBadID, an
// unknown one ErrNotFound.
func TestResolveAndShow(t *testing.T) {
	r := newRig(t, false)
	pdu := modbus.AppendWriteSingleRegister(nil, 40127, 30)
	ids := []approvals.ID{
		r.propose(r.alice, "inverter-1", 1, pdu, r.now, 10*time.Minute),
		r.propose(r.alice, "inverter-1", 1, modbus.AppendWriteSingleRegister(nil, 40127, 31), r.now, 10*time.Minute),
	}
	common := 0
	for common < 64 && ids[0].String()[common] == ids[1].String()[common] {
		common++
	}
	for _, tc := range []struct {
		name, prefix string
		want         approvals.ID
		err          error
	}{
		{"full id", ids[0].String(), ids[0], nil},
		{"unique prefix", ids[1].String()[:max(8, common+1)], ids[1], nil},
		{"upper case", strings.ToUpper(ids[0].String()[:max(8, common+1)]), ids[0], nil},
		{"too short", ids[0].String()[:7], approvals.ID{}, approvals.ErrBadID},
		{"unknown", "00000000", approvals.ID{}, approvals.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "unknown" && (strings.HasPrefix(ids[0].String(), "00000000") || strings.HasPrefix(ids[1].String(), "00000000")) {
				t.Skip("an id starts with the unknown prefix")
			}
			got, err := r.store.Resolve(t.Context(), tc.prefix)
			if !errors.Is(err, tc.err) || got != tc.want {
				t.Fatalf("resolve %q: %s, %v; want %s, %v", tc.prefix, got, err, tc.want, tc.err)
			}
		})
	}
	if common >= 8 {
		if _, err := r.store.Resolve(t.Context(), ids[0].String()[:common]); !errors.Is(err, approvals.ErrBadID) {
			t.Errorf("a shared prefix: %v", err)
		}
	}
	st, err := r.store.Get(t.Context(), ids[0])
	if err != nil {
		t.Fatal(err)
	}
	ev := approvals.Evaluate(r.pol, st, r.now)
	var b strings.Builder
	st.WriteText(&b, r.pol, r.now)
	for _, want := range []string{"approval " + ids[0].String() + "\n", "  PDU       " + "06" + "9cbf001e\n", "  proposer  alice\n",
		"  status    " + ev.Summary() + "\n", "  rule      setpoint\n"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("show lacks %q:\n%s", want, b.String())
		}
	}
	all, err := r.store.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	b.Reset()
	if err := approvals.WriteList(&b, r.pol, all, r.now); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID ") || !strings.HasSuffix(lines[0], "STATE") {
		t.Fatalf("list:\n%s", b.String())
	}
	for _, id := range ids {
		if !strings.Contains(b.String(), id.String()[:16]+"  ") {
			t.Errorf("list lacks %s:\n%s", id.String()[:16], b.String())
		}
	}
}
