package mirror_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"golang.org/x/mod/sumdb/note"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/mirror"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// keyring is what both sides of a test know: the writer's key and the
// checkpointer's key (the operator's secrets, whose public halves the
// mirror pins) and the mirror's witness key.
type keyring struct {
	writer   keystest.Key
	cpSigner note.Signer
	known    note.Verifiers
	cosigner *chain.Cosigner
}

func newKeyring(t testing.TB) *keyring {
	t.Helper()
	cp := keystest.NewCheckpointer(t, "gridseal.test/checkpointer")
	wskey, _, err := chain.GenerateCosignerKey("mirror.test/m1")
	if err != nil {
		t.Fatal(err)
	}
	c, err := chain.NewCosigner(wskey)
	if err != nil {
		t.Fatal(err)
	}
	return &keyring{writer: keystest.New(t), cpSigner: cp.Signer, known: cp.Verifiers(), cosigner: c}
}

func (k *keyring) trust() chain.Trust {
	return chain.Trust{Writers: map[string]chain.WriterKeys{"gw-1": {Verifier: k.writer.Verifier, KeyIDs: k.writer.Verifier.KeyIDs}},
		Checkpointers: k.known}
}

// operator is a plant's side: its JetStream, a recorder of writer gw-1
// and a checkpointer that asks the mirror (and any other witness) to
// cosign.
type operator struct {
	srv    *natstest.Server
	nc     *nats.Conn
	js     jetstream.JetStream
	rec    *chain.Recorder
	cpr    *chain.Checkpointer
	keys   *keyring
	next   uint64 // the next event's op number
	cancel context.CancelFunc
	done   chan struct{}
}

// newOperator starts the operator's JetStream; connect starts its
// recorder and checkpointer.
func newOperator(t *testing.T, k *keyring) *operator {
	t.Helper()
	return &operator{srv: natstest.RunJetStream(t), keys: k}
}

// connect opens the recorder and starts the checkpointer on o.srv.
func (o *operator) connect(t *testing.T, ws ...chain.Witness) {
	t.Helper()
	o.nc = natstest.Connect(t, o.srv.URL())
	js, err := jetstream.New(o.nc)
	if err != nil {
		t.Fatal(err)
	}
	o.js = js
	o.rec, err = chain.Open(t.Context(), o.nc, chain.Config{Writer: "gw-1", Signer: o.keys.writer.Signer,
		DurableTimeout: 3 * time.Second, LeaseTTL: -1}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	o.cpr = &chain.Checkpointer{Signer: o.keys.cpSigner, Every: 40 * time.Millisecond, Log: testLog(t).Named("checkpointer"),
		Witnesses: ws, WitnessQuorum: 1, WitnessTimeout: 3 * time.Second, TreeDir: t.TempDir()}
	ctx, cancel := context.WithCancel(context.Background())
	o.cancel, o.done = cancel, make(chan struct{})
	go func() {
		defer close(o.done)
		_ = o.cpr.Run(ctx, o.js)
	}()
	t.Cleanup(o.stop)
}

// stop stops the checkpointer and the recorder (the server runs on).
func (o *operator) stop() {
	if o.cancel == nil {
		return
	}
	o.cancel()
	<-o.done
	o.cancel = nil
	_ = o.rec.Close(time.Second)
	o.nc.Close()
}

// record appends n events and waits for a checkpoint of all of them.
func (o *operator) record(t *testing.T, n int) *chain.Checkpoint {
	t.Helper()
	for range n {
		if err := o.rec.Record(t.Context(), event(o.next), false); err != nil {
			t.Fatal(err)
		}
		o.next++
	}
	if err := o.rec.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	return o.checkpointed(t)
}

// checkpointed waits for a checkpoint of every event in the stream.
func (o *operator) checkpointed(t *testing.T) *chain.Checkpoint {
	t.Helper()
	want := o.events(t)
	var cp *chain.Checkpoint
	testwait.For(t, "a checkpoint of every event", func() bool {
		cp, _ = chain.LatestCheckpoint(t.Context(), o.js, o.keys.known)
		return cp != nil && cp.Size == want
	})
	return cp
}

// events counts the events in the operator's stream.
func (o *operator) events(t *testing.T) int64 {
	t.Helper()
	var n int64
	err := chain.Scan(t.Context(), o.js, 1, false, func(m *chain.Msg) error {
		if b, err := chain.ParseBlock(m.Data); err == nil {
			n += int64(len(b.Events))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// event returns a realistic operation with op number n.
func event(n uint64) *audit.Event {
	pdu := modbus.AppendWriteSingleRegister(nil, 40127, uint16(n%100))
	return &audit.Event{
		Time: time.Unix(1764072000, int64(n)).UTC(), Op: n, Phase: audit.PhaseComplete,
		Client: netip.MustParseAddrPort("127.0.0.1:50200"), Listener: "127.0.0.1:5020",
		Device: "inverter-1", Unit: 1, Function: 6, Class: "write", Address: 40127, Quantity: 1,
		PDU: pdu, Verdict: audit.Allow, Rule: "power-limit-setpoint", Reason: "power-limit-setpoint",
		Policy:   "7fbde7198b85dc50ef0d112d46d9d889159460634310496d1b19cdf65da7db40",
		Response: pdu, Upstream: 800 * time.Microsecond,
	}
}

// runningMirror is a mirror on its own JetStream, copying from one
// operator, serving tlog-witness on a loopback port.
type runningMirror struct {
	*mirror.Mirror
	keys   *keyring
	srv    *natstest.Server
	dir    string
	source string // the operator's NATS URL
	addr   string
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
	http   *http.Server
	opts   func(*mirror.Config)
}

func startMirror(t *testing.T, k *keyring, source *operator, opts func(*mirror.Config)) *runningMirror {
	t.Helper()
	m := &runningMirror{keys: k, srv: natstest.RunJetStream(t), dir: t.TempDir(), source: source.srv.URL(), addr: "127.0.0.1:0", opts: opts}
	m.start(t)
	return m
}

// witness is the mirror as a witness for the checkpointer.
func (m *runningMirror) witness() chain.Witness {
	return chain.Witness{URL: "http://" + m.addr, Verifier: m.keys.cosigner.Verifier()}
}

// start runs the mirror (again), on the same directory, NATS and port.
func (m *runningMirror) start(t *testing.T) {
	t.Helper()
	local := natstest.Connect(t, m.srv.URL())
	src := natstest.Connect(t, m.source)
	ljs, _ := jetstream.New(local)
	sjs, _ := jetstream.New(src)
	m.reg = prometheus.NewRegistry()
	cfg := mirror.Config{Trust: m.keys.trust(), Cosigner: m.keys.cosigner, Dir: m.dir, Source: sjs, Local: ljs,
		Poll: 20 * time.Millisecond, Log: testLog(t).Named("mirror"), Metrics: m.reg}
	if m.opts != nil {
		m.opts(&cfg)
	}
	mi, err := mirror.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m.Mirror = mi
	var ln net.Listener
	testwait.NoError(t, "the mirror's port", func() (err error) {
		ln, err = net.Listen("tcp", m.addr)
		return err
	})
	m.addr = ln.Addr().String()
	m.http = &http.Server{Handler: mi.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = m.http.Serve(ln) }()
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel, m.done = cancel, make(chan error, 1)
	go func() { m.done <- mi.Run(ctx) }()
	t.Cleanup(func() { m.stop(t) })
}

// stop stops the mirror: its HTTP server and Run.
func (m *runningMirror) stop(t *testing.T) {
	if m.cancel == nil {
		return
	}
	_ = m.http.Close()
	m.cancel()
	if err := <-m.done; err != nil {
		t.Errorf("mirror Run: %v", err)
	}
	m.cancel = nil
	_ = m.Close()
}

// cosigned reports whether cp carries the mirror's valid cosignature.
func (m *runningMirror) cosigned(t *testing.T, cp *chain.Checkpoint) bool {
	t.Helper()
	cs, err := chain.Cosignatures(cp.Note, []*chain.CosignatureVerifier{m.keys.cosigner.Verifier()})
	if err != nil {
		t.Fatal(err)
	}
	return len(cs) == 1
}

// alarm waits for an alarm of kind whose reason says want, and returns it.
func (m *runningMirror) alarm(t *testing.T, kind, want string) mirror.Alarm {
	t.Helper()
	var found mirror.Alarm
	testwait.For(t, "a "+kind+" alarm saying "+want, func() bool {
		for _, a := range m.Alarms() {
			if a.Kind == kind && strings.Contains(a.Reason, want) {
				found = a
				return true
			}
		}
		return false
	})
	return found
}

// refusedWith waits until the checkpointer's last request to the mirror
// failed saying want.
func refusedWith(t *testing.T, o *operator, want string) {
	t.Helper()
	testwait.For(t, "the checkpointer told by the mirror: "+want, func() bool {
		for _, st := range o.cpr.WitnessStatus() {
			if st.LastErr != nil && strings.Contains(st.LastErr.Error(), want) {
				return true
			}
		}
		return false
	})
}

// signedBlock builds a block of writer gw-1 signed with s, as the
// recorder would: what a writer that rewrites its history publishes.
func signedBlock(t *testing.T, s *keys.Signer, height uint64, prev chain.Hash, ops ...uint64) ([]byte, chain.Hash) {
	t.Helper()
	var events [][]byte
	for _, op := range ops {
		events = append(events, chain.AppendEvent(nil, event(op)))
	}
	msg, hash, err := chain.EncodeBlock("gw-1", s, height, prev, time.Now(), events)
	if err != nil {
		t.Fatal(err)
	}
	return msg, hash
}

var errNoBlock = errors.New("no such block")

// blockAt returns the block at height h of gw-1 in the stream.
func blockAt(t *testing.T, js jetstream.JetStream, h uint64) *chain.Block {
	t.Helper()
	var found *chain.Block
	err := chain.Scan(t.Context(), js, 1, false, func(m *chain.Msg) error {
		if b, err := chain.ParseBlock(m.Data); err == nil && b.Height == h && found == nil {
			found = b
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if found == nil {
		t.Fatal(errNoBlock)
	}
	return found
}

// metric is the value of the mirror's metric name (summed over labels).
func metric(t *testing.T, m *runningMirror, name string) float64 {
	t.Helper()
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, x := range mf.GetMetric() {
			v += x.GetCounter().GetValue() + x.GetGauge().GetValue()
		}
	}
	return v
}

// all returns every message of the chain stream js holds.
func all(t *testing.T, js jetstream.JetStream) []*chain.Msg {
	t.Helper()
	var out []*chain.Msg
	err := chain.Scan(t.Context(), js, 1, false, func(m *chain.Msg) error {
		cp := *m
		cp.Data = append([]byte(nil), m.Data...)
		out = append(out, &cp)
		return nil
	})
	if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatal(err)
	}
	return out
}

// treeOf builds the tree of every event in js's chain stream.
func treeOf(t *testing.T, js jetstream.JetStream) *chain.Tree {
	t.Helper()
	tree := &chain.Tree{}
	for _, m := range all(t, js) {
		if b, err := chain.ParseBlock(m.Data); err == nil {
			if err := tree.AppendBlock(m.Seq, b.Events); err != nil {
				t.Fatal(err)
			}
		}
	}
	return tree
}

// copyDir copies directory from into to, keeping modes. Both must be
// under the temporary directory: a test copies only what it made.
func copyDir(t *testing.T, from, to string) {
	t.Helper()
	mustBeTemp(t, from)
	mustBeTemp(t, to)
	if out, err := exec.Command("cp", "-a", from+"/.", to).CombinedOutput(); err != nil {
		t.Fatalf("cp -a %s %s: %v\n%s", from, to, err, out)
	}
}

// replaceDir makes dir a copy of from.
func replaceDir(t *testing.T, dir, from string) {
	t.Helper()
	mustBeTemp(t, dir)
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	copyDir(t, from, dir)
}

// testLog is a logger for the test's output with GRIDSEAL_TEST_LOG set,
// else none.
func testLog(t *testing.T) *zap.Logger {
	if os.Getenv("GRIDSEAL_TEST_LOG") == "" {
		return zap.NewNop()
	}
	return zaptest.NewLogger(t)
}

// mustBeTemp fails the test unless dir is a directory below the
// temporary directory.
func mustBeTemp(t *testing.T, dir string) {
	t.Helper()
	rel, err := filepath.Rel(os.TempDir(), dir)
	if err != nil || !filepath.IsAbs(dir) || rel == "." || strings.HasPrefix(rel, "..") {
		t.Fatalf("refusing to copy or replace %q: not below %s", dir, os.TempDir())
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		t.Fatalf("%q is not a directory: %v", dir, err)
	}
}
