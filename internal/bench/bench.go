// Package bench measures gridseal against a direct connection to a device
// and a bare TCP relay, with the load generator of internal/loadgen: the
// scenarios of `gridseal bench` and their report.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/approvals"
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
	PID  int // the process serving Addr, for its CPU; 0: not measured
	// Devices, when set, are the many devices the target serves instead
	// of Addr: the scenario's clients go to each of them.
	Devices []Endpoint
}

// Endpoint is one device of a target: where to connect, which unit to ask.
type Endpoint struct {
	Addr string
	Unit byte
}

// Report is `gridseal bench --json`.
type Report struct {
	Scenarios []ScenarioReport `json:"scenarios"`
	// Console says gridseal ran with its console on (--console).
	Console bool `json:"console,omitempty"`
	// Disk is the fsync of the disk under gridseal's journal (the
	// self-hosted scenarios).
	Disk *DiskReport `json:"disk,omitempty"`
}

// ScenarioReport is one scenario's measurements.
type ScenarioReport struct {
	Name    string `json:"name"`
	Clients int    `json:"clients"` // in all (devices scenario: devices × clients_per_device)
	// Devices and ClientsPerDevice: the devices scenario's.
	Devices          int               `json:"devices,omitempty"`
	ClientsPerDevice int               `json:"clients_per_device,omitempty"`
	Pipeline         int               `json:"pipeline"`
	WritePct         int               `json:"write_pct"`
	Targets          []TargetReport    `json:"targets"`
	Extra            map[string]string `json:"extra,omitempty"`
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
	// CPUPer1k is the CPU time (user + system, seconds) the target's own
	// process used per 1 000 requests: the honest unit of overhead where
	// CPU is the limit. Out-of-process only.
	CPUPer1k float64 `json:"cpu_per_1k,omitempty"`
	// WriteP50us and WriteP99us are the writes' own reply latency in a
	// request mix: a write waits for its durable record, and its share of
	// the samples is too small to show in the percentiles of all.
	WriteP50us float64 `json:"write_p50_us,omitempty"`
	WriteP99us float64 `json:"write_p99_us,omitempty"`
	// Devices: the target's figures in the devices scenario.
	Devices *DevicesReport `json:"devices,omitempty"`
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
	Procs    *Procs        // run each target as a process of its own; nil: all in this process
	Stderr   io.Writer     // progress lines, unless Quiet
	Duration time.Duration // measuring time per target and client count, split over the rounds
	Rounds   int           // interleaved rounds, so machine noise hits every target alike
	Pipeline int           // requests in flight per connection
	Quiet    bool
	// Devices and DeviceClients size the devices scenario: that many
	// devices behind one gridseal, that many clients each.
	Devices, DeviceClients int
	// Dir is where the in-process stack keeps its store ("": the
	// system's temporary directory).
	Dir string
}

// Scenario measures targets at n clients (n to each device of a target
// with Devices), interleaved in rounds.
func (b *Bencher) Scenario(ctx context.Context, name string, targets []Target, n, writePct int, extra map[string]string) (*ScenarioReport, error) {
	res := make([]*loadgen.Result, len(targets))
	perDev := make([][]devCount, len(targets))
	cpu := make([]time.Duration, len(targets))
	per := b.Duration / time.Duration(b.Rounds)
	for round := 0; round < b.Rounds; round++ {
		for k := range targets {
			i := (k + round) % len(targets) // rotate who goes first
			t := targets[i]
			if !b.Quiet {
				fmt.Fprintf(b.Stderr, "\r%-10s %4d clients  round %d/%d  %-9s", name, n*max(1, len(t.Devices)), round+1, b.Rounds, t.Name)
			}
			cpu0, cerr := procCPU(t.PID)
			r, devs, err := b.load(ctx, t, n, per, writePct)
			if err != nil {
				return nil, fmt.Errorf("%s %s: %w", name, t.Name, err)
			}
			if cpu1, err := procCPU(t.PID); cerr == nil && err == nil {
				cpu[i] += cpu1 - cpu0
			}
			if res[i] == nil {
				res[i] = r
				perDev[i] = make([]devCount, len(devs))
			} else {
				res[i].Merge(r)
			}
			for d, dr := range devs {
				perDev[i][d].own += dr.Requests - dr.Exceptions
				perDev[i][d].elapsed += dr.Elapsed
			}
		}
	}
	if !b.Quiet {
		fmt.Fprintf(b.Stderr, "\r%80s\r", "")
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
		tr := targetReport(t.Name, res[i], directRPS, relayRPS)
		if t.PID != 0 && tr.Requests > 0 {
			tr.CPUPer1k = cpu[i].Seconds() / (float64(tr.Requests) / 1000)
		}
		if len(t.Devices) > 0 {
			tr.Devices = spread(perDev[i])
		}
		sr.Targets = append(sr.Targets, tr)
	}
	return sr, nil
}

// load runs n clients against t for d: on its address, or n on each of its
// devices at once. For devices it also returns each device's result.
func (b *Bencher) load(ctx context.Context, t Target, n int, d time.Duration, writePct int) (*loadgen.Result, []*loadgen.Result, error) {
	cfg := loadgen.Config{Addr: t.Addr, Clients: n, Pipeline: b.Pipeline, Duration: d,
		WritePct: writePct, Unit: 1, ReadSpan: 100, WriteSpan: 10, MaxValue: 100}
	if len(t.Devices) == 0 {
		r, err := loadgen.Run(ctx, cfg)
		return r, nil, err
	}
	rs := make([]*loadgen.Result, len(t.Devices))
	errs := make([]error, len(t.Devices))
	// Every device's clients start once all are connected (a run that
	// failed to connect counts as ready), so none runs alone at the end.
	var wg, connected sync.WaitGroup
	connected.Add(len(t.Devices))
	begin := make(chan struct{})
	go func() { connected.Wait(); close(begin) }()
	for i, e := range t.Devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var once sync.Once
			ready := func() { once.Do(connected.Done) }
			c := cfg
			c.Addr, c.Unit = e.Addr, e.Unit
			c.Start = func() { ready(); <-begin }
			if rs[i], errs[i] = loadgen.Run(ctx, c); errs[i] != nil {
				errs[i] = fmt.Errorf("device %d: %w", i+1, errs[i])
			}
			ready()
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}
	return loadgen.Combine(rs), rs, nil
}

// targetReport is r's line in a scenario, with its ratios to direct and to
// the relay when those were measured (non-zero).
func targetReport(name string, r *loadgen.Result, directRPS, relayRPS float64) TargetReport {
	tr := TargetReport{Name: name, ThroughputRPS: r.RPS(), P50us: us(r.Percentile(0.5)), P90us: us(r.Percentile(0.9)),
		P99us: us(r.Percentile(0.99)), P999us: us(r.Percentile(0.999)), Requests: r.Requests, Errors: r.Errors, Exceptions: r.Exceptions}
	if r.Writes() > 0 && r.Writes() < int(r.Requests) {
		tr.WriteP50us, tr.WriteP99us = us(r.WritePercentile(0.5)), us(r.WritePercentile(0.99))
	}
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

// stack is one device with a relay and gridseal in front of it, each
// in-process or a process of its own; a pid of 0 is this process.
type stack struct {
	up, relay, gs          string
	upPID, relayPID, gsPID int
	nc                     *nats.Conn     // the NATS gridseal records to
	engine                 *policy.Engine // in-process: the proxy's engine
	stop                   func()
}

// targets names the stack's addresses for a scenario (relay included
// when withRelay).
func (s *stack) targets(withRelay bool) []Target {
	ts := []Target{{Name: "direct", Addr: s.up, PID: s.upPID}}
	if withRelay {
		ts = append(ts, Target{Name: "relay", Addr: s.relay, PID: s.relayPID})
	}
	return append(ts, Target{Name: "gridseal", Addr: s.gs, PID: s.gsPID})
}

// chainEvents counts the events in the chain s's gridseal records to.
func chainEvents(ctx context.Context, nc *nats.Conn) (uint64, error) {
	n, _, err := chainCounts(ctx, nc)
	return n, err
}

// chainCounts counts the chain's events and blocks.
func chainCounts(ctx context.Context, nc *nats.Conn) (events, blocks uint64, err error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return 0, 0, err
	}
	err = chain.Scan(ctx, js, 1, false, func(m *chain.Msg) error {
		b, err := chain.ParseBlock(m.Data)
		if err == nil {
			events += uint64(len(b.Events))
			blocks++
		}
		return nil
	})
	return events, blocks, err
}

// SelfHosted starts the device, a relay and gridseal recording every
// operation on an embedded NATS (fsync always) — each as a process of its
// own when b.Procs is set, as a site runs them, else all in this process
// (for profiling) — and runs the scenarios.
func (b *Bencher) SelfHosted(ctx context.Context, counts []int, writePct int, which string) (Report, error) {
	var rep Report
	want := map[string]bool{}
	for _, s := range strings.Split(which, ",") {
		want[strings.TrimSpace(s)] = true
	}
	newStack := b.inProcess
	if b.Procs != nil {
		newStack = b.outOfProcess
		defer b.Procs.Close()
	}
	benchPol := func(up string) string { return fmt.Sprintf(benchPolicy, up) }

	if want["overhead"] {
		st, err := newStack(ctx, &loadgen.Device{}, benchPol)
		if err != nil {
			return rep, err
		}
		for _, n := range counts {
			before, blocksBefore, err := chainCounts(ctx, st.nc)
			if err != nil {
				st.stop()
				return rep, err
			}
			sr, err := b.Scenario(ctx, "overhead", st.targets(true), n, writePct, nil)
			if err != nil {
				st.stop()
				return rep, err
			}
			var gsReq uint64
			for _, t := range sr.Targets {
				if t.Name == "gridseal" {
					gsReq = t.Requests
				}
			}
			// Reads are recorded without making clients wait: give the
			// chain a moment to take the last of them.
			var events, blocks uint64
			for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				after, blocksAfter, err := chainCounts(ctx, st.nc)
				if err != nil {
					st.stop()
					return rep, err
				}
				blocks = blocksAfter - blocksBefore
				if events = after - before; events >= gsReq {
					break
				}
			}
			// gridseal ran for b.Duration in all. Blocks per second is what
			// costs: each is signed, stored with an fsync and acknowledged.
			sr.Extra = map[string]string{
				"chain_events":       strconv.FormatUint(events, 10),
				"chain_events_per_s": fmt.Sprintf("%.0f", float64(events)/b.Duration.Seconds()),
				"chain_blocks_per_s": fmt.Sprintf("%.0f", float64(blocks)/b.Duration.Seconds()),
				"chain_kept_up":      strconv.FormatBool(events >= gsReq),
			}
			rep.Scenarios = append(rep.Scenarios, *sr)
		}
		st.stop()
	}
	if want["plc"] {
		st, err := newStack(ctx, &loadgen.Device{ServiceTime: 2 * time.Millisecond, Serial: true}, benchPol)
		if err != nil {
			return rep, err
		}
		sr, err := b.Scenario(ctx, "plc-like", st.targets(false), 16, writePct, nil)
		st.stop()
		if err != nil {
			return rep, err
		}
		rep.Scenarios = append(rep.Scenarios, *sr)
	}
	if want["writes"] {
		st, err := newStack(ctx, &loadgen.Device{}, benchPol)
		if err != nil {
			return rep, err
		}
		for _, n := range []int{1, 16} {
			sr, err := b.Scenario(ctx, "writes", st.targets(false), n, 100, nil)
			if err != nil {
				st.stop()
				return rep, err
			}
			rep.Scenarios = append(rep.Scenarios, *sr)
		}
		st.stop()
	}
	if want["approved"] {
		a, err := newBenchApprovals()
		if err != nil {
			return rep, err
		}
		st, err := newStack(ctx, &loadgen.Device{}, a.policyYAML)
		if err != nil {
			return rep, err
		}
		if err := a.open(ctx, st.nc); err != nil {
			st.stop()
			return rep, err
		}
		if st.engine != nil {
			approvals.Use(st.engine, a.store, "bench")
		}
		sr, err := b.approvedWrites(ctx, a, st)
		a.close()
		st.stop()
		if err != nil {
			return rep, err
		}
		rep.Scenarios = append(rep.Scenarios, *sr)
	}
	if want["devices"] {
		sr, err := b.manyDevices(ctx, writePct)
		if err != nil {
			return rep, err
		}
		rep.Scenarios = append(rep.Scenarios, *sr)
	}
	if want["idle"] {
		st, err := newStack(ctx, &loadgen.Device{}, benchPol)
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
		rssBefore := procRSS(st.gsPID)
		var conns []net.Conn
		for i := 0; i < 1000; i++ {
			c, err := net.Dial("tcp", st.gs)
			if err != nil {
				break
			}
			conns = append(conns, c)
		}
		time.Sleep(500 * time.Millisecond)
		memAfter := inuse()
		rssAfter := procRSS(st.gsPID)
		for _, c := range conns {
			_ = c.Close()
		}
		st.stop()
		extra := map[string]string{
			"rss_before_mib":    fmt.Sprintf("%.1f", float64(rssBefore)/(1<<20)),
			"rss_with_idle_mib": fmt.Sprintf("%.1f", float64(rssAfter)/(1<<20)),
			"rss_per_conn_kib":  fmt.Sprintf("%.1f", (float64(rssAfter)-float64(rssBefore))/1024/float64(max(1, len(conns)))),
			"note":              "RSS of the gridseal process (proxy and its embedded NATS) before and with the idle clients",
		}
		if st.gsPID == 0 {
			extra["go_mem_per_conn_kib"] = fmt.Sprintf("%.1f", (float64(memAfter)-float64(memBefore))/1024/float64(max(1, len(conns))))
			extra["note"] = "in-process: RSS is the whole bench process: proxy, embedded NATS, upstream, load generator and its 1000 client sockets"
		}
		rep.Scenarios = append(rep.Scenarios, ScenarioReport{Name: "idle", Clients: len(conns), Extra: extra})
	}
	return rep, nil
}

// outOfProcess starts dev, a relay and `gridseal proxy` as processes.
func (b *Bencher) outOfProcess(ctx context.Context, dev *loadgen.Device, pol func(upstream string) string) (*stack, error) {
	st := &stack{stop: func() {}}
	var err error
	if st.up, st.upPID, err = b.Procs.Device(ctx, dev); err != nil {
		return nil, err
	}
	if st.relay, st.relayPID, err = b.Procs.Relay(ctx, st.up); err != nil {
		return nil, err
	}
	var data string
	if st.gs, st.gsPID, data, err = b.Procs.Gridseal(ctx, pol(st.up)); err != nil {
		return nil, err
	}
	conn, err := natsembed.Connect(ctx, natsembed.ConnectOptions{Name: "bench", DataDir: data})
	if err != nil {
		return nil, err
	}
	st.nc = conn.NC
	st.stop = func() {
		conn.Close()
		b.Procs.Close()
	}
	return st, nil
}

// inProcess starts dev, a relay and a proxy recording to an embedded NATS,
// all in this process.
func (b *Bencher) inProcess(ctx context.Context, dev *loadgen.Device, pol func(upstream string) string) (_ *stack, err error) {
	log := zap.NewNop()
	dir, err := os.MkdirTemp(b.Dir, "gridseal-bench-")
	if err != nil {
		return nil, err
	}
	var closers []func()
	st := &stack{stop: func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}}
	defer func() {
		if err != nil {
			st.stop()
		}
	}()
	closers = append(closers, func() { _ = os.RemoveAll(dir) }) // a temporary store: nothing to keep
	ns, err := natsembed.Start(natsembed.Options{Port: -1, StoreDir: dir, SyncAlways: true})
	if err != nil {
		return nil, err
	}
	closers = append(closers, ns.Shutdown)
	if st.nc, err = nats.Connect(ns.ClientURL()); err != nil {
		return nil, err
	}
	closers = append(closers, st.nc.Close)
	signer, _, err := keys.Generate()
	if err != nil {
		return nil, err
	}
	rec, err := chain.Open(ctx, st.nc, chain.Config{Writer: "bench", Signer: signer, LeaseTTL: -1}, log)
	if err != nil {
		return nil, err
	}
	closers = append(closers, func() { _ = rec.Close(10 * time.Second) })
	devLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go dev.Serve(devLn)
	closers = append(closers, dev.Close)
	st.up = devLn.Addr().String()
	relLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	rel := &loadgen.Relay{Upstream: st.up}
	go rel.Serve(relLn)
	closers = append(closers, rel.Close)
	st.relay = relLn.Addr().String()
	p, err := policy.Parse("bench.yaml", []byte(pol(st.up)))
	if err != nil {
		return nil, err
	}
	engine := policy.NewEngine(p, log)
	st.engine = engine
	cfg := proxy.DefaultConfig()
	cfg.Limits.RequestsPerSecond, cfg.Limits.Burst = 1e9, 1<<30
	cfg.Limits.MaxConnections, cfg.Limits.MaxConnectionsPerClient = 8192, 8192
	srv, err := proxy.New(cfg, []proxy.Device{{Name: "dev", Upstream: st.up}}, engine, rec, log)
	if err != nil {
		return nil, err
	}
	gsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = srv.Close()
		return nil, err
	}
	go func() { _ = srv.Serve(gsLn, proxy.Route{Default: "dev"}) }()
	closers = append(closers, func() { _ = srv.Close() })
	st.gs = gsLn.Addr().String()
	return st, nil
}

// PrintReport writes rep as a table, one row per target and scenario.
func PrintReport(w io.Writer, rep *Report) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "SCENARIO\tCLIENTS\tTARGET\tREQ/S\tP50 µs\tP90 µs\tP99 µs\tP99.9 µs\tERRORS\tEXC\t×DIRECT\t×RELAY\tCPU ms/1k\t")
	for _, s := range rep.Scenarios {
		for _, t := range s.Targets {
			ratio := func(x float64) string {
				if x == 0 {
					return "-"
				}
				return fmt.Sprintf("%.2f", x)
			}
			cpu := "-"
			if t.CPUPer1k > 0 {
				cpu = fmt.Sprintf("%.1f", t.CPUPer1k*1000)
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%d\t%d\t%s\t%s\t%s\t\n", s.Name, s.Clients, t.Name, t.ThroughputRPS,
				t.P50us, t.P90us, t.P99us, t.P999us, t.Errors, t.Exceptions, ratio(t.RatioDirect), ratio(t.RatioRelay), cpu)
		}
	}
	_ = tw.Flush()
	if rep.Console {
		fmt.Fprintln(w, "gridseal ran with its console on (--console)")
	}
	printDisk(w, rep.Disk)
	for _, s := range rep.Scenarios {
		for _, t := range s.Targets {
			if t.WriteP99us > 0 {
				fmt.Fprintf(w, "%s (%d clients, %d %% writes): %s writes p50 %.0f µs, p99 %.0f µs\n",
					s.Name, s.Clients, s.WritePct, t.Name, t.WriteP50us, t.WriteP99us)
			}
		}
	}
	for i := range rep.Scenarios {
		printDevices(w, &rep.Scenarios[i])
	}
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
