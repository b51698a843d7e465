package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/gridseal/gridseal/internal/loadgen"
)

// UsageError is a bench command line that cannot be run as written.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

// Serve runs one of the bench's targets on listen until ctx ends: "device"
// (dev's behaviour) or "relay" (a bare TCP relay to upstream). It writes
// "listening ADDR" to w once it listens; Procs reads that line. devices
// above 1 serves that many devices, each on a port of its own (listen's
// port must be 0), the i-th answering unit id i only, and lists their
// addresses on the line in that order.
func Serve(ctx context.Context, w io.Writer, kind, listen, upstream string, devices int, dev *loadgen.Device) error {
	if devices < 1 || devices > MaxDevices || (devices > 1 && kind != "device") {
		return &UsageError{fmt.Sprintf("--devices %d: want 1..%d, and only for a device", devices, MaxDevices)}
	}
	var addrs []string
	for i := 0; i < devices; i++ {
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			return err
		}
		addrs = append(addrs, ln.Addr().String())
		switch kind {
		case "device":
			d := &loadgen.Device{ServiceTime: dev.ServiceTime, Serial: dev.Serial, Unit: dev.Unit}
			if devices > 1 {
				d.Unit = byte(i + 1)
			}
			go d.Serve(ln)
			defer d.Close()
		case "relay":
			if upstream == "" {
				_ = ln.Close()
				return &UsageError{"relay needs --to ADDR"}
			}
			rel := &loadgen.Relay{Upstream: upstream}
			go rel.Serve(ln)
			defer rel.Close()
		default:
			_ = ln.Close()
			return &UsageError{fmt.Sprintf("bench-serve %q: want device or relay", kind)}
		}
	}
	fmt.Fprintf(w, "listening %s\n", strings.Join(addrs, " "))
	<-ctx.Done()
	return nil
}

// ParseClients parses a comma list of client counts, each 1..4096.
func ParseClients(s string) ([]int, error) {
	var counts []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 4096 {
			return nil, errors.New("want numbers 1..4096")
		}
		counts = append(counts, n)
	}
	return counts, nil
}

// TempProcs is Procs running self's children with their files in a fresh
// temporary directory under parent ("": the system's), which cleanup
// removes.
func TempProcs(parent string) (p *Procs, cleanup func(), err error) {
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp(parent, "gridseal-bench-")
	if err != nil {
		return nil, nil, err
	}
	return &Procs{Self: self, Dir: dir}, func() { _ = os.RemoveAll(dir) }, nil // the children's stores: nothing to keep
}

// Custom measures the targets given by address, a device measured
// directly and (or) a gridseal in front of it, at each client count.
func (b *Bencher) Custom(ctx context.Context, direct, via string, counts []int, writePct int) (Report, error) {
	var targets []Target
	if direct != "" {
		targets = append(targets, Target{Name: "direct", Addr: direct})
	}
	if via != "" {
		targets = append(targets, Target{Name: "gridseal", Addr: via})
	}
	var rep Report
	for _, n := range counts {
		sr, err := b.Scenario(ctx, "custom", targets, n, writePct, nil)
		if err != nil {
			return rep, err
		}
		rep.Scenarios = append(rep.Scenarios, *sr)
	}
	return rep, nil
}
