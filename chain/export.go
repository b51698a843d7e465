package chain

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// Record is one event as exported: the event's fields plus where it sits in
// the chain. It is the lossless JSON form (pdu and response as hex).
type Record struct {
	Seq       uint64    `json:"seq"`
	Writer    string    `json:"writer"`
	Height    uint64    `json:"height"`
	Index     int       `json:"index"`
	Block     string    `json:"block"`
	KeyID     uint32    `json:"key_id"`
	Time      time.Time `json:"time"`
	Op        uint64    `json:"op"`
	Phase     string    `json:"phase"`
	Client    string    `json:"client,omitempty"`
	Role      string    `json:"role,omitempty"`
	Listener  string    `json:"listener,omitempty"`
	Device    string    `json:"device,omitempty"`
	Unit      byte      `json:"unit"`
	Function  byte      `json:"fc"`
	FuncName  string    `json:"function,omitempty"`
	Class     string    `json:"class,omitempty"`
	Address   uint16    `json:"address"`
	Quantity  uint16    `json:"quantity"`
	Values    []uint16  `json:"values,omitempty"`
	PDU       string    `json:"pdu,omitempty"`
	Verdict   string    `json:"verdict"`
	Rule      string    `json:"rule,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	Policy    string    `json:"policy,omitempty"`
	Approval  string    `json:"approval,omitempty"`
	Exception byte      `json:"exception,omitempty"`
	Response  string    `json:"response,omitempty"`
	Upstream  float64   `json:"upstream_ms,omitempty"`
	Closed    bool      `json:"closed,omitempty"`
	// BreakGlass: allowed by a rule's break-glass quorum (event version 3).
	BreakGlass bool `json:"break_glass,omitempty"`
	// Observed: forwarded only because the device is in observe mode; the
	// rules would have denied it, as Rule and Reason say (event version 4).
	Observed bool `json:"observed,omitempty"`
	// CandidateDiffers: the shadow candidate policy decides the request
	// otherwise (event version 5); the reason ends with what it says.
	CandidateDiffers bool `json:"candidate_differs,omitempty"`
}

// NewRecord builds the exported form of event i of block b stored at m.
func NewRecord(m *Msg, b *Block, i int, ev *audit.Event) Record {
	r := Record{
		Seq: m.Seq, Writer: b.Writer, Height: b.Height, Index: i, Block: b.Hash.String(), KeyID: b.KeyID,
		Time: ev.Time, Op: ev.Op, Phase: ev.Phase.String(), Listener: ev.Listener, Role: ev.Role,
		Device: ev.Device, Unit: ev.Unit, Function: ev.Function, Class: ev.Class,
		Address: ev.Address, Quantity: ev.Quantity, PDU: hex.EncodeToString(ev.PDU),
		Verdict: ev.Verdict.String(), Rule: ev.Rule, Reason: ev.Reason, Policy: ev.Policy,
		Approval: ev.Approval, Exception: ev.Exception, Response: hex.EncodeToString(ev.Response),
		Upstream: float64(ev.Upstream.Microseconds()) / 1000, Closed: ev.Closed, BreakGlass: ev.BreakGlass,
		Observed: ev.Observed, CandidateDiffers: ev.CandidateDiffers,
	}
	if ev.Client.IsValid() {
		r.Client = ev.Client.String()
	}
	if len(ev.PDU) > 0 {
		r.FuncName = modbus.Function(ev.PDU[0]).String()
		if req, err := modbus.ParseRequest(ev.PDU); err == nil {
			r.Values = req.WriteValues()
		}
	}
	return r
}

// Filter selects records. A zero field matches any record; a nil *Filter
// matches all.
type Filter struct {
	Device  string
	Verdict audit.Verdict
	Since   time.Time // at or after
	Until   time.Time // before
}

// Match reports whether r passes f.
func (f *Filter) Match(r *Record) bool {
	if f == nil {
		return true
	}
	return (f.Device == "" || r.Device == f.Device) && (f.Verdict == 0 || r.Verdict == f.Verdict.String()) &&
		(f.Since.IsZero() || !r.Time.Before(f.Since)) && (f.Until.IsZero() || r.Time.Before(f.Until))
}

// ScanRecords calls fn with each event that passes f, in stream order,
// reading the chain stream as Scan does: from sequence from up to its last
// message, or with follow until ctx ends. It checks each block's
// structure, not its signature: VerifyStream does that. An error from fn
// stops the scan and is returned; so does a message the store cannot
// return (an *UnreadableError naming it): no record is skipped silently.
func ScanRecords(ctx context.Context, js jetstream.JetStream, from uint64, follow bool, f *Filter, fn func(*Record, *audit.Event) error) error {
	return scanBlocks(ctx, js, from, follow, func(m *Msg, b *Block) error {
		for i, e := range b.Events {
			ev, err := DecodeEvent(e)
			if err != nil {
				return fmt.Errorf("sequence %d event %d: %w", m.Seq, i, err)
			}
			rec := NewRecord(m, b, i, &ev)
			if f.Match(&rec) {
				if err := fn(&rec, &ev); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// ScanBlocks calls fn with each block of the chain stream from sequence
// from up to its last message, in stream order, for readers that decode
// events themselves (ViewEvent). Like ScanRecords it checks each block's
// structure, not its signature, and no message is skipped silently. The
// block's event bytes alias the message: fn must not keep them.
func ScanBlocks(ctx context.Context, js jetstream.JetStream, from uint64, fn func(*Msg, *Block) error) error {
	return scanBlocks(ctx, js, from, false, fn)
}

func scanBlocks(ctx context.Context, js jetstream.JetStream, from uint64, follow bool, fn func(*Msg, *Block) error) error {
	return scanContiguous(ctx, js, from, follow, func(m *Msg) error {
		b, err := ParseBlock(m.Data)
		if err != nil {
			return fmt.Errorf("sequence %d: %w", m.Seq, err)
		}
		return fn(m, b)
	})
}

// LastRecords returns the newest n events that pass f, oldest first, and
// the stream's last sequence when it began, from which a follower goes on
// (ScanRecords from last+1). It reads blocks backwards from the end, one
// at a time, until it has n: what it costs is the blocks it reads, not the
// length of the chain. A block the store cannot return is an
// *UnreadableError naming it.
func LastRecords(ctx context.Context, js jetstream.JetStream, n int, f *Filter) (recs []Record, last uint64, err error) {
	return LastCheckedRecords(ctx, js, n, f, nil)
}

// LastCheckedRecords is LastRecords over the blocks check (if not nil)
// accepts, such as Trust.CheckParsed; a block it refuses is passed over.
func LastCheckedRecords(ctx context.Context, js jetstream.JetStream, n int, f *Filter, check func(*Msg, *Block) error) (recs []Record, last uint64, err error) {
	s, err := js.Stream(ctx, StreamName)
	if err != nil {
		return nil, 0, fmt.Errorf("chain stream %s: %w", StreamName, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("chain stream %s: %w", StreamName, err)
	}
	last = info.State.LastSeq
	first := max(info.State.FirstSeq, 1)
	for seq := last; seq >= first && len(recs) < n; seq-- {
		raw, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, 0, &UnreadableError{First: seq, Last: seq, Err: err}
		}
		if err != nil {
			return nil, 0, fmt.Errorf("read chain sequence %d: %w", seq, err)
		}
		m := &Msg{Seq: raw.Sequence, Subject: raw.Subject, Data: raw.Data, Stored: raw.Time}
		if raw.Header != nil {
			m.MsgID = raw.Header.Get(jetstream.MsgIDHeader)
		}
		b, err := ParseBlock(m.Data)
		if err != nil {
			return nil, 0, fmt.Errorf("sequence %d: %w", m.Seq, err)
		}
		if check != nil && check(m, b) != nil {
			continue // refused: not shown
		}
		for i := len(b.Events) - 1; i >= 0 && len(recs) < n; i-- {
			ev, err := DecodeEvent(b.Events[i])
			if err != nil {
				return nil, 0, fmt.Errorf("sequence %d event %d: %w", m.Seq, i, err)
			}
			if rec := NewRecord(m, b, i, &ev); f.Match(&rec) {
				recs = append(recs, rec)
			}
		}
	}
	slices.Reverse(recs)
	return recs, last, nil
}

// tailRow is a row of chain tail's table: fixed column widths, so the rows
// printed while following line up with the header printed first.
const tailRow = "%-12s  %-21s  %-16s  %4s  %3s  %-11s  %-24s  %-13s  %-4s  %s\n"

// WriteTailHeader writes the header of chain tail's table.
func WriteTailHeader(w io.Writer) {
	fmt.Fprintf(w, tailRow, "TIME", "CLIENT", "DEVICE", "UNIT", "FC", "ADDR+QTY", "VALUES", "VERDICT", "EXC", "REASON")
}

// WriteRow writes r as a row of chain tail's table, in local time: values
// cut to their column, a request recorded before forwarding and a dropped
// reply marked, an observed request shown as WOULD-DENY.
func (r *Record) WriteRow(w io.Writer) {
	vals := ""
	if len(r.Values) > 0 {
		parts := make([]string, len(r.Values))
		for i, v := range r.Values {
			parts[i] = fmt.Sprint(v)
		}
		vals = strings.Join(parts, ",")
		if len(vals) > 24 {
			vals = vals[:21] + "..."
		}
	}
	exc := ""
	if r.Exception != 0 {
		exc = fmt.Sprintf("0x%02X", r.Exception)
	}
	reason, verdict := r.Reason, r.Verdict
	switch r.Phase {
	case "request":
		reason = "(durable before forwarding) " + reason
	case "dropped-reply":
		verdict = "dropped-reply"
	}
	if r.Observed {
		verdict = "WOULD-DENY"
	}
	fmt.Fprintf(w, tailRow, r.Time.Local().Format("15:04:05.000"), r.Client, r.Device, strconv.Itoa(int(r.Unit)),
		strconv.Itoa(int(r.Function)), fmt.Sprintf("%d+%d", r.Address, r.Quantity), vals, verdict, exc, reason)
}

// ScanEvents calls fn with every event of the stream recorded at or after
// from (zero: every one), decoded, in stream order, and returns at the
// stream's end. An event that does not decode is an error naming it.
func ScanEvents(ctx context.Context, js jetstream.JetStream, from time.Time, fn func(*audit.Event)) error {
	return ScanBlocks(ctx, js, 1, func(m *Msg, b *Block) error {
		for i, e := range b.Events {
			ev, err := DecodeEvent(e)
			if err != nil {
				return fmt.Errorf("sequence %d event %d: %w", m.Seq, i, err)
			}
			if from.IsZero() || !ev.Time.Before(from) {
				fn(&ev)
			}
		}
		return nil
	})
}

// Tail is gridseal chain tail: the newest n records f selects, then, with
// follow, every one recorded after them until ctx ends — a table with a
// header on w, or JSON lines.
func Tail(ctx context.Context, js jetstream.JetStream, n int, f *Filter, follow, asJSON bool, w io.Writer) error {
	out := func(r *Record) error {
		if asJSON {
			return json.NewEncoder(w).Encode(r)
		}
		r.WriteRow(w)
		return nil
	}
	// The newest n, read backwards from the end; then, following, what is
	// recorded after them.
	recs, last, err := LastRecords(ctx, js, n, f)
	if err != nil {
		return err
	}
	if !asJSON {
		WriteTailHeader(w)
	}
	for i := range recs {
		if err := out(&recs[i]); err != nil {
			return err
		}
	}
	if !follow {
		return nil
	}
	return ScanRecords(ctx, js, last+1, true, f, func(r *Record, _ *audit.Event) error { return out(r) })
}
