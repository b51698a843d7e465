package chain

import (
	"context"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// BlockObserver returns histograms of block size and acknowledgement time,
// registered with reg, as a function for Config.Observe.
func BlockObserver(reg prometheus.Registerer) func(events int, ack time.Duration) {
	size := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "gridseal_chain_block_events",
		Help: "Events per block (group commit).", Buckets: prometheus.ExponentialBuckets(1, 2, 13)})
	ack := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "gridseal_chain_record_seconds",
		Help:    "Time from publishing a block to its durable acknowledgement: what a write waits for its record on an external NATS (on the embedded one, see gridseal_chain_journal_sync_seconds).",
		Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16)})
	reg.MustRegister(size, ack)
	return func(events int, d time.Duration) {
		size.Observe(float64(events))
		ack.Observe(d.Seconds())
	}
}

// JournalObserver returns a histogram of the local journal's fsyncs,
// registered with reg, as a function for Config.ObserveJournal.
func JournalObserver(reg prometheus.Registerer) func(time.Duration) {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "gridseal_chain_journal_sync_seconds",
		Help:    "Time each fdatasync of the local journal took (one for all the durable records waiting, group commit; a second beside a slow one): on the embedded NATS, what a write waits for its record once its turn comes. A slow disk shows here first.",
		Buckets: prometheus.ExponentialBuckets(25e-6, 2, 16)})
	reg.MustRegister(h)
	return func(d time.Duration) { h.Observe(d.Seconds()) }
}

// RegisterMetrics registers the recorder's counters and state with reg:
// blocks and events acknowledged, publish retries, events and bytes
// spooled against the spool's limit, and whether the chain is writable.
func (r *Recorder) RegisterMetrics(reg prometheus.Registerer) {
	st := r.Stats()
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "gridseal_chain_blocks_total", Help: "Blocks acknowledged by JetStream."},
			func() float64 { return float64(st.Blocks.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "gridseal_chain_events_total", Help: "Events in acknowledged blocks."},
			func() float64 { return float64(st.Events.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "gridseal_chain_publish_retries_total", Help: "Block publishes retried."},
			func() float64 { return float64(st.Retries.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gridseal_chain_spool_events", Help: "Events waiting to be recorded."},
			func() float64 { return float64(r.Pending()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gridseal_chain_spool_bytes",
			Help: "Bytes of encoded events waiting to be recorded; near the limit writes are refused, at it every event."},
			func() float64 {
				r.mu.Lock()
				defer r.mu.Unlock()
				return float64(r.spoolBytes)
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gridseal_chain_spool_limit_bytes", Help: "The spool's limit (chain.spool_bytes)."},
			func() float64 { return float64(r.cfg.SpoolBytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gridseal_chain_writable", Help: "1 when the last block was acknowledged, the local journal takes writes and the recorder has not stopped."},
			func() float64 {
				if r.Available() && r.Failed() == nil {
					return 1
				}
				return 0
			}),
	)
}

// StorageCollector reports, at each scrape, how much the chain stream and
// the JetStream account hold against the account's limit, and the free
// space under the data directory. The chain never deletes, so a full disk
// is how it would stop taking writes (they would then be refused: fail
// closed), and operators should see that coming.
type StorageCollector struct {
	js      jetstream.JetStream
	dataDir string
	descs   [5]*prometheus.Desc
}

// NewStorageCollector reports on js's chain stream and account, and on the
// free space under dataDir ("" when NATS stores elsewhere).
func NewStorageCollector(js jetstream.JetStream, dataDir string) *StorageCollector {
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }
	return &StorageCollector{js: js, dataDir: dataDir, descs: [5]*prometheus.Desc{
		d("gridseal_chain_stream_bytes", "Bytes stored in the chain stream (it never shrinks)."),
		d("gridseal_chain_stream_messages", "Blocks in the chain stream."),
		d("gridseal_jetstream_storage_bytes", "File storage the JetStream account uses."),
		d("gridseal_jetstream_storage_limit_bytes", "The JetStream account's file storage limit; -1: none set for the account."),
		d("gridseal_data_dir_free_bytes", "Free space under --data-dir, where the embedded server stores."),
	}}
}

// Describe sends the descriptions of every figure.
func (c *StorageCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

// Collect asks NATS (2 s at most); a figure it cannot get is left out.
func (c *StorageCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	emit := func(i int, v float64) { ch <- prometheus.MustNewConstMetric(c.descs[i], prometheus.GaugeValue, v) }
	if s, err := c.js.Stream(ctx, StreamName); err == nil {
		if info, err := s.Info(ctx); err == nil {
			emit(0, float64(info.State.Bytes))
			emit(1, float64(info.State.Msgs))
		}
	}
	if ai, err := c.js.AccountInfo(ctx); err == nil {
		emit(2, float64(ai.Store))
		emit(3, float64(ai.Limits.MaxStore))
	}
	var st syscall.Statfs_t
	if c.dataDir != "" && syscall.Statfs(c.dataDir, &st) == nil {
		emit(4, float64(st.Bavail)*float64(st.Bsize))
	}
}

// RegisterMetrics registers the checkpointer's failed attempts, the time
// of its last published checkpoint and that checkpoint's age with reg: an
// alert on any catches a checkpointer that cannot publish (permissions, a
// full stream, no quorum). Register it when the checkpointer starts: until
// its first checkpoint, the age counts from then.
func (c *Checkpointer) RegisterMetrics(reg prometheus.Registerer) {
	started := time.Now()
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gridseal_checkpoint_age_seconds",
			Help: "Seconds since the last checkpoint was published (since the checkpointer started, before the first)."},
			func() float64 {
				_, t := c.Status()
				if t.IsZero() {
					t = started
				}
				return time.Since(t).Seconds()
			}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "gridseal_checkpoint_failures_total",
			Help: "Checkpoints that could not be signed or published."},
			func() float64 { n, _ := c.Status(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gridseal_checkpoint_last_success_timestamp_seconds",
			Help: "Unix time of the last checkpoint published; 0 if none yet."},
			func() float64 { _, t := c.Status(); return unixSeconds(t) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gridseal_checkpoint_cosignatures",
			Help: "Witness cosignatures on the last checkpoint published."},
			func() float64 { n, _ := c.Witnessed(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gridseal_checkpoint_witnessed_timestamp_seconds",
			Help: "Unix time of the last checkpoint published with a quorum of witness cosignatures; 0 if none yet."},
			func() float64 { _, t := c.Witnessed(); return unixSeconds(t) }),
		newWitnessCollector(c),
	)
}

// unixSeconds is t as a Unix time in seconds, 0 for the zero time (none
// yet).
func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}

// witnessCollector reports each witness's state, labelled by its name.
type witnessCollector struct {
	c     *Checkpointer
	descs [5]*prometheus.Desc
}

func newWitnessCollector(c *Checkpointer) *witnessCollector {
	return &witnessCollector{c: c, descs: [5]*prometheus.Desc{
		prometheus.NewDesc("gridseal_witness_up", "1 when the witness's last add-checkpoint brought its cosignature.", []string{"witness"}, nil),
		prometheus.NewDesc("gridseal_witness_cosigned_size", "Tree size the witness last cosigned, as far as the checkpointer knows; -1: unknown.", []string{"witness"}, nil),
		prometheus.NewDesc("gridseal_witness_last_cosigned_timestamp_seconds", "Unix time of the witness's last cosignature; 0 if none.", []string{"witness"}, nil),
		prometheus.NewDesc("gridseal_witness_failures_total", "add-checkpoint requests to the witness that brought no cosignature.", []string{"witness"}, nil),
		prometheus.NewDesc("gridseal_witness_round_trip_seconds", "Duration of the witness's last successful add-checkpoint.", []string{"witness"}, nil),
	}}
}

// Describe sends the descriptions of every figure.
func (w *witnessCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range w.descs {
		ch <- d
	}
}

// Collect reports every witness the checkpointer asks.
func (w *witnessCollector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range w.c.WitnessStatus() {
		up := 0.0
		if st.LastErr == nil && !st.LastCosigned.IsZero() {
			up = 1
		}
		for i, v := range []float64{up, float64(st.Size), unixSeconds(st.LastCosigned), float64(st.Failures), st.RoundTrip.Seconds()} {
			kind := prometheus.GaugeValue
			if i == 3 {
				kind = prometheus.CounterValue
			}
			ch <- prometheus.MustNewConstMetric(w.descs[i], kind, v, st.Name)
		}
	}
}
