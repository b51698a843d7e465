package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/internal/loadgen"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// benchApprovedPolicy adds to the bench policy a setpoint range that only
// 2 of 3 operators can approve, command by command.
const benchApprovedPolicy = benchPolicy + `      - name: setpoint
        allow: write
        functions: [6]
        addresses: 100-109
        values: 0-100
        requires: {group: operators, m: 2}
        max_ttl: 1h
approvers:
`

// benchApprovals is the approval side of the approved-writes scenario: a
// proposer, three operators with real Tink keys, and the approval store on
// the bench's embedded JetStream.
type benchApprovals struct {
	proposer  *keys.Signer
	operators []*keys.Signer
	publics   [][]byte // proposer first, then the operators
	store     *approvals.Store
	pol       *policy.Policy
	yaml      string // the policy gridseal runs
	cancel    context.CancelFunc
}

func newBenchApprovals() (*benchApprovals, error) {
	a := &benchApprovals{}
	for i := 0; i < 4; i++ {
		s, pub, err := keys.Generate()
		if err != nil {
			return nil, err
		}
		a.publics = append(a.publics, pub)
		if i == 0 {
			a.proposer = s
		} else {
			a.operators = append(a.operators, s)
		}
	}
	return a, nil
}

// policyYAML is the policy for upstream: the bench policy and a setpoint
// range the operators approve. Proposals bind the last one made.
func (a *benchApprovals) policyYAML(upstream string) string {
	var b strings.Builder
	fmt.Fprintf(&b, benchApprovedPolicy, upstream)
	policy.WriteKeysetEntry(&b, "proposer", []string{"engineers"}, a.publics[0])
	for i, pub := range a.publics[1:] {
		policy.WriteKeysetEntry(&b, fmt.Sprintf("operator-%d", i+1), []string{"operators"}, pub)
	}
	a.yaml = b.String()
	return a.yaml
}

// open opens the approvals bucket on nc, where gridseal reads it.
func (a *benchApprovals) open(ctx context.Context, nc *nats.Conn) error {
	pol, err := policy.Parse("bench-approved.yaml", []byte(a.yaml))
	if err != nil {
		return err
	}
	a.pol = pol
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if a.store, err = approvals.OpenStore(ctx, js, 1, zap.NewNop()); err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(ctx)
	a.cancel = cancel
	if err := a.store.Watch(wctx); err != nil {
		cancel()
		return err
	}
	return nil
}

// approve proposes pdu and has two of the three operators sign it, then
// waits until the store's index (what the proxy reads) has the signatures.
func (a *benchApprovals) approve(ctx context.Context, pdu []byte, n int) error {
	pr, err := approvals.NewProposal(a.pol, "dev", 1, pdu, 15*time.Minute, "proposer", time.Now())
	if err != nil {
		return err
	}
	sig, err := a.proposer.Sign(approvals.ProposeInput(pr.ID()))
	if err != nil {
		return err
	}
	id, err := a.store.Propose(ctx, pr, sig)
	if err != nil {
		return err
	}
	var last *approvals.Stored
	for _, op := range []*keys.Signer{a.operators[n%3], a.operators[(n+1)%3]} { // a different pair each time
		sig, err := op.Sign(approvals.ApproveInput(id))
		if err != nil {
			return err
		}
		if last, err = a.store.AddSignature(ctx, id, sig); err != nil {
			return err
		}
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Microsecond) {
		for _, c := range a.store.Candidates("dev", 1, pdu) {
			if c.ID == id && c.Revision >= last.Revision {
				return nil
			}
		}
	}
	return errors.New("the approval index did not catch up within 5 s")
}

func (a *benchApprovals) close() { a.cancel() }

// approvedWrites measures a write that needs a 2-of-3 approval, one at a
// time as operators send them: before each, outside the timing, a fresh
// command is proposed and signed by two operators; then the same write is
// timed directly against the device and through gridseal, which finds the
// approval, verifies the three Tink signatures, consumes it (a durable use
// record) and records the write durably before forwarding it. The order of
// the two alternates.
func (b *Bencher) approvedWrites(ctx context.Context, a *benchApprovals, st *stack) (*ScenarioReport, error) {
	up, gs := st.up, st.gs
	retries := 0
	type target struct {
		name string
		c    net.Conn
		rd   *modbus.Reader
		lat  []time.Duration
		exc  uint64
		took time.Duration
	}
	var ts []*target
	for _, t := range []Target{{Name: "direct", Addr: up}, {Name: "gridseal", Addr: gs}} {
		c, err := net.DialTimeout("tcp", t.Addr, 3*time.Second)
		if err != nil {
			return nil, fmt.Errorf("approved-writes %s: %w", t.Name, err)
		}
		defer func() { _ = c.Close() }()
		ts = append(ts, &target{name: t.Name, c: c, rd: modbus.NewReader(c)})
	}
	const maxWrites = 5000
	start := time.Now()
	for i := 0; i < maxWrites && time.Since(start) < b.Duration; i++ {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !b.Quiet && i%50 == 0 {
			fmt.Fprintf(b.Stderr, "\r%-10s %4d writes approved and sent", "approved", i)
		}
		pdu := modbus.AppendWriteSingleRegister(nil, uint16(100+i%10), uint16(i%101))
		if err := a.approve(ctx, pdu, i); err != nil {
			return nil, fmt.Errorf("approved-writes: %w", err)
		}
		for k := range ts {
			t := ts[(k+i)%2]
			frame := modbus.AppendFrame(nil, uint16(i), 1, pdu)
			// A gridseal in a process of its own indexes the approval on
			// its own watch of the bucket, a moment after the bench's: a
			// refusal for want of it is tried again (not timed, counted).
			for attempt := 0; ; attempt++ {
				_ = t.c.SetDeadline(time.Now().Add(5 * time.Second))
				t0 := time.Now()
				if _, err := t.c.Write(frame); err != nil {
					return nil, fmt.Errorf("approved-writes %s: %w", t.name, err)
				}
				f, err := t.rd.ReadFrame()
				d := time.Since(t0)
				if err != nil {
					return nil, fmt.Errorf("approved-writes %s: %w", t.name, err)
				}
				if f.Transaction == uint16(i) && bytes.Equal(f.PDU, pdu) {
					t.lat = append(t.lat, d)
					t.took += d
					break
				}
				if attempt == 20 {
					t.exc++ // not the echo of an accepted write: refused
					break
				}
				retries++
				time.Sleep(2 * time.Millisecond)
			}
		}
	}
	if !b.Quiet {
		fmt.Fprintf(b.Stderr, "\r%60s\r", "")
	}
	sr := &ScenarioReport{Name: "approved-writes", Clients: 1, Pipeline: 1, WritePct: 100, Extra: map[string]string{
		"approval":              "2 of 3 operators (Tink Ed25519), proposed and signed before each write, consumed durably by gridseal",
		"not_yet_indexed_tries": strconv.Itoa(retries),
	}}
	res := make([]*loadgen.Result, len(ts))
	for i, t := range ts {
		res[i] = loadgen.ResultOf(t.lat, 0, t.exc, max(t.took, time.Nanosecond))
	}
	for i, t := range ts {
		sr.Targets = append(sr.Targets, targetReport(t.name, res[i], res[0].RPS(), 0))
	}
	if d, g := res[0], res[1]; d.Requests > 0 && g.Requests > 0 {
		sr.Extra["added_p50_us"] = fmt.Sprintf("%.0f", float64((g.Percentile(0.5)-d.Percentile(0.5)).Nanoseconds())/1000)
		sr.Extra["added_p99_us"] = fmt.Sprintf("%.0f", float64((g.Percentile(0.99)-d.Percentile(0.99)).Nanoseconds())/1000)
	}
	return sr, nil
}
