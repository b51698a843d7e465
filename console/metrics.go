// Package console is what SOC analysts see of gridseal: Prometheus metrics,
// health endpoints and a read-only web console that follows the chain live.
// Nothing in it can change anything on a PLC.
package console

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/proxy"
)

// Metrics is an audit recorder that turns every operation into Prometheus
// metrics, and keeps the per-device figures the console shows. Put it in
// the proxy's audit.Tee after the chain.
type Metrics struct {
	requests   *prometheus.CounterVec
	exceptions *prometheus.CounterVec
	added      prometheus.Histogram
	upstream   *prometheus.HistogramVec
	approvals  *prometheus.CounterVec
	breakGlass prometheus.Counter
	candidate  *prometheus.CounterVec
	refusals   prometheus.Counter
	dropped    *prometheus.CounterVec

	mu      sync.Mutex
	devices map[string]*DeviceStats
}

// DeviceStats are one device's figures for the console.
type DeviceStats struct {
	Requests    uint64    `json:"requests"`
	Denies      uint64    `json:"denies"`
	Unreachable uint64    `json:"unreachable"` // answered 0x0A/0x0B by the proxy
	LastSeen    time.Time `json:"last_seen"`
	LastWrite   string    `json:"last_write,omitempty"`
	LastWriteAt time.Time `json:"last_write_at,omitempty"`
	Approval    string    `json:"last_write_approval,omitempty"`
	recent      []time.Time
	// The device's series, looked up once: a label lookup hashes every
	// label value under the vector's lock, which was the dearest part of
	// a request's metrics.
	upstream prometheus.Observer
	requests map[requestSeries]prometheus.Counter
}

// requestSeries is one series of gridseal_requests_total within a device.
type requestSeries struct {
	function byte
	verdict  audit.Verdict
}

// NewMetrics registers gridseal's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gridseal_requests_total", Help: "Modbus requests by device, function code and verdict.",
		}, []string{"device", "function", "verdict"}),
		exceptions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gridseal_exceptions_total", Help: "Modbus exception responses sent to clients, by code.",
		}, []string{"code"}),
		added: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "gridseal_added_latency_seconds", Help: "Time the proxy adds to a request: total minus the device's time.",
			Buckets: prometheus.ExponentialBuckets(10e-6, 2, 16),
		}),
		upstream: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "gridseal_upstream_latency_seconds", Help: "Time the device took to answer.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16),
		}, []string{"device"}),
		approvals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gridseal_approvals_total",
			Help: "Approval steps seen: proposed, signed, used; refused (a step that did not verify); denied (a write that named an approval the proxy could not use).",
		}, []string{"step"}),
		breakGlass: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gridseal_break_glass_total", Help: "Writes allowed by a break-glass quorum.",
		}),
		candidate: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gridseal_candidate_differs_total",
			Help: "Requests the shadow candidate policy decides otherwise than the policy in force: candidate=allow (it would allow what was denied) or deny.",
		}, []string{"device", "candidate"}),
		refusals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gridseal_chain_refusals_total", Help: "Requests refused because the chain could not record them.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gridseal_dropped_replies_total", Help: "Device replies passed to no client: matching no request, or late after a timeout.",
		}, []string{"device", "kind"}),
		devices: map[string]*DeviceStats{},
	}
	reg.MustRegister(m.requests, m.exceptions, m.added, m.upstream, m.approvals, m.breakGlass, m.candidate, m.refusals, m.dropped)
	// Every step from zero, so increase() and alerts see the first one.
	for _, step := range approvalSteps {
		m.approvals.WithLabelValues(step)
	}
	return m
}

// approvalSteps are the values of gridseal_approvals_total's step label.
var approvalSteps = []string{"proposed", "signed", "used", "refused", "denied"}

// approvalStep names the step an approval event (phase approval) records:
// anything the gateway recorded as refused is "refused", whatever it
// claimed to be.
func approvalStep(ev *audit.Event) string {
	if ev.Verdict != audit.Allow {
		return "refused"
	}
	for _, step := range approvalSteps[:3] {
		if strings.HasPrefix(ev.Reason, step+" ") {
			return step
		}
	}
	return "other"
}

var functionLabels = func() [256]string {
	var l [256]string
	for i := range l {
		l[i] = strconv.Itoa(i)
	}
	return l
}()

// Record implements audit.Recorder. It never fails and never blocks.
func (m *Metrics) Record(_ context.Context, ev *audit.Event, _ bool) error {
	switch ev.Phase {
	case audit.PhaseApproval:
		m.approvals.WithLabelValues(approvalStep(ev)).Inc()
		return nil
	case audit.PhaseRequest, audit.PhasePolicy:
		return nil
	case audit.PhaseDroppedReply:
		kind := "unmatched"
		if len(ev.PDU) > 0 {
			kind = "late"
		}
		m.dropped.WithLabelValues(ev.Device, kind).Inc()
		return nil
	}
	device := ev.Device
	if device == "" {
		device = "unrouted"
	}
	now := ev.Done // the proxy read its clock as the operation completed
	if now.IsZero() {
		now = time.Now()
	}
	m.mu.Lock()
	d := m.devices[device]
	if d == nil {
		d = &DeviceStats{
			upstream: m.upstream.WithLabelValues(device),
			requests: map[requestSeries]prometheus.Counter{},
		}
		m.devices[device] = d
	}
	key := requestSeries{ev.Function, ev.Verdict}
	requests := d.requests[key]
	if requests == nil {
		requests = m.requests.WithLabelValues(device, functionLabels[ev.Function], ev.Verdict.String())
		d.requests[key] = requests
	}
	d.Requests++
	d.LastSeen = now
	d.recent = append(d.recent, now)
	if len(d.recent) > 512 {
		d.recent = d.recent[len(d.recent)-256:]
	}
	if ev.Verdict != audit.Allow {
		d.Denies++
	}
	if ev.Exception == 0x0A || ev.Exception == 0x0B {
		d.Unreachable++
	}
	if ev.Class == "write" && ev.Verdict == audit.Allow && ev.Exception == 0 {
		d.LastWrite, d.LastWriteAt, d.Approval = ev.Reason, ev.Time, ev.Approval
	}
	upstream := d.upstream
	m.mu.Unlock()
	requests.Inc()
	if ev.Exception != 0 {
		m.exceptions.WithLabelValues(functionLabels[ev.Exception]).Inc()
	}
	if ev.Upstream > 0 {
		upstream.Observe(ev.Upstream.Seconds())
	}
	if total := now.Sub(ev.Time); total > ev.Upstream {
		m.added.Observe((total - ev.Upstream).Seconds())
	}
	if strings.HasPrefix(ev.Reason, "BREAK-GLASS") && ev.Verdict == audit.Allow {
		m.breakGlass.Inc()
	}
	if ev.CandidateDiffers && ev.Phase == audit.PhaseComplete {
		would := "deny"
		if ev.Verdict != audit.Allow || ev.Observed {
			would = "allow"
		}
		m.candidate.WithLabelValues(device, would).Inc()
	}
	if strings.HasPrefix(ev.Reason, "refused: the record") || strings.HasPrefix(ev.Reason, "write refused") {
		m.refusals.Inc()
	}
	if ev.Approval != "" && ev.Verdict == audit.Deny && ev.Class == "write" {
		m.approvals.WithLabelValues("denied").Inc()
	}
	return nil
}

// Devices returns a copy of every device's figures, with its request rate
// over the last 10 s.
func (m *Metrics) Devices() map[string]DeviceView {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]DeviceView, len(m.devices))
	cut := time.Now().Add(-10 * time.Second)
	for name, d := range m.devices {
		n := 0
		for _, t := range d.recent {
			if t.After(cut) {
				n++
			}
		}
		out[name] = DeviceView{DeviceStats: *d, RatePerS: float64(n) / 10}
	}
	return out
}

// DeviceView is a device's figures as the console shows them.
type DeviceView struct {
	DeviceStats
	RatePerS       float64   `json:"rate_per_s"`
	Upstream       string    `json:"upstream,omitempty"` // up, not answering, down, idle
	UpstreamDetail string    `json:"upstream_detail,omitempty"`
	UpstreamSince  time.Time `json:"upstream_since,omitzero"`
}

// StateCollector reports, at each scrape, the policy in force and each
// device's reachability as the proxy sees it.
type StateCollector struct {
	policy    func() *policy.Policy
	upstreams func() map[string]proxy.UpstreamState
	policyDesc,
	policyVersion,
	deviceDesc *prometheus.Desc
}

// deviceStates are the values of gridseal_device_state's state label, as
// proxy.UpstreamState names them.
var deviceStates = []string{"up", "not answering", "down", "idle"}

// NewStateCollector reports the policy pol returns and the devices'
// states upstreams returns (either may be nil: not reported).
func NewStateCollector(pol func() *policy.Policy, upstreams func() map[string]proxy.UpstreamState) *StateCollector {
	return &StateCollector{policy: pol, upstreams: upstreams,
		policyDesc: prometheus.NewDesc("gridseal_policy_info",
			"Always 1: the id, version and digest of the signed policy in force (a reload changes them).",
			[]string{"id", "version", "digest"}, nil),
		policyVersion: prometheus.NewDesc("gridseal_policy_version", "The version of the policy in force.", nil, nil),
		deviceDesc: prometheus.NewDesc("gridseal_device_state",
			"1 for each device's reachability as the proxy sees it: up, not answering (the last request timed out), down (a dial failed or a connection dropped requests) or idle (not connected), 0 for the others.",
			[]string{"device", "state"}, nil),
	}
}

// Describe sends the descriptions of every figure.
func (c *StateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.policyDesc
	ch <- c.policyVersion
	ch <- c.deviceDesc
}

// Collect reads the policy in force and the proxy's device states.
func (c *StateCollector) Collect(ch chan<- prometheus.Metric) {
	if c.policy != nil {
		if p := c.policy(); p != nil {
			ch <- prometheus.MustNewConstMetric(c.policyDesc, prometheus.GaugeValue, 1, p.ID, strconv.Itoa(p.Version), p.Digest)
			ch <- prometheus.MustNewConstMetric(c.policyVersion, prometheus.GaugeValue, float64(p.Version))
		}
	}
	if c.upstreams == nil {
		return
	}
	for name, st := range c.upstreams() {
		for _, s := range deviceStates {
			v := 0.0
			if st.State == s {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(c.deviceDesc, prometheus.GaugeValue, v, name, s)
		}
	}
}
