// Package natsembed starts an in-process nats-server with JetStream: the
// single-machine default of gridseal (demo, tests) and the nodes of the
// loopback clusters the replication tests run.
package natsembed

import (
	"fmt"
	"net/url"
	"time"

	"github.com/nats-io/nats-server/v2/server"
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
		NoLog:      true,
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
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded nats-server on %s:%d did not start", o.Host, o.Port)
	}
	return s, nil
}
