// Package eve renders recorded operations as Suricata EVE JSON, so SIEM
// pipelines built for Suricata's modbus and alert events ingest gridseal's
// record as they are: every line validates against Suricata's own
// etc/schema.json (TestSchema checks a real export of each kind).
//
// Suricata's schema allows no object of gridseal's own, so gridseal's
// context goes where the schema has room for per-event values: the
// top-level metadata.pktvars (one {name: value} object per variable, as
// Suricata logs packet variables) on every line, and, on alerts, the
// rule-metadata object alert.metadata (each name a list of strings, as
// Emerging Threats rules write it). The names are those of Context.
package eve

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"hash/fnv"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// Event is one line of EVE JSON: a "modbus" event for each completed
// operation, and an "alert" for each one gridseal refused or must show a
// SOC (see Signatures).
type Event struct {
	Timestamp string `json:"timestamp"`
	// FlowID is the same on every line of one client connection (see
	// FlowID); 0, and left out, for events of no connection.
	FlowID    int64  `json:"flow_id,omitempty"`
	EventType string `json:"event_type"`
	SrcIP     string `json:"src_ip,omitempty"`
	SrcPort   uint16 `json:"src_port,omitempty"`
	DestIP    string `json:"dest_ip,omitempty"`
	DestPort  uint16 `json:"dest_port,omitempty"`
	Proto     string `json:"proto,omitempty"`
	AppProto  string `json:"app_proto,omitempty"`
	// Host is Suricata's sensor name: the gridseal writer (proxy instance)
	// that recorded the event.
	Host     string    `json:"host,omitempty"`
	Modbus   *Modbus   `json:"modbus,omitempty"`
	Alert    *Alert    `json:"alert,omitempty"`
	Verdict  *Verdict  `json:"verdict,omitempty"`
	Metadata *Metadata `json:"metadata,omitempty"`
}

// Modbus is Suricata's modbus object.
type Modbus struct {
	ID       uint64    `json:"id"`
	Request  *Request  `json:"request,omitempty"`
	Response *Response `json:"response,omitempty"`
}

// Header is what the request and response objects share. ProtocolID is
// always 0: a frame with another protocol id is refused before its PDU is
// read (and then there is no request object).
type Header struct {
	ProtocolID   uint16 `json:"protocol_id"`
	UnitID       byte   `json:"unit_id"`
	FunctionRaw  byte   `json:"function_raw"`
	FunctionCode string `json:"function_code"`
	AccessType   string `json:"access_type,omitempty"`
	Category     string `json:"category"`
	ErrorFlags   string `json:"error_flags"`
	// Data is what the schema's typed fields cannot hold, as hex: the
	// values of a write of more than one value, function 22's masks, or
	// the payload of a function with no typed field.
	Data       string       `json:"data,omitempty"`
	Diagnostic *SubFunction `json:"diagnostic,omitempty"`
}

// Request is the request side of a Modbus transaction.
type Request struct {
	Header
	MEI   *SubFunction `json:"mei,omitempty"`
	Read  *ReadRange   `json:"read,omitempty"`
	Write *Write       `json:"write,omitempty"`
}

// Response is the response side (the device's reply, or the exception
// gridseal answered).
type Response struct {
	Header
	Read      *ReadData  `json:"read,omitempty"`
	Write     *Write     `json:"write,omitempty"`
	Exception *Exception `json:"exception,omitempty"`
}

// SubFunction is function 8's sub-function or function 43's MEI type, and
// the bytes after it (hex).
type SubFunction struct {
	Raw  uint16 `json:"raw"`
	Data string `json:"data,omitempty"`
}

// ReadRange is the range a request reads.
type ReadRange struct {
	Address  uint16 `json:"address"`
	Quantity uint16 `json:"quantity"`
}

// ReadData is what a device answered to a read: the data bytes after the
// byte count, as hex (registers big-endian, coils packed low bit first).
type ReadData struct {
	Data string `json:"data"`
}

// Write is the first address a request writes and, when it writes exactly
// one value, that value as the PDU carries it: a coil switched on by
// function 5 is 65280 (0xFF00), as Suricata logs it.
type Write struct {
	Address uint16  `json:"address"`
	Data    *uint16 `json:"data,omitempty"`
}

// Exception is an exception response.
type Exception struct {
	Raw  byte   `json:"raw"`
	Code string `json:"code"`
}

// Alert is Suricata's alert object.
type Alert struct {
	Action      string `json:"action"` // allowed or blocked
	GID         int    `json:"gid"`
	SignatureID int    `json:"signature_id"`
	Rev         int    `json:"rev"`
	Signature   string `json:"signature"`
	Category    string `json:"category"`
	Severity    int    `json:"severity"`
	// Source is the client; Target the PLC, when its address is known.
	Source   *Endpoint           `json:"source,omitempty"`
	Target   *Endpoint           `json:"target,omitempty"`
	Metadata map[string][]string `json:"metadata,omitempty"`
}

// Endpoint is an alert's source or target.
type Endpoint struct {
	IP   string `json:"ip"`
	Port uint16 `json:"port"`
}

// Verdict is Suricata's verdict object: "pass" for an operation gridseal
// forwarded, "drop" for one it refused or a device reply it passed to no
// client.
type Verdict struct {
	Action string `json:"action"`
}

// Metadata is Suricata's top-level metadata object; gridseal fills only
// pktvars, with Context.
type Metadata struct {
	PktVars []map[string]string `json:"pktvars"`
}

// Context names, in metadata.pktvars and alert.metadata. A name is left
// out when its value is empty.
const (
	CtxVerdict    = "gridseal_verdict"     // allow, deny or malformed
	CtxPhase      = "gridseal_phase"       // complete, dropped-reply, approval, gap
	CtxDevice     = "gridseal_device"      // device name in the policy
	CtxPLC        = "gridseal_plc"         // the device's host:port, as the policy names it
	CtxRole       = "gridseal_role"        // Modbus/TCP Security role of the client
	CtxRule       = "gridseal_rule"        // rule that allowed or came nearest
	CtxReason     = "gridseal_reason"      // why, in words
	CtxPolicy     = "gridseal_policy"      // digest of the policy that decided
	CtxApproval   = "gridseal_approval"    // approval id
	CtxBreakGlass = "gridseal_break_glass" // "true" when a break-glass quorum allowed it
	CtxValues     = "gridseal_values"      // the values written, decimal, comma-separated
	CtxClosed     = "gridseal_closed"      // "true" when gridseal closed the connection
	CtxOp         = "gridseal_op"          // operation id, unique per writer
	CtxWriter     = "gridseal_writer"      // writer (proxy instance) that recorded it
	CtxSeq        = "gridseal_seq"         // chain stream sequence of the block (export only)
	CtxHeight     = "gridseal_height"      // block height in the writer's chain (export only)
	CtxBlock      = "gridseal_block"       // block hash (export only)
	CtxIndex      = "gridseal_index"       // event's index in its block (export only)
	CtxKind       = "gridseal_kind"        // alert kind (alert.metadata only)
)

// Mapper renders events. Devices maps a device name to its PLC's
// host:port (a policy's devices); Writer names the writer when there is
// no chain record (the proxy's own EVE file).
type Mapper struct {
	Writer  string
	Devices map[string]string
}

// FlowID is the flow_id of every line of one client connection: the
// FNV-1a hash of the writer, the listener and the client's address and
// port, cut to 51 bits as Suricata cuts its own (so JavaScript and JSON
// tools that read numbers as doubles keep it exact), never 0. It is the
// same in `chain export` and the proxy's EVE file; a client that comes
// back from the same port to the same listener gets the same id again.
func FlowID(writer, listener string, client netip.AddrPort) int64 {
	h := fnv.New64a()
	for _, s := range []string{writer, listener, client.String()} {
		_, _ = h.Write([]byte(s))
		_, _ = h.Write([]byte{0})
	}
	id := int64(h.Sum64() & (1<<51 - 1))
	if id == 0 {
		id = 1
	}
	return id
}

// timestamp is Suricata's time format.
func timestamp(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000000+0000") }

// For renders one event of the chain as EVE lines; r is nil for an event
// not (yet) in the chain, which then carries no chain position. A
// completed operation is one "modbus" event, followed by an alert if it
// raises one (alertFor); a device reply passed to no client, an approval
// step, a gap in the record and a request whose frame could not be read
// are an alert only; a write's pre-forward record is no line (its
// completion is).
func (m *Mapper) For(r *chain.Record, ev *audit.Event) []Event {
	sig, alerts := alertFor(ev)
	base := m.base(r, ev)
	kept := ev.Phase == audit.PhaseComplete && len(ev.PDU) > 0
	if !kept && !alerts {
		return nil
	}
	var out []Event
	if kept {
		e := base
		e.EventType = "modbus"
		out = append(out, e)
	}
	if alerts {
		out = append(out, m.alert(base, sig, ev))
	}
	return out
}

// Encode writes the EVE lines of ev (For) with enc, one JSON object each.
func (m *Mapper) Encode(enc *json.Encoder, r *chain.Record, ev *audit.Event) error {
	for _, e := range m.For(r, ev) {
		if err := enc.Encode(e); err != nil {
			return err
		}
	}
	return nil
}

// base is the line every output of ev starts from.
func (m *Mapper) base(r *chain.Record, ev *audit.Event) Event {
	e := Event{Timestamp: timestamp(ev.Time), Host: m.Writer}
	if r != nil {
		e.Host = r.Writer
	}
	if ev.Client.IsValid() {
		e.SrcIP, e.SrcPort = ev.Client.Addr().Unmap().String(), ev.Client.Port()
		e.Proto = "TCP"
		e.FlowID = FlowID(e.Host, ev.Listener, ev.Client)
	}
	if ap, err := netip.ParseAddrPort(ev.Listener); err == nil {
		e.DestIP, e.DestPort = ap.Addr().Unmap().String(), ap.Port()
	}
	switch ev.Phase {
	case audit.PhaseGap:
	case audit.PhaseApproval:
		e.AppProto = "modbus"
		if req := request(ev); req != nil {
			e.Modbus = &Modbus{Request: req}
		}
	default:
		e.AppProto = "modbus"
		if len(ev.PDU) > 0 || len(ev.Response) > 0 {
			e.Modbus = &Modbus{ID: ev.Op, Request: request(ev), Response: response(ev)}
		}
		e.Verdict = &Verdict{Action: "drop"}
		if ev.Verdict == audit.Allow && ev.Phase != audit.PhaseDroppedReply {
			e.Verdict.Action = "pass"
		}
	}
	e.Metadata = &Metadata{PktVars: m.context(r, ev).pktvars()}
	return e
}

// alert is the alert line of ev.
func (m *Mapper) alert(e Event, sig Signature, ev *audit.Event) Event {
	e.EventType = "alert"
	a := &Alert{Action: "blocked", GID: GID, SignatureID: sig.ID, Rev: 1, Signature: sig.Text,
		Category: sig.Category, Severity: sig.Severity}
	if sig.Allowed {
		a.Action = "allowed"
	}
	if e.SrcIP != "" {
		a.Source = &Endpoint{IP: e.SrcIP, Port: e.SrcPort}
	}
	if ap, err := netip.ParseAddrPort(m.Devices[ev.Device]); err == nil {
		a.Target = &Endpoint{IP: ap.Addr().Unmap().String(), Port: ap.Port()}
	}
	a.Metadata = map[string][]string{CtxKind: {sig.Kind}, "signature_severity": {sig.severityName()}}
	for _, v := range e.Metadata.PktVars {
		for k, s := range v {
			a.Metadata[k] = []string{s}
		}
	}
	e.Alert = a
	return e
}

// ctxVars is gridseal's context of one event, in order.
type ctxVars [][2]string

func (c *ctxVars) add(k, v string) {
	if v != "" {
		*c = append(*c, [2]string{k, v})
	}
}

func (c ctxVars) pktvars() []map[string]string {
	out := make([]map[string]string, len(c))
	for i, kv := range c {
		out[i] = map[string]string{kv[0]: kv[1]}
	}
	return out
}

func (m *Mapper) context(r *chain.Record, ev *audit.Event) ctxVars {
	var c ctxVars
	c.add(CtxVerdict, ev.Verdict.String())
	c.add(CtxPhase, ev.Phase.String())
	c.add(CtxDevice, ev.Device)
	c.add(CtxPLC, m.Devices[ev.Device])
	c.add(CtxRole, ev.Role)
	c.add(CtxRule, ev.Rule)
	c.add(CtxReason, ev.Reason)
	c.add(CtxPolicy, ev.Policy)
	c.add(CtxApproval, ev.Approval)
	if ev.BreakGlass {
		c.add(CtxBreakGlass, "true")
	}
	if req, err := modbus.ParseRequest(ev.PDU); err == nil {
		if vs := req.WriteValues(); len(vs) > 0 {
			s := make([]string, len(vs))
			for i, v := range vs {
				s[i] = strconv.Itoa(int(v))
			}
			c.add(CtxValues, strings.Join(s, ","))
		}
	}
	if ev.Closed {
		c.add(CtxClosed, "true")
	}
	if ev.Op != 0 {
		c.add(CtxOp, strconv.FormatUint(ev.Op, 10))
	}
	if r != nil {
		c.add(CtxWriter, r.Writer)
		c.add(CtxSeq, strconv.FormatUint(r.Seq, 10))
		c.add(CtxHeight, strconv.FormatUint(r.Height, 10))
		c.add(CtxBlock, r.Block)
		c.add(CtxIndex, strconv.Itoa(r.Index))
	} else {
		c.add(CtxWriter, m.Writer)
	}
	return c
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

// header is the request's function as Suricata names it.
func header(ev *audit.Event) Header {
	fn := modbus.Function(ev.Function)
	if len(ev.PDU) > 0 {
		fn = modbus.Function(ev.PDU[0])
	}
	h := Header{UnitID: ev.Unit, FunctionRaw: byte(fn), FunctionCode: functionNames[fn], Category: "PUBLIC_ASSIGNED", ErrorFlags: "NONE"}
	if h.FunctionCode == "" {
		h.FunctionCode, h.Category = "Unknown", "RESERVED"
	}
	return h
}

// errorFlags is Suricata's name for what is wrong with a request.
func errorFlags(err error) string {
	switch {
	case errors.Is(err, modbus.ErrFunction), errors.Is(err, modbus.ErrSubFunction):
		return "FUNC_CODE"
	case errors.Is(err, modbus.ErrTruncated), errors.Is(err, modbus.ErrTrailing), errors.Is(err, modbus.ErrByteCount):
		return "DATA_LENGTH"
	}
	return "DATA_VALUE"
}

// request is the request object of ev; nil when ev holds no request PDU.
func request(ev *audit.Event) *Request {
	if len(ev.PDU) == 0 {
		return nil
	}
	out := &Request{Header: header(ev)}
	req, err := modbus.ParseRequest(ev.PDU)
	if err != nil {
		out.ErrorFlags = errorFlags(err)
		out.Data = hex.EncodeToString(ev.PDU[1:])
		return out
	}
	out.AccessType = accessType(&req)
	if _, a, q, ok := req.ReadRange(); ok {
		out.Read = &ReadRange{Address: a, Quantity: q}
	}
	switch req.Function {
	case modbus.WriteSingleCoil, modbus.WriteSingleRegister:
		v := binary.BigEndian.Uint16(req.Data)
		out.Write = &Write{Address: req.Address, Data: &v}
	case modbus.WriteMultipleRegisters, modbus.ReadWriteMultipleRegisters:
		_, a, q, _ := req.WriteRange()
		out.Write = &Write{Address: a}
		if q == 1 {
			v := req.RegisterValue(0)
			out.Write.Data = &v
		} else {
			out.Data = hex.EncodeToString(req.Data)
		}
	case modbus.WriteMultipleCoils:
		out.Write = &Write{Address: req.Address}
		out.Data = hex.EncodeToString(req.Data)
	case modbus.MaskWriteRegister:
		out.Write = &Write{Address: req.Address}
		out.Data = hex.EncodeToString(ev.PDU[3:])
	case modbus.Diagnostics:
		out.Diagnostic = &SubFunction{Raw: req.Sub, Data: hex.EncodeToString(req.Data)}
	case modbus.EncapsulatedInterface:
		out.MEI = &SubFunction{Raw: req.Sub, Data: hex.EncodeToString(ev.PDU[2:])}
	case modbus.ReadFileRecord, modbus.WriteFileRecord, modbus.ReadFIFOQueue:
		out.Data = hex.EncodeToString(ev.PDU[1:])
	}
	return out
}

// response is the response object of ev: the device's reply as recorded,
// or the exception gridseal answered; nil when there was neither.
func response(ev *audit.Event) *Response {
	if ev.Exception == 0 && len(ev.Response) == 0 {
		return nil
	}
	out := &Response{Header: header(ev)}
	out.Data, out.ErrorFlags = "", "NONE"
	if req, err := modbus.ParseRequest(ev.PDU); err == nil {
		out.AccessType = accessType(&req)
		if ev.Exception == 0 && len(ev.Response) > 0 {
			if resp, err := modbus.ParseResponse(&req, ev.Response); err == nil {
				readData(out, &req, &resp)
			} else {
				out.ErrorFlags = "DATA_LENGTH"
			}
		}
	} else if len(ev.Response) > 1 && ev.Exception == 0 {
		out.Data = hex.EncodeToString(ev.Response[1:]) // a reply to no request
	}
	if ev.Exception != 0 {
		code := exceptionNames[ev.Exception]
		if code == "" {
			code = "Unknown"
		}
		out.Exception = &Exception{Raw: ev.Exception, Code: code}
	}
	return out
}

// readData fills a normal response's typed fields.
func readData(out *Response, req *modbus.Request, resp *modbus.Response) {
	d := resp.Data
	switch req.Function {
	case modbus.ReadCoils, modbus.ReadDiscreteInputs, modbus.ReadHoldingRegisters, modbus.ReadInputRegisters,
		modbus.ReadWriteMultipleRegisters:
		out.Read = &ReadData{Data: hex.EncodeToString(d[1:])}
	case modbus.WriteSingleCoil, modbus.WriteSingleRegister:
		v := binary.BigEndian.Uint16(d[2:])
		out.Write = &Write{Address: binary.BigEndian.Uint16(d), Data: &v}
	case modbus.WriteMultipleCoils, modbus.WriteMultipleRegisters, modbus.MaskWriteRegister:
		out.Write = &Write{Address: binary.BigEndian.Uint16(d)}
	case modbus.Diagnostics:
		out.Diagnostic = &SubFunction{Raw: binary.BigEndian.Uint16(d), Data: hex.EncodeToString(d[2:])}
	default:
		out.Data = hex.EncodeToString(d)
	}
}

// VerifyAlert is the alert for one problem chain verification found,
// stamped at (when verify ran): the writer as host, the block's sequence
// and height and the problem in alert.metadata and pktvars.
func VerifyAlert(p *chain.Problem, at time.Time) Event {
	var c ctxVars
	c.add(CtxReason, p.Error())
	c.add(CtxWriter, p.Writer)
	if p.Seq != 0 {
		c.add(CtxSeq, strconv.FormatUint(p.Seq, 10))
	}
	if p.HasHeight {
		c.add(CtxHeight, strconv.FormatUint(p.Height, 10))
	}
	e := Event{Timestamp: timestamp(at), Host: p.Writer, Metadata: &Metadata{PktVars: c.pktvars()}}
	return (&Mapper{}).alert(e, SigVerifyFailed, &audit.Event{})
}
