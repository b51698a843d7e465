// Package modbus is gridseal's strict, allocation-free codec for Modbus/TCP:
// the MBAP header (Messaging on TCP/IP Implementation Guide v1.0b) and the
// request and response PDUs of every public function code of the Modbus
// Application Protocol Specification v1.1b3.
//
// The codec never trusts a length it has not checked against the spec's
// limits. Decoded values alias the caller's buffer; nothing on the hot path
// allocates. Errors carry the Modbus exception a server should answer with,
// or none when the only safe answer is to close the connection.
package modbus
