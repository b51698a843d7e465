package main

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/gateway"
	"github.com/gridseal/gridseal/internal/natsembed"
)

// natsOptions are the NATS flags as connection options for a client named name.
func (g *globals) natsOptions(name string) natsembed.ConnectOptions {
	o := g.nats
	o.Name, o.DataDir = name, g.dataDir
	return o
}

// gatewayOptions are the global flags as a gateway's options.
func (g *globals) gatewayOptions(log *zap.Logger) gateway.Options {
	return gateway.Options{DataDir: g.dataDir, NATS: g.natsOptions(""), Log: log, Build: thisBuild()}
}

// jetStream connects as the NATS flags say (to the embedded server under
// --data-dir by default) and opens JetStream on it.
func (g *globals) jetStream(ctx context.Context, name string) (*natsembed.Conn, jetstream.JetStream, error) {
	conn, err := natsembed.Connect(ctx, g.natsOptions(name))
	if err != nil {
		return nil, nil, err
	}
	js, err := conn.JetStream()
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, js, nil
}
