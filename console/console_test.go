package console_test

import (
	"bufio"
	"context"
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

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/chain/chaintest"
	"github.com/gridseal/gridseal/console"
	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/internal/loadgen"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/protocols/modbus"
	"github.com/gridseal/gridseal/proxy"
)

// rig is a proxy recording to a real chain, with the console in front.
type rig struct {
	proxyAddr string
	web       *httptest.Server
	console   *console.Server
}

func startB(b *testing.B) *rig { return start(b) }

func start(t testing.TB) *rig {
	t.Helper()
	ns := chaintest.RunJetStream(t)
	nc := chaintest.Connect(t, ns.URL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	h, _ := keys.New(keys.Ed25519)
	signer, _ := keys.SignerFromHandle(h)
	ver, _ := keys.VerifierFromHandle(h)
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
	c := console.New(console.Config{Metrics: metrics, Gatherer: reg, JetStream: js, Policy: engine.Policy,
		Trust: chain.Trust{Writers: map[string]chain.WriterKeys{"gw-1": {Verifier: ver, KeyIDs: ver.KeyIDs}}},
		Ready: func() error { return rec.Failed() }, Log: zap.NewNop()})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go c.Run(ctx)
	web := httptest.NewServer(c.Handler())
	t.Cleanup(web.Close)
	return &rig{proxyAddr: ln.Addr().String(), web: web, console: c}
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
}

func TestEventStreamShowsDeniesLive(t *testing.T) {
	r := start(t)
	r.traffic(t, 3) // before the viewer connects: comes as backlog
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", r.web.URL+"/api/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
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
	st, err := http.Get(r.web.URL + "/api/status")
	if err != nil {
		t.Fatal(err)
	}
	var status console.ChainStatus
	_ = json.NewDecoder(st.Body).Decode(&status)
	st.Body.Close()
	if !status.Verified || status.Events < 7 || status.Writers["gw-1"].Hash == "" {
		t.Fatalf("status: %+v", status)
	}
}
