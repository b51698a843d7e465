// Package simtest starts the bundled simulators for tests, on a free
// loopback port, and stops them when the test ends.
package simtest

import (
	"testing"

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
