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
	"github.com/gridseal/gridseal/protocols/modbus"
)

// newKey returns a fresh Ed25519 Tink signer and the writer keys that trust it.
func newKey(t testing.TB) (*keys.Signer, chain.WriterKeys) {
	t.Helper()
	k := keystest.New(t)
	return k.Signer, chain.WriterKeys{Verifier: k.Verifier, KeyIDs: k.Verifier.KeyIDs}
}

// openRecorder opens a recorder without a writer lease: these tests run
// several recorders of one writer in one process, as separate processes
// would after a crash, to test what stands behind the lease (fencing by
// expected sequence, head checks). The lease has tests of its own.
func openRecorder(t testing.TB, nc *nats.Conn, writer string, s *keys.Signer, headDir string) *chain.Recorder {
	t.Helper()
	r, err := chain.Open(t.Context(), nc, chain.Config{Writer: writer, Signer: s, HeadDir: headDir,
		DurableTimeout: 3 * time.Second, LeaseTTL: -1}, zap.NewNop())
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
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var out []*chain.Msg
	err = chain.Scan(t.Context(), js, 1, false, func(m *chain.Msg) error {
		cp := *m
		cp.Data = append([]byte(nil), m.Data...)
		out = append(out, &cp)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
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
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}
