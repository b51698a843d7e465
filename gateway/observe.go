package gateway

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/policy"
)

// DefaultObserveLogEvery is how often the gateway logs that devices are in
// observe mode, while any is.
const DefaultObserveLogEvery = time.Minute

// modeEvents are the chain events for the devices that enter or leave
// observe mode when next replaces a policy whose observed devices were
// before; atStart marks the policy a proxy starts with (a device that stays
// in observe mode is recorded then too).
func modeEvents(before []string, next *policy.Policy, atStart bool) modeChange {
	var entering, leaving []audit.Event
	now := time.Now()
	ev := func(device, reason string) audit.Event {
		return audit.Event{Time: now, Phase: audit.PhasePolicy, Verdict: audit.Allow, Class: "policy",
			Device: device, Policy: next.Digest, Reason: reason}
	}
	where := fmt.Sprintf("policy %s v%d", next.ID, next.Version)
	after := next.ObservedDevices()
	for _, d := range after {
		switch {
		case !slices.Contains(before, d):
			entering = append(entering, ev(d, "enters observe mode: requests its rules deny are forwarded and recorded as would-deny ("+where+")"))
		case atStart:
			entering = append(entering, ev(d, "in observe mode at start: requests its rules deny are forwarded and recorded as would-deny ("+where+")"))
		}
	}
	for _, d := range before {
		if !slices.Contains(after, d) && next.Device(d) != nil {
			leaving = append(leaving, ev(d, "leaves observe mode: its rules are enforced ("+where+")"))
		}
	}
	return modeChange{entering: entering, leaving: leaving}
}

// modeChange is what modeEvents found: events for the devices entering (or
// staying in, at start) observe mode, and for those leaving it.
type modeChange struct{ entering, leaving []audit.Event }

// recordModes records the mode changes durably. A device entering observe
// mode weakens enforcement, so if that cannot be recorded the policy must
// not go in force (the error says so); a device leaving it is logged if
// its record fails, and goes ahead.
func (g *Gateway) recordModes(ctx context.Context, m modeChange) error {
	entering, leaving := m.entering, m.leaving
	for i := range entering {
		if err := g.rec.Record(ctx, &entering[i], true); err != nil {
			return fmt.Errorf("device %s would enter observe mode, but the chain cannot record it: %w", entering[i].Device, err)
		}
		g.log.Warn("OBSERVE MODE: "+entering[i].Reason, zap.String("device", entering[i].Device))
	}
	for i := range leaving {
		if err := g.rec.Record(ctx, &leaving[i], true); err != nil {
			g.log.Error("device left observe mode, not recorded in the chain", zap.String("device", leaving[i].Device), zap.Error(err))
		}
		g.log.Info(leaving[i].Reason, zap.String("device", leaving[i].Device))
	}
	return nil
}

// observeWatch counts the requests forwarded only because their device is
// in observe mode, for /metrics and the minute's log line.
type observeWatch struct {
	wouldDeny *prometheus.CounterVec
	recent    atomic.Uint64 // since the last log line
}

func newObserveWatch() *observeWatch {
	return &observeWatch{wouldDeny: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gridseal_observe_would_deny_total",
		Help: "Requests forwarded only because their device is in observe mode: the rules would have denied them.",
	}, []string{"device"})}
}

// Record implements audit.Recorder: it counts observed requests once each.
func (o *observeWatch) Record(_ context.Context, ev *audit.Event, _ bool) error {
	if ev.Observed && ev.Phase == audit.PhaseComplete {
		o.wouldDeny.WithLabelValues(ev.Device).Inc()
		o.recent.Add(1)
	}
	return nil
}

// register adds the counter and the gauge of devices in observe mode
// under the policy in force to reg.
func (o *observeWatch) register(reg prometheus.Registerer, pol func() *policy.Policy) {
	reg.MustRegister(o.wouldDeny, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "gridseal_observe_devices",
		Help: "Devices in observe mode under the policy in force: they forward what their rules deny.",
	}, func() float64 { return float64(len(pol().ObservedDevices())) }))
}

// logEvery writes one warning per period while any device of the policy
// in force observes, until ctx ends.
func (o *observeWatch) logEvery(ctx context.Context, every time.Duration, pol func() *policy.Policy, log *zap.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n := o.recent.Swap(0)
		if devs := pol().ObservedDevices(); len(devs) > 0 {
			log.Warn("OBSERVE MODE: these devices forward requests their rules deny; put them back to enforce when commissioning ends",
				zap.Strings("devices", devs), zap.Uint64("would_deny", n), zap.Duration("in_the_last", every))
		}
	}
}
