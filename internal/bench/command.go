package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/gridseal/gridseal/internal/cli"
)

// Flags are gridseal bench's flags.
type Flags struct {
	Clients       string // comma list of client counts
	Duration      time.Duration
	Pipeline      int
	Mix           string // read=N,write=M
	Direct, Via   string // a device and a gridseal in front of it: measure those instead
	JSON          bool
	Rounds        int
	Scenarios     string
	CPUProfile    string
	InProcess     bool
	Console       bool   // gridseal with its console on, as configured by default
	Devices       int    // the devices scenario: devices behind one gridseal
	DeviceClients int    // and clients to each
	Dir           string // where gridseal's journal and store go ("": the system's temporary directory)
}

// Run is gridseal bench: it checks f (a *UsageError if it cannot run as
// given), runs the scenarios or the custom pair, and writes the report
// to stdout, progress to stderr.
func Run(ctx context.Context, f Flags, stdout, stderr io.Writer) error {
	writePct, err := ParseMix(f.Mix)
	if err != nil {
		return &UsageError{Msg: "--mix: " + err.Error()}
	}
	counts, err := ParseClients(f.Clients)
	if err != nil {
		return &UsageError{Msg: fmt.Sprintf("--clients %q: %v", f.Clients, err)}
	}
	if f.Rounds < 1 || f.Duration < 100*time.Millisecond || f.Pipeline < 1 || f.Pipeline > 512 ||
		f.Devices < 1 || f.Devices > MaxDevices || f.DeviceClients < 1 {
		return &UsageError{Msg: fmt.Sprintf("want --rounds ≥ 1, --duration ≥ 100ms, --pipeline 1..512, --devices 1..%d, --device-clients ≥ 1", MaxDevices)}
	}
	if f.CPUProfile != "" {
		stop, err := cli.StartCPUProfile(f.CPUProfile, stderr)
		if err != nil {
			return err
		}
		defer stop()
	}
	b := &Bencher{Stderr: stderr, Duration: f.Duration, Rounds: f.Rounds, Pipeline: f.Pipeline, Quiet: f.JSON,
		Devices: f.Devices, DeviceClients: f.DeviceClients, Dir: f.Dir}
	custom := f.Direct != "" || f.Via != ""
	if f.Console && (f.InProcess || custom) {
		return &UsageError{Msg: "--console goes with the self-hosted scenarios, each target a process of its own"}
	}
	var disk *DiskReport
	if !custom {
		if !f.InProcess {
			procs, cleanup, err := TempProcs(f.Dir)
			if err != nil {
				return fmt.Errorf("--dir: %w", err)
			}
			defer cleanup()
			procs.Console = f.Console
			b.Procs = procs
		}
		// Where gridseal's journal will be: the children's directory and
		// the in-process stack's are made in it, on its file system.
		base := f.Dir
		if base == "" {
			base = os.TempDir()
		}
		if disk, err = ProbeDisk(base); err != nil {
			return err
		}
	}
	var rep Report
	if custom {
		rep, err = b.Custom(ctx, f.Direct, f.Via, counts, writePct)
	} else {
		rep, err = b.SelfHosted(ctx, counts, writePct, f.Scenarios)
	}
	if err != nil {
		return err
	}
	rep.Disk = disk
	rep.Console = f.Console
	if f.JSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	PrintReport(stdout, &rep)
	return nil
}
