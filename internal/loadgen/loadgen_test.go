package loadgen

import (
	"net"
	"testing"
	"time"

	"github.com/gridseal/gridseal/protocols/modbus"
)

func serve(t *testing.T, d *Device) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go d.Serve(ln)
	t.Cleanup(d.Close)
	return ln.Addr().String()
}

func TestLoadCheckedReplies(t *testing.T) {
	dev := serve(t, &Device{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rel := &Relay{Upstream: dev}
	go rel.Serve(ln)
	t.Cleanup(rel.Close)
	for _, addr := range []string{dev, ln.Addr().String()} {
		r, err := Run(t.Context(), Config{Addr: addr, Clients: 4, Pipeline: 8, Duration: 300 * time.Millisecond,
			WritePct: 30, Unit: 1, MaxValue: 100})
		if err != nil {
			t.Fatal(err)
		}
		if r.Requests < 100 || r.Errors != 0 || r.Exceptions != 0 {
			t.Fatalf("%s: %d requests, %d errors, %d exceptions", addr, r.Requests, r.Errors, r.Exceptions)
		}
		if r.Percentile(0.5) <= 0 || r.Percentile(0.99) < r.Percentile(0.5) {
			t.Fatalf("percentiles p50 %v p99 %v", r.Percentile(0.5), r.Percentile(0.99))
		}
		// The writes' latencies are kept apart too: about 30 % of them.
		if w := float64(r.Writes()) / float64(r.Requests); w < 0.2 || w > 0.4 || r.WritePercentile(0.99) < r.WritePercentile(0.5) || r.WritePercentile(0.5) <= 0 {
			t.Fatalf("%d write samples in %d requests, p50 %v p99 %v", r.Writes(), r.Requests, r.WritePercentile(0.5), r.WritePercentile(0.99))
		}
	}
}

// A device that answers with the wrong transaction id or byte count is
// counted as errors, not as throughput.
func TestLoadCountsWrongReplies(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		rd := modbus.NewReader(c)
		for i := 0; ; i++ {
			f, err := rd.ReadFrame()
			if err != nil {
				return
			}
			tid := f.Transaction
			pdu := []byte{f.PDU[0], 2, 0, 0} // one register, whatever was asked
			if i%2 == 0 {
				tid += 7
			}
			if _, err := c.Write(modbus.AppendFrame(nil, tid, f.Unit, pdu)); err != nil {
				return
			}
		}
	}()
	r, err := Run(t.Context(), Config{Addr: ln.Addr().String(), Clients: 1, Pipeline: 1, Duration: 100 * time.Millisecond, Unit: 1})
	if err != nil {
		t.Fatal(err)
	}
	if r.Errors == 0 {
		t.Fatalf("wrong replies not counted: %+v", r)
	}
}

func TestPLCLikeDeviceServesOneAtATime(t *testing.T) {
	dev := serve(t, &Device{ServiceTime: 5 * time.Millisecond, Serial: true})
	r, err := Run(t.Context(), Config{Addr: dev, Clients: 4, Pipeline: 1, Duration: 300 * time.Millisecond, Unit: 1})
	if err != nil {
		t.Fatal(err)
	}
	// 4 clients, one request at a time at 5 ms each: at most ~200/s.
	if rps := r.RPS(); rps > 220 || r.Errors != 0 {
		t.Fatalf("serial device served %.0f req/s with %d errors", rps, r.Errors)
	}
}

// A device with a unit id answers that unit and refuses every other with
// exception 0x0B; runs made at once combine over the longest of them.
func TestDeviceAnswersItsUnitOnly(t *testing.T) {
	dev := serve(t, &Device{Unit: 7})
	var rs []*Result
	for _, unit := range []byte{7, 8} {
		r, err := Run(t.Context(), Config{Addr: dev, Clients: 2, Pipeline: 2, Duration: 100 * time.Millisecond, Unit: unit})
		if err != nil {
			t.Fatal(err)
		}
		if r.Requests == 0 || r.Errors != 0 {
			t.Fatalf("unit %d: %+v", unit, r)
		}
		if own := unit == 7; (r.Exceptions == 0) != own || (!own && r.Exceptions != r.Requests) {
			t.Fatalf("unit %d: %d exceptions in %d replies", unit, r.Exceptions, r.Requests)
		}
		rs = append(rs, r)
	}
	all := Combine(rs)
	if all.Requests != rs[0].Requests+rs[1].Requests || all.Exceptions != rs[1].Exceptions ||
		all.Elapsed != max(rs[0].Elapsed, rs[1].Elapsed) || len(all.latencies) != len(rs[0].latencies)+len(rs[1].latencies) {
		t.Fatalf("combined %+v from %+v %+v", all, rs[0], rs[1])
	}
}

// Start is called once, with every client connected and before the clock
// starts: time spent in it is not measured.
func TestStartBeforeTheClock(t *testing.T) {
	dev := serve(t, &Device{})
	calls := 0
	var started time.Time
	r, err := Run(t.Context(), Config{Addr: dev, Clients: 3, Duration: 50 * time.Millisecond, Unit: 1,
		Start: func() { calls++; time.Sleep(100 * time.Millisecond); started = time.Now() }})
	if err != nil {
		t.Fatal(err)
	}
	if calls != 1 || r.Requests == 0 || r.Elapsed > time.Since(started) {
		t.Fatalf("start called %d times; %d requests in %v, %v after start returned", calls, r.Requests, r.Elapsed, time.Since(started))
	}
}
