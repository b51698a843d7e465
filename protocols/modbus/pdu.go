package modbus

import "encoding/binary"

// Request is a decoded request PDU. Its slices alias the PDU it was parsed from.
//
// Address and Quantity are the range the request is about: the range read by
// reads and by function 23, the range written by functions 5, 6, 15, 16 and
// 22. Function 23's write part is in WriteAddress and WriteQuantity.
type Request struct {
	PDU      []byte   // the exact request PDU, function code first
	Function Function // function code
	Sub      uint16   // function 8 sub-function, function 43 MEI type
	Space    Space    // data table addressed, SpaceNone if none
	Address  uint16
	Quantity uint16

	WriteAddress  uint16 // function 23 write part
	WriteQuantity uint16

	AndMask, OrMask uint16 // function 22
	// Data holds the request's payload after its fixed fields: the value of
	// functions 5 and 6, the packed values of 15, 16 and 23, function 8's
	// data, and the sub-requests of functions 20 and 21.
	Data []byte
}

// Class classifies the request: read, state-changing write, or diagnostic.
// Function 43 reads only with MEI type 14 (device identification).
func (r *Request) Class() Class {
	if r.Function == EncapsulatedInterface && r.Sub != MEIReadDeviceID {
		return ClassDiagnostic
	}
	return r.Function.Class()
}

// StateChanging reports whether the request can change the device's state:
// every write, and the function 8 sub-functions that restart
// communications (1), change the ASCII delimiter (3), force listen-only
// mode (4) or clear counters (10, 20).
func (r *Request) StateChanging() bool {
	if r.Class() == ClassWrite {
		return true
	}
	return r.Function == Diagnostics && DiagnosticChangesState(r.Sub)
}

// DiagnosticChangesState reports whether function 8's sub-function sub
// changes the device's state: restart communications (1), change the ASCII
// delimiter (3), force listen-only mode (4), clear counters (10) and clear
// the overrun counter (20).
func DiagnosticChangesState(sub uint16) bool {
	switch sub {
	case 1, 3, 4, 10, 20:
		return true
	}
	return false
}

// WriteRange returns the table, first address and count a write changes.
// ok is false for requests that change no addressed table: reads,
// diagnostics and function 21, whose file records live outside the data model.
func (r *Request) WriteRange() (s Space, addr, qty uint16, ok bool) {
	switch r.Function {
	case WriteSingleCoil, WriteMultipleCoils:
		return SpaceCoils, r.Address, r.Quantity, true
	case WriteSingleRegister, WriteMultipleRegisters, MaskWriteRegister:
		return SpaceHoldingRegisters, r.Address, r.Quantity, true
	case ReadWriteMultipleRegisters:
		return SpaceHoldingRegisters, r.WriteAddress, r.WriteQuantity, true
	}
	return SpaceNone, 0, 0, false
}

// ReadRange returns the table, first address and count a request reads.
func (r *Request) ReadRange() (s Space, addr, qty uint16, ok bool) {
	switch r.Function {
	case ReadCoils, ReadDiscreteInputs, ReadHoldingRegisters, ReadInputRegisters,
		ReadWriteMultipleRegisters:
		return r.Space, r.Address, r.Quantity, true
	}
	return SpaceNone, 0, 0, false
}

// RegisterValue returns the i-th register value written by functions 6, 16
// and 23 (i counts from 0 within the write range).
func (r *Request) RegisterValue(i int) uint16 {
	return binary.BigEndian.Uint16(r.Data[2*i:])
}

// CoilValue returns the i-th coil state written by functions 5 and 15.
func (r *Request) CoilValue(i int) bool {
	if r.Function == WriteSingleCoil {
		return r.Data[0] == 0xFF
	}
	return r.Data[i/8]&(1<<(uint(i)%8)) != 0
}

// WriteValues lists the values a write carries, in address order: coils
// as 0 or 1, function 22 as its AND and OR masks. It is nil for requests
// that write nothing (see WriteRange).
func (r *Request) WriteValues() []uint16 {
	_, _, qty, ok := r.WriteRange()
	if !ok {
		return nil
	}
	if r.Function == MaskWriteRegister {
		return []uint16{r.AndMask, r.OrMask}
	}
	out := make([]uint16, 0, qty)
	for i := 0; i < int(qty); i++ {
		switch r.Function {
		case WriteSingleCoil, WriteMultipleCoils:
			v := uint16(0)
			if r.CoilValue(i) {
				v = 1
			}
			out = append(out, v)
		default:
			out = append(out, r.RegisterValue(i))
		}
	}
	return out
}

func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }

// ParseRequest decodes and checks a request PDU against the specification.
// It never allocates. On failure the *Error says whether to answer with an
// exception (its Exception field) or to close the connection.
func ParseRequest(pdu []byte) (Request, error) {
	if len(pdu) == 0 {
		return Request{}, ErrTruncated
	}
	r := Request{PDU: pdu, Function: Function(pdu[0])}
	d := pdu[1:]
	switch r.Function {
	case ReadCoils, ReadDiscreteInputs, ReadHoldingRegisters, ReadInputRegisters:
		if err := fixedLen(d, 4); err != nil {
			return r, err
		}
		r.Address, r.Quantity = be16(d), be16(d[2:])
		limit := uint16(MaxReadRegisters)
		switch r.Function {
		case ReadCoils:
			r.Space, limit = SpaceCoils, MaxReadBits
		case ReadDiscreteInputs:
			r.Space, limit = SpaceDiscreteInputs, MaxReadBits
		case ReadHoldingRegisters:
			r.Space = SpaceHoldingRegisters
		default:
			r.Space = SpaceInputRegisters
		}
		return r, checkRange(r.Address, r.Quantity, limit)

	case WriteSingleCoil, WriteSingleRegister:
		if err := fixedLen(d, 4); err != nil {
			return r, err
		}
		r.Address, r.Quantity, r.Data = be16(d), 1, d[2:4]
		if r.Function == WriteSingleCoil {
			r.Space = SpaceCoils
			if v := be16(d[2:]); v != 0x0000 && v != 0xFF00 {
				return r, ErrValue
			}
		} else {
			r.Space = SpaceHoldingRegisters
		}
		return r, nil

	case WriteMultipleCoils, WriteMultipleRegisters:
		if len(d) < 5 {
			return r, ErrTruncated
		}
		r.Address, r.Quantity = be16(d), be16(d[2:])
		bc := int(d[4])
		var want int
		if r.Function == WriteMultipleCoils {
			r.Space = SpaceCoils
			if r.Quantity == 0 || r.Quantity > MaxWriteBits {
				return r, ErrQuantity
			}
			want = (int(r.Quantity) + 7) / 8
		} else {
			r.Space = SpaceHoldingRegisters
			if r.Quantity == 0 || r.Quantity > MaxWriteRegisters {
				return r, ErrQuantity
			}
			want = 2 * int(r.Quantity)
		}
		if bc != want {
			return r, ErrByteCount
		}
		if err := fixedLen(d[5:], bc); err != nil {
			return r, err
		}
		r.Data = d[5:]
		return r, checkRange(r.Address, r.Quantity, 0xFFFF)

	case MaskWriteRegister:
		if err := fixedLen(d, 6); err != nil {
			return r, err
		}
		r.Space, r.Address, r.Quantity = SpaceHoldingRegisters, be16(d), 1
		r.AndMask, r.OrMask = be16(d[2:]), be16(d[4:])
		return r, nil

	case ReadWriteMultipleRegisters:
		if len(d) < 9 {
			return r, ErrTruncated
		}
		r.Space = SpaceHoldingRegisters
		r.Address, r.Quantity = be16(d), be16(d[2:])
		r.WriteAddress, r.WriteQuantity = be16(d[4:]), be16(d[6:])
		if r.Quantity == 0 || r.Quantity > MaxReadRegisters ||
			r.WriteQuantity == 0 || r.WriteQuantity > MaxRWWrite {
			return r, ErrQuantity
		}
		if int(d[8]) != 2*int(r.WriteQuantity) {
			return r, ErrByteCount
		}
		if err := fixedLen(d[9:], int(d[8])); err != nil {
			return r, err
		}
		r.Data = d[9:]
		if err := checkRange(r.Address, r.Quantity, MaxReadRegisters); err != nil {
			return r, err
		}
		return r, checkRange(r.WriteAddress, r.WriteQuantity, MaxRWWrite)

	case ReadExceptionStatus, GetCommEventCounter, GetCommEventLog, ReportServerID:
		return r, fixedLen(d, 0)

	case Diagnostics:
		if len(d) < 4 {
			return r, ErrTruncated
		}
		r.Sub, r.Data = be16(d), d[2:]
		if !knownDiagnostic(r.Sub) {
			return r, ErrSubFunction
		}
		if r.Sub == 0 {
			if len(r.Data)%2 != 0 {
				return r, ErrTrailing
			}
			return r, nil
		}
		return r, fixedLen(r.Data, 2)

	case ReadFileRecord:
		return r, parseReadFileRecord(&r, d)

	case WriteFileRecord:
		return r, parseWriteFileRecord(&r, d)

	case ReadFIFOQueue:
		if err := fixedLen(d, 2); err != nil {
			return r, err
		}
		r.Address = be16(d)
		return r, nil

	case EncapsulatedInterface:
		if len(d) < 1 {
			return r, ErrTruncated
		}
		r.Sub = uint16(d[0])
		if r.Sub != MEIReadDeviceID {
			return r, ErrSubFunction
		}
		if err := fixedLen(d[1:], 2); err != nil {
			return r, err
		}
		if code := d[1]; code < 1 || code > 4 {
			return r, ErrValue
		}
		r.Data = d[1:3]
		return r, nil
	}
	return r, ErrFunction
}

// fixedLen checks that b holds exactly n bytes.
func fixedLen(b []byte, n int) error {
	switch {
	case len(b) < n:
		return ErrTruncated
	case len(b) > n:
		return ErrTrailing
	}
	return nil
}

// checkRange enforces 1 ≤ qty ≤ limit and that the range ends at or before 0xFFFF.
func checkRange(addr, qty, limit uint16) error {
	if qty == 0 || qty > limit {
		return ErrQuantity
	}
	if uint32(addr)+uint32(qty) > 0x10000 {
		return ErrAddress
	}
	return nil
}

func knownDiagnostic(sub uint16) bool {
	switch sub {
	case 0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 15, 16, 17, 18, 20:
		return true
	}
	return false
}

// File record limits (Modbus Application Protocol v1.1b3, 6.14 and 6.15).
const (
	fileRefType   = 6
	maxFileRecord = 0x270F
)

func parseReadFileRecord(r *Request, d []byte) error {
	if len(d) < 1 {
		return ErrTruncated
	}
	bc := int(d[0])
	if bc < 0x07 || bc > 0xF5 || bc%7 != 0 {
		return ErrByteCount
	}
	if err := fixedLen(d[1:], bc); err != nil {
		return err
	}
	r.Data = d[1:]
	respLen := 2 // function code and response data length
	for s := r.Data; len(s) > 0; s = s[7:] {
		if s[0] != fileRefType {
			return ErrAddress
		}
		if be16(s[3:]) > maxFileRecord {
			return ErrAddress
		}
		respLen += 2 + 2*int(be16(s[5:]))
		if respLen > MaxPDULen {
			return ErrQuantity
		}
	}
	return nil
}

func parseWriteFileRecord(r *Request, d []byte) error {
	if len(d) < 1 {
		return ErrTruncated
	}
	n := int(d[0])
	if n < 0x09 || n > 0xFB {
		return ErrByteCount
	}
	if err := fixedLen(d[1:], n); err != nil {
		return err
	}
	r.Data = d[1:]
	for s := r.Data; len(s) > 0; {
		if len(s) < 7 {
			return ErrTruncated
		}
		if s[0] != fileRefType || be16(s[3:]) > maxFileRecord {
			return ErrAddress
		}
		l := 7 + 2*int(be16(s[5:]))
		if be16(s[5:]) == 0 {
			return ErrQuantity
		}
		if len(s) < l {
			return ErrTruncated
		}
		s = s[l:]
	}
	return nil
}
