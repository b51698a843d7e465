package modbus

import "strconv"

// ExceptionCode is a Modbus exception code carried by an exception response.
type ExceptionCode byte

// Exception codes from the Modbus Application Protocol v1.1b3, section 7.
const (
	IllegalFunction                    ExceptionCode = 0x01
	IllegalDataAddress                 ExceptionCode = 0x02
	IllegalDataValue                   ExceptionCode = 0x03
	ServerDeviceFailure                ExceptionCode = 0x04
	Acknowledge                        ExceptionCode = 0x05
	ServerDeviceBusy                   ExceptionCode = 0x06
	MemoryParityError                  ExceptionCode = 0x08
	GatewayPathUnavailable             ExceptionCode = 0x0A
	GatewayTargetDeviceFailedToRespond ExceptionCode = 0x0B
)

// String names the exception as the specification does.
func (c ExceptionCode) String() string {
	switch c {
	case IllegalFunction:
		return "illegal function"
	case IllegalDataAddress:
		return "illegal data address"
	case IllegalDataValue:
		return "illegal data value"
	case ServerDeviceFailure:
		return "server device failure"
	case Acknowledge:
		return "acknowledge"
	case ServerDeviceBusy:
		return "server device busy"
	case MemoryParityError:
		return "memory parity error"
	case GatewayPathUnavailable:
		return "gateway path unavailable"
	case GatewayTargetDeviceFailedToRespond:
		return "gateway target device failed to respond"
	}
	return "exception 0x" + strconv.FormatUint(uint64(c), 16)
}

// Valid reports whether c is an exception code the specification defines.
func (c ExceptionCode) Valid() bool {
	switch c {
	case IllegalFunction, IllegalDataAddress, IllegalDataValue, ServerDeviceFailure,
		Acknowledge, ServerDeviceBusy, MemoryParityError, GatewayPathUnavailable,
		GatewayTargetDeviceFailedToRespond:
		return true
	}
	return false
}

// AppendException appends the exception response PDU for function fn.
func AppendException(dst []byte, fn Function, code ExceptionCode) []byte {
	return append(dst, byte(fn)|0x80, byte(code))
}

// Error is a decoding error. Exception is the code a server answers with, or
// zero when the frame is structurally broken and the connection must close.
// Errors are immutable values shared by every caller, so returning one does
// not allocate.
type Error struct {
	Exception ExceptionCode
	msg       string
}

func (e *Error) Error() string { return e.msg }

func closeErr(msg string) *Error { return &Error{msg: msg} }

func exErr(code ExceptionCode, msg string) *Error { return &Error{Exception: code, msg: msg} }

// Frame-level errors: the connection must be closed.
var (
	ErrProtocolID  = closeErr("modbus: protocol id is not 0")
	ErrLength      = closeErr("modbus: MBAP length outside 2..254")
	ErrTruncated   = closeErr("modbus: PDU shorter than its function requires")
	ErrTrailing    = closeErr("modbus: PDU longer than its function allows")
	ErrByteCount   = exErr(IllegalDataValue, "modbus: byte count does not match quantity")
	ErrQuantity    = exErr(IllegalDataValue, "modbus: quantity outside the specification's limits")
	ErrValue       = exErr(IllegalDataValue, "modbus: value not allowed by the specification")
	ErrAddress     = exErr(IllegalDataAddress, "modbus: address range past 65535")
	ErrFunction    = exErr(IllegalFunction, "modbus: unknown or unsupported function code")
	ErrSubFunction = exErr(IllegalFunction, "modbus: unknown sub-function or MEI type")
)

// Response-level errors, reported by ParseResponse.
var (
	ErrResponseFunction = closeErr("modbus: response function does not match request")
	ErrResponseLength   = closeErr("modbus: response length does not match request")
	ErrResponseEcho     = closeErr("modbus: response does not echo the request")
	ErrResponseCode     = closeErr("modbus: exception response with undefined code")
)
