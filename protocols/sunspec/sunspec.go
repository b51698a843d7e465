// Package sunspec knows the SunSpec information models gridseal's rules may
// name points of, and finds them on a device: it walks the device's model
// chain ("SunS" at register 0, 40000 or 50000, then model id and length
// pairs up to the end marker 0xFFFF) and turns a model's point into the
// holding-register address it has on that device, and a value in
// engineering units into register values through the point's scale factor.
//
// The package reads nothing by itself: the caller hands Walk a function
// that reads holding registers (the proxy, over its own upstream
// connection). It imports only the standard library.
package sunspec

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
)

// Type is the SunSpec type of a point.
type Type uint8

// Point types (SunSpec Information Model Specification).
const (
	Uint16 Type = iota + 1
	Int16
	Uint32
	Int32
	Uint64
	Acc32
	Acc64
	Enum16
	Bitfield16
	Bitfield32
	ScaleFactor // sunssf: int16 power-of-ten exponent
	String
	Float32
)

// Signed reports whether a one-register value of type t reads as int16.
func (t Type) Signed() bool { return t == Int16 || t == ScaleFactor }

// Point is one point of a model.
type Point struct {
	Name   string
	Offset uint16 // registers from the model's ID register (ID is 0, L is 1)
	Size   uint16 // registers
	Type   Type
	SF     string // name of the scale-factor point in the same model; "" if none
	Units  string
	RW     bool // writable
}

// Model is one SunSpec model's fixed part.
type Model struct {
	ID     uint16
	Name   string
	Len    uint16 // registers after ID and L
	Points []Point
}

// Point returns the named point of m, or nil.
func (m *Model) Point(name string) *Point {
	for i := range m.Points {
		if m.Points[i].Name == name {
			return &m.Points[i]
		}
	}
	return nil
}

// PointAt returns the point of m covering the register at offset off from
// the model's ID register, or nil.
func (m *Model) PointAt(off uint16) *Point {
	for i := range m.Points {
		p := &m.Points[i]
		if off >= p.Offset && off < p.Offset+p.Size {
			return p
		}
	}
	return nil
}

// PointNames lists m's point names, for messages.
func (m *Model) PointNames() []string {
	out := make([]string, 0, len(m.Points))
	for _, p := range m.Points {
		out = append(out, p.Name)
	}
	return out
}

// Lookup returns the model with id, or nil if gridseal has no table for it.
func Lookup(id uint16) *Model { return models[id] }

// Known lists the ids of the models gridseal has tables for, ascending.
func Known() []uint16 {
	out := make([]uint16, 0, len(models))
	for id := range models {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// The "SunS" marker's two registers, and the id that ends the model chain.
const (
	Marker0 uint16 = 0x5375
	Marker1 uint16 = 0x6e53
	EndID   uint16 = 0xFFFF
)

// Bases are where a SunSpec map may begin, in the order they are tried.
var Bases = []uint16{40000, 0, 50000}

// maxModels bounds a walk: no real device has this many models.
const maxModels = 256

// ReadFunc reads n holding registers from addr. When the device answers
// with a Modbus exception, the error has a method Exception() byte (see
// Exception); any other error is a failure to ask, and ends a walk.
type ReadFunc func(addr, n uint16) ([]uint16, error)

// Exception is the error a ReadFunc returns for the device's exception
// answer.
type Exception byte

func (e Exception) Error() string { return fmt.Sprintf("modbus exception %d", byte(e)) }

// Exception returns the exception code.
func (e Exception) Exception() byte { return byte(e) }

func isException(err error) bool {
	var ex interface{ Exception() byte }
	return errors.As(err, &ex)
}

// ErrNoMap is the error when a device answers no "SunS" marker at any base.
var ErrNoMap = errors.New("no SunSpec map")

// Block is one model instance on a device.
type Block struct {
	ID   uint16
	Addr uint16 // address of its ID register
	Len  uint16 // its L register: registers after ID and L
}

// Map is a device's SunSpec model chain.
type Map struct {
	Base   uint16 // address of the "SunS" marker
	Blocks []Block
}

// Walk finds the "SunS" marker at one of Bases and reads the chain of model
// ids and lengths up to the end marker. A base the device cannot read (an
// exception) is not a map; any other failure is returned as is.
func Walk(read ReadFunc) (*Map, error) {
	var tried []string
	for _, base := range Bases {
		regs, err := read(base, 2)
		if err != nil && !isException(err) {
			return nil, fmt.Errorf("read %d: %w", base, err)
		}
		if err != nil {
			tried = append(tried, fmt.Sprintf("%d: %v", base, err))
			continue
		}
		if len(regs) != 2 || regs[0] != Marker0 || regs[1] != Marker1 {
			tried = append(tried, fmt.Sprintf("%d: no marker", base))
			continue
		}
		return walkFrom(read, base)
	}
	return nil, fmt.Errorf("%w: no \"SunS\" marker at %s", ErrNoMap, strings.Join(tried, "; "))
}

func walkFrom(read ReadFunc, base uint16) (*Map, error) {
	m := &Map{Base: base}
	addr := uint32(base) + 2
	for i := 0; i < maxModels; i++ {
		if addr+2 > math.MaxUint16+1 {
			return nil, fmt.Errorf("sunspec map at %d runs past register 65535", base)
		}
		regs, err := read(uint16(addr), 2)
		if err != nil {
			return nil, fmt.Errorf("sunspec map at %d: read model header at %d: %w", base, addr, err)
		}
		if len(regs) != 2 {
			return nil, fmt.Errorf("sunspec map at %d: %d registers read at %d, want 2", base, len(regs), addr)
		}
		id, n := regs[0], regs[1]
		if id == EndID {
			return m, nil
		}
		if k := Lookup(id); k != nil && n < k.Len {
			return nil, fmt.Errorf("sunspec map at %d: model %d at %d is %d registers long, shorter than its %d", base, id, addr, n, k.Len)
		}
		if addr+2+uint32(n) > math.MaxUint16+1 {
			return nil, fmt.Errorf("sunspec map at %d: model %d at %d runs past register 65535", base, id, addr)
		}
		m.Blocks = append(m.Blocks, Block{ID: id, Addr: uint16(addr), Len: n})
		addr += 2 + uint32(n)
	}
	return nil, fmt.Errorf("sunspec map at %d: no end marker after %d models", base, maxModels)
}

// Find returns the first instance of model id on the device.
func (m *Map) Find(id uint16) (Block, bool) {
	for _, b := range m.Blocks {
		if b.ID == id {
			return b, true
		}
	}
	return Block{}, false
}

// IDs lists the device's models in chain order, for messages.
func (m *Map) IDs() string {
	var b strings.Builder
	for i, bl := range m.Blocks {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%d", bl.ID)
	}
	return b.String()
}

// Locate returns the absolute address of point name of model id on the
// device, with the point's table entry.
func (m *Map) Locate(id uint16, name string) (uint16, *Point, error) {
	k := Lookup(id)
	if k == nil {
		return 0, nil, fmt.Errorf("sunspec model %d is not one gridseal knows", id)
	}
	p := k.Point(name)
	if p == nil {
		return 0, nil, fmt.Errorf("sunspec model %d has no point %q", id, name)
	}
	b, ok := m.Find(id)
	if !ok {
		return 0, nil, fmt.Errorf("device has no sunspec model %d (its models: %s)", id, m.IDs())
	}
	return b.Addr + p.Offset, p, nil
}

// Raw converts a value in engineering units to the register value with
// scale factor sf (value = raw × 10^sf), rounding toward zero only when up
// is false and away from it otherwise; ok is false if it does not fit t.
func Raw(v float64, sf int16, t Type, up bool) (int32, bool) {
	x := v / math.Pow(10, float64(sf))
	// Absorb the decimal noise of the division before rounding.
	x = math.Round(x*1e6) / 1e6
	if up {
		x = math.Ceil(x)
	} else {
		x = math.Floor(x)
	}
	lo, hi := 0.0, 65535.0
	if t.Signed() {
		lo, hi = -32768, 32767
	}
	if x < lo || x > hi || math.IsNaN(x) {
		return 0, false
	}
	return int32(x), true
}

// Eng returns register value raw in engineering units with scale factor sf.
func Eng(raw uint16, sf int16, t Type) float64 {
	x := float64(raw)
	if t.Signed() {
		x = float64(int16(raw))
	}
	return x * math.Pow(10, float64(sf))
}

// UnitsMatch reports whether a unit written in a policy stands for the
// point's units: equal to them, or to their first word ("%" for "% WMax").
func (p *Point) UnitsMatch(u string) bool {
	pu := strings.TrimSpace(p.Units)
	if strings.EqualFold(u, pu) {
		return true
	}
	first, _, _ := strings.Cut(pu, " ")
	return first != "" && strings.EqualFold(u, first)
}
