package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gridseal/gridseal/internal/loadgen"
	"github.com/gridseal/gridseal/internal/natsembed"
)

// MaxDevices is the most devices the devices scenario puts behind one
// gridseal: one gateway listener routes unit ids 1..247 to them.
const MaxDevices = 247

// DevicesReport is a target's figures in the devices scenario: how evenly
// its devices were served and, for gridseal, what its process held and
// whether its chain recorded every request.
type DevicesReport struct {
	Devices int `json:"devices"`
	// Served counts the devices that answered requests for their own unit
	// id (each device answers its unit only: a request routed to another
	// device comes back as exception 0x0B).
	Served int `json:"served"`
	// Per device: replies for its own unit per second, the slowest, the
	// median and the fastest device — how fairly the target shares.
	MinRPS    float64 `json:"per_device_rps_min"`
	MedianRPS float64 `json:"per_device_rps_median"`
	MaxRPS    float64 `json:"per_device_rps_max"`
	// The gridseal process (proxy and its embedded NATS), from
	// /proc/PID/status: VmRSS with its devices configured and no client
	// yet, VmHWM (the most it held, under the load), VmRSS once the
	// clients are gone; the peak divided by the devices (all of it, NATS
	// included, shared out), and what the load added to it per device
	// (peak − before: its clients' sessions, upstream connection, buffers).
	RSSBeforeMiB         float64 `json:"rss_before_mib,omitempty"`
	RSSPeakMiB           float64 `json:"rss_peak_mib,omitempty"`
	RSSAfterMiB          float64 `json:"rss_after_mib,omitempty"`
	RSSPerDeviceKiB      float64 `json:"rss_per_device_kib,omitempty"`
	RSSAddedPerDeviceKiB float64 `json:"rss_added_per_device_kib,omitempty"`
	// ChainEvents is what gridseal's chain recorded during the scenario;
	// ChainKeptUp says it holds at least an event for every request
	// answered (a read is one, a write two: before it is sent, and done).
	ChainEvents uint64 `json:"chain_events,omitempty"`
	ChainKeptUp *bool  `json:"chain_kept_up,omitempty"`
}

// devCount is one device's replies for its own unit, and the time they
// took, over the rounds.
type devCount struct {
	own     uint64
	elapsed time.Duration
}

// spread is the per-device figures of counts.
func spread(counts []devCount) *DevicesReport {
	dr := &DevicesReport{Devices: len(counts)}
	rps := make([]float64, 0, len(counts))
	for _, c := range counts {
		if c.own > 0 {
			dr.Served++
		}
		r := 0.0
		if c.elapsed > 0 {
			r = float64(c.own) / c.elapsed.Seconds()
		}
		rps = append(rps, r)
	}
	if len(rps) > 0 {
		slices.Sort(rps)
		dr.MinRPS, dr.MedianRPS, dr.MaxRPS = rps[0], rps[len(rps)/2], rps[len(rps)-1]
	}
	return dr
}

// devicesPolicy is the bench policy's rules for each of upstreams, device
// i (dev-001 …) taking unit id i.
func devicesPolicy(upstreams []string) (names []string, yaml string) {
	var b strings.Builder
	b.WriteString("id: bench-devices\ndevices:\n")
	for i, up := range upstreams {
		name := fmt.Sprintf("dev-%03d", i+1)
		names = append(names, name)
		fmt.Fprintf(&b, `  - name: %s
    upstream: %s
    units: [%d]
    rules:
      - {name: reads, allow: read, functions: [1, 2, 3, 4], addresses: 0-1999}
      - {name: writes, allow: write, functions: [6, 16], addresses: 0-99, values: 0-100}
`, name, up, i+1)
	}
	return names, b.String()
}

// manyDevices is the devices scenario: b.Devices zero-latency devices in
// one child, measured directly, through a gridseal with a listener per
// device, and through a gridseal whose one gateway listener routes unit
// ids 1..N to them; b.DeviceClients clients to each device.
func (b *Bencher) manyDevices(ctx context.Context, writePct int) (*ScenarioReport, error) {
	n, k := b.Devices, b.DeviceClients
	if b.Procs == nil {
		return nil, errors.New("the devices scenario measures gridseal's own process: it cannot run --in-process")
	}
	if n < 1 || n > MaxDevices || k < 1 {
		return nil, &UsageError{fmt.Sprintf("devices scenario: want 1..%d devices and at least 1 client each", MaxDevices)}
	}
	// Each process holds at most: a socket per client, per device
	// listener and upstream connection of two gridseals, plus its files.
	if err := raiseFileLimit(uint64(n*(k+3) + 256)); err != nil {
		return nil, err
	}
	defer b.Procs.Close()
	devAddrs, devPID, err := b.Procs.Devices(ctx, &loadgen.Device{}, n)
	if err != nil {
		return nil, err
	}
	names, pol := devicesPolicy(devAddrs)
	perListener := make([][]string, n)
	for i, name := range names {
		perListener[i] = []string{name}
	}
	lAddrs, lPID, lData, err := b.Procs.GridsealListeners(ctx, pol, perListener)
	if err != nil {
		return nil, err
	}
	gAddrs, gPID, gData, err := b.Procs.GridsealListeners(ctx, pol, [][]string{names})
	if err != nil {
		return nil, err
	}
	targets := []Target{{Name: "direct", PID: devPID}, {Name: "gridseal-listeners", PID: lPID}, {Name: "gridseal-gateway", PID: gPID}}
	for i := range n {
		unit := byte(i + 1)
		targets[0].Devices = append(targets[0].Devices, Endpoint{devAddrs[i], unit})
		targets[1].Devices = append(targets[1].Devices, Endpoint{lAddrs[i], unit})
		targets[2].Devices = append(targets[2].Devices, Endpoint{gAddrs[0], unit})
	}
	ncs := make([]*nats.Conn, len(targets)) // gridseal's chains
	for i, data := range map[int]string{1: lData, 2: gData} {
		conn, err := natsembed.Connect(ctx, natsembed.ConnectOptions{Name: "bench", DataDir: data})
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		ncs[i] = conn.NC
	}
	rssBefore := make([]int64, len(targets))
	eventsBefore := make([]uint64, len(targets))
	for i, t := range targets {
		if ncs[i] == nil {
			continue
		}
		rssBefore[i] = procRSS(t.PID)
		if eventsBefore[i], err = chainEvents(ctx, ncs[i]); err != nil {
			return nil, err
		}
	}
	sr, err := b.Scenario(ctx, "devices", targets, k, writePct, nil)
	if err != nil {
		return nil, err
	}
	sr.Clients, sr.Devices, sr.ClientsPerDevice = n*k, n, k
	const mib = 1 << 20
	for i, t := range targets {
		if ncs[i] == nil {
			continue
		}
		dr := sr.Targets[i].Devices
		peak := procPeakRSS(t.PID)
		dr.RSSBeforeMiB, dr.RSSPeakMiB, dr.RSSAfterMiB = float64(rssBefore[i])/mib, float64(peak)/mib, float64(procRSS(t.PID))/mib
		dr.RSSPerDeviceKiB = float64(peak) / 1024 / float64(n)
		dr.RSSAddedPerDeviceKiB = float64(peak-rssBefore[i]) / 1024 / float64(n)
		// Reads are recorded without making clients wait: give the chain
		// a moment to take the last of them.
		want := sr.Targets[i].Requests
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			after, err := chainEvents(ctx, ncs[i])
			if err != nil {
				return nil, err
			}
			dr.ChainEvents = after - eventsBefore[i]
			if dr.ChainEvents >= want || time.Now().After(deadline) {
				break
			}
		}
		kept := dr.ChainEvents >= want
		dr.ChainKeptUp = &kept
	}
	return sr, nil
}

// raiseFileLimit raises this process's soft limit of open files (which
// its children inherit) to need, up to the hard limit; a hard limit below
// need is an error that says so.
func raiseFileLimit(need uint64) error {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return err
	}
	if rl.Cur >= need {
		return nil
	}
	if rl.Max < need {
		return fmt.Errorf("the devices scenario needs about %d open files a process; the hard limit (ulimit -Hn) is %d: raise it, or bench fewer --devices", need, rl.Max)
	}
	rl.Cur = need
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
}

// printDevices writes the devices scenario's per-target figures.
func printDevices(w io.Writer, s *ScenarioReport) {
	for _, t := range s.Targets {
		d := t.Devices
		if d == nil {
			continue
		}
		fmt.Fprintf(w, "%s %s: %d devices × %d clients, %d served, req/s per device min/median/max %.0f/%.0f/%.0f",
			s.Name, t.Name, d.Devices, s.ClientsPerDevice, d.Served, d.MinRPS, d.MedianRPS, d.MaxRPS)
		if d.ChainKeptUp != nil {
			fmt.Fprintf(w, ", RSS before/peak/after %.1f/%.1f/%.1f MiB (%.0f KiB a device, %.0f KiB of it added by the load), chain %d events for %d requests (kept up: %v)",
				d.RSSBeforeMiB, d.RSSPeakMiB, d.RSSAfterMiB, d.RSSPerDeviceKiB, d.RSSAddedPerDeviceKiB, d.ChainEvents, t.Requests, *d.ChainKeptUp)
		}
		fmt.Fprintln(w)
	}
}
