package main

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/gateway"
	"github.com/gridseal/gridseal/internal/chaintest"
	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// benchPolicies are policy/testdata/plant.yaml (in force) and a candidate
// without its inverter write rule, written to dir.
func benchPolicies(b *testing.B, dir string) (inForce, candidate string) {
	b.Helper()
	raw, err := os.ReadFile("../../policy/testdata/plant.yaml")
	if err != nil {
		b.Fatal(err)
	}
	s := string(raw)
	start := strings.Index(s, "      - name: power-limit-setpoint")
	end := strings.Index(s, "  - name: battery-1")
	if start < 0 || end < start {
		b.Fatal("plant.yaml changed: no power-limit-setpoint rule before battery-1")
	}
	inForce, candidate = filepath.Join(dir, "plant.yaml"), filepath.Join(dir, "candidate.yaml")
	fewer := strings.Replace(s[:start]+s[end:], "version: 1", "version: 2", 1)
	for p, body := range map[string]string{inForce: s, candidate: fewer} {
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	return inForce, candidate
}

// benchEvent is operation n of a plant's traffic: telemetry reads, setpoint
// writes, a refused disconnect, from four clients.
func benchEvent(n uint64) *audit.Event {
	ev := &audit.Event{Time: time.Unix(1764072000, int64(n)*1000).UTC(), Op: n, Phase: audit.PhaseComplete, Verdict: audit.Allow,
		Client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(1 + n%4)}), uint16(40000+n%4)), Listener: "127.0.0.1:502",
		Policy: "7fbde7198b85dc50ef0d112d46d9d889159460634310496d1b19cdf65da7db40", Upstream: time.Millisecond}
	switch n % 8 {
	case 0, 1, 2:
		ev.Device, ev.Unit, ev.PDU, ev.Rule = "inverter-1", 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 40072, 16), "inverter-telemetry"
	case 3:
		ev.Device, ev.Unit, ev.PDU, ev.Rule = "inverter-1", 1, modbus.AppendWriteSingleRegister(nil, 40127, uint16(n%100)), "power-limit-setpoint"
	case 4:
		ev.Device, ev.Unit, ev.PDU, ev.Rule, ev.Verdict = "inverter-1", 1, modbus.AppendWriteSingleRegister(nil, 40126, 0), "power-limit-setpoint", audit.Deny
		ev.Reason, ev.Exception = "rule power-limit-setpoint: holding-registers 40126+1 outside 40127", 2
	case 5, 6:
		ev.Device, ev.Unit, ev.PDU, ev.Rule = "battery-1", 2, modbus.AppendReadRequest(nil, modbus.ReadInputRegisters, 0, 3), "battery-telemetry"
	default:
		ev.Device, ev.Unit, ev.PDU, ev.Rule = "battery-1", 2, modbus.AppendWriteMultipleRegisters(nil, 0, []uint16{20, 1}), "battery-dispatch"
	}
	if ev.Reason == "" {
		ev.Reason = ev.Rule
	}
	ev.Function, ev.Response = ev.PDU[0], ev.PDU
	req, _ := modbus.ParseRequest(ev.PDU)
	ev.Class, ev.Address, ev.Quantity = req.Class().String(), req.Address, req.Quantity
	return ev
}

// BenchmarkWhatIfReplay measures what-if's replay on blocks of encoded
// events in memory, as the chain stream delivers them: block parsing,
// decoding in place, both policies' judgement and the grouping.
func BenchmarkWhatIfReplay(b *testing.B) {
	inForce, candidate := benchPolicies(b, b.TempDir())
	cur, err := policy.Load(inForce)
	if err != nil {
		b.Fatal(err)
	}
	cand, err := policy.Load(candidate)
	if err != nil {
		b.Fatal(err)
	}
	signer := keystest.Signer(b)
	const perBlock, blocks = 1024, 64
	msgs := make([]*chain.Msg, blocks)
	for i := range msgs {
		events := make([][]byte, perBlock)
		for j := range events {
			events[j] = chain.AppendEvent(nil, benchEvent(uint64(i*perBlock+j)))
		}
		data, _, err := chain.EncodeBlock("gw-1", signer, uint64(i), chain.GenesisPrev("gw-1"), time.Unix(1764072000, 0), events)
		if err != nil {
			b.Fatal(err)
		}
		msgs[i] = &chain.Msg{Seq: uint64(i + 1), Data: data}
	}
	w := &policy.WhatIf{Baseline: cur, Candidate: cand}
	rp := gateway.NewReplayer(time.Time{}, w)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	events := 0
	for i := 0; b.Loop(); i++ {
		m := msgs[i%blocks]
		blk, err := chain.ParseBlock(m.Data)
		if err != nil {
			b.Fatal(err)
		}
		if err := rp.Block(m, blk); err != nil {
			b.Fatal(err)
		}
		events += perBlock
	}
	b.ReportMetric(float64(events)/time.Since(start).Seconds(), "events/s")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(events), "ns/event")
	if r := w.Report(); r.NewlyDenied == 0 {
		b.Fatal("the candidate without the write rule denied nothing")
	}
}

// BenchmarkWhatIfCommand runs `gridseal policy what-if`, and `gridseal
// chain verify`, on a chain of GRIDSEAL_WHATIF_EVENTS events (default
// 1 000 000) in a JetStream server: the end-to-end figures, reading the
// stream included.
func BenchmarkWhatIfCommand(b *testing.B) {
	n := 1_000_000
	if s := os.Getenv("GRIDSEAL_WHATIF_EVENTS"); s != "" {
		if _, err := fmt.Sscan(s, &n); err != nil {
			b.Fatal(err)
		}
	}
	dir := b.TempDir()
	inForce, candidate := benchPolicies(b, dir)
	srv := natstest.RunJetStream(b)
	nc := natstest.Connect(b, srv.URL())
	key := keystest.New(b)
	rec := chaintest.Open(b, nc, chain.Config{Signer: key.Signer, LeaseTTL: -1, DurableTimeout: time.Minute})
	for i := 0; i < n; i++ {
		// Every 20 000th event durable: the writer waits for the chain, so
		// its spool stays small.
		if err := rec.Record(b.Context(), benchEvent(uint64(i)), i%20_000 == 19_999); err != nil {
			b.Fatal(err)
		}
	}
	if err := rec.Close(time.Minute); err != nil {
		b.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	info := chaintest.StreamInfo(b, js, chain.StreamName)
	b.Logf("chain: %d events in %d blocks, %d MB", n, info.State.Msgs, info.State.Bytes>>20)
	b.Run("stream only", func(b *testing.B) { // what reading the stream alone costs
		for b.Loop() {
			start := time.Now()
			seen := 0
			if err := chain.ScanBlocks(b.Context(), js, 1, func(_ *chain.Msg, blk *chain.Block) error {
				seen += len(blk.Events)
				return nil
			}); err != nil || seen != n {
				b.Fatalf("scanned %d events: %v", seen, err)
			}
			b.ReportMetric(float64(n)/time.Since(start).Seconds(), "events/s")
		}
	})
	b.Run("what-if", func(b *testing.B) { benchWhatIf(b, n, srv.URL(), dir, inForce, candidate) })
	b.Run("chain verify", func(b *testing.B) { benchChainVerify(b, n, srv.URL(), dir, key) })
}

func benchChainVerify(b *testing.B, n int, url, dir string, key keystest.Key) {
	kd := b.TempDir() // its own: -count runs this again
	_, pub, err := keys.WritePair(kd, "gw-1", key.Handle)
	if err != nil {
		b.Fatal(err)
	}
	trust := filepath.Join(kd, "trust.yaml")
	if err := chain.WriteTrust(trust, "gw-1", pub); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		start := time.Now()
		var out, errb strings.Builder
		code := run(b.Context(), []string{"chain", "verify", "--trust", trust, "--nats", url, "--data-dir", dir},
			strings.NewReader(""), &out, &errb)
		took := time.Since(start)
		if code != 0 || !strings.Contains(out.String(), fmt.Sprintf(" %d events", n)) {
			b.Fatalf("chain verify: exit %d\n%.2000s%s", code, out.String(), errb.String())
		}
		b.ReportMetric(float64(n)/took.Seconds(), "events/s")
	}
}

func benchWhatIf(b *testing.B, n int, url, dir, inForce, candidate string) {
	for b.Loop() {
		start := time.Now()
		var out, errb strings.Builder
		code := run(b.Context(), []string{"policy", "what-if", candidate, "--baseline", inForce, "--nats", url,
			"--data-dir", dir}, strings.NewReader(""), &out, &errb)
		took := time.Since(start)
		if code != 1 || !strings.Contains(out.String(), fmt.Sprintf("%d recorded requests replayed", n)) {
			b.Fatalf("what-if: exit %d\n%.2000s%s", code, out.String(), errb.String())
		}
		b.ReportMetric(float64(n)/took.Seconds(), "events/s")
	}
}
