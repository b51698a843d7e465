// Package testnet finds loopback ports for tests that must name an
// address before anything listens on it (a cluster's routes, a command's
// --listen flags).
package testnet

import (
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// FreePort returns a loopback TCP port that is free now. It is taken from
// below the system's ephemeral range, where no outgoing connection of any
// process can claim it between now and the moment the test binds it (a
// port the system chose for :0 can go to the next connect(2) of another
// test binary running beside this one); at random, so that test binaries
// running at once rarely pick the same one.
func FreePort(t testing.TB) int {
	t.Helper()
	lo := ephemeralLow()
	if lo > 10000 {
		for range 200 {
			p := lo - 1 - rand.IntN(lo-10000)
			ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
			if err == nil {
				_ = ln.Close()
				return p
			}
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().(*net.TCPAddr).Port
}

// ephemeralLow is the first port of the system's ephemeral range (0 if
// unknown).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	lo, _ := strconv.Atoi(f[0])
	return lo
}

// FreeAddr is 127.0.0.1 and a FreePort, as host:port.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
}
