package modbus

// Response is a decoded response PDU, checked against the request it answers.
type Response struct {
	PDU       []byte
	Function  Function      // the request's function code
	Exception ExceptionCode // non-zero for an exception response
	Data      []byte        // payload after the function code (normal responses)
}

// ParseResponse checks that pdu is a well-formed answer to req: the same
// function (or its exception), and the length, byte count and echo the
// specification requires for that request. It never allocates.
func ParseResponse(req *Request, pdu []byte) (Response, error) {
	if len(pdu) == 0 {
		return Response{}, ErrTruncated
	}
	resp := Response{PDU: pdu, Function: req.Function}
	if pdu[0] == byte(req.Function)|0x80 {
		if len(pdu) != 2 {
			return resp, ErrResponseLength
		}
		if pdu[1] == 0 {
			return resp, ErrResponseCode
		}
		resp.Exception = ExceptionCode(pdu[1])
		return resp, nil
	}
	if pdu[0] != byte(req.Function) {
		return resp, ErrResponseFunction
	}
	d := pdu[1:]
	resp.Data = d
	switch req.Function {
	case ReadCoils, ReadDiscreteInputs:
		return resp, countedLen(d, (int(req.Quantity)+7)/8)
	case ReadHoldingRegisters, ReadInputRegisters, ReadWriteMultipleRegisters:
		return resp, countedLen(d, 2*int(req.Quantity))
	case WriteSingleCoil, WriteSingleRegister, MaskWriteRegister, WriteFileRecord:
		if string(pdu) != string(req.PDU) {
			return resp, ErrResponseEcho
		}
	case WriteMultipleCoils, WriteMultipleRegisters:
		if len(d) != 4 {
			return resp, ErrResponseLength
		}
		if string(d) != string(req.PDU[1:5]) {
			return resp, ErrResponseEcho
		}
	case ReadExceptionStatus:
		if len(d) != 1 {
			return resp, ErrResponseLength
		}
	case GetCommEventCounter:
		if len(d) != 4 {
			return resp, ErrResponseLength
		}
	case GetCommEventLog, ReportServerID, ReadFileRecord:
		if len(d) < 1 || int(d[0]) != len(d)-1 {
			return resp, ErrResponseLength
		}
	case Diagnostics:
		if len(d) < 2 || be16(d) != req.Sub {
			return resp, ErrResponseEcho
		}
	case ReadFIFOQueue:
		if len(d) < 4 || int(be16(d)) != len(d)-2 {
			return resp, ErrResponseLength
		}
		if n := be16(d[2:]); n > MaxFIFOCount || 2+2*int(n) != len(d)-2 {
			return resp, ErrResponseLength
		}
	case EncapsulatedInterface:
		if len(d) < 6 || uint16(d[0]) != req.Sub {
			return resp, ErrResponseEcho
		}
	default:
		return resp, ErrFunction
	}
	return resp, nil
}

// countedLen checks a byte-count-prefixed payload of exactly n bytes.
func countedLen(d []byte, n int) error {
	if len(d) != 1+n || int(d[0]) != n {
		return ErrResponseLength
	}
	return nil
}

// AppendReadRequest appends a request PDU for functions 1 to 4.
func AppendReadRequest(dst []byte, fn Function, addr, qty uint16) []byte {
	return append(dst, byte(fn), byte(addr>>8), byte(addr), byte(qty>>8), byte(qty))
}

// AppendWriteSingleRegister appends a function 6 request PDU.
func AppendWriteSingleRegister(dst []byte, addr, value uint16) []byte {
	return append(dst, byte(WriteSingleRegister), byte(addr>>8), byte(addr), byte(value>>8), byte(value))
}

// AppendWriteSingleCoil appends a function 5 request PDU.
func AppendWriteSingleCoil(dst []byte, addr uint16, on bool) []byte {
	var v byte
	if on {
		v = 0xFF
	}
	return append(dst, byte(WriteSingleCoil), byte(addr>>8), byte(addr), v, 0)
}

// AppendWriteMultipleRegisters appends a function 16 request PDU.
func AppendWriteMultipleRegisters(dst []byte, addr uint16, values []uint16) []byte {
	n := len(values)
	dst = append(dst, byte(WriteMultipleRegisters), byte(addr>>8), byte(addr), byte(n>>8), byte(n), byte(2*n))
	for _, v := range values {
		dst = append(dst, byte(v>>8), byte(v))
	}
	return dst
}

// AppendWriteMultipleCoils appends a function 15 request PDU.
func AppendWriteMultipleCoils(dst []byte, addr uint16, values []bool) []byte {
	n := len(values)
	bc := (n + 7) / 8
	dst = append(dst, byte(WriteMultipleCoils), byte(addr>>8), byte(addr), byte(n>>8), byte(n), byte(bc))
	start := len(dst)
	dst = append(dst, make([]byte, bc)...)
	for i, on := range values {
		if on {
			dst[start+i/8] |= 1 << (uint(i) % 8)
		}
	}
	return dst
}

// RegisterValues decodes a register read response's values into dst.
func (r *Response) RegisterValues(dst []uint16) []uint16 {
	if len(r.Data) < 1 {
		return dst
	}
	b := r.Data[1:]
	for i := 0; i+1 < len(b); i += 2 {
		dst = append(dst, be16(b[i:]))
	}
	return dst
}
