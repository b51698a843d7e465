// Package eve renders recorded operations as Suricata EVE JSON, so SIEM
// pipelines built for Suricata's modbus and alert events ingest gridseal's
// record as they are.
package eve

import (
	"net/netip"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// Event is one line of EVE JSON: a "modbus" event for each completed
// operation, or an "alert" for each one gridseal refused. Its "gridseal"
// object carries what Suricata cannot know: the verdict, rule, approval,
// policy and the event's place in the chain.
type Event struct {
	Timestamp string   `json:"timestamp"`
	EventType string   `json:"event_type"`
	SrcIP     string   `json:"src_ip,omitempty"`
	SrcPort   uint16   `json:"src_port,omitempty"`
	DestIP    string   `json:"dest_ip,omitempty"`
	DestPort  uint16   `json:"dest_port,omitempty"`
	Proto     string   `json:"proto"`
	AppProto  string   `json:"app_proto"`
	Modbus    *Modbus  `json:"modbus,omitempty"`
	Alert     *Alert   `json:"alert,omitempty"`
	Gridseal  Gridseal `json:"gridseal"`
}

// Modbus is Suricata's modbus object.
type Modbus struct {
	ID       uint64 `json:"id"`
	Request  PDU    `json:"request"`
	Response *PDU   `json:"response,omitempty"`
}

// PDU is one side of a Modbus transaction.
type PDU struct {
	UnitID       byte       `json:"unit_id"`
	FunctionRaw  byte       `json:"function_raw"`
	FunctionCode string     `json:"function_code"`
	AccessType   string     `json:"access_type,omitempty"`
	Category     string     `json:"category"`
	ErrorFlags   string     `json:"error_flags"`
	Read         *Range     `json:"read,omitempty"`
	Write        *Range     `json:"write,omitempty"`
	Exception    *Exception `json:"exception,omitempty"`
}

// Range is an address range and, for writes, the values.
type Range struct {
	Address  uint16   `json:"address"`
	Quantity uint16   `json:"quantity"`
	Data     []uint16 `json:"data,omitempty"`
}

// Exception is an exception response.
type Exception struct {
	Raw  byte   `json:"raw"`
	Code string `json:"code"`
}

// Alert is Suricata's alert object, for refused requests.
type Alert struct {
	Action      string `json:"action"`
	GID         int    `json:"gid"`
	SignatureID int    `json:"signature_id"`
	Rev         int    `json:"rev"`
	Signature   string `json:"signature"`
	Category    string `json:"category"`
	Severity    int    `json:"severity"`
}

// Gridseal is gridseal's own context for the event.
type Gridseal struct {
	Verdict  string `json:"verdict"`
	Device   string `json:"device,omitempty"`
	Role     string `json:"role,omitempty"`
	Rule     string `json:"rule,omitempty"`
	Reason   string `json:"reason,omitempty"`
	Policy   string `json:"policy,omitempty"`
	Approval string `json:"approval,omitempty"`
	// BreakGlass: allowed by a rule's break-glass quorum.
	BreakGlass bool   `json:"break_glass,omitempty"`
	Writer     string `json:"writer"`
	Seq        uint64 `json:"seq"`
	Height     uint64 `json:"height"`
	Block      string `json:"block"`
	Index      int    `json:"index"`
}

// Suricata's names for the public function codes.
var functionNames = map[modbus.Function]string{
	modbus.ReadCoils: "RdCoils", modbus.ReadDiscreteInputs: "RdDiscreteInputs", modbus.ReadHoldingRegisters: "RdHoldRegs",
	modbus.ReadInputRegisters: "RdInputRegs", modbus.WriteSingleCoil: "WrSingleCoil", modbus.WriteSingleRegister: "WrSingleReg",
	modbus.ReadExceptionStatus: "RdExcStatus", modbus.Diagnostics: "Diagnostic", modbus.GetCommEventCounter: "GetCommEventCounter",
	modbus.GetCommEventLog: "GetCommEventLog", modbus.WriteMultipleCoils: "WrMultCoils", modbus.WriteMultipleRegisters: "WrMultRegs",
	modbus.ReportServerID: "ReportServerID", modbus.ReadFileRecord: "RdFileRec", modbus.WriteFileRecord: "WrFileRec",
	modbus.MaskWriteRegister: "MaskWrReg", modbus.ReadWriteMultipleRegisters: "RdWrMultRegs", modbus.ReadFIFOQueue: "RdFIFOQueue",
	modbus.EncapsulatedInterface: "EncapsIntTrans",
}

var exceptionNames = map[byte]string{
	1: "IllegalFunction", 2: "IllegalDataAddr", 3: "IllegalDataValue", 4: "ServerDeviceFail", 5: "Ack",
	6: "ServerDeviceBusy", 8: "MemParityErr", 10: "GatewayPathUnavailable", 11: "GatewayTargetFailedToRespond",
}

func accessType(req *modbus.Request) string {
	switch req.Space {
	case modbus.SpaceCoils:
		if req.Class() == modbus.ClassWrite {
			return "WRITE | COILS"
		}
		return "READ | COILS"
	case modbus.SpaceDiscreteInputs:
		return "READ | DISCRETES"
	case modbus.SpaceHoldingRegisters:
		if req.Function == modbus.ReadWriteMultipleRegisters {
			return "READ | WRITE | HOLDING"
		}
		if req.Class() == modbus.ClassWrite {
			return "WRITE | HOLDING"
		}
		return "READ | HOLDING"
	case modbus.SpaceInputRegisters:
		return "READ | INPUT"
	}
	return ""
}

// For renders one recorded event as EVE lines: none for steps that are
// not Modbus transactions (a write's pre-forward record, approval steps),
// one "modbus" event, and an "alert" after it if gridseal refused it. A
// device reply gridseal passed to no client is one alert.
func For(r *chain.Record, ev *audit.Event) []Event {
	dropped := ev.Phase == audit.PhaseDroppedReply
	if !dropped && (ev.Phase != audit.PhaseComplete || len(ev.PDU) == 0) {
		return nil
	}
	base := Event{
		Timestamp: ev.Time.UTC().Format("2006-01-02T15:04:05.000000+0000"),
		EventType: "modbus", Proto: "TCP", AppProto: "modbus",
		Gridseal: Gridseal{Verdict: ev.Verdict.String(), Device: ev.Device, Role: ev.Role, Rule: ev.Rule, Reason: ev.Reason,
			Policy: ev.Policy, Approval: ev.Approval, BreakGlass: ev.BreakGlass, Writer: r.Writer, Seq: r.Seq, Height: r.Height, Block: r.Block, Index: r.Index},
	}
	if ev.Client.IsValid() {
		base.SrcIP, base.SrcPort = ev.Client.Addr().Unmap().String(), ev.Client.Port()
	}
	if ap, err := netip.ParseAddrPort(ev.Listener); err == nil {
		base.DestIP, base.DestPort = ap.Addr().Unmap().String(), ap.Port()
	}
	fn := modbus.Function(ev.Function)
	if len(ev.PDU) > 0 {
		fn = modbus.Function(ev.PDU[0])
	}
	reqSide := PDU{UnitID: ev.Unit, FunctionRaw: byte(fn), FunctionCode: functionNames[fn], Category: "PUBLIC_ASSIGNED", ErrorFlags: "NONE"}
	if reqSide.FunctionCode == "" {
		reqSide.FunctionCode, reqSide.Category = "Unknown", "RESERVED"
	}
	if req, err := modbus.ParseRequest(ev.PDU); err == nil {
		reqSide.AccessType = accessType(&req)
		if _, a, q, ok := req.ReadRange(); ok {
			reqSide.Read = &Range{Address: a, Quantity: q}
		}
		if _, a, q, ok := req.WriteRange(); ok {
			reqSide.Write = &Range{Address: a, Quantity: q, Data: req.WriteValues()}
		}
	} else if len(ev.PDU) > 0 {
		reqSide.ErrorFlags = "INVALID_VALUE"
	}
	m := &Modbus{ID: ev.Op, Request: reqSide}
	if ev.Exception != 0 || len(ev.Response) > 0 {
		resp := reqSide
		resp.Read, resp.Write = nil, nil
		if ev.Exception != 0 {
			resp.Exception = &Exception{Raw: ev.Exception, Code: exceptionNames[ev.Exception]}
		}
		m.Response = &resp
	}
	base.Modbus = m
	if dropped {
		return []Event{droppedReplyAlert(base, ev)}
	}
	out := []Event{base}
	if ev.Verdict == audit.Allow && ev.BreakGlass {
		out = append(out, breakGlassAlert(base, ev))
	}
	if ev.Verdict != audit.Allow {
		alert := base
		alert.EventType = "alert"
		sid, cat := 9050001, "gridseal: request denied by policy"
		if ev.Verdict == audit.Malformed {
			sid, cat = 9050002, "gridseal: malformed Modbus request"
		}
		action := "blocked"
		alert.Alert = &Alert{Action: action, GID: 1, SignatureID: sid, Rev: 1,
			Signature: "GRIDSEAL " + ev.Reason, Category: cat, Severity: 2}
		out = append(out, alert)
	}
	return out
}

// breakGlassAlert is the alert for a write forwarded on a rule's break-glass
// quorum: fewer approvers than the rule normally needs signed it. It was
// allowed, and is the most severe alert gridseal raises, because someone
// must look at it now.
func breakGlassAlert(e Event, ev *audit.Event) Event {
	e.EventType = "alert"
	e.Alert = &Alert{Action: "allowed", GID: 1, SignatureID: 9050005, Rev: 1,
		Signature: "GRIDSEAL " + ev.Reason, Category: "gridseal: break-glass approval used", Severity: 1}
	return e
}

// droppedReplyAlert is the alert for a device reply gridseal passed to no
// client: a reply to no request is what a second master or a spoofed
// device looks like (its source is the device's address); a late reply to
// a timed-out write means the client was told it failed while the device
// may have carried it out (it keeps the request's client and listener).
func droppedReplyAlert(e Event, ev *audit.Event) Event {
	e.EventType = "alert"
	sid, cat := 9050003, "gridseal: device reply matches no request"
	if len(ev.PDU) > 0 {
		sid, cat = 9050004, "gridseal: late device reply to a timed-out request"
	}
	e.Alert = &Alert{Action: "blocked", GID: 1, SignatureID: sid, Rev: 1,
		Signature: "GRIDSEAL " + ev.Reason, Category: cat, Severity: 2}
	return e
}
