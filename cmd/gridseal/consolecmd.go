package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/console"
	"github.com/gridseal/gridseal/policy"
)

// observability is the metrics registry and the console of one proxy.
type observability struct {
	reg     *prometheus.Registry
	metrics *console.Metrics
	addr    string
	url     string
}

// chainObserver returns histograms of block size and acknowledgement time
// for chain.Config.Observe, registered with reg.
func chainObserver(reg *prometheus.Registry) func(int, time.Duration) {
	size := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "gridseal_chain_block_events",
		Help: "Events per block (group commit).", Buckets: prometheus.ExponentialBuckets(1, 2, 13)})
	ack := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "gridseal_chain_record_seconds",
		Help:    "Time from publishing a block to its durable acknowledgement: what a write waits for its record.",
		Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16)})
	reg.MustRegister(size, ack)
	return func(events int, d time.Duration) {
		size.Observe(float64(events))
		ack.Observe(d.Seconds())
	}
}

// newObservability registers the process, chain and proxy metrics on reg.
func newObservability(reg *prometheus.Registry, rec *chain.Recorder) *observability {
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	st := rec.Stats()
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "gridseal_chain_blocks_total", Help: "Blocks acknowledged by JetStream."},
			func() float64 { return float64(st.Blocks.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "gridseal_chain_events_total", Help: "Events in acknowledged blocks."},
			func() float64 { return float64(st.Events.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "gridseal_chain_publish_retries_total", Help: "Block publishes retried."},
			func() float64 { return float64(st.Retries.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gridseal_chain_spool_events", Help: "Events waiting to be recorded."},
			func() float64 { return float64(rec.Pending()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gridseal_chain_writable", Help: "1 when the last block was acknowledged and the recorder has not stopped."},
			func() float64 {
				if rec.Available() && rec.Failed() == nil {
					return 1
				}
				return 0
			}),
	)
	return &observability{reg: reg, metrics: console.NewMetrics(reg)}
}

// recorders is what the proxy records with: the chain first (its durable
// answer decides whether a write moves), then metrics, then the log line.
func (o *observability) recorders(rec *chain.Recorder, log *zap.Logger) audit.Tee {
	return audit.Tee{rec, o.metrics, audit.NewLogRecorder(log.Named("ops"))}
}

// startConsole serves /metrics, /healthz, /readyz and the console as cs
// says (address "" or "off": not at all) until ctx ends.
func (g *globals) startConsole(ctx context.Context, cs *consoleSetup, o *observability, r *recording, st *running,
	engine *policy.Engine, store *approvals.Store, trustPath string, log *zap.Logger) error {
	addr := cs.addr
	if addr == "" || addr == "off" {
		return nil
	}
	st.srv.RegisterMetrics(o.reg)
	js, err := jetstream.New(r.conn.nc)
	if err != nil {
		return err
	}
	trust := chain.Trust{}
	if _, err := os.Stat(trustPath); err == nil {
		if trust, err = chain.LoadTrust(trustPath, g.headDir()); err != nil {
			return err
		}
	}
	c := console.New(console.Config{
		Metrics: o.metrics, Gatherer: o.reg, JetStream: js, Trust: trust, Approvals: store,
		Upstreams: st.srv.Upstreams,
		Policy:    engine.Policy, Log: log.Named("console"), Auth: cs.auth, MaxConns: cs.maxConns, TLS: cs.tls, TreeDir: filepath.Join(g.dataDir, "console"),
		Ready: func() error {
			if err := r.rec.Failed(); err != nil {
				return err
			}
			if !r.rec.Available() {
				return errors.New("chain not writable")
			}
			return nil
		},
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil && g.consoleFallback {
		// The demo should run on a busy laptop: take any free loopback port.
		log.Warn("console address busy; using a free port", zap.String("wanted", addr), zap.Error(err))
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		return fmt.Errorf("console: listen on %s: %w (choose another with --http, or --http off)", addr, err)
	}
	if ta, ok := ln.Addr().(*net.TCPAddr); ok && cs.auth == nil && !ta.IP.IsLoopback() {
		// "localhost" may resolve elsewhere: judge the address bound.
		_ = ln.Close()
		return fmt.Errorf("console: %s is bound to %s, not a loopback address: set console.tls and console.tls.ca or console.tokens", addr, ta.IP)
	}
	storeDir := g.dataDir
	if g.natsURL != "" {
		storeDir = "" // NATS stores elsewhere
	}
	o.reg.MustRegister(newStorageCollector(js, storeDir))
	o.addr = ln.Addr().String()
	scheme := "http"
	if cs.tls != nil {
		scheme = "https"
	}
	o.url = scheme + "://" + o.addr + "/"
	go c.Run(ctx)
	go func() {
		if err := c.Serve(ctx, ln); err != nil {
			log.Error("console stopped", zap.Error(err))
		}
	}()
	log.Info("console and metrics", zap.String("url", o.url), zap.Bool("sign_in_required", cs.auth != nil))
	return nil
}

// storageCollector reports, at each scrape, how much the chain stream and
// the JetStream account hold against the account's limit, and the free
// space under the data directory. The chain never deletes, so a full disk
// is how it would stop taking writes (they would then be refused: fail
// closed), and operators should see that coming.
type storageCollector struct {
	js      jetstream.JetStream
	dataDir string
	descs   [5]*prometheus.Desc
}

func newStorageCollector(js jetstream.JetStream, dataDir string) *storageCollector {
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }
	return &storageCollector{js: js, dataDir: dataDir, descs: [5]*prometheus.Desc{
		d("gridseal_chain_stream_bytes", "Bytes stored in the chain stream (it never shrinks)."),
		d("gridseal_chain_stream_messages", "Blocks in the chain stream."),
		d("gridseal_jetstream_storage_bytes", "File storage the JetStream account uses."),
		d("gridseal_jetstream_storage_limit_bytes", "The JetStream account's file storage limit; -1: none set for the account."),
		d("gridseal_data_dir_free_bytes", "Free space under --data-dir, where the embedded server stores."),
	}}
}

func (c *storageCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

// Collect asks NATS (2 s at most); a figure it cannot get is left out.
func (c *storageCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	emit := func(i int, v float64) { ch <- prometheus.MustNewConstMetric(c.descs[i], prometheus.GaugeValue, v) }
	if s, err := c.js.Stream(ctx, chain.StreamName); err == nil {
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
