package console

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/eve"
)

// export answers /api/export?format=jsonl|eve&from=LEAF and the search's
// filters: the matching events, oldest first, as a download — JSON lines
// as `gridseal chain export --format jsonl` writes them (lossless), or
// Suricata EVE as `--format eve` does. At most exportMax events, exportMaxScan
// read, for exportTimeout: a download cut short says where to go on in its
// trailer Gridseal-Next (the from= of the rest; absent when complete),
// and Gridseal-Events says how many events it holds.
func (s *Server) export(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	q, err := parseQuery(v, time.Now())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	format := v.Get("format")
	if format == "" {
		format = "jsonl"
	}
	if format != "jsonl" && format != "eve" {
		http.Error(w, fmt.Sprintf("format %q: want jsonl or eve", format), http.StatusBadRequest)
		return
	}
	from, ok := leafParam(w, v, "from")
	if !ok {
		return
	}
	sc, ok := s.startScan(w, r, &q, exportTimeout, "export")
	if !ok {
		return
	}
	defer sc.done()
	sc.lo = max(sc.lo, from)
	var m *eve.Mapper
	name := "gridseal-events.jsonl"
	if format == "eve" {
		m = &eve.Mapper{Devices: s.deviceAddrs()}
		name = "gridseal-eve.json"
	}
	h := w.Header()
	h.Set("Content-Type", "application/x-ndjson")
	h.Set("Content-Disposition", `attachment; filename="`+name+`"`)
	h.Set("Cache-Control", "no-store")
	h.Set("Trailer", "Gridseal-Next, Gridseal-Events, Gridseal-Error")
	enc := json.NewEncoder(w)
	events := 0
	next, _, err := sc.each(&q, false, exportMaxScan, func(i int64, e []byte, ev *audit.Event) (bool, error) {
		row, err := sc.bs.row(i, e, ev)
		if err != nil {
			return false, err
		}
		events++
		return events < exportMax, s.writeExport(enc, m, &row, ev)
	})
	if err != nil {
		h.Set("Gridseal-Error", err.Error()) // the body so far is whole lines; the rest is missing
	}
	if next >= 0 {
		h.Set("Gridseal-Next", strconv.FormatInt(next, 10))
	}
	h.Set("Gridseal-Events", strconv.Itoa(events))
}

func (s *Server) writeExport(enc *json.Encoder, m *eve.Mapper, row *EventRow, ev *audit.Event) error {
	if m == nil {
		return enc.Encode(&row.Record)
	}
	return m.Encode(enc, &row.Record, ev)
}

// deviceAddrs maps each device of the policy in force to its PLC's
// address, for EVE's dest fields.
func (s *Server) deviceAddrs() map[string]string {
	out := map[string]string{}
	if s.cfg.Policy != nil {
		if p := s.cfg.Policy(); p != nil {
			for _, d := range p.Devices {
				out[d.Name] = d.Upstream
			}
		}
	}
	return out
}

// ChartView counts, per device, the operations and the ones not allowed
// (deny or malformed) in each step from Since: what /metrics counts as
// gridseal_requests_total, over a time range of the chain.
type ChartView struct {
	Since   time.Time               `json:"since"`
	Until   time.Time               `json:"until"`
	StepS   float64                 `json:"step_s"`
	Buckets int                     `json:"buckets"`
	Devices map[string]*DeviceChart `json:"devices"`
	Scanned int64                   `json:"scanned"`
	// Partial, when set, says the counts stop short of Until, and why.
	Partial string `json:"partial,omitempty"`
}

// DeviceChart is one device's counts, one per bucket.
type DeviceChart struct {
	Requests []int `json:"requests"`
	Denies   []int `json:"denies"`
	Total    int   `json:"total"`
	Denied   int   `json:"denied"`
}

// niceSteps are the steps a chart's default is rounded up to.
var niceSteps = []time.Duration{time.Second, 5 * time.Second, 10 * time.Second, 30 * time.Second, time.Minute,
	5 * time.Minute, 10 * time.Minute, 30 * time.Minute, time.Hour, 3 * time.Hour, 6 * time.Hour, 24 * time.Hour}

// chart answers /api/chart?since=&until=&step= (and the search's
// filters): per device, the operations and denies in each step. since
// defaults to an hour before until, until to now, step to about a
// sixtieth of the range; at most chartMaxBuckets steps.
func (s *Server) chart(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	now := time.Now()
	q, err := parseQuery(v, now)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if q.until.IsZero() {
		q.until = now
	}
	if q.since.IsZero() {
		q.since = q.until.Add(-time.Hour)
	}
	if !q.since.Before(q.until) {
		http.Error(w, "since must be before until", http.StatusBadRequest)
		return
	}
	span := q.until.Sub(q.since)
	var step time.Duration
	if st := v.Get("step"); st != "" {
		if step, err = time.ParseDuration(st); err != nil || step < time.Second {
			http.Error(w, fmt.Sprintf("step %q: want a duration of 1s or more", st), http.StatusBadRequest)
			return
		}
	} else {
		step = niceSteps[len(niceSteps)-1]
		for _, n := range niceSteps {
			if span/n <= chartBuckets {
				step = n
				break
			}
		}
	}
	buckets := int(math.Ceil(float64(span) / float64(step)))
	if buckets > chartMaxBuckets {
		http.Error(w, fmt.Sprintf("%v in steps of %v is %d steps: at most %d", span, step, buckets, chartMaxBuckets), http.StatusBadRequest)
		return
	}
	sc, ok := s.startScan(w, r, &q, searchTimeout, "chart")
	if !ok {
		return
	}
	defer sc.done()
	out := ChartView{Since: q.since, Until: q.until, StepS: step.Seconds(), Buckets: buckets, Devices: map[string]*DeviceChart{}}
	_, cut, err := sc.each(&q, false, chartMaxScan, func(_ int64, _ []byte, ev *audit.Event) (bool, error) {
		// One count per operation, as /metrics counts: its completion.
		if ev.Phase != audit.PhaseComplete {
			return true, nil
		}
		device := ev.Device
		if device == "" {
			device = "unrouted"
		}
		d := out.Devices[device]
		if d == nil {
			d = &DeviceChart{Requests: make([]int, buckets), Denies: make([]int, buckets)}
			out.Devices[device] = d
		}
		k := int(ev.Time.Sub(q.since) / step)
		d.Requests[k]++
		d.Total++
		if ev.Verdict != audit.Allow {
			d.Denies[k]++
			d.Denied++
		}
		return true, nil
	})
	if err != nil {
		http.Error(w, "chart: "+err.Error(), http.StatusInternalServerError)
		return
	}
	out.Scanned = sc.scanned
	if cut {
		out.Partial = fmt.Sprintf("counted the first %d events of the range (a chart reads at most %d, for %v)", out.Scanned, chartMaxScan, searchTimeout)
	}
	writeJSON(w, out)
}
