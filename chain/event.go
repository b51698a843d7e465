package chain

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
	"unsafe"

	"github.com/gridseal/gridseal/audit"
)

// Event format versions. Version 2 adds the client's Modbus/TCP Security
// role after the flags byte; version 3 gives flag bit 1 a meaning: the
// write was allowed by a break-glass quorum; version 4 gives flag bit 2 a
// meaning — observed: forwarded only because the device is in observe mode,
// the rules would have denied it — and adds phase 6 (policy); version 5
// gives flag bit 3 a meaning — candidate: the shadow candidate policy
// decides the request otherwise, and the reason ends with what it says.
// Versions 1 (no role), 2 (bit 1 must be 0), 3 (bit 2 must be 0, no
// phase 6) and 4 (bit 3 must be 0) still decode.
const (
	eventV1      = 1
	eventV2      = 2
	eventV3      = 3
	eventV4      = 4
	eventVersion = 5
)

// Event flag bits: the proxy closed the client connection; break-glass
// (version 3 on); observed (version 4 on); candidate differs (version 5 on).
const (
	flagClosed     = 1 << 0
	flagBreakGlass = 1 << 1
	flagObserved   = 1 << 2
	flagCandidate  = 1 << 3
)

// maxClientLen is room for the text of a client's address and port:
// "[" + IPv6 + "]:65535" and a short zone.
const maxClientLen = 64

// EventSize is the most that ev's stored encoding takes, unless its client
// address has a zone longer than maxClientLen leaves room for: a caller
// allocates once.
func EventSize(ev *audit.Event) int {
	return 1 + 8 + 8 + 2 + 2 + maxClientLen + 2 + len(ev.Listener) + 2 + len(ev.Device) + 2 +
		1 + len(ev.Class) + 4 + 2 + len(ev.PDU) + 2 + len(ev.Rule) + 2 + len(ev.Reason) +
		2 + len(ev.Policy) + 2 + len(ev.Approval) + 1 + 2 + len(ev.Response) + 8 + 1 + 1 + len(ev.Role)
}

// AppendEvent appends the stored encoding of ev to dst.
func AppendEvent(dst []byte, ev *audit.Event) []byte {
	dst = append(dst, eventVersion)
	dst = binary.BigEndian.AppendUint64(dst, uint64(ev.Time.UnixNano()))
	dst = binary.BigEndian.AppendUint64(dst, ev.Op)
	dst = append(dst, byte(ev.Phase), byte(ev.Verdict))
	// The client's address as text, "" for none, 16-bit length first:
	// written in place rather than through String, which allocates.
	at := len(dst)
	dst = append(dst, 0, 0)
	if ev.Client.IsValid() {
		dst = ev.Client.AppendTo(dst)
	}
	binary.BigEndian.PutUint16(dst[at:], uint16(len(dst)-at-2))
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
	if ev.CandidateDiffers {
		flags |= flagCandidate
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
	b := r.b
	if r.err != nil || n > len(b) {
		if r.err == nil {
			r.err = errTruncated
		}
		return nil
	}
	r.b = b[n:]
	return b[:n]
}

// errTruncated is take's error, made once so that take, some thirty
// times an event, is inlined.
var errTruncated = fmt.Errorf("%w: truncated", ErrFormat)

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
	var v EventView
	err := ViewEvent(b, &v)
	ev := audit.Event{
		Time: time.Unix(0, v.Time).UTC(), Op: v.Op, Phase: v.Phase, Verdict: v.Verdict,
		Listener: string(v.Listener), Device: string(v.Device), Unit: v.Unit, Function: v.Function,
		Class: string(v.Class), Address: v.Address, Quantity: v.Quantity, PDU: clone(v.PDU),
		Rule: string(v.Rule), Reason: string(v.Reason), Policy: string(v.Policy), Approval: string(v.Approval),
		Exception: v.Exception, Response: clone(v.Response), Upstream: time.Duration(v.Upstream),
		Closed: v.Flags&flagClosed != 0, BreakGlass: v.Flags&flagBreakGlass != 0, Observed: v.Flags&flagObserved != 0,
		CandidateDiffers: v.Flags&flagCandidate != 0,
		Role:             string(v.Role), Client: v.Client,
	}
	return ev, err
}

// EventView is a stored event decoded in place, for readers that go
// through many events and keep few (policy what-if): its byte slices alias
// the encoding, which the caller must not change while it uses them.
type EventView struct {
	Version           byte
	Time              int64 // Unix nanoseconds
	Op                uint64
	Phase             audit.Phase
	Verdict           audit.Verdict
	Client            netip.AddrPort
	Listener, Device  []byte
	Unit, Function    byte
	Class             []byte
	Address, Quantity uint16
	PDU, Rule, Reason []byte
	Policy, Approval  []byte
	Exception         byte
	Response          []byte
	Upstream          uint64 // nanoseconds
	Flags             byte
	Role              []byte
}

// Closed reports the flag: the proxy closed the client connection.
func (v *EventView) Closed() bool { return v.Flags&flagClosed != 0 }

// BreakGlass reports the flag: allowed by a break-glass quorum.
func (v *EventView) BreakGlass() bool { return v.Flags&flagBreakGlass != 0 }

// Observed reports the flag: forwarded only because of observe mode.
func (v *EventView) Observed() bool { return v.Flags&flagObserved != 0 }

// CandidateDiffers reports the flag: the shadow candidate decides otherwise.
func (v *EventView) CandidateDiffers() bool { return v.Flags&flagCandidate != 0 }

// IsMapRead reports whether the event records one of the proxy's own
// reads of a device's SunSpec map (audit.Event.IsMapRead).
func (v *EventView) IsMapRead() bool {
	return v.Phase == audit.PhaseComplete && !v.Client.IsValid() && string(v.Reason) == audit.MapReadReason
}

// ViewEvent decodes the stored event b into v, checking everything
// DecodeEvent checks, without allocating.
func ViewEvent(b []byte, v *EventView) error {
	r := reader{b: b}
	*v = EventView{}
	version := r.u8()
	if r.err == nil && (version < eventV1 || version > eventVersion) {
		return fmt.Errorf("%w: event version %d", ErrFormat, version)
	}
	v.Version = version
	v.Time = int64(r.u64())
	v.Op = r.u64()
	v.Phase = audit.Phase(r.u8())
	v.Verdict = audit.Verdict(r.u8())
	if c := r.lp16(); len(c) > 0 {
		ap, err := parseAddrPort(c)
		if err != nil && r.err == nil {
			r.err = fmt.Errorf("%w: client %q", ErrFormat, c)
		}
		v.Client = ap
	}
	v.Listener = r.lp16()
	v.Device = r.lp16()
	v.Unit, v.Function = r.u8(), r.u8()
	v.Class = r.lp8()
	v.Address, v.Quantity = r.u16(), r.u16()
	v.PDU = r.lp16()
	v.Rule = r.lp16()
	v.Reason = r.lp16()
	v.Policy = r.lp16()
	v.Approval = r.lp16()
	v.Exception = r.u8()
	v.Response = r.lp16()
	v.Upstream = r.u64()
	v.Flags = r.u8()
	known := byte(flagClosed)
	if version >= eventV3 {
		known |= flagBreakGlass
	}
	lastPhase := audit.PhaseGap
	if version >= eventV4 {
		known |= flagObserved
		lastPhase = audit.PhasePolicy
	}
	if version >= eventVersion {
		known |= flagCandidate
	}
	if version >= eventV2 {
		v.Role = r.lp8()
	}
	if err := r.end(); err != nil {
		return err
	}
	if v.Flags&^known != 0 {
		return fmt.Errorf("%w: unknown event flags %#x", ErrFormat, v.Flags)
	}
	if v.Phase < audit.PhaseRequest || v.Phase > lastPhase ||
		v.Verdict < audit.Allow || v.Verdict > audit.Malformed {
		return fmt.Errorf("%w: phase %d verdict %d", ErrFormat, v.Phase, v.Verdict)
	}
	return nil
}

// parseAddrPort parses a client address without copying it to a string:
// the string aliases b only during the call (an error may hold it, so the
// caller must drop the error, as ViewEvent does).
func parseAddrPort(b []byte) (netip.AddrPort, error) {
	return netip.ParseAddrPort(unsafe.String(unsafe.SliceData(b), len(b)))
}

func clone(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}
