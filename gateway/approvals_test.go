package gateway

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/policy/decision"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// approvalsFixture is one plant's approvals on a real JetStream, recorded
// to a real chain: operators alice, bob and carol, 2 of them for a setpoint.
type approvalsFixture struct {
	t                 *testing.T
	nc                *nats.Conn
	js                jetstream.JetStream
	pol               *policy.Policy
	alice, bob, carol *keystest.Person
	recs              map[string]*chain.Recorder
}

func newApprovalsFixture(t *testing.T) *approvalsFixture {
	t.Helper()
	f := &approvalsFixture{t: t, alice: keystest.NewPerson(t, "alice"), bob: keystest.NewPerson(t, "bob"),
		carol: keystest.NewPerson(t, "carol"), recs: map[string]*chain.Recorder{}}
	var b strings.Builder
	b.WriteString("id: plant\nversion: 1\napprovers:\n")
	for _, p := range []*keystest.Person{f.alice, f.bob, f.carol} {
		policy.WriteKeysetEntry(&b, p.Name, []string{"operators"}, p.PublicJSON(t))
	}
	b.WriteString(`devices:
  - name: inverter-1
    upstream: 127.0.0.1:1
    rules:
      - name: setpoint
        allow: write
        functions: [6]
        addresses: 40127
        values: 0-100
        requires: {group: operators, m: 2}
        max_ttl: 1h
`)
	pol, err := policy.Parse("plant.yaml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	f.pol = pol
	srv := natstest.RunJetStream(t)
	f.nc = natstest.Connect(t, srv.URL())
	f.js = natstest.JetStream(t, f.nc)
	return f
}

// bucket is the approvals bucket.
func (f *approvalsFixture) bucket() jetstream.KeyValue {
	f.t.Helper()
	kv, err := f.js.KeyValue(f.t.Context(), approvals.Bucket)
	if err != nil {
		f.t.Fatal(err)
	}
	return kv
}

// storedProposal reads proposal id's entry in the approvals bucket and
// decodes its proposal.
func storedProposal(t *testing.T, kv jetstream.KeyValue, id approvals.ID) (approvals.Entry, *approvals.Proposal) {
	t.Helper()
	kve, err := kv.Get(t.Context(), "p."+id.String())
	if err != nil {
		t.Fatal(err)
	}
	var e approvals.Entry
	if err := json.Unmarshal(kve.Value(), &e); err != nil {
		t.Fatal(err)
	}
	pr, err := approvals.DecodeProposal(e.Proposal)
	if err != nil {
		t.Fatal(err)
	}
	return e, pr
}

// recorder is writer's chain recorder, opened on first use.
func (f *approvalsFixture) recorder(writer string) *chain.Recorder {
	if r := f.recs[writer]; r != nil {
		return r
	}
	rec, err := chain.Open(f.t.Context(), f.nc, chain.Config{Writer: writer, Signer: keystest.New(f.t).Signer,
		DurableTimeout: 5 * time.Second, HeadDir: f.t.TempDir()}, zap.NewNop())
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { _ = rec.Close(time.Second) })
	f.recs[writer] = rec
	return rec
}

// open starts writer's approvals as a gateway does (a restart opens them
// again, with a new store and engine).
func (f *approvalsFixture) open(writer string) (*policy.Engine, *approvals.Store) {
	f.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f.t.Cleanup(cancel)
	engine := policy.NewEngine(f.pol, zap.NewNop())
	store, err := openApprovals(ctx, f.js, f.recorder(writer), engine, writer, 1, zap.NewNop())
	if err != nil {
		f.t.Fatal(err)
	}
	return engine, store
}

// propose stores p's proposal of pdu, signed by p.
func (f *approvalsFixture) propose(store *approvals.Store, p *keystest.Person, pdu []byte, start time.Time) approvals.ID {
	f.t.Helper()
	pr, err := approvals.NewProposal(f.pol, "inverter-1", 1, pdu, 15*time.Minute, p.Name, start)
	if err != nil {
		f.t.Fatal(err)
	}
	sig, err := p.Signer.Sign(approvals.ProposeInput(pr.ID()))
	if err != nil {
		f.t.Fatal(err)
	}
	id, err := store.Propose(f.t.Context(), pr, sig)
	if err != nil {
		f.t.Fatal(err)
	}
	return id
}

func (f *approvalsFixture) sign(store *approvals.Store, id approvals.ID, p *keystest.Person) {
	f.t.Helper()
	sig, err := p.Signer.Sign(approvals.ApproveInput(id))
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := store.AddSignature(f.t.Context(), id, sig); err != nil {
		f.t.Fatal(err)
	}
}

// steps returns the reasons and verdicts of the approval steps the chain
// holds for id, in order.
func (f *approvalsFixture) steps(id string) []string {
	f.t.Helper()
	var out []string
	err := chain.ScanRecords(f.t.Context(), f.js, 1, false, nil, func(r *chain.Record, _ *audit.Event) error {
		if r.Phase == "approval" && r.Approval == id {
			out = append(out, r.Verdict+" "+r.Reason)
		}
		return nil
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return out
}

// waitSteps waits until the chain holds n approval steps for id.
func (f *approvalsFixture) waitSteps(id string, n int) []string {
	f.t.Helper()
	var got []string
	testwait.For(f.t, fmt.Sprintf("%d approval steps of %.12s in the chain", n, id), func() bool {
		got = f.steps(id)
		return len(got) >= n
	})
	return got
}

// decide asks engine about pdu once store's index holds id's newest revision.
func (f *approvalsFixture) decide(engine *policy.Engine, store *approvals.Store, id approvals.ID, pdu []byte, op uint64) decision.Result {
	f.t.Helper()
	want, err := store.Get(f.t.Context(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	testwait.For(f.t, "the approval index to catch up", func() bool {
		for _, c := range store.Candidates("inverter-1", 1, pdu) {
			if c.ID == id && c.Revision >= want.Revision {
				return true
			}
		}
		return false
	})
	req, err := modbus.ParseRequest(pdu)
	if err != nil {
		f.t.Fatal(err)
	}
	return engine.Decide(f.t.Context(), &decision.Input{Device: "inverter-1", Unit: 1, Request: req, Op: op})
}

// TestApprovalStepsAreVerifiedBeforeTheyAreRecorded: the chain records a
// step of an approval as done only once it verifies under the policy; junk
// behind an approver's key id, a proposal altered in the bucket and one
// whose window starts later are recorded as refused, saying why.
func TestApprovalStepsAreVerifiedBeforeTheyAreRecorded(t *testing.T) {
	f := newApprovalsFixture(t)
	_, store := f.open("gw-1")
	kv := f.bucket()
	setpoint := func(v uint16) []byte { return modbus.AppendWriteSingleRegister(nil, 40127, v) }

	t.Run("valid steps", func(t *testing.T) {
		id := f.propose(store, f.bob, setpoint(10), time.Now())
		f.sign(store, id, f.alice)
		got := f.waitSteps(id.String(), 2)
		want := []string{"allow proposed by bob: ", fmt.Sprintf("allow signed by alice (key %d)", f.alice.Signer.KeyID)}
		for i := range want {
			if !strings.HasPrefix(got[i], want[i]) {
				t.Fatalf("step %d: %q, want %q…", i+1, got[i], want[i])
			}
		}
	})
	t.Run("junk behind carol's key id", func(t *testing.T) {
		id := f.propose(store, f.bob, setpoint(11), time.Now())
		junk := make([]byte, 69)
		_, _ = rand.Read(junk)
		junk[0] = 1
		kid := f.carol.Signer.KeyID
		copy(junk[1:5], []byte{byte(kid >> 24), byte(kid >> 16), byte(kid >> 8), byte(kid)})
		if _, err := store.AddSignature(t.Context(), id, junk); err != nil {
			t.Fatal(err)
		}
		got := f.waitSteps(id.String(), 2)
		if !strings.HasPrefix(got[1], "deny refused: a signature: does not verify with carol's key") || strings.Contains(strings.Join(got, "\n"), "signed by carol") {
			t.Fatalf("steps:\n%s", strings.Join(got, "\n"))
		}
	})
	t.Run("altered PDU under its new id", func(t *testing.T) {
		id := f.propose(store, f.alice, setpoint(12), time.Now())
		f.sign(store, id, f.bob)
		e, pr := storedProposal(t, kv, id)
		pr.PDU = setpoint(100)
		e.Proposal = pr.SigningBytes()
		data, _ := json.Marshal(e)
		if _, err := kv.Create(t.Context(), "p."+pr.ID().String(), data); err != nil {
			t.Fatal(err)
		}
		got := f.waitSteps(pr.ID().String(), 2)
		all := strings.Join(got, "\n")
		if !strings.HasPrefix(got[0], "deny refused: proposed by alice") || !strings.Contains(got[0], "the proposer's signature does not verify") ||
			!strings.HasPrefix(got[1], "deny refused: a signature: does not verify with bob's key") || strings.Contains(all, "allow") {
			t.Fatalf("steps:\n%s", all)
		}
	})
	t.Run("altered PDU under the old id", func(t *testing.T) {
		id := f.propose(store, f.alice, setpoint(13), time.Now())
		f.waitSteps(id.String(), 1)
		e, pr := storedProposal(t, kv, id)
		pr.PDU = setpoint(99)
		e.Proposal = pr.SigningBytes()
		data, _ := json.Marshal(e)
		if _, err := kv.Put(t.Context(), "p."+id.String(), data); err != nil {
			t.Fatal(err)
		}
		got := f.waitSteps(id.String(), 2)
		if !strings.HasPrefix(got[1], "deny refused: bucket entry p."+id.String()+" is not a valid proposal") {
			t.Fatalf("steps:\n%s", strings.Join(got, "\n"))
		}
	})
	t.Run("window starting in an hour", func(t *testing.T) {
		id := f.propose(store, f.bob, setpoint(14), time.Now().Add(time.Hour))
		got := f.waitSteps(id.String(), 1)
		if !strings.HasPrefix(got[0], "deny refused: proposed by bob") || !strings.Contains(got[0], "starts in the future") {
			t.Fatalf("steps:\n%s", strings.Join(got, "\n"))
		}
	})
}

// TestUsedApprovalStaysUsedWhenTheUseStreamIsDeleted: whoever holds a
// proxy's NATS rights deletes the use stream, clears the bucket's used mark
// and restarts the proxy; the chain still records the use (a proxy's
// durable record of the write, and the "used" step), so the same write
// stays denied — whichever proxy used the approval.
func TestUsedApprovalStaysUsedWhenTheUseStreamIsDeleted(t *testing.T) {
	for _, tc := range []struct{ name, user string }{
		{"its own use", "gw-1"},
		{"another proxy's use", "gw-2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newApprovalsFixture(t)
			engine, store := f.open(tc.user)
			pdu := modbus.AppendWriteSingleRegister(nil, 40127, 30)
			id := f.propose(store, f.bob, pdu, time.Now())
			f.sign(store, id, f.alice)
			f.sign(store, id, f.carol)
			v := f.decide(engine, store, id, pdu, 7)
			if !v.Allowed() {
				t.Fatal(v.Reason)
			}
			// What the proxy records, durably, before it forwards the write.
			ev := audit.Event{Time: time.Now(), Op: 7, Phase: audit.PhaseRequest, Verdict: audit.Allow, Device: "inverter-1", Unit: 1,
				Function: pdu[0], Class: "write", PDU: pdu, Rule: v.Rule, Reason: v.Reason, Policy: v.Policy, Approval: v.Approval}
			if err := f.recorder(tc.user).Record(t.Context(), &ev, true); err != nil {
				t.Fatal(err)
			}
			f.waitSteps(id.String(), 4) // proposed, signed twice, used

			kv := f.bucket()
			e, _ := storedProposal(t, kv, id)
			if e.Consumed == nil {
				t.Fatalf("bucket entry before the attack: %+v", e)
			}
			if err := f.js.DeleteStream(t.Context(), approvals.UsedStream); err != nil {
				t.Fatal(err)
			}
			e.Consumed = nil
			data, _ := json.Marshal(e)
			if _, err := kv.Put(t.Context(), "p."+id.String(), data); err != nil {
				t.Fatal(err)
			}

			engine, store = f.open("gw-1") // the restart
			if v := f.decide(engine, store, id, pdu, 8); v.Allowed() || !strings.Contains(v.Reason, "already used by "+tc.user) {
				t.Fatalf("after the use stream was deleted: %v %s", v.Verdict, v.Reason)
			}
			if c, err := store.Used(t.Context(), id); err != nil || c == nil || c.By != tc.user || c.Op != 7 {
				t.Fatalf("the use stream must hold the use again: %+v %v", c, err)
			}
			if err := store.Failed(); err != nil {
				t.Fatalf("store refuses approvals after restoring: %v", err)
			}
			if _, err := store.AddSignature(t.Context(), id, []byte{1, 2, 3, 4, 5, 6}); err == nil {
				t.Fatal("signed a used approval")
			}
			// A fresh approval is still usable once.
			fresh := modbus.AppendWriteSingleRegister(nil, 40127, 31)
			nid := f.propose(store, f.bob, fresh, time.Now())
			f.sign(store, nid, f.alice)
			f.sign(store, nid, f.carol)
			if v := f.decide(engine, store, nid, fresh, 9); !v.Allowed() {
				t.Fatalf("a new approval after the restore: %s", v.Reason)
			}
		})
	}
}
