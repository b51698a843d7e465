// Package natsembed starts an in-process nats-server with JetStream: the
// single-machine default of gridseal (demo, tests) and the nodes of the
// loopback clusters the replication tests run.
package natsembed

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/zap"
)

// Options for an embedded server.
type Options struct {
	Name     string // server name; required in a cluster
	Host     string // default 127.0.0.1: loopback only
	Port     int    // client port; -1 picks a free one
	StoreDir string // JetStream file store
	// SyncAlways fsyncs every write before it is acknowledged, so an
	// acknowledged record survives a power cut. gridseal turns it on.
	SyncAlways bool
	// Token, if set, is required of every client (nats.Token).
	Token string

	Cluster     string   // cluster name; empty for a single server
	ClusterPort int      // route port; -1 picks a free one
	Routes      []string // nats-route://host:port of the other nodes

	// Log, if set, receives the server's warnings and errors (a full disk,
	// a lost route); its notices go at debug level. Nil: the server logs
	// nothing.
	Log *zap.Logger
	// OnStoreError, if set, is called (from the server's goroutines) when
	// the server reports that it could not write its store: the disk is
	// full or failing.
	OnStoreError func(msg string)
}

// Start runs a server and waits until it accepts clients.
func Start(o Options) (*server.Server, error) {
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = -1
	}
	opts := &server.Options{
		ServerName: o.Name,
		Host:       o.Host,
		Port:       o.Port,
		JetStream:  true,
		StoreDir:   o.StoreDir,
		SyncAlways: o.SyncAlways,
		NoLog:      o.Log == nil && o.OnStoreError == nil,
		NoSigs:     true,
		MaxPayload: 8 << 20,
	}
	if o.Token != "" {
		opts.Authorization = o.Token
	}
	if o.Cluster != "" {
		opts.Cluster = server.ClusterOpts{Name: o.Cluster, Host: o.Host, Port: o.ClusterPort}
		for _, r := range o.Routes {
			u, err := url.Parse(r)
			if err != nil {
				return nil, fmt.Errorf("route %q: %w", r, err)
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats-server: %w", err)
	}
	if o.Log != nil || o.OnStoreError != nil {
		l := o.Log
		if l == nil {
			l = zap.NewNop()
		}
		s.SetLoggerV2(serverLog{l.WithOptions(zap.AddCallerSkip(1)).Sugar(), o.OnStoreError}, false, false, false)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded nats-server on %s:%d did not start", o.Host, o.Port)
	}
	return s, nil
}

// serverLog hands the server's log lines to zap, and its store write
// errors to a callback.
type serverLog struct {
	s            *zap.SugaredLogger
	onStoreError func(string)
}

func (l serverLog) Noticef(format string, v ...any) { l.s.Debugf(format, v...) }
func (l serverLog) Warnf(format string, v ...any)   { l.s.Warnf(format, v...) }
func (l serverLog) Fatalf(format string, v ...any)  { l.Errorf(format, v...) }
func (l serverLog) Debugf(format string, v ...any)  { l.s.Debugf(format, v...) }
func (l serverLog) Tracef(format string, v ...any)  { l.s.Debugf(format, v...) }

func (l serverLog) Errorf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.s.Error(msg)
	if l.onStoreError != nil && (strings.Contains(msg, "critical write error") || strings.Contains(msg, "Critical write error") ||
		strings.Contains(msg, "no space left on device")) {
		l.onStoreError(msg)
	}
}
