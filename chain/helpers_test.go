package chain_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// newKey returns a fresh Ed25519 Tink signer and the writer keys that trust it.
func newKey(t testing.TB) (*keys.Signer, chain.WriterKeys) {
	t.Helper()
	k := keystest.New(t)
	return k.Signer, chain.WriterKeys{Verifier: k.Verifier, KeyIDs: k.Verifier.KeyIDs}
}

// chainEnv is what most chain tests start from: a JetStream server, a
// connection to it, and writer gw-1's key with the writer keys that trust it.
type chainEnv struct {
	srv    *natstest.Server
	nc     *nats.Conn
	js     jetstream.JetStream
	signer *keys.Signer
	wk     chain.WriterKeys
}

func newChain(t testing.TB) *chainEnv {
	t.Helper()
	srv := natstest.RunJetStream(t)
	nc := natstest.Connect(t, srv.URL())
	signer, wk := newKey(t)
	return &chainEnv{srv: srv, nc: nc, js: jsOf(t, nc), signer: signer, wk: wk}
}

// recorder opens gw-1's recorder (see openRecorder), keeping its head in
// headDir ("": none).
func (e *chainEnv) recorder(t testing.TB, headDir string) *chain.Recorder {
	t.Helper()
	return openRecorder(t, e.nc, "gw-1", e.signer, headDir)
}

// recordClosed records ops 0..n-1, allowed, every every-th one durable, as
// gw-1 keeping its head in a fresh directory, closes the recorder and
// returns that directory. Each durable op closes a block: the others
// linger for it however slow the machine (the default 2 ms linger could
// end a block early under -race on a loaded machine).
func (e *chainEnv) recordClosed(t testing.TB, n, every uint64) (headDir string) {
	t.Helper()
	headDir = t.TempDir()
	r, err := chain.Open(t.Context(), e.nc, chain.Config{Writer: "gw-1", Signer: e.signer, HeadDir: headDir,
		DurableTimeout: 3 * time.Second, LeaseTTL: -1, Linger: time.Hour}, nopLog())
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(0); i < n; i++ {
		if err := r.Record(t.Context(), event(i, audit.Allow), i%every == every-1); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Close(time.Second); err != nil {
		t.Fatal(err)
	}
	return headDir
}

// trust trusts gw-1's key, with no head pinned.
func (e *chainEnv) trust() chain.Trust {
	return chain.Trust{Writers: map[string]chain.WriterKeys{"gw-1": e.wk}, Heads: map[string]chain.Head{}}
}

// trustHead trusts gw-1's key and the head it kept in headDir.
func (e *chainEnv) trustHead(t testing.TB, headDir string) chain.Trust {
	t.Helper()
	h, ok, err := chain.LoadHead(headDir, "gw-1")
	if err != nil || !ok {
		t.Fatalf("local head: %v %v", ok, err)
	}
	tr := e.trust()
	tr.Heads["gw-1"] = h
	return tr
}

// openRecorder opens a recorder without a writer lease: these tests run
// several recorders of one writer in one process, as separate processes
// would after a crash, to test what stands behind the lease (fencing by
// expected sequence, head checks). The lease has tests of its own.
func openRecorder(t testing.TB, nc *nats.Conn, writer string, s *keys.Signer, headDir string) *chain.Recorder {
	t.Helper()
	r, err := chain.Open(t.Context(), nc, chain.Config{Writer: writer, Signer: s, HeadDir: headDir,
		DurableTimeout: 3 * time.Second, LeaseTTL: -1}, nopLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close(time.Second) })
	return r
}

// event returns a realistic operation with op number n.
func event(n uint64, verdict audit.Verdict) *audit.Event {
	pdu := modbus.AppendWriteSingleRegister(nil, 40127, uint16(n%100))
	return &audit.Event{
		Time: time.Unix(1764072000, int64(n)).UTC(), Op: n, Phase: audit.PhaseComplete,
		Client: netip.MustParseAddrPort("127.0.0.1:50200"), Listener: "127.0.0.1:5020",
		Device: "inverter-1", Unit: 1, Function: 6, Class: "write", Address: 40127, Quantity: 1,
		PDU: pdu, Verdict: verdict, Rule: "power-limit-setpoint", Reason: "power-limit-setpoint",
		Policy:   "7fbde7198b85dc50ef0d112d46d9d889159460634310496d1b19cdf65da7db40",
		Response: pdu, Upstream: 800 * time.Microsecond,
	}
}

// readAll returns every message of the chain stream.
func readAll(t testing.TB, nc *nats.Conn) []*chain.Msg {
	t.Helper()
	var out []*chain.Msg
	err := chain.Scan(t.Context(), jsOf(t, nc), 1, false, func(m *chain.Msg) error {
		out = append(out, copyMsgs([]*chain.Msg{m})...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// copyMsgs copies msgs and their data, for a test to tamper with.
func copyMsgs(msgs []*chain.Msg) []*chain.Msg {
	out := make([]*chain.Msg, len(msgs))
	for i, m := range msgs {
		cp := *m
		cp.Data = append([]byte(nil), m.Data...)
		out[i] = &cp
	}
	return out
}

// resign replaces block i of msgs with the same block signed by s.
func resign(t testing.TB, msgs []*chain.Msg, i int, s chain.BlockSigner) {
	t.Helper()
	b, err := chain.ParseBlock(msgs[i].Data)
	if err != nil {
		t.Fatal(err)
	}
	msg, hash, err := chain.EncodeBlock("gw-1", s, b.Height, b.Prev, b.Time, b.Events)
	if err != nil {
		t.Fatal(err)
	}
	cp := *msgs[i]
	cp.Data, cp.MsgID = msg, hash.String()
	msgs[i] = &cp
}

// rootOf accumulates the Merkle tree of every event in msgs.
func rootOf(t testing.TB, msgs []*chain.Msg) *chain.RootAcc {
	t.Helper()
	var acc chain.RootAcc
	for _, m := range msgs {
		b, err := chain.ParseBlock(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range b.Events {
			acc.Append(chain.LeafHash(e))
		}
	}
	return &acc
}

// verify runs the verifier over msgs and returns the decoded events.
func verify(trust chain.Trust, msgs []*chain.Msg) ([]audit.Event, error) {
	v := chain.NewVerifier(trust)
	var evs []audit.Event
	v.OnEvent = func(_ *chain.Msg, _ *chain.Block, _ int, e []byte) error {
		ev, err := chain.DecodeEvent(e)
		evs = append(evs, ev)
		return err
	}
	for _, m := range msgs {
		if err := v.Add(m); err != nil {
			return evs, err
		}
	}
	return evs, v.Finish()
}

func ops(evs []audit.Event) string {
	s := ""
	for _, e := range evs {
		s += fmt.Sprintf("%d ", e.Op)
	}
	return s
}

func nopLog() *zap.Logger { return zap.NewNop() }

func jsOf(t testing.TB, nc *nats.Conn) jetstream.JetStream {
	t.Helper()
	return natstest.JetStream(t, nc)
}
