package policy

import (
	"bytes"
	"encoding/binary"
	"errors"

	"github.com/gridseal/gridseal/policy/decision"
	"github.com/gridseal/gridseal/protocols/modbus"
	"github.com/gridseal/gridseal/protocols/sunspec"
)

// RecordedMaps rebuilds devices' SunSpec maps from the proxy's own reads
// of them as the chain recorded them (audit.Event.IsMapRead: each read with
// the device's reply), given in chain order, so that recorded requests are
// judged for the map the proxy read. A unit's map is the one its latest
// complete walk read; a walk starts with the read of the marker at 40000.
// The zero value is ready to use; it is not safe for concurrent use.
type RecordedMaps struct {
	walks   map[unitKey]*recordedWalk
	hist    map[unitKey][]*sunspecMap // each complete walk's map, in order
	cur     deviceMaps                // the latest of each unit
	changes uint64                    // counts changes of cur
}

type unitKey struct {
	device string
	unit   byte
}

type recordedWalk struct {
	replies map[[2]uint16][]byte // (address, quantity) → the reply PDU; nil: none came
	done    bool
}

// errNotRecorded: the walk read more than the chain holds (yet).
var errNotRecorded = errors.New("not recorded")

// Add takes one recorded map read: n holding registers of device's unit at
// addr, answered resp (the reply PDU, an exception, or nil if none came).
// It reports whether the read completed a walk, so that the unit has a
// (new) map. resp is copied.
func (m *RecordedMaps) Add(device string, unit byte, addr, n uint16, resp []byte) bool {
	k := unitKey{device, unit}
	w := m.walks[k]
	if addr == sunspec.Bases[0] && n == 2 || w == nil {
		if m.walks == nil {
			m.walks, m.hist, m.cur = map[unitKey]*recordedWalk{}, map[unitKey][]*sunspecMap{}, deviceMaps{}
		}
		w = &recordedWalk{replies: map[[2]uint16][]byte{}}
		m.walks[k] = w
	}
	if w.done {
		return false
	}
	w.replies[[2]uint16{addr, n}] = bytes.Clone(resp)
	sm, _ := readMap(w.replay)
	if sm == nil { // not all read yet, or the walk failed as the proxy's did
		return false
	}
	w.done = true
	m.hist[k] = append(m.hist[k], sm)
	if m.cur[device] == nil {
		m.cur[device] = map[byte]*sunspecMap{}
	}
	m.cur[device][unit] = sm
	m.changes++
	return true
}

// replay answers the walk's reads from what was recorded.
func (w *recordedWalk) replay(addr, n uint16) ([]uint16, error) {
	resp, ok := w.replies[[2]uint16{addr, n}]
	switch {
	case !ok:
		return nil, errNotRecorded
	case len(resp) == 2 && resp[0]&0x80 != 0:
		return nil, sunspec.Exception(resp[1])
	case len(resp) != 2+2*int(n) || modbus.Function(resp[0]) != modbus.ReadHoldingRegisters:
		return nil, errors.New("no reply was recorded")
	}
	regs := make([]uint16, n)
	for i := range regs {
		regs[i] = binary.BigEndian.Uint16(resp[2+2*i:])
	}
	return regs, nil
}

// known returns the map of device's unit the latest complete walk read,
// and how many walks before it completed (-1 and nil: none yet).
func (m *RecordedMaps) known(device string, unit byte) (*sunspecMap, int) {
	h := m.hist[unitKey{device, unit}]
	if len(h) == 0 {
		return nil, -1
	}
	return h[len(h)-1], len(h) - 1
}

// mapped counts the units with a SunSpec map.
func (m *RecordedMaps) mapped() int {
	n := 0
	for _, h := range m.hist {
		if h[len(h)-1].m != nil {
			n++
		}
	}
	return n
}

// walk returns the map the i-th complete walk of device's unit read (the
// first for i < 0, as for requests before any walk), or nil.
func (m *RecordedMaps) walk(device string, unit byte, i int) *sunspecMap {
	h := m.hist[unitKey{device, unit}]
	if i < 0 {
		i = 0
	}
	if i >= len(h) {
		return nil
	}
	return h[i]
}

// notRecorded is why a rule is not resolved on a unit no map read of
// which the chain holds.
const notRecorded = "no read of the SunSpec map of unit %d is recorded in the chain before this request"

// Resolve compiles p's SunSpec rules for the maps m holds now.
func (m *RecordedMaps) Resolve(p *Policy) *Resolved {
	return &Resolved{st: compileState(p, m.cur, notRecorded)}
}

// Resolved is a policy with its SunSpec rules compiled for the maps a
// RecordedMaps held (RecordedMaps.Resolve).
type Resolved struct{ st *sunspecState }

// Judge is Policy.Judge with the SunSpec rules resolved.
func (r *Resolved) Judge(in *decision.Input, approved bool) (*Rule, decision.Denial) {
	return r.st.pol.judge(in, approved, r.st)
}

// Explain is Policy.Explain with the SunSpec rules resolved.
func (r *Resolved) Explain(in *decision.Input, approved bool) string {
	return r.st.pol.explain(in, approved, r.st)
}
