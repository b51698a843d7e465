package chain

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/gridseal/gridseal/audit"
)

// Event format versions. Version 2 adds the client's Modbus/TCP Security
// role after the flags byte; version 3 gives flag bit 1 a meaning: the
// write was allowed by a break-glass quorum; version 4 gives flag bit 2 a
// meaning — observed: forwarded only because the device is in observe mode,
// the rules would have denied it — and adds phase 6 (policy). Versions 1
// (no role), 2 (bit 1 must be 0) and 3 (bit 2 must be 0, no phase 6) still
// decode.
const (
	eventV1      = 1
	eventV2      = 2
	eventV3      = 3
	eventVersion = 4
)

// Event flag bits: the proxy closed the client connection; break-glass
// (version 3 on); observed (version 4 on).
const (
	flagClosed     = 1 << 0
	flagBreakGlass = 1 << 1
	flagObserved   = 1 << 2
)

// AppendEvent appends the stored encoding of ev to dst.
func AppendEvent(dst []byte, ev *audit.Event) []byte {
	dst = append(dst, eventVersion)
	dst = binary.BigEndian.AppendUint64(dst, uint64(ev.Time.UnixNano()))
	dst = binary.BigEndian.AppendUint64(dst, ev.Op)
	dst = append(dst, byte(ev.Phase), byte(ev.Verdict))
	var client string
	if ev.Client.IsValid() {
		client = ev.Client.String()
	}
	dst = lp16(dst, client)
	dst = lp16(dst, ev.Listener)
	dst = lp16(dst, ev.Device)
	dst = append(dst, ev.Unit, ev.Function)
	dst = append(dst, byte(min(len(ev.Class), 255)))
	dst = append(dst, ev.Class[:min(len(ev.Class), 255)]...)
	dst = binary.BigEndian.AppendUint16(dst, ev.Address)
	dst = binary.BigEndian.AppendUint16(dst, ev.Quantity)
	dst = lp16(dst, string(ev.PDU))
	dst = lp16(dst, ev.Rule)
	dst = lp16(dst, ev.Reason)
	dst = lp16(dst, ev.Policy)
	dst = lp16(dst, ev.Approval)
	dst = append(dst, ev.Exception)
	dst = lp16(dst, string(ev.Response))
	dst = binary.BigEndian.AppendUint64(dst, uint64(ev.Upstream))
	var flags byte
	if ev.Closed {
		flags |= flagClosed
	}
	if ev.BreakGlass {
		flags |= flagBreakGlass
	}
	if ev.Observed {
		flags |= flagObserved
	}
	dst = append(dst, flags)
	dst = append(dst, byte(min(len(ev.Role), 255)))
	return append(dst, ev.Role[:min(len(ev.Role), 255)]...)
}

// lp16 appends s with a 16-bit length, cut at 65535 bytes.
func lp16(dst []byte, s string) []byte {
	if len(s) > 0xFFFF {
		s = s[:0xFFFF]
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(s)))
	return append(dst, s...)
}

// ErrFormat marks bytes that are not a valid event or block.
var ErrFormat = errors.New("malformed chain data")

// reader decodes fixed and length-prefixed fields, remembering the first error.
type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.b) {
		r.err = fmt.Errorf("%w: truncated", ErrFormat)
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) u8() byte {
	if b := r.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if b := r.take(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if b := r.take(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if b := r.take(8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

func (r *reader) lp8() []byte  { return r.take(int(r.u8())) }
func (r *reader) lp16() []byte { return r.take(int(r.u16())) }
func (r *reader) lp32() []byte {
	n := r.u32()
	if n > uint32(len(r.b)) {
		r.err = fmt.Errorf("%w: length %d past the end", ErrFormat, n)
		return nil
	}
	return r.take(int(n))
}

func (r *reader) end() error {
	if r.err == nil && len(r.b) != 0 {
		r.err = fmt.Errorf("%w: %d trailing bytes", ErrFormat, len(r.b))
	}
	return r.err
}

// DecodeEvent parses one stored event. Byte slices in the result are copies.
func DecodeEvent(b []byte) (audit.Event, error) {
	r := reader{b: b}
	var ev audit.Event
	version := r.u8()
	if r.err == nil && (version < eventV1 || version > eventVersion) {
		return ev, fmt.Errorf("%w: event version %d", ErrFormat, version)
	}
	ev.Time = time.Unix(0, int64(r.u64())).UTC()
	ev.Op = r.u64()
	ev.Phase = audit.Phase(r.u8())
	ev.Verdict = audit.Verdict(r.u8())
	if c := string(r.lp16()); c != "" {
		ap, err := netip.ParseAddrPort(c)
		if err != nil && r.err == nil {
			r.err = fmt.Errorf("%w: client %q", ErrFormat, c)
		}
		ev.Client = ap
	}
	ev.Listener = string(r.lp16())
	ev.Device = string(r.lp16())
	ev.Unit, ev.Function = r.u8(), r.u8()
	ev.Class = string(r.lp8())
	ev.Address, ev.Quantity = r.u16(), r.u16()
	ev.PDU = clone(r.lp16())
	ev.Rule = string(r.lp16())
	ev.Reason = string(r.lp16())
	ev.Policy = string(r.lp16())
	ev.Approval = string(r.lp16())
	ev.Exception = r.u8()
	ev.Response = clone(r.lp16())
	ev.Upstream = time.Duration(r.u64())
	flags := r.u8()
	ev.Closed = flags&flagClosed != 0
	known := byte(flagClosed)
	if version >= eventV3 {
		ev.BreakGlass = flags&flagBreakGlass != 0
		known |= flagBreakGlass
	}
	lastPhase := audit.PhaseGap
	if version >= eventVersion {
		ev.Observed = flags&flagObserved != 0
		known |= flagObserved
		lastPhase = audit.PhasePolicy
	}
	if version >= eventV2 {
		ev.Role = string(r.lp8())
	}
	if err := r.end(); err != nil {
		return ev, err
	}
	if flags&^known != 0 {
		return ev, fmt.Errorf("%w: unknown event flags %#x", ErrFormat, flags)
	}
	if ev.Phase < audit.PhaseRequest || ev.Phase > lastPhase ||
		ev.Verdict < audit.Allow || ev.Verdict > audit.Malformed {
		return ev, fmt.Errorf("%w: phase %d verdict %d", ErrFormat, ev.Phase, ev.Verdict)
	}
	return ev, nil
}

func clone(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}
