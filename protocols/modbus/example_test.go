package modbus_test

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/gridseal/gridseal/protocols/modbus"
)

// A request arrives as one Modbus/TCP frame: the MBAP header, then the PDU.
// ReadFrame checks the header; ParseRequest checks the PDU against the
// specification's limits and classifies it.
func Example() {
	// Transaction 7, unit 1: read 2 holding registers at 40084.
	wire := modbus.AppendFrame(nil, 7, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 40084, 2))
	fmt.Printf("frame % x\n", wire)

	f, err := modbus.NewReader(bytes.NewReader(wire)).ReadFrame()
	if err != nil {
		fmt.Println("close the connection:", err)
		return
	}
	req, err := modbus.ParseRequest(f.PDU)
	if err != nil {
		fmt.Println("malformed:", err)
		return
	}
	space, addr, qty, _ := req.ReadRange()
	fmt.Printf("transaction %d unit %d: %s (%s) %s %d..%d\n",
		f.Transaction, f.Unit, req.Function, req.Class(), space, addr, addr+qty-1)

	// The device answers 2 registers (byte count 4); ParseResponse checks
	// that the answer fits the request before the client sees it.
	resp, err := modbus.ParseResponse(&req, []byte{0x03, 0x04, 0x00, 0x64, 0x01, 0xF4})
	if err != nil {
		fmt.Println("bad reply:", err)
		return
	}
	fmt.Println("values", resp.RegisterValues(nil))
	// Output:
	// frame 00 07 00 00 00 06 01 03 9c 94 00 02
	// transaction 7 unit 1: read holding registers (read) holding-registers 40084..40085
	// values [100 500]
}

// A request that breaks the specification's value limits is answered with
// the exception the error carries, and never forwarded. A broken frame
// carries no exception: the connection must be closed.
func ExampleAppendException() {
	pdu := modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0, 126) // at most 125 registers
	_, err := modbus.ParseRequest(pdu)
	var merr *modbus.Error
	if errors.As(err, &merr) && merr.Exception != 0 {
		reply := modbus.AppendException(nil, modbus.ReadHoldingRegisters, merr.Exception)
		fmt.Printf("%v\nanswer % x (%s)\n", err, modbus.AppendFrame(nil, 7, 1, reply), merr.Exception)
	}

	_, err = modbus.ParseHeader([]byte{0, 7, 0, 1, 0, 6, 1}) // protocol id 1
	if errors.As(err, &merr) && merr.Exception == 0 {
		fmt.Println(err, "- close the connection")
	}
	// Output:
	// modbus: quantity outside the specification's limits
	// answer 00 07 00 00 00 03 01 83 03 (illegal data value)
	// modbus: protocol id is not 0 - close the connection
}
