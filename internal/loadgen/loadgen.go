package loadgen

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gridseal/gridseal/protocols/modbus"
)

// Config is one load run against one address.
type Config struct {
	Addr      string
	Clients   int           // connections
	Pipeline  int           // requests in flight per connection
	Duration  time.Duration // how long to send
	WritePct  int           // share of writes (FC 6 and 16), the rest reads (FC 3, 4, 1)
	Unit      byte
	ReadBase  uint16 // reads cover ReadBase .. ReadBase+ReadSpan-1
	ReadSpan  uint16
	WriteBase uint16 // writes go to WriteBase .. WriteBase+WriteSpan-1
	WriteSpan uint16
	MaxValue  uint16 // written values are 0..MaxValue
	Progress  func(done uint64)
	// Start, if set, is called once every client is connected; the clock
	// starts when it returns (runs made at once start together).
	Start func()
}

// Result of a run.
type Result struct {
	Requests   uint64 // replies received and checked
	Errors     uint64 // replies that did not match their request, and broken connections
	Exceptions uint64 // exception replies
	Elapsed    time.Duration
	latencies  []time.Duration // sorted
	writes     []time.Duration // the writes' among them, sorted
}

// RPS is requests per second.
func (r *Result) RPS() float64 { return float64(r.Requests) / r.Elapsed.Seconds() }

// Percentile returns the q-quantile (0..1) of reply latency.
func (r *Result) Percentile(q float64) time.Duration { return quantile(r.latencies, q) }

// WritePercentile returns the q-quantile (0..1) of the writes' reply
// latency, 0 if there were none: in a mix, what a write waits for its
// durable record shows here, not in the reads' many samples.
func (r *Result) WritePercentile(q float64) time.Duration { return quantile(r.writes, q) }

// Writes is how many write latencies were sampled.
func (r *Result) Writes() int { return len(r.writes) }

func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(int(q*float64(len(sorted))), len(sorted)-1)]
}

// ResultOf builds a Result from latencies measured elsewhere (one request
// at a time, as in the approved-writes scenario).
func ResultOf(lat []time.Duration, errs, exceptions uint64, elapsed time.Duration) *Result {
	l := slices.Clone(lat)
	slices.Sort(l)
	return &Result{Requests: uint64(len(l)), Errors: errs, Exceptions: exceptions, Elapsed: elapsed, latencies: l}
}

// Merge adds o into r (for interleaved rounds).
func (r *Result) Merge(o *Result) {
	r.add(o)
	r.Elapsed += o.Elapsed
	r.sort()
}

// Combine sums runs made at the same time (one per device): their counts
// and latencies, over the longest of their times.
func Combine(rs []*Result) *Result {
	out := &Result{}
	for _, r := range rs {
		out.add(r)
		out.Elapsed = max(out.Elapsed, r.Elapsed)
	}
	out.sort()
	return out
}

// add sums o's counts and samples into r, unsorted.
func (r *Result) add(o *Result) {
	r.Requests += o.Requests
	r.Errors += o.Errors
	r.Exceptions += o.Exceptions
	r.latencies = append(r.latencies, o.latencies...)
	r.writes = append(r.writes, o.writes...)
}

func (r *Result) sort() {
	slices.Sort(r.latencies)
	slices.Sort(r.writes)
}

// totalSamples bounds the latency samples of a run (32 MiB of them).
const totalSamples = 1 << 22

// inflight is what a client remembers of a request until its reply.
type inflight struct {
	tid  uint16
	fn   modbus.Function
	qty  uint16
	echo [6]byte // for writes: the bytes the reply must echo
	sent time.Time
}

// Run drives cfg.Clients connections, each keeping cfg.Pipeline requests in
// flight, for cfg.Duration, checking every reply: transaction id, unit,
// function, byte count.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Clients < 1 {
		cfg.Clients = 1
	}
	if cfg.Pipeline < 1 {
		cfg.Pipeline = 1
	}
	if cfg.Pipeline > 512 {
		return nil, fmt.Errorf("pipeline %d: at most 512", cfg.Pipeline)
	}
	if cfg.ReadSpan == 0 {
		cfg.ReadSpan = 100
	}
	if cfg.WriteSpan == 0 {
		cfg.WriteSpan = 10
	}
	conns := make([]net.Conn, cfg.Clients)
	for i := range conns {
		c, err := net.DialTimeout("tcp", cfg.Addr, 5*time.Second)
		if err != nil {
			for _, o := range conns[:i] {
				_ = o.Close()
			}
			return nil, fmt.Errorf("connect to %s: %w", cfg.Addr, err)
		}
		conns[i] = c
	}
	if cfg.Start != nil {
		cfg.Start()
	}
	var total atomic.Uint64
	results := make([]*Result, cfg.Clients)
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = client(ctx, c, cfg, uint64(i), deadline, &total)
		}()
	}
	stopProgress := make(chan struct{})
	if cfg.Progress != nil {
		go func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-stopProgress:
					return
				case <-t.C:
					cfg.Progress(total.Load())
				}
			}
		}()
	}
	wg.Wait()
	close(stopProgress)
	out := &Result{Elapsed: time.Since(start)}
	for _, r := range results {
		out.add(r)
	}
	out.sort()
	return out, nil
}

func client(ctx context.Context, c net.Conn, cfg Config, seed uint64, deadline time.Time, total *atomic.Uint64) *Result {
	defer func() { _ = c.Close() }()
	maxSamples := max(1<<14, totalSamples/cfg.Clients)
	res := &Result{latencies: make([]time.Duration, 0, 1024)}
	rng := rand.New(rand.NewPCG(seed, 0x9E3779B97F4A7C15))
	rd := modbus.NewReader(c)
	ring := make([]inflight, 1024)
	var tid uint16
	var buf []byte
	var pdu [16]byte
	send := func() error {
		tid++
		in := &ring[tid%1024]
		*in = inflight{tid: tid}
		p := pdu[:0]
		if rng.IntN(100) < cfg.WritePct {
			addr := cfg.WriteBase + uint16(rng.IntN(int(cfg.WriteSpan)))
			v := uint16(rng.IntN(int(cfg.MaxValue) + 1))
			if rng.IntN(2) == 0 || addr == cfg.WriteBase+cfg.WriteSpan-1 {
				p = modbus.AppendWriteSingleRegister(p, addr, v)
				in.fn, in.qty = modbus.WriteSingleRegister, 1
				copy(in.echo[:], p[1:5])
			} else {
				p = modbus.AppendWriteMultipleRegisters(p, addr, []uint16{v, v})
				in.fn, in.qty = modbus.WriteMultipleRegisters, 2
				copy(in.echo[:], p[1:5])
			}
		} else {
			fn := [...]modbus.Function{modbus.ReadHoldingRegisters, modbus.ReadHoldingRegisters, modbus.ReadInputRegisters, modbus.ReadCoils}[rng.IntN(4)]
			qty := uint16(1 + rng.IntN(10))
			addr := cfg.ReadBase + uint16(rng.IntN(int(cfg.ReadSpan-qty+1)))
			p = modbus.AppendReadRequest(p, fn, addr, qty)
			in.fn, in.qty = fn, qty
		}
		in.sent = time.Now()
		buf = modbus.AppendFrame(buf[:0], tid, cfg.Unit, p)
		_, err := c.Write(buf)
		return err
	}
	outstanding := 0
	for i := 0; i < cfg.Pipeline; i++ {
		if err := send(); err != nil {
			res.Errors++
			return res
		}
		outstanding++
	}
	for outstanding > 0 {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		f, err := rd.ReadFrame()
		if err != nil {
			res.Errors += uint64(outstanding)
			return res
		}
		outstanding--
		in := &ring[f.Transaction%1024]
		now := time.Now()
		if in.tid != f.Transaction || f.Unit != cfg.Unit || !valid(in, f.PDU) {
			res.Errors++
		} else {
			res.Requests++
			total.Add(1)
			if f.PDU[0]&0x80 != 0 {
				res.Exceptions++
			}
			if len(res.latencies) < maxSamples {
				res.latencies = append(res.latencies, now.Sub(in.sent))
				if in.fn == modbus.WriteSingleRegister || in.fn == modbus.WriteMultipleRegisters {
					res.writes = append(res.writes, now.Sub(in.sent))
				}
			}
		}
		in.tid = ^in.tid // spent: a duplicate reply will not match
		if now.Before(deadline) && ctx.Err() == nil {
			if err := send(); err != nil {
				res.Errors += uint64(outstanding) + 1
				return res
			}
			outstanding++
		}
	}
	return res
}

// valid checks a reply against what was asked.
func valid(in *inflight, pdu []byte) bool {
	if len(pdu) == 2 && pdu[0] == byte(in.fn)|0x80 {
		return true
	}
	if len(pdu) < 2 || pdu[0] != byte(in.fn) {
		return false
	}
	switch in.fn {
	case modbus.ReadHoldingRegisters, modbus.ReadInputRegisters:
		return int(pdu[1]) == 2*int(in.qty) && len(pdu) == 2+2*int(in.qty)
	case modbus.ReadCoils:
		n := (int(in.qty) + 7) / 8
		return int(pdu[1]) == n && len(pdu) == 2+n
	case modbus.WriteSingleRegister, modbus.WriteMultipleRegisters:
		return len(pdu) == 5 && binary.BigEndian.Uint32(pdu[1:5]) == binary.BigEndian.Uint32(in.echo[:4])
	}
	return false
}
