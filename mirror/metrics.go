package mirror

import "github.com/prometheus/client_golang/prometheus"

// metrics are the mirror's Prometheus metrics.
type metrics struct {
	alarms         *prometheus.CounterVec
	alarmed        prometheus.Gauge
	cosignatures   prometheus.Counter
	refusals       *prometheus.CounterVec
	copied         prometheus.Gauge
	verified       prometheus.Gauge
	verifiedEvents prometheus.Counter
	cosignedSize   prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		alarms: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gridseal_mirror_alarms_total",
			Help: "Inconsistencies the mirror found, by kind (block, policy, source, split-view)."}, []string{"kind"}),
		alarmed: prometheus.NewGauge(prometheus.GaugeOpts{Name: "gridseal_mirror_alarm",
			Help: "1 if the mirror has recorded any alarm (gridseal mirror check fails), else 0."}),
		cosignatures: prometheus.NewCounter(prometheus.CounterOpts{Name: "gridseal_mirror_cosignatures_total",
			Help: "Checkpoints the mirror cosigned."}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gridseal_mirror_refusals_total",
			Help: "add-checkpoint requests answered without a cosignature, by HTTP status."}, []string{"code"}),
		copied: prometheus.NewGauge(prometheus.GaugeOpts{Name: "gridseal_mirror_copied_sequence",
			Help: "Last stream sequence copied from the source."}),
		verified: prometheus.NewGauge(prometheus.GaugeOpts{Name: "gridseal_mirror_verified_sequence",
			Help: "Last stream sequence of the copy verified."}),
		verifiedEvents: prometheus.NewCounter(prometheus.CounterOpts{Name: "gridseal_mirror_verified_events_total",
			Help: "Events verified (again after a restart)."}),
		cosignedSize: prometheus.NewGauge(prometheus.GaugeOpts{Name: "gridseal_mirror_cosigned_size",
			Help: "Tree size of the checkpoint the mirror last cosigned."}),
	}
	if reg != nil {
		reg.MustRegister(m.alarms, m.alarmed, m.cosignatures, m.refusals, m.copied, m.verified, m.verifiedEvents, m.cosignedSize)
	}
	return m
}
