package gateway_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/eve"
	"github.com/gridseal/gridseal/eve/evetest"
	"github.com/gridseal/gridseal/gateway"
	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/protocols/modbus"
	"github.com/gridseal/gridseal/simulators"
	"github.com/gridseal/gridseal/simulators/simtest"
)

// modbusConn is a raw Modbus/TCP client: one frame out, one frame back.
type modbusConn struct {
	t   *testing.T
	c   net.Conn
	tid uint16
}

func dialModbus(t *testing.T, addr string) *modbusConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &modbusConn{t: t, c: c}
}

// send writes the frames for pdus at once (pipelined) and reads as many replies.
func (m *modbusConn) send(pdus ...[]byte) {
	m.t.Helper()
	var out []byte
	for _, pdu := range pdus {
		m.tid++
		out = binary.BigEndian.AppendUint16(out, m.tid)
		out = append(out, 0, 0)
		out = binary.BigEndian.AppendUint16(out, uint16(len(pdu)+1))
		out = append(out, 1)
		out = append(out, pdu...)
	}
	if _, err := m.c.Write(out); err != nil {
		m.t.Fatal(err)
	}
	_ = m.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for range pdus {
		hdr := make([]byte, 7)
		if _, err := io.ReadFull(m.c, hdr); err != nil {
			m.t.Fatal(err)
		}
		if _, err := io.ReadFull(m.c, make([]byte, binary.BigEndian.Uint16(hdr[4:])-1)); err != nil {
			m.t.Fatal(err)
		}
	}
}

// eveLines reads every line of the files named.
func eveLines(t *testing.T, paths ...string) [][]byte {
	t.Helper()
	out, err := readLines(paths...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func readLines(paths ...string) ([][]byte, error) {
	var out [][]byte
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		for l := range bytes.Lines(b) {
			out = append(out, bytes.TrimSuffix(l, []byte("\n")))
		}
	}
	return out, nil
}

// TestEVEFile runs a real proxy with an EVE file: reads and writes allowed
// and denied, a malformed request and a client over its rate limit are
// written as EVE lines (each of which validates against Suricata's
// schema), the file rotates by size into eve.json.1 …, and Reload (SIGHUP)
// reopens it after a log rotator moved it. The lines are exactly the chain's
// events, as `chain export --format eve` renders them without the chain
// position.
func TestEVEFile(t *testing.T) {
	simAddr, _ := simtest.Start(t, simulators.Options{})
	cfg := site(t, simAddr)
	pol := "id: plant\nversion: 1\ndevices:\n  - name: inverter-1\n    upstream: " + simAddr +
		"\n    units: [1]\n    rules:\n      - {name: telemetry, allow: read, table: holding-registers, addresses: 40000-40149}\n" +
		"      - {name: setpoint, allow: write, functions: [6], addresses: 40127, values: 0-100}\n"
	if err := os.WriteFile(cfg.Policy, []byte(pol), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "eve.json")
	cfg.EVE = gateway.EVEConfig{Path: path, Rotate: gateway.EVERotateConfig{Size: 16 << 10, Keep: 50}}
	cfg.Limits.RequestsPerSecond, cfg.Limits.Burst = 0.001, 30 // per connection: 30, then (in a test's time) none
	dataDir := t.TempDir()
	gw, err := gateway.New(t.Context(), cfg, gateway.Options{DataDir: dataDir, Log: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	addr := gw.Addrs()[0]

	c := dialModbus(t, addr)
	for range 10 {
		c.send(modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, simulators.InverterPower, 2))
	}
	c.send(modbus.AppendReadRequest(nil, modbus.ReadInputRegisters, 0, 4), // read denied
		modbus.AppendWriteSingleRegister(nil, 40127, 50),                     // allowed write
		modbus.AppendWriteSingleRegister(nil, 40127, 150),                    // write denied (value)
		modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 40000, 0)) // malformed: quantity 0
	flood := dialModbus(t, addr)
	var burst [][]byte
	for range 40 {
		burst = append(burst, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, simulators.InverterPower, 1))
	}
	flood.send(burst...) // 30 pass, the rest are over the rate
	files := func() []string {
		m, _ := filepath.Glob(path + "*")
		return m
	}
	testwait.For(t, "the EVE file rotated", func() bool { return len(files()) >= 2 })

	// A log rotator moves the file; SIGHUP's Reload reopens it.
	moved := filepath.Join(dir, "moved.json")
	// 10 reads, a denied read and its alert, a write, a denied write and
	// its alert, a malformed request and its alert, 30 reads and 10
	// refused over the rate, each with its alert.
	const lines = 10 + 2 + 1 + 2 + 2 + 30 + 10*2
	testwait.For(t, "every operation written", func() bool {
		got, err := readLines(files()...) // a file may rotate away between glob and read: look again
		return err == nil && len(got) == lines
	})
	if err := os.Rename(path, moved); err != nil {
		t.Fatal(err)
	}
	if err := gw.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "eve.json reopened", func() bool {
		_, err := os.Stat(path)
		return err == nil
	})
	c.send(modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, simulators.InverterPower, 2))
	gw.Close()
	if got := eveLines(t, path); len(got) != 1 {
		t.Fatalf("%d lines in the reopened eve.json, want the 1 read after the reopen", len(got))
	}

	all := append(files(), moved)
	var text []byte
	for _, l := range eveLines(t, all...) {
		text = append(append(text, l...), '\n')
	}
	evetest.Check(t, text)
	sids := map[float64]int{}
	for _, l := range eveLines(t, all...) {
		var e struct {
			Alert struct {
				SignatureID float64 `json:"signature_id"`
			} `json:"alert"`
		}
		if err := json.Unmarshal(l, &e); err != nil {
			t.Fatal(err)
		}
		sids[e.Alert.SignatureID]++
	}
	for _, want := range []struct {
		sid  int
		what string
	}{{9050006, "read denied"}, {9050001, "write denied"}, {9050002, "malformed"}, {9050008, "rate limited"}} {
		if sids[float64(want.sid)] == 0 {
			t.Errorf("no %s alert (%d) in the EVE file: %v", want.what, want.sid, sids)
		}
	}
	for _, f := range files() {
		if fi, err := os.Stat(f); err != nil || fi.Size() > 16<<10+4<<10 {
			t.Errorf("%s: %v bytes, want each rotated near 16 KiB (%v)", f, fi.Size(), err)
		}
	}

	// The file holds exactly what the chain holds, as the export renders
	// it without the chain's position.
	m := &eve.Mapper{Writer: "gw-1", Devices: map[string]string{"inverter-1": simAddr}}
	var want []string
	recorded(t, dataDir, func(ev *audit.Event) error {
		for _, e := range m.For(nil, ev) {
			b, err := json.Marshal(e)
			if err != nil {
				return err
			}
			want = append(want, string(b))
		}
		return nil
	})
	var got []string
	for _, l := range eveLines(t, all...) {
		got = append(got, string(l))
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("EVE file (%d lines) is not the chain's events (%d lines):\n%s", len(got), len(want), strings.Join(got[:min(3, len(got))], "\n"))
	}
}
