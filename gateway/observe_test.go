package gateway_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	mbclient "github.com/simonvetter/modbus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/gateway"
	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/simulators"
	"github.com/gridseal/gridseal/simulators/simtest"
)

// setMode rewrites the site's policy as version v, inverter-1 in mode
// (empty: no mode line, which enforces).
func setMode(t *testing.T, cfg *gateway.Config, v int, mode string) {
	t.Helper()
	b, err := os.ReadFile(cfg.Policy)
	if err != nil {
		t.Fatal(err)
	}
	lines := []string{}
	for _, l := range strings.Split(string(b), "\n") {
		switch {
		case strings.HasPrefix(l, "version:"):
			l = "version: " + string(rune('0'+v))
		case strings.HasPrefix(l, "    mode:"):
			continue
		}
		lines = append(lines, l)
		if strings.HasPrefix(l, "    units:") && mode != "" {
			lines = append(lines, "    mode: "+mode)
		}
	}
	if err := os.WriteFile(cfg.Policy, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
}

// modeSteps returns the reasons of the chain's policy-phase events, by device.
func modeSteps(t *testing.T, dataDir string) []string {
	t.Helper()
	var out []string
	recorded(t, dataDir, func(ev *audit.Event) error {
		if ev.Phase == audit.PhasePolicy {
			out = append(out, ev.Device+" "+strings.SplitN(ev.Reason, ":", 2)[0])
		}
		return nil
	})
	return out
}

func metric(t *testing.T, url, series string) string {
	t.Helper()
	resp, err := http.Get(url + "metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, series+" ") {
			return strings.TrimPrefix(l, series+" ")
		}
	}
	return ""
}

// TestObserveModeIsLoud: a device in observe mode forwards a write its
// rules deny; the chain records the device entering and leaving observe
// mode (at start against the policy last accepted, and on reload), the
// metrics count it, and a warning repeats while it observes.
func TestObserveModeIsLoud(t *testing.T) {
	simAddr, plant := simtest.Start(t, simulators.Options{})
	inv := plant.Device(simulators.UnitInverter).(*simulators.Inverter)
	cfg := site(t, simAddr)
	cfg.Console.Listen = "127.0.0.1:0"
	setMode(t, cfg, 1, "observe")
	dataDir := t.TempDir()
	core, logs := observer.New(zapcore.InfoLevel)
	gw, err := gateway.New(t.Context(), cfg, gateway.Options{DataDir: dataDir, Log: zap.New(core), ObserveLogEvery: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	c := simtest.Client(t, gw.Addrs()[0], simulators.UnitInverter, 5*time.Second)
	defer func() { _ = c.Close() }()
	if err := c.WriteRegister(simulators.InverterLimitPct, 20); err != nil {
		t.Fatalf("a write the rules deny, in observe mode: %v", err)
	}
	testwait.For(t, "the inverter to follow the observed write", func() bool { return inv.Watts() <= 20_000 })
	testwait.For(t, "the would-deny counter", func() bool {
		return metric(t, gw.ConsoleURL(), `gridseal_observe_would_deny_total{device="inverter-1"}`) == "1"
	})
	if got := metric(t, gw.ConsoleURL(), "gridseal_observe_devices"); got != "1" {
		t.Fatalf("gridseal_observe_devices = %q, want 1", got)
	}
	testwait.For(t, "the repeated observe-mode warning", func() bool {
		return logs.FilterMessageSnippet("OBSERVE MODE: these devices").Len() >= 2
	})

	setMode(t, cfg, 2, "")
	if err := gw.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	err = c.WriteRegister(simulators.InverterLimitPct, 30)
	if !errors.Is(err, mbclient.ErrIllegalFunction) {
		t.Fatalf("the same kind of write once enforced: %v, want illegal function", err)
	}
	if got := metric(t, gw.ConsoleURL(), "gridseal_observe_devices"); got != "0" {
		t.Fatalf("gridseal_observe_devices after leaving = %q, want 0", got)
	}
	_ = c.Close()
	gw.Close()

	// Restarts compare with the policy last accepted.
	for _, v := range []int{3, 3, 4} {
		mode := "observe"
		if v == 4 {
			mode = ""
		}
		setMode(t, cfg, v, mode)
		gw, err := gateway.New(t.Context(), cfg, gateway.Options{DataDir: dataDir, Log: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		gw.Close()
	}
	want := []string{"inverter-1 enters observe mode", "inverter-1 leaves observe mode",
		"inverter-1 enters observe mode", "inverter-1 in observe mode at start", "inverter-1 leaves observe mode"}
	if got := modeSteps(t, dataDir); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("mode events in the chain:\n%q\nwant\n%q", got, want)
	}
}

// TestReloadOn: each signal reloads the policy; one that cannot be put in
// force is logged and the policy in force stays; ReloadOn ends with ctx.
func TestReloadOn(t *testing.T) {
	simAddr, _ := simtest.Start(t, simulators.Options{})
	cfg := site(t, simAddr)
	core, logs := observer.New(zapcore.InfoLevel)
	gw, err := gateway.New(t.Context(), cfg, gateway.Options{DataDir: t.TempDir(), Log: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	ctx, cancel := context.WithCancel(t.Context())
	hup := make(chan os.Signal, 1)
	done := make(chan struct{})
	go func() { gw.ReloadOn(ctx, hup); close(done) }()
	setMode(t, cfg, 2, "")
	hup <- syscall.SIGHUP
	testwait.For(t, "the reload of version 2", func() bool { return gw.Policy().Version == 2 })
	setMode(t, cfg, 1, "")
	hup <- syscall.SIGHUP
	testwait.For(t, "the refused rollback logged", func() bool {
		return logs.FilterMessage("policy reload refused; the policy in force stays").Len() == 1
	})
	if v := gw.Policy().Version; v != 2 {
		t.Fatalf("version %d in force after a refused reload, want 2", v)
	}
	cancel()
	<-done
}
