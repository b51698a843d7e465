package modbus

import (
	"bufio"
	"encoding/binary"
	"io"
)

// Frame size limits of Modbus/TCP (Messaging on TCP/IP v1.0b, section 4.1).
const (
	HeaderLen   = 7                     // MBAP header: transaction, protocol, length, unit
	MaxPDULen   = 253                   // function code and data
	MaxFrameLen = HeaderLen + MaxPDULen // 260
	minLength   = 2                     // unit id and function code
	maxLength   = MaxPDULen + 1         // unit id and the largest PDU
)

// Header is the MBAP header that precedes every Modbus/TCP PDU.
type Header struct {
	Transaction uint16 // chosen by the client, echoed by the server
	Protocol    uint16 // always 0 for Modbus
	Length      uint16 // bytes that follow: unit id plus PDU
	Unit        byte   // unit identifier (slave address behind a gateway)
}

// ParseHeader decodes and checks the 7-byte MBAP header at the start of b.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderLen {
		return Header{}, ErrTruncated
	}
	h := Header{
		Transaction: binary.BigEndian.Uint16(b[0:2]),
		Protocol:    binary.BigEndian.Uint16(b[2:4]),
		Length:      binary.BigEndian.Uint16(b[4:6]),
		Unit:        b[6],
	}
	if h.Protocol != 0 {
		return h, ErrProtocolID
	}
	if h.Length < minLength || h.Length > maxLength {
		return h, ErrLength
	}
	return h, nil
}

// AppendFrame appends an MBAP header for pdu, then pdu, to dst.
func AppendFrame(dst []byte, transaction uint16, unit byte, pdu []byte) []byte {
	dst = binary.BigEndian.AppendUint16(dst, transaction)
	dst = append(dst, 0, 0)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(pdu)+1))
	dst = append(dst, unit)
	return append(dst, pdu...)
}

// Frame is one Modbus/TCP application data unit.
type Frame struct {
	Header
	PDU []byte // function code and data; aliases the Reader's buffer
	Raw []byte // the whole frame as read, header included; aliases too
}

// Function returns the frame's function code.
func (f Frame) Function() Function { return Function(f.PDU[0]) }

// Reader reads Modbus/TCP frames from a byte stream with a fixed buffer.
// A frame's slices are valid until the next call to ReadFrame.
// A Reader is not safe for concurrent use.
type Reader struct {
	br  *bufio.Reader
	buf [MaxFrameLen]byte
}

// NewReader returns a Reader on r.
func NewReader(r io.Reader) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, 4096)}
}

// Buffered returns the number of bytes read from the stream but not yet consumed.
func (r *Reader) Buffered() int { return r.br.Buffered() }

// WaitByte blocks until at least one byte is buffered, without consuming it.
// Callers use it to tell an idle connection from a slow frame.
func (r *Reader) WaitByte() error {
	_, err := r.br.Peek(1)
	return err
}

// FrameReady reports whether ReadFrame would return without reading from
// the stream: a whole frame is buffered, or a header that ReadFrame will
// refuse. A caller that bounds a frame's arrival with a deadline need not
// set one then.
func (r *Reader) FrameReady() bool {
	if r.br.Buffered() < HeaderLen {
		return false
	}
	b, _ := r.br.Peek(HeaderLen)
	h, err := ParseHeader(b)
	return err != nil || r.br.Buffered() >= HeaderLen+int(h.Length)-1
}

// ReadFrame reads exactly one frame. It returns io.EOF on a clean end of
// stream between frames, io.ErrUnexpectedEOF inside a frame, and a *Error
// (with no exception code) when the header is inconsistent; in that case the
// stream is no longer in sync and the connection must be closed.
func (r *Reader) ReadFrame() (Frame, error) {
	if _, err := io.ReadFull(r.br, r.buf[:HeaderLen]); err != nil {
		return Frame{}, err
	}
	h, err := ParseHeader(r.buf[:HeaderLen])
	if err != nil {
		return Frame{Header: h}, err
	}
	n := HeaderLen + int(h.Length) - 1
	if _, err := io.ReadFull(r.br, r.buf[HeaderLen:n]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return Frame{Header: h}, err
	}
	return Frame{Header: h, PDU: r.buf[HeaderLen:n], Raw: r.buf[:n]}, nil
}
