// Package audit defines the record of one Modbus operation as the proxy saw
// it — who asked what of which device, what the policy decided and why, and
// what the device answered — and the simplest recorder, a structured log
// line per operation (repeated malformed ones summarised by a LogThrottle).
// The chain stores the same events, tamper-evidently.
//
// The event is its own package, not part of the proxy or the chain, because
// three parties share it: the proxy writes events, the chain stores them and
// the console and exports read them. None of them should import another's
// sockets, keys or NATS client to agree on what an operation is.
package audit

import (
	"context"
	"encoding/hex"
	"net/netip"
	"time"

	"go.uber.org/zap"
)

// Verdict is the recorded outcome of the policy check. The zero value is
// invalid so that a forgotten field never reads as "allowed".
type Verdict uint8

// Verdicts.
const (
	Allow     Verdict = iota + 1 // forwarded to the device
	Deny                         // refused by policy, rate limit, or a recording failure
	Malformed                    // not a valid Modbus request; answered per spec or closed
)

// String returns allow, deny or malformed.
func (v Verdict) String() string {
	switch v {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	case Malformed:
		return "malformed"
	}
	return "invalid"
}

// ParseVerdict is the inverse of String: the verdict named s, if any.
func ParseVerdict(s string) (Verdict, bool) {
	for v := Allow; v <= Malformed; v++ {
		if v.String() == s {
			return v, true
		}
	}
	return 0, false
}

// Phase says which moment of an operation an event records.
type Phase uint8

// Phases. A write that is allowed is recorded twice: durably before it is
// forwarded (Request), and with the device's answer (Complete). Everything
// else is recorded once, as Complete.
const (
	PhaseRequest Phase = iota + 1
	PhaseComplete
	// PhaseApproval records a step of an m-of-n approval (proposed, signed,
	// used) as the proxy saw it; Approval names it and Reason says which.
	PhaseApproval
	// PhaseDroppedReply records a device reply the proxy passed to no
	// client: one that matches no request (Op is new), or one that came
	// after its request timed out and was answered 0x0B (Op is that
	// request's, so a write the client was told failed is seen to have
	// reached the device). Response holds the reply's PDU. For a reply to
	// no request, Client is the device's address (the frame's source) and
	// Listener the proxy's end of the upstream connection.
	PhaseDroppedReply
	// PhaseGap records operations the recorder could not keep: its spool
	// was full (the chain unreachable or its disk full) or a shutdown left
	// events it could not save. Reason says how many and when; the
	// operations themselves were refused or are lost, never silently.
	PhaseGap
	// PhasePolicy records a change of how the policy in force treats a
	// device: it enters or leaves observe mode (Class "policy", Device
	// names it, Policy is the digest of the policy that changed it, Reason
	// says which).
	PhasePolicy
)

// String returns request, complete, approval, dropped-reply, gap or policy.
func (p Phase) String() string {
	switch p {
	case PhaseRequest:
		return "request"
	case PhaseApproval:
		return "approval"
	case PhaseDroppedReply:
		return "dropped-reply"
	case PhaseGap:
		return "gap"
	case PhasePolicy:
		return "policy"
	}
	return "complete"
}

// Event is one recorded operation. Its byte slices alias the caller's
// buffers: a recorder must copy what it keeps before Record returns.
type Event struct {
	Time     time.Time
	Op       uint64 // operation id, unique per writer; links a request to its completion
	Phase    Phase
	Client   netip.AddrPort
	Listener string // address the client connected to
	Device   string
	Unit     byte
	Function byte
	Class    string // read, write or diagnostic; empty when malformed
	Address  uint16
	Quantity uint16
	PDU      []byte // the exact request PDU; empty if the frame could not be read
	Verdict  Verdict
	Rule     string
	Reason   string
	Policy   string // hex digest of the policy that decided
	Approval string // approval id that allowed a write; empty if none
	// Exception is the exception code answered to the client (by the proxy
	// or relayed from the device); 0 for a normal response.
	Exception byte
	Response  []byte        // the device's response PDU, if any
	Upstream  time.Duration // time the device took to answer, from the request's sending
	Closed    bool          // the proxy closed the client connection
	// Role is the Modbus/TCP Security role in the client's certificate
	// (OID 1.3.6.1.4.1.50316.802.1); empty on plain TCP.
	Role string
	// BreakGlass marks a write allowed by a rule's break-glass quorum:
	// fewer approvers than the rule normally needs. SOC tools alert on it.
	BreakGlass bool
	// Observed marks a request forwarded only because its device is in
	// observe mode: the rules would have denied it (Verdict is Allow; Rule
	// and Reason say what would have denied it). SOC tools alert on it.
	Observed bool
	// CandidateDiffers marks a request the shadow candidate policy decides
	// otherwise than the policy in force did (Verdict is the policy in
	// force's); Reason ends with what the candidate says.
	CandidateDiffers bool
	// Done is when the operation completed: its reply arrived, or the
	// proxy answered. Not recorded (the chain keeps Time and Upstream):
	// the metrics' clock, so a request costs the proxy fewer clock reads.
	Done time.Time
}

// MapReadReason is the reason of the proxy's own reads of a device's
// SunSpec map: complete reads with no client, the device's answer in
// Response. From them a device's map can be rebuilt from the chain alone
// (gridseal policy learn and what-if do).
const MapReadReason = "the proxy reads the device's SunSpec map"

// IsMapRead reports whether ev records one of the proxy's own reads of a
// device's SunSpec map.
func (ev *Event) IsMapRead() bool {
	return ev.Phase == PhaseComplete && !ev.Client.IsValid() && ev.Reason == MapReadReason
}

// LogRecorder records every event as one structured log line, except that
// malformed operations — which any client can send at will — are logged
// through a LogThrottle by reason: the first at once, repeats as one count
// per interval. It keeps nothing, so Record is durable only as far as the
// log sink is.
type LogRecorder struct {
	log       *zap.Logger
	malformed *LogThrottle
}

// NewLogRecorder returns a recorder writing to log that summarises repeated
// malformed operations every interval (DefaultLogInterval if not positive).
// Close it to log the counts still pending.
func NewLogRecorder(log *zap.Logger, every time.Duration) *LogRecorder {
	return &LogRecorder{log: log, malformed: NewLogThrottle(log, every)}
}

// Record writes ev as one log line, or counts it (see LogRecorder). It is
// safe for concurrent use.
func (r *LogRecorder) Record(_ context.Context, ev *Event, _ bool) error {
	level := zap.InfoLevel
	if ev.Verdict != Allow {
		level = zap.WarnLevel
	}
	reason := zap.String("reason", ev.Reason)
	if ev.Verdict == Malformed {
		r.malformed.Warn("modbus operation", reason, eventFields(ev)...)
		return nil
	}
	ce := r.log.Check(level, "modbus operation")
	if ce == nil {
		return nil
	}
	ce.Write(append(eventFields(ev), reason)...)
	return nil
}

// Close logs the counts of malformed operations not yet logged.
func (r *LogRecorder) Close() { r.malformed.Close() }

// eventFields are ev's log fields but its reason, with room for it.
func eventFields(ev *Event) []zap.Field {
	return append(make([]zap.Field, 0, 19),
		zap.Uint64("op", ev.Op),
		zap.Stringer("phase", ev.Phase),
		zap.String("client", ev.Client.String()),
		zap.String("device", ev.Device),
		zap.Uint8("unit", ev.Unit),
		zap.Uint8("fc", ev.Function),
		zap.String("class", ev.Class),
		zap.Uint16("addr", ev.Address),
		zap.Uint16("qty", ev.Quantity),
		zap.String("pdu", hex.EncodeToString(ev.PDU)),
		zap.Stringer("verdict", ev.Verdict),
		zap.String("rule", ev.Rule),
		zap.String("policy", ev.Policy),
		zap.Uint8("exception", ev.Exception),
		zap.Duration("upstream", ev.Upstream),
		zap.Bool("closed", ev.Closed),
		zap.Bool("break_glass", ev.BreakGlass),
		zap.Bool("observed", ev.Observed),
		zap.Bool("candidate_differs", ev.CandidateDiffers),
		zap.String("role", ev.Role),
	)
}

// Recorder records events; see the proxy's contract for durable.
type Recorder interface {
	Record(ctx context.Context, ev *Event, durable bool) error
}

// Tee records every event with each recorder in turn and returns the first
// error. Put the recorder whose durability matters first.
type Tee []Recorder

// Failed returns the first recorder's fatal error, if it reports one.
func (t Tee) Failed() error {
	for _, r := range t {
		if f, ok := r.(interface{ Failed() error }); ok {
			if err := f.Failed(); err != nil {
				return err
			}
		}
	}
	return nil
}

// Admit returns the first recorder's reason why an operation must not go
// ahead (its Admit, or else its Failed, where it has them), or nil.
func (t Tee) Admit() error {
	for _, r := range t {
		var err error
		switch a := r.(type) {
		case interface{ Admit() error }:
			err = a.Admit()
		case interface{ Failed() error }:
			err = a.Failed()
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Record implements Recorder.
func (t Tee) Record(ctx context.Context, ev *Event, durable bool) error {
	var first error
	for _, r := range t {
		if err := r.Record(ctx, ev, durable); err != nil && first == nil {
			first = err
		}
	}
	return first
}
