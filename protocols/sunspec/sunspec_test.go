package sunspec_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	mbclient "github.com/simonvetter/modbus"

	"github.com/gridseal/gridseal/protocols/sunspec"
	"github.com/gridseal/gridseal/simulators"
	"github.com/gridseal/gridseal/simulators/simtest"
)

func reader(t *testing.T, addr string, unit uint8) sunspec.ReadFunc {
	t.Helper()
	c := simtest.Client(t, addr, unit, 2*time.Second)
	return func(a, n uint16) ([]uint16, error) {
		regs, err := c.ReadRegisters(a, n, mbclient.HOLDING_REGISTER)
		if errors.Is(err, mbclient.ErrIllegalDataAddress) {
			return nil, sunspec.Exception(2)
		}
		return regs, err
	}
}

func TestWalkSimulators(t *testing.T) {
	moved := simulators.Layout{Base: 50000, Models: []uint16{121, 120, 103, 123}}
	tests := []struct {
		name   string
		opts   simulators.Options
		unit   uint8
		base   uint16
		models string
		point  [2]string // model, point
		addr   uint16
		value  uint16 // the point's value on a new simulator
	}{
		{"inverter", simulators.Options{}, simulators.UnitInverter, 40000, "1, 103, 123, 120, 121",
			[2]string{"123", "WMaxLimPct"}, simulators.InverterLimitPct, 100},
		{"inverter conn", simulators.Options{}, simulators.UnitInverter, 40000, "1, 103, 123, 120, 121",
			[2]string{"123", "Conn"}, simulators.InverterConn, 1},
		{"inverter nameplate", simulators.Options{}, simulators.UnitInverter, 40000, "1, 103, 123, 120, 121",
			[2]string{"120", "WRtg"}, 40151, 100},
		{"inverter moved", simulators.Options{InverterLayout: &moved}, simulators.UnitInverter, 50000, "1, 121, 120, 103, 123",
			[2]string{"123", "WMaxLimPct"}, 50000 + 2 + 68 + 32 + 28 + 52 + 5, 100},
		{"battery", simulators.Options{}, simulators.UnitBattery, 40000, "1, 124, 713",
			[2]string{"124", "WChaMax"}, 40070 + 2, uint16(simulators.BatteryRatedKW)},
		{"battery soc", simulators.Options{}, simulators.UnitBattery, 40000, "1, 124, 713",
			[2]string{"713", "SoC"}, 40070 + 26 + 4, 500},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr, _ := simtest.Start(t, tc.opts)
			read := reader(t, addr, tc.unit)
			m, err := sunspec.Walk(read)
			if err != nil {
				t.Fatal(err)
			}
			if m.Base != tc.base || m.IDs() != tc.models {
				t.Fatalf("map at %d with models %s; want %d with %s", m.Base, m.IDs(), tc.base, tc.models)
			}
			id := map[string]uint16{"123": 123, "120": 120, "124": 124, "713": 713}[tc.point[0]]
			a, p, err := m.Locate(id, tc.point[1])
			if err != nil {
				t.Fatal(err)
			}
			if a != tc.addr {
				t.Fatalf("%s.%s at %d, want %d", tc.point[0], tc.point[1], a, tc.addr)
			}
			v, err := read(a, p.Size)
			if err != nil || v[0] != tc.value {
				t.Fatalf("%s.%s = %v, %v; want %d", tc.point[0], tc.point[1], v, err, tc.value)
			}
		})
	}
}

func TestWalkWithoutMap(t *testing.T) {
	addr, _ := simtest.Start(t, simulators.Options{})
	_, err := sunspec.Walk(reader(t, addr, simulators.UnitBreaker))
	if !errors.Is(err, sunspec.ErrNoMap) || !strings.Contains(err.Error(), `no "SunS" marker at 40000`) {
		t.Fatalf("breaker: %v; want ErrNoMap naming the bases tried", err)
	}
}

// memory is a register space for chains no simulator serves.
func memory(regs map[uint16]uint16) sunspec.ReadFunc {
	return func(a, n uint16) ([]uint16, error) {
		out := make([]uint16, n)
		for i := range out {
			v, ok := regs[a+uint16(i)]
			if !ok {
				return nil, sunspec.Exception(2)
			}
			out[i] = v
		}
		return out, nil
	}
}

func TestWalkBrokenChains(t *testing.T) {
	marker := func(base uint16, rest ...uint16) map[uint16]uint16 {
		m := map[uint16]uint16{base: sunspec.Marker0, base + 1: sunspec.Marker1}
		for i, v := range rest {
			m[base+2+uint16(i)] = v
		}
		return m
	}
	tests := []struct {
		name string
		regs map[uint16]uint16
		want string
	}{
		{"no end marker", marker(0, 999, 0), "read model header at 4"},
		{"common model too short", marker(40000, 1, 10, 0, 0), "model 1 at 40002 is 10 registers long, shorter than its 66"},
		{"past the last register", marker(50000, 999, 15600), "runs past register 65535"},
		{"nothing", map[uint16]uint16{}, "no SunSpec map"},
		{"no answer", nil, "read 40000: connection lost"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			read := memory(tc.regs)
			if tc.regs == nil {
				read = func(uint16, uint16) ([]uint16, error) { return nil, errors.New("connection lost") }
			}
			_, err := sunspec.Walk(read)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
	t.Run("unknown models are skipped", func(t *testing.T) {
		regs := marker(0, 64000, 3, 0, 0, 0, 123, 24)
		for i := uint16(0); i < 24; i++ {
			regs[9+i] = 0
		}
		regs[9+24], regs[9+25] = sunspec.EndID, 0
		m, err := sunspec.Walk(memory(regs))
		if err != nil {
			t.Fatal(err)
		}
		if a, _, err := m.Locate(123, "WMaxLimPct"); err != nil || a != 12 {
			t.Fatalf("WMaxLimPct at %d, %v; want 12", a, err)
		}
		if _, _, err := m.Locate(103, "W"); err == nil || !strings.Contains(err.Error(), "its models: 64000, 123") {
			t.Fatalf("model 103 on a device without it: %v", err)
		}
	})
}

// The tables are consistent: points do not overlap and fit the model's
// length, and every scale factor named is a scale-factor point of the model.
func TestTables(t *testing.T) {
	for _, id := range sunspec.Known() {
		m := sunspec.Lookup(id)
		t.Run(m.Name, func(t *testing.T) {
			end := uint16(2)
			for _, p := range m.Points {
				if p.Offset < end {
					t.Errorf("%s at %d overlaps the point before (ends at %d)", p.Name, p.Offset, end)
				}
				end = p.Offset + p.Size
				if p.SF != "" {
					if sf := m.Point(p.SF); sf == nil || sf.Type != sunspec.ScaleFactor {
						t.Errorf("%s names scale factor %s, which is not a sunssf point of model %d", p.Name, p.SF, id)
					}
				}
			}
			if end > m.Len+2 {
				t.Errorf("points end at %d, past the model's length %d", end, m.Len)
			}
		})
	}
	for _, id := range []uint16{1, 101, 102, 103, 120, 121, 122, 123, 124, 701, 702, 703, 704, 713} {
		if sunspec.Lookup(id) == nil {
			t.Errorf("no table for model %d", id)
		}
	}
}

func TestRaw(t *testing.T) {
	tests := []struct {
		name string
		v    float64
		sf   int16
		typ  sunspec.Type
		up   bool
		want int32
		ok   bool
	}{
		{"whole percent", 60, 0, sunspec.Uint16, false, 60, true},
		{"tenths", 60, -1, sunspec.Uint16, false, 600, true},
		{"kilowatts", 50_000, 3, sunspec.Uint16, false, 50, true},
		{"round down", 50_500, 3, sunspec.Uint16, false, 50, true},
		{"round up", 50_500, 3, sunspec.Uint16, true, 51, true},
		{"decimal noise", 0.3, -1, sunspec.Uint16, true, 3, true},
		{"signed", -100, -1, sunspec.Int16, false, -1000, true},
		{"negative unsigned", -1, 0, sunspec.Uint16, false, 0, false},
		{"too big", 70_000, 0, sunspec.Uint16, false, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := sunspec.Raw(tc.v, tc.sf, tc.typ, tc.up)
			if got != tc.want || ok != tc.ok {
				t.Fatalf("Raw(%v, %d) = %d, %v; want %d, %v", tc.v, tc.sf, got, ok, tc.want, tc.ok)
			}
		})
	}
}
