package console_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/console"
	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/internal/loadgen"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/protocols/modbus"
	"github.com/gridseal/gridseal/proxy"
)

// rig is a proxy recording to a real chain, with the console in front.
type rig struct {
	proxyAddr string
	web       *httptest.Server
	console   *console.Server
	js        jetstream.JetStream
	rec       *chain.Recorder
}

func startB(b *testing.B) *rig { return start(b) }

func start(t testing.TB) *rig { return startWith(t, nil) }

// startWith starts the rig; with a checkpoint signer, a checkpointer signs
// the tree every 50 ms and the console trusts its key.
func startWith(t testing.TB, cp *keystest.Checkpointer) *rig {
	t.Helper()
	ns := natstest.RunJetStream(t)
	nc := natstest.Connect(t, ns.URL())
	js := natstest.JetStream(t, nc)
	k := keystest.New(t)
	signer, ver := k.Signer, k.Verifier
	rec, err := chain.Open(t.Context(), nc, chain.Config{Writer: "gw-1", Signer: signer}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rec.Close(time.Second) })
	dev := &loadgen.Device{}
	devLn, _ := net.Listen("tcp", "127.0.0.1:0")
	go dev.Serve(devLn)
	t.Cleanup(dev.Close)
	pol, err := policy.Parse("p.yaml", fmt.Appendf(nil, `id: plant
devices:
  - name: plc
    upstream: %s
    rules:
      - {name: reads, allow: read, functions: [3]}
`, devLn.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	metrics := console.NewMetrics(reg)
	engine := policy.NewEngine(pol, zap.NewNop())
	srv, err := proxy.New(proxy.Config{}, []proxy.Device{{Name: "plc", Upstream: devLn.Addr().String()}}, engine,
		audit.Tee{rec, metrics}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	srv.RegisterMetrics(reg)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go func() { _ = srv.Serve(ln, proxy.Route{Default: "plc"}) }()
	t.Cleanup(func() { _ = srv.Close() })
	trust := chain.Trust{Writers: map[string]chain.WriterKeys{"gw-1": {Verifier: ver, KeyIDs: ver.KeyIDs}}}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if cp != nil {
		trust.Checkpointers = cp.Verifiers()
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = (&chain.Checkpointer{Signer: cp.Signer, Every: 50 * time.Millisecond, Log: zap.NewNop()}).Run(ctx, js)
		}()
		t.Cleanup(func() { cancel(); <-done })
	}
	c := console.New(console.Config{Metrics: metrics, Gatherer: reg, JetStream: js, Policy: engine.Policy,
		Trust: trust, Ready: func() error { return rec.Failed() }, Log: zap.NewNop(), TreeDir: t.TempDir(),
		Upstreams: srv.Upstreams})
	go c.Run(ctx)
	web := httptest.NewServer(c.Handler())
	t.Cleanup(web.Close)
	return &rig{proxyAddr: ln.Addr().String(), web: web, console: c, js: js, rec: rec}
}

// events opens the live event stream, with query, for at most 10 s.
func (r *rig) events(t *testing.T, query string) *http.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", r.web.URL+"/api/events"+query, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// traffic sends n reads and one forbidden write through the proxy.
func (r *rig) traffic(t *testing.T, n int) {
	t.Helper()
	c, err := net.Dial("tcp", r.proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rd := modbus.NewReader(c)
	for i := 0; i <= n; i++ {
		pdu := modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, uint16(i), 1)
		if i == n {
			pdu = modbus.AppendWriteSingleRegister(nil, 1, 99)
		}
		if _, err := c.Write(modbus.AppendFrame(nil, uint16(i), 1, pdu)); err != nil {
			t.Fatal(err)
		}
		if _, err := rd.ReadFrame(); err != nil {
			t.Fatal(err)
		}
	}
}

func metric(t *testing.T, body, name string, labels ...string) float64 {
	t.Helper()
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name) {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if ok {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			return v
		}
	}
	return 0
}

func TestMetricsMoveWithTraffic(t *testing.T) {
	r := start(t)
	scrape := func() string {
		resp, err := http.Get(r.web.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	r.traffic(t, 20)
	m := scrape()
	if got := metric(t, m, "gridseal_requests_total", `device="plc"`, `function="3"`, `verdict="allow"`); got != 20 {
		t.Fatalf("allowed reads = %v, want 20\n%s", got, m)
	}
	if got := metric(t, m, "gridseal_requests_total", `function="6"`, `verdict="deny"`); got != 1 {
		t.Fatalf("denied writes = %v", got)
	}
	if got := metric(t, m, "gridseal_exceptions_total", `code="1"`); got != 1 {
		t.Fatalf("exceptions code 1 = %v", got)
	}
	if got := metric(t, m, "gridseal_added_latency_seconds_count"); got != 21 {
		t.Fatalf("added latency samples = %v", got)
	}
	r.traffic(t, 10)
	if got := metric(t, scrape(), "gridseal_requests_total", `verdict="allow"`); got != 30 {
		t.Fatalf("counter did not move: %v", got)
	}
	resp, err := http.Get(r.web.URL + "/readyz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("readyz: %v %v", resp, err)
	}
	resp.Body.Close()
	// The devices panel: plc answered, so it is up.
	resp, err = http.Get(r.web.URL + "/api/devices")
	if err != nil {
		t.Fatal(err)
	}
	var devs map[string]console.DeviceView
	_ = json.NewDecoder(resp.Body).Decode(&devs)
	resp.Body.Close()
	if d := devs["plc"]; d.Upstream != "up" || d.Requests != 32 || d.Denies != 2 { // 30 reads and 2 refused writes
		t.Fatalf("devices: %+v", devs)
	}
}

func TestEventStreamShowsDeniesLive(t *testing.T) {
	r := start(t)
	r.traffic(t, 3) // before the viewer connects: comes as backlog
	resp := r.events(t, "")
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	r.traffic(t, 2) // while it watches (the stream buffers until read)
	var denies []chain.Record
	total := 0
	for sc.Scan() && total < 7 {
		line := sc.Text()
		if !strings.HasPrefix(line, "data: ") {
			continue
		}
		var rec chain.Record
		if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &rec); err != nil {
			t.Fatal(err)
		}
		total++
		if rec.Verdict == "deny" {
			denies = append(denies, rec)
		}
	}
	if total != 7 || len(denies) != 2 {
		t.Fatalf("saw %d events, %d denies; want 7 and 2", total, len(denies))
	}
	if !regexp.MustCompile(`no rule of device plc allows function 6`).MatchString(denies[1].Reason) || denies[1].Block == "" || denies[1].KeyID == 0 {
		t.Fatalf("deny as streamed: %+v", denies[1])
	}
	// The verifier reads beside the live view: its status catches up.
	var status console.ChainStatus
	testwait.For(t, "the status to count the events streamed", func() bool {
		st, err := http.Get(r.web.URL + "/api/status")
		if err != nil {
			t.Fatal(err)
		}
		defer st.Body.Close()
		_ = json.NewDecoder(st.Body).Decode(&status)
		return status.Events >= 7
	})
	if !status.Verified || status.Writers["gw-1"].Hash == "" {
		t.Fatalf("status: %+v", status)
	}
}

// TestEventProofChecksIndependently asks the console for the inclusion
// proof of a denied write and checks it as an outside auditor would: the
// checkpoint's signature with the checkpointer's public key, and the audit
// path from the event's own bytes to the signed root.
func TestEventProofChecksIndependently(t *testing.T) {
	cp := keystest.NewCheckpointer(t, "checkpointer-test")
	r := startWith(t, &cp)
	r.traffic(t, 5)
	verifier := cp.Verifier
	get := func(q string, into any) int {
		t.Helper()
		resp, err := http.Get(r.web.URL + "/api/proof?" + q)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if into != nil && resp.StatusCode == 200 {
			if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
				t.Fatal(err)
			}
		}
		return resp.StatusCode
	}
	for _, bad := range []string{"", "seq=x&index=0", "seq=0&index=0", "seq=1&index=-1"} {
		if code := get(bad, nil); code != http.StatusBadRequest {
			t.Fatalf("proof?%s: status %d, want 400", bad, code)
		}
	}
	deny := firstDeny(t, r)
	var p console.ProofView
	testwait.For(t, "the proof to be no longer pending", func() bool {
		p = console.ProofView{}
		get(fmt.Sprintf("seq=%d&index=%d", deny.Seq, deny.Index), &p)
		return p.Status != "pending"
	})
	if p.Status != "proved" {
		t.Fatalf("proof: %+v", p)
	}
	// An auditor's check, from the JSON alone plus the event as exported.
	n, err := note.Open([]byte(p.Signature), note.VerifierList(verifier))
	if err != nil {
		t.Fatalf("checkpoint signature: %v", err)
	}
	lines := strings.Split(n.Text, "\n")
	if lines[0] != chain.CheckpointOrigin || lines[1] != strconv.FormatInt(p.TreeSize, 10) {
		t.Fatalf("checkpoint body %q vs tree size %d", n.Text, p.TreeSize)
	}
	root, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(root) != 32 {
		t.Fatalf("checkpoint root %q", lines[2])
	}
	// The event's bytes as stored, read from the stream itself.
	stream, err := r.js.Stream(t.Context(), chain.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := stream.GetMsg(t.Context(), deny.Seq)
	if err != nil {
		t.Fatal(err)
	}
	block, err := chain.ParseBlock(msg.Data)
	if err != nil {
		t.Fatal(err)
	}
	event := block.Events[deny.Index]
	leaf := chain.LeafHash(event)
	if leaf.String() != p.LeafHash {
		t.Fatalf("leaf hash %s, event hashes to %s", p.LeafHash, leaf)
	}
	var proof tlog.RecordProof
	for _, h := range p.Proof {
		b, err := hex.DecodeString(h)
		if err != nil || len(b) != 32 {
			t.Fatalf("proof hash %q", h)
		}
		proof = append(proof, tlog.Hash(b))
	}
	if err := tlog.CheckRecord(proof, p.TreeSize, tlog.Hash(root), p.Leaf, tlog.Hash(leaf)); err != nil {
		t.Fatalf("proof does not check: %v", err)
	}
	// Any other event's bytes do not check against this proof.
	event[len(event)-1] ^= 1
	if tlog.CheckRecord(proof, p.TreeSize, tlog.Hash(root), p.Leaf, tlog.Hash(chain.LeafHash(event))) == nil {
		t.Fatal("an altered event checks")
	}
	// The chain panel names the newest signed checkpoint.
	var st struct {
		Checkpoint *console.CheckpointView `json:"checkpoint"`
	}
	resp, err := http.Get(r.web.URL + "/api/status")
	if err != nil {
		t.Fatal(err)
	}
	_ = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if st.Checkpoint == nil || st.Checkpoint.Size < p.TreeSize || len(st.Checkpoint.SignedBy) != 1 || st.Checkpoint.SignedBy[0] != "checkpointer-test" {
		t.Fatalf("status checkpoint: %+v", st.Checkpoint)
	}
	var missing console.ProofView
	get(fmt.Sprintf("seq=%d&index=%d", deny.Seq, 999), &missing)
	if missing.Status != "pending" {
		t.Fatalf("an event that is not there: %+v", missing)
	}
}

func TestEventProofWithoutCheckpointers(t *testing.T) {
	r := start(t)
	r.traffic(t, 1)
	resp, err := http.Get(r.web.URL + "/api/proof?seq=1&index=0")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p console.ProofView
	_ = json.NewDecoder(resp.Body).Decode(&p)
	if p.Status != "unavailable" {
		t.Fatalf("proof with no checkpointer trusted: %+v", p)
	}
}

// firstDeny reads the live stream until the first denied event.
func firstDeny(t *testing.T, r *rig) chain.Record {
	t.Helper()
	resp := r.events(t, "?verdict=deny")
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			var rec chain.Record
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatal(err)
			}
			return rec
		}
	}
	t.Fatalf("no denied event streamed: %v", sc.Err())
	return chain.Record{}
}

// TestBreakGlassIsFlaggedInTheEventStream: a write allowed by a break-glass
// quorum reaches viewers with break_glass set, and the page shows a badge
// on its row.
func TestBreakGlassIsFlaggedInTheEventStream(t *testing.T) {
	r := start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	coil := modbus.AppendWriteSingleCoil(nil, 1, true)
	ev := audit.Event{Time: time.Now(), Op: 1, Phase: audit.PhaseComplete, Device: "breaker-1", Unit: 1, Function: 5, Class: "write",
		Address: 1, Quantity: 1, PDU: coil, Verdict: audit.Allow, Rule: "open-breaker", Approval: "ab12", BreakGlass: true,
		Reason: "BREAK-GLASS open-breaker: approval ab12… by alice (1 of 2)", Response: coil}
	if err := r.rec.Record(ctx, &ev, true); err != nil {
		t.Fatal(err)
	}
	resp := r.events(t, "")
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	var got chain.Record
	for sc.Scan() && got.Op == 0 {
		if line, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			if err := json.Unmarshal([]byte(line), &got); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !got.BreakGlass || got.Device != "breaker-1" {
		t.Fatalf("streamed: %+v", got)
	}
	js, err := http.Get(r.web.URL + "/app.js")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(js.Body)
	js.Body.Close()
	if !strings.Contains(string(body), "r.break_glass ?") || !strings.Contains(string(body), `class="badge break-glass"`) {
		t.Fatal("the page does not badge break-glass rows")
	}
}
