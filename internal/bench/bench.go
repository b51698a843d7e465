// Package bench measures gridseal against a direct connection to a device
// and a bare TCP relay, with the load generator of internal/loadgen: the
// scenarios of `gridseal bench` and their report.
package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/internal/loadgen"
	"github.com/gridseal/gridseal/internal/natsembed"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/proxy"
)

// Target is one address the load generator measures.
type Target struct {
	Name string
	Addr string
}

// Report is `gridseal bench --json`.
type Report struct {
	Scenarios []ScenarioReport `json:"scenarios"`
}

// ScenarioReport is one scenario's measurements.
type ScenarioReport struct {
	Name     string            `json:"name"`
	Clients  int               `json:"clients"`
	Pipeline int               `json:"pipeline"`
	WritePct int               `json:"write_pct"`
	Targets  []TargetReport    `json:"targets"`
	Extra    map[string]string `json:"extra,omitempty"`
}

// TargetReport is one target's numbers in a scenario.
type TargetReport struct {
	Name          string  `json:"name"`
	ThroughputRPS float64 `json:"throughput_rps"`
	P50us         float64 `json:"p50_us"`
	P90us         float64 `json:"p90_us"`
	P99us         float64 `json:"p99_us"`
	P999us        float64 `json:"p999_us"`
	Requests      uint64  `json:"requests"`
	Errors        uint64  `json:"errors"`
	Exceptions    uint64  `json:"exceptions"`
	RatioDirect   float64 `json:"ratio_to_direct,omitempty"`
	RatioRelay    float64 `json:"ratio_to_relay,omitempty"`
}

// ParseMix reads a request mix such as "read=90,write=10" and returns the
// percentage of writes.
func ParseMix(s string) (int, error) {
	read, write := -1, -1
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		n, err := strconv.Atoi(v)
		if !ok || err != nil || n < 0 || n > 100 {
			return 0, fmt.Errorf("%q: want read=N,write=M", s)
		}
		switch k {
		case "read":
			read = n
		case "write":
			write = n
		default:
			return 0, fmt.Errorf("%q: unknown kind %q", s, k)
		}
	}
	if read < 0 {
		read = 100 - write
	}
	if write < 0 {
		write = 100 - read
	}
	if read+write != 100 {
		return 0, fmt.Errorf("%q: shares must add up to 100", s)
	}
	return write, nil
}

// Bencher runs scenarios with one load generator setting.
type Bencher struct {
	Stderr   io.Writer     // progress lines, unless Quiet
	Duration time.Duration // measuring time per target and client count, split over the rounds
	Rounds   int           // interleaved rounds, so machine noise hits every target alike
	Pipeline int           // requests in flight per connection
	Quiet    bool
}

// Scenario measures targets at n clients, interleaved in rounds.
func (b *Bencher) Scenario(ctx context.Context, name string, targets []Target, n, writePct int, extra map[string]string) (*ScenarioReport, error) {
	res := make([]*loadgen.Result, len(targets))
	per := b.Duration / time.Duration(b.Rounds)
	for round := 0; round < b.Rounds; round++ {
		for k := range targets {
			i := (k + round) % len(targets) // rotate who goes first
			t := targets[i]
			if !b.Quiet {
				fmt.Fprintf(b.Stderr, "\r%-10s %4d clients  round %d/%d  %-9s", name, n, round+1, b.Rounds, t.Name)
			}
			r, err := loadgen.Run(ctx, loadgen.Config{Addr: t.Addr, Clients: n, Pipeline: b.Pipeline, Duration: per,
				WritePct: writePct, Unit: 1, ReadSpan: 100, WriteSpan: 10, MaxValue: 100})
			if err != nil {
				return nil, fmt.Errorf("%s %s: %w", name, t.Name, err)
			}
			if res[i] == nil {
				res[i] = r
			} else {
				res[i].Merge(r)
			}
		}
	}
	if !b.Quiet {
		fmt.Fprintf(b.Stderr, "\r%60s\r", "")
	}
	sr := &ScenarioReport{Name: name, Clients: n, Pipeline: b.Pipeline, WritePct: writePct, Extra: extra}
	var directRPS, relayRPS float64
	for i, t := range targets {
		switch t.Name {
		case "direct":
			directRPS = res[i].RPS()
		case "relay":
			relayRPS = res[i].RPS()
		}
	}
	for i, t := range targets {
		sr.Targets = append(sr.Targets, targetReport(t.Name, res[i], directRPS, relayRPS))
	}
	return sr, nil
}

// targetReport is r's line in a scenario, with its ratios to direct and to
// the relay when those were measured (non-zero).
func targetReport(name string, r *loadgen.Result, directRPS, relayRPS float64) TargetReport {
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
	tr := TargetReport{Name: name, ThroughputRPS: r.RPS(), P50us: us(r.Percentile(0.5)), P90us: us(r.Percentile(0.9)),
		P99us: us(r.Percentile(0.99)), P999us: us(r.Percentile(0.999)), Requests: r.Requests, Errors: r.Errors, Exceptions: r.Exceptions}
	if directRPS > 0 {
		tr.RatioDirect = r.RPS() / directRPS
	}
	if relayRPS > 0 {
		tr.RatioRelay = r.RPS() / relayRPS
	}
	return tr
}

// benchPolicy allows every read of the first 2000 registers and writes of
// 0..100 to registers 0..99, as standing rules.
const benchPolicy = `id: bench
devices:
  - name: dev
    upstream: %s
    rules:
      - {name: reads, allow: read, functions: [1, 2, 3, 4], addresses: 0-1999}
      - {name: writes, allow: write, functions: [6, 16], addresses: 0-99, values: 0-100}
`

// SelfHosted starts the upstreams, a relay and gridseal with an embedded
// NATS (fsync always) recording every operation, and runs the scenarios.
func (b *Bencher) SelfHosted(ctx context.Context, counts []int, writePct int, which string) (Report, error) {
	var rep Report
	want := map[string]bool{}
	for _, s := range strings.Split(which, ",") {
		want[strings.TrimSpace(s)] = true
	}
	log := zap.NewNop()
	dir, err := os.MkdirTemp("", "gridseal-bench-")
	if err != nil {
		return rep, err
	}
	defer func() { _ = os.RemoveAll(dir) }() // a temporary store: nothing to keep
	ns, err := natsembed.Start(natsembed.Options{Port: -1, StoreDir: dir, SyncAlways: true})
	if err != nil {
		return rep, err
	}
	defer ns.Shutdown()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return rep, err
	}
	defer nc.Close()
	signer, _, err := keys.Generate()
	if err != nil {
		return rep, err
	}
	rec, err := chain.Open(ctx, nc, chain.Config{Writer: "bench", Signer: signer}, log)
	if err != nil {
		return rep, err
	}
	defer func() { _ = rec.Close(10 * time.Second) }()

	// stack starts dev, a relay to it and gridseal in front of it, with the
	// bench policy or, given engineFor, the engine it makes.
	stack := func(dev *loadgen.Device, engineFor ...func(upstream string, log *zap.Logger) (*policy.Engine, error)) (up, relay, gs string, stop func(), err error) {
		listen := func() net.Listener {
			ln, lerr := net.Listen("tcp", "127.0.0.1:0")
			if lerr != nil && err == nil {
				err = lerr
			}
			return ln
		}
		upLn, relLn := listen(), listen()
		if err != nil {
			return
		}
		go dev.Serve(upLn)
		rel := &loadgen.Relay{Upstream: upLn.Addr().String()}
		go rel.Serve(relLn)
		var engine *policy.Engine
		if len(engineFor) > 0 {
			engine, err = engineFor[0](upLn.Addr().String(), log)
		} else {
			var pol *policy.Policy
			if pol, err = policy.Parse("bench.yaml", fmt.Appendf(nil, benchPolicy, upLn.Addr().String())); err == nil {
				engine = policy.NewEngine(pol, log)
			}
		}
		if err != nil {
			dev.Close()
			rel.Close()
			return
		}
		cfg := proxy.DefaultConfig()
		cfg.Limits.RequestsPerSecond, cfg.Limits.Burst = 1e9, 1<<30
		cfg.Limits.MaxConnections, cfg.Limits.MaxConnectionsPerClient = 8192, 8192
		srv, perr := proxy.New(cfg, []proxy.Device{{Name: "dev", Upstream: upLn.Addr().String()}},
			engine, rec, log)
		if perr != nil {
			err = perr
			return
		}
		gsLn := listen()
		go func() { _ = srv.Serve(gsLn, proxy.Route{Default: "dev"}) }()
		return upLn.Addr().String(), relLn.Addr().String(), gsLn.Addr().String(), func() {
			_ = srv.Close()
			rel.Close()
			dev.Close()
		}, err
	}

	if want["overhead"] {
		up, relay, gs, stop, err := stack(&loadgen.Device{})
		if err != nil {
			return rep, err
		}
		for _, n := range counts {
			before := rec.Stats().Events.Load()
			sr, err := b.Scenario(ctx, "overhead", []Target{{"direct", up}, {"relay", relay}, {"gridseal", gs}}, n, writePct, nil)
			if err != nil {
				stop()
				return rep, err
			}
			flushCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
			ferr := rec.Flush(flushCtx)
			cancel()
			events := rec.Stats().Events.Load() - before
			var gsReq uint64
			for _, t := range sr.Targets {
				if t.Name == "gridseal" {
					gsReq = t.Requests
				}
			}
			sr.Extra = map[string]string{
				"chain_events":       strconv.FormatUint(events, 10),
				"chain_events_per_s": fmt.Sprintf("%.0f", float64(events)/b.Duration.Seconds()), // gridseal ran for b.Duration in all
				"chain_kept_up":      strconv.FormatBool(ferr == nil && events >= gsReq),
			}
			rep.Scenarios = append(rep.Scenarios, *sr)
		}
		stop()
	}
	if want["plc"] {
		up, _, gs, stop, err := stack(&loadgen.Device{ServiceTime: 2 * time.Millisecond, Serial: true})
		if err != nil {
			return rep, err
		}
		sr, err := b.Scenario(ctx, "plc-like", []Target{{"direct", up}, {"gridseal", gs}}, 16, writePct, nil)
		stop()
		if err != nil {
			return rep, err
		}
		rep.Scenarios = append(rep.Scenarios, *sr)
	}
	if want["writes"] {
		up, _, gs, stop, err := stack(&loadgen.Device{})
		if err != nil {
			return rep, err
		}
		for _, n := range []int{1, 16} {
			sr, err := b.Scenario(ctx, "writes", []Target{{"direct", up}, {"gridseal", gs}}, n, 100, nil)
			if err != nil {
				stop()
				return rep, err
			}
			rep.Scenarios = append(rep.Scenarios, *sr)
		}
		stop()
	}
	if want["approved"] {
		a, err := newBenchApprovals(ctx, nc, log)
		if err != nil {
			return rep, err
		}
		up, _, gs, stop, err := stack(&loadgen.Device{}, a.engine)
		if err != nil {
			a.close()
			return rep, err
		}
		sr, err := b.approvedWrites(ctx, a, up, gs)
		stop()
		a.close()
		if err != nil {
			return rep, err
		}
		rep.Scenarios = append(rep.Scenarios, *sr)
	}
	if want["idle"] {
		_, _, gs, stop, err := stack(&loadgen.Device{})
		if err != nil {
			return rep, err
		}
		// Let what earlier scenarios started wind down, and give freed
		// memory back, so the figures are live memory, not the high-water
		// mark of the load before.
		time.Sleep(time.Second)
		inuse := func() uint64 {
			runtime.GC()
			debug.FreeOSMemory()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			return ms.HeapInuse + ms.StackInuse
		}
		memBefore := inuse()
		rssBefore := rss()
		var conns []net.Conn
		for i := 0; i < 1000; i++ {
			c, err := net.Dial("tcp", gs)
			if err != nil {
				break
			}
			conns = append(conns, c)
		}
		time.Sleep(500 * time.Millisecond)
		memAfter := inuse()
		rssAfter := rss()
		for _, c := range conns {
			_ = c.Close()
		}
		stop()
		rep.Scenarios = append(rep.Scenarios, ScenarioReport{Name: "idle", Clients: len(conns), Extra: map[string]string{
			"rss_before_mib":      fmt.Sprintf("%.1f", float64(rssBefore)/(1<<20)),
			"rss_with_idle_mib":   fmt.Sprintf("%.1f", float64(rssAfter)/(1<<20)),
			"go_mem_per_conn_kib": fmt.Sprintf("%.1f", (float64(memAfter)-float64(memBefore))/1024/float64(max(1, len(conns)))),
			"note":                "RSS is the whole bench process: proxy, embedded NATS, upstream, load generator and its 1000 client sockets",
		}})
	}
	return rep, nil
}

// rss reads this process's resident set size from /proc.
func rss() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}

// PrintReport writes rep as a table, one row per target and scenario.
func PrintReport(w io.Writer, rep *Report) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "SCENARIO\tCLIENTS\tTARGET\tREQ/S\tP50 µs\tP90 µs\tP99 µs\tP99.9 µs\tERRORS\tEXC\t×DIRECT\t×RELAY\t")
	for _, s := range rep.Scenarios {
		for _, t := range s.Targets {
			ratio := func(x float64) string {
				if x == 0 {
					return "-"
				}
				return fmt.Sprintf("%.2f", x)
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%d\t%d\t%s\t%s\t\n", s.Name, s.Clients, t.Name, t.ThroughputRPS,
				t.P50us, t.P90us, t.P99us, t.P999us, t.Errors, t.Exceptions, ratio(t.RatioDirect), ratio(t.RatioRelay))
		}
	}
	_ = tw.Flush()
	for _, s := range rep.Scenarios {
		if len(s.Extra) == 0 {
			continue
		}
		var parts []string
		for k, v := range s.Extra {
			parts = append(parts, k+"="+v)
		}
		fmt.Fprintf(w, "%s (%d clients): %s\n", s.Name, s.Clients, strings.Join(parts, " "))
	}
}
