// Package testnet finds loopback ports for tests that must name an
// address before anything listens on it (a cluster's routes, a command's
// --listen flags).
package testnet

import (
	"net"
	"strconv"
	"testing"
)

// FreePort returns a loopback TCP port that is free now (the system
// chose it and it was let go again).
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().(*net.TCPAddr).Port
}

// FreeAddr is 127.0.0.1 and a FreePort, as host:port.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
}
