package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gridseal/gridseal/internal/bench"
)

// TestBenchDevices runs the devices scenario small, out of process: five
// devices, each answering its own unit id only, measured directly, through
// a gridseal listener per device and through one gateway listener routing
// the five unit ids. Every device must be served with no exception (a
// request routed to the wrong device comes back 0x0B), and each gridseal's
// chain must hold an event for every request answered.
func TestBenchDevices(t *testing.T) {
	code, out, stderr := runCLI(t, t.Context(), "bench", "--scenarios", "devices", "--devices", "5", "--device-clients", "2",
		"--duration", "1s", "--rounds", "1", "--json")
	if code != 0 {
		t.Fatalf("bench: exit %d %s", code, stderr)
	}
	var rep bench.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("bench --json: %v\n%s", err, out)
	}
	if len(rep.Scenarios) != 1 {
		t.Fatalf("%d scenarios, want devices only:\n%s", len(rep.Scenarios), out)
	}
	s := rep.Scenarios[0]
	if s.Name != "devices" || s.Devices != 5 || s.ClientsPerDevice != 2 || s.Clients != 10 || len(s.Targets) != 3 {
		t.Fatalf("scenario %+v", s)
	}
	for i, want := range []string{"direct", "gridseal-listeners", "gridseal-gateway"} {
		tr := s.Targets[i]
		d := tr.Devices
		if tr.Name != want || d == nil {
			t.Fatalf("target %d: %+v, want %s with device figures", i, tr, want)
		}
		if tr.Requests == 0 || tr.Errors != 0 || tr.Exceptions != 0 || tr.P99us < tr.P50us || tr.CPUPer1k <= 0 {
			t.Errorf("%s: %+v", tr.Name, tr)
		}
		if d.Devices != 5 || d.Served != 5 || d.MinRPS <= 0 || d.MinRPS > d.MedianRPS || d.MedianRPS > d.MaxRPS || d.MaxRPS > tr.ThroughputRPS {
			t.Errorf("%s: not every device served: %+v", tr.Name, d)
		}
		if want == "direct" {
			continue
		}
		if d.ChainEvents != tr.Requests || d.ChainKeptUp == nil || !*d.ChainKeptUp {
			t.Errorf("%s: chain holds %d events for %d requests (kept up %v)", tr.Name, d.ChainEvents, tr.Requests, d.ChainKeptUp)
		}
		if d.RSSBeforeMiB <= 0 || d.RSSPeakMiB < d.RSSBeforeMiB || d.RSSAfterMiB <= 0 || d.RSSPerDeviceKiB*5 < d.RSSPeakMiB*1024*0.99 {
			t.Errorf("%s: memory %+v", tr.Name, d)
		}
	}
	for _, args := range [][]string{{"--devices", "0"}, {"--devices", "248"}, {"--device-clients", "0"}} {
		if code, _, stderr := runCLI(t, t.Context(), append([]string{"bench", "--scenarios", "devices"}, args...)...); code != 2 || !strings.Contains(stderr, "--devices 1..247") {
			t.Errorf("bench %v: exit %d %s", args, code, stderr)
		}
	}
	if code, _, stderr := runCLI(t, t.Context(), "bench", "--scenarios", "devices", "--in-process"); code != 1 || !strings.Contains(stderr, "cannot run --in-process") {
		t.Errorf("devices --in-process: exit %d %s", code, stderr)
	}
	if code, _, stderr := runCLI(t, t.Context(), "bench", "--console", "--in-process"); code != 2 || !strings.Contains(stderr, "--console goes with") {
		t.Errorf("--console --in-process: exit %d %s", code, stderr)
	}
}

// TestBenchWithConsole: --console measures gridseal with its console on,
// as configured by default, and the report says so. With --dir its files
// go where a site's would, and the disk reported is that one.
func TestBenchWithConsole(t *testing.T) {
	dir := t.TempDir()
	code, out, stderr := runCLI(t, t.Context(), "bench", "--scenarios", "overhead", "--clients", "2", "--duration", "300ms",
		"--rounds", "1", "--console", "--json", "--dir", dir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rep bench.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if !rep.Console || len(rep.Scenarios) != 1 || rep.Scenarios[0].Extra["chain_kept_up"] != "true" {
		t.Fatalf("report %+v", rep)
	}
	if rep.Disk == nil || rep.Disk.Dir != dir || rep.Disk.Samples == 0 {
		t.Errorf("disk %+v, want %s's", rep.Disk, dir)
	}
	if left, err := os.ReadDir(dir); err != nil || len(left) != 0 {
		t.Errorf("the bench left %v in --dir (%v)", left, err)
	}
	if code, _, stderr := runCLI(t, t.Context(), "bench", "--dir", filepath.Join(dir, "missing")); code != 1 || !strings.Contains(stderr, "--dir: ") {
		t.Errorf("a missing --dir: exit %d %s", code, stderr)
	}
	for _, tr := range rep.Scenarios[0].Targets {
		if tr.Requests == 0 || tr.Errors != 0 {
			t.Errorf("%s: %d requests, %d errors", tr.Name, tr.Requests, tr.Errors)
		}
	}
}
