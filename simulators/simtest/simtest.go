// Package simtest starts the bundled simulators for tests, on a free
// loopback port, and stops them when the test ends; and it dials them (or
// a gateway in front of them) with a Modbus/TCP client.
package simtest

import (
	"io"
	"log"
	"testing"
	"time"

	mbclient "github.com/simonvetter/modbus"

	"github.com/gridseal/gridseal/simulators"
)

// Start serves the standard plant (unit 1 inverter, 2 battery, 3 breaker)
// on 127.0.0.1 and returns its address and the plant.
func Start(t testing.TB, o simulators.Options) (string, *simulators.Plant) {
	t.Helper()
	plant, err := simulators.NewStandardPlant("all", o)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := simulators.Start("127.0.0.1:0", plant)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	return srv.Addr, plant
}

// Client is an open Modbus/TCP client of the server at addr (host:port)
// that asks unit and waits timeout for an answer. It is closed when the
// test ends; closing it before is harmless.
func Client(t testing.TB, addr string, unit uint8, timeout time.Duration) *mbclient.ModbusClient {
	t.Helper()
	c, err := mbclient.NewClient(&mbclient.ClientConfiguration{
		URL: "tcp://" + addr, Timeout: timeout, Logger: log.New(io.Discard, "", 0),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := c.SetUnitId(unit); err != nil {
		t.Fatal(err)
	}
	return c
}
