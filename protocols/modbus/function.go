package modbus

import "strconv"

// Function is a Modbus function code.
type Function byte

// Public function codes (Modbus Application Protocol v1.1b3, section 5.1).
const (
	ReadCoils                  Function = 1
	ReadDiscreteInputs         Function = 2
	ReadHoldingRegisters       Function = 3
	ReadInputRegisters         Function = 4
	WriteSingleCoil            Function = 5
	WriteSingleRegister        Function = 6
	ReadExceptionStatus        Function = 7
	Diagnostics                Function = 8
	GetCommEventCounter        Function = 11
	GetCommEventLog            Function = 12
	WriteMultipleCoils         Function = 15
	WriteMultipleRegisters     Function = 16
	ReportServerID             Function = 17
	ReadFileRecord             Function = 20
	WriteFileRecord            Function = 21
	MaskWriteRegister          Function = 22
	ReadWriteMultipleRegisters Function = 23
	ReadFIFOQueue              Function = 24
	EncapsulatedInterface      Function = 43
)

// MEIReadDeviceID is the only MEI type of function 43 gridseal accepts
// (Read Device Identification).
const MEIReadDeviceID = 0x0E

// Spec limits on quantities (Modbus Application Protocol v1.1b3, section 6).
const (
	MaxReadBits       = 2000 // FC 1, 2
	MaxReadRegisters  = 125  // FC 3, 4, 23 read part
	MaxWriteBits      = 1968 // FC 15
	MaxWriteRegisters = 123  // FC 16
	MaxRWWrite        = 121  // FC 23 write part
	MaxFIFOCount      = 31   // FC 24
)

// Class says what a request does to the device.
type Class uint8

// Classes start at 1 so that a zero Class is never mistaken for a read.
const (
	ClassRead Class = iota + 1
	ClassWrite
	ClassDiagnostic
)

// String returns "read", "write" or "diagnostic".
func (c Class) String() string {
	switch c {
	case ClassRead:
		return "read"
	case ClassWrite:
		return "write"
	case ClassDiagnostic:
		return "diagnostic"
	}
	return "unknown"
}

// Class classifies a function code. Function 43 is a read only with the
// Read Device Identification MEI type; Request.Class accounts for that.
func (f Function) Class() Class {
	switch f {
	case ReadCoils, ReadDiscreteInputs, ReadHoldingRegisters, ReadInputRegisters,
		ReadFileRecord, ReadFIFOQueue, EncapsulatedInterface:
		return ClassRead
	case WriteSingleCoil, WriteSingleRegister, WriteMultipleCoils, WriteMultipleRegisters,
		WriteFileRecord, MaskWriteRegister, ReadWriteMultipleRegisters:
		return ClassWrite
	case ReadExceptionStatus, Diagnostics, GetCommEventCounter, GetCommEventLog, ReportServerID:
		return ClassDiagnostic
	}
	return 0
}

// Known reports whether f is one of the public function codes this codec decodes.
func (f Function) Known() bool { return f.Class() != 0 }

// String returns the specification's name of the function.
func (f Function) String() string {
	switch f {
	case ReadCoils:
		return "read coils"
	case ReadDiscreteInputs:
		return "read discrete inputs"
	case ReadHoldingRegisters:
		return "read holding registers"
	case ReadInputRegisters:
		return "read input registers"
	case WriteSingleCoil:
		return "write single coil"
	case WriteSingleRegister:
		return "write single register"
	case ReadExceptionStatus:
		return "read exception status"
	case Diagnostics:
		return "diagnostics"
	case GetCommEventCounter:
		return "get comm event counter"
	case GetCommEventLog:
		return "get comm event log"
	case WriteMultipleCoils:
		return "write multiple coils"
	case WriteMultipleRegisters:
		return "write multiple registers"
	case ReportServerID:
		return "report server id"
	case ReadFileRecord:
		return "read file record"
	case WriteFileRecord:
		return "write file record"
	case MaskWriteRegister:
		return "mask write register"
	case ReadWriteMultipleRegisters:
		return "read/write multiple registers"
	case ReadFIFOQueue:
		return "read fifo queue"
	case EncapsulatedInterface:
		return "encapsulated interface transport"
	}
	return "function " + strconv.Itoa(int(f))
}

// Space is the data table a request addresses.
type Space uint8

// Data tables of the Modbus data model.
const (
	SpaceNone Space = iota
	SpaceCoils
	SpaceDiscreteInputs
	SpaceHoldingRegisters
	SpaceInputRegisters
)

// String returns the table's name.
func (s Space) String() string {
	switch s {
	case SpaceCoils:
		return "coils"
	case SpaceDiscreteInputs:
		return "discrete-inputs"
	case SpaceHoldingRegisters:
		return "holding-registers"
	case SpaceInputRegisters:
		return "input-registers"
	}
	return "none"
}
