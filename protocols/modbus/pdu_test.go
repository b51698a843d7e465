package modbus

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// specExamples are the request/response pairs printed in the Modbus
// Application Protocol Specification v1.1b3, section 6.
var specExamples = []struct {
	name      string
	req, resp string
	class     Class
	addr, qty uint16
}{
	{"fc1 read coils 20-38", "01 0013 0013", "01 03 CD6B05", ClassRead, 0x13, 0x13},
	{"fc2 read discrete inputs 197-218", "02 00C4 0016", "02 03 ACDB35", ClassRead, 0xC4, 0x16},
	{"fc3 read holding 108-110", "03 006B 0003", "03 06 022B 0000 0064", ClassRead, 0x6B, 3},
	{"fc4 read input 9", "04 0008 0001", "04 02 000A", ClassRead, 8, 1},
	{"fc5 write coil 173 on", "05 00AC FF00", "05 00AC FF00", ClassWrite, 0xAC, 1},
	{"fc6 write register 2", "06 0001 0003", "06 0001 0003", ClassWrite, 1, 1},
	{"fc7 read exception status", "07", "07 6D", ClassDiagnostic, 0, 0},
	{"fc8 return query data", "08 0000 A537", "08 0000 A537", ClassDiagnostic, 0, 0},
	{"fc11 get comm event counter", "0B", "0B FFFF 0108", ClassDiagnostic, 0, 0},
	{"fc12 get comm event log", "0C", "0C 08 0000 0108 0121 2000", ClassDiagnostic, 0, 0},
	{"fc15 write coils 20-29", "0F 0013 000A 02 CD01", "0F 0013 000A", ClassWrite, 0x13, 10},
	{"fc16 write registers 2-3", "10 0001 0002 04 000A 0102", "10 0001 0002", ClassWrite, 1, 2},
	{"fc17 report server id", "11", "11 02 01FF", ClassDiagnostic, 0, 0},
	{"fc20 read file record", "14 0E 06 0004 0001 0002 06 0003 0009 0002",
		"14 0C 05 06 0DFE 0020 05 06 33CD 0040", ClassRead, 0, 0},
	{"fc21 write file record", "15 0D 06 0004 0007 0003 06AF 04BE 100D",
		"15 0D 06 0004 0007 0003 06AF 04BE 100D", ClassWrite, 0, 0},
	{"fc22 mask write register 4", "16 0004 00F2 0025", "16 0004 00F2 0025", ClassWrite, 4, 1},
	{"fc23 read/write registers", "17 0003 0006 000E 0003 06 00FF 00FF 00FF",
		"17 0C 00FE 0ACD 0001 0003 000D 00FF", ClassWrite, 3, 6},
	{"fc24 read fifo queue", "18 04DE", "18 0006 0002 01B8 1284", ClassRead, 0x4DE, 0},
	{"fc43/14 read device id", "2B 0E 01 00", "2B 0E 01 01 00 00 03 00 08 67726964 7365616C 01 01 31 02 01 32", ClassRead, 0, 0},
}

func TestSpecExamples(t *testing.T) {
	for _, tc := range specExamples {
		t.Run(tc.name, func(t *testing.T) {
			req, err := ParseRequest(unhex(t, tc.req))
			if err != nil {
				t.Fatalf("ParseRequest: %v", err)
			}
			if got := req.Class(); got != tc.class {
				t.Errorf("class = %v, want %v", got, tc.class)
			}
			if req.Address != tc.addr || req.Quantity != tc.qty {
				t.Errorf("range = %d+%d, want %d+%d", req.Address, req.Quantity, tc.addr, tc.qty)
			}
			if _, err := ParseResponse(&req, unhex(t, tc.resp)); err != nil {
				t.Errorf("ParseResponse: %v", err)
			}
			exc := AppendException(nil, req.Function, IllegalDataAddress)
			resp, err := ParseResponse(&req, exc)
			if err != nil || resp.Exception != IllegalDataAddress {
				t.Errorf("exception response: %v, %v", resp.Exception, err)
			}
		})
	}
}

func TestRequestValues(t *testing.T) {
	req, err := ParseRequest(unhex(t, "17 0003 0006 000E 0003 06 00FF 00FE 00FD"))
	if err != nil {
		t.Fatal(err)
	}
	s, a, q, ok := req.WriteRange()
	if !ok || s != SpaceHoldingRegisters || a != 0x0E || q != 3 {
		t.Fatalf("write range = %v %d %d %v", s, a, q, ok)
	}
	for i, want := range []uint16{0xFF, 0xFE, 0xFD} {
		if got := req.RegisterValue(i); got != want {
			t.Errorf("value %d = %#x, want %#x", i, got, want)
		}
	}
	coils, err := ParseRequest(unhex(t, "0F 0013 000A 02 CD01"))
	if err != nil {
		t.Fatal(err)
	}
	// 0xCD01: coils 20..29 = 1,0,1,1,0,0,1,1, 1,0 (LSB first).
	want := []bool{true, false, true, true, false, false, true, true, true, false}
	for i, w := range want {
		if got := coils.CoilValue(i); got != w {
			t.Errorf("coil %d = %v, want %v", i, got, w)
		}
	}
	on, _ := ParseRequest(AppendWriteSingleCoil(nil, 7, true))
	off, _ := ParseRequest(AppendWriteSingleCoil(nil, 7, false))
	if !on.CoilValue(0) || off.CoilValue(0) {
		t.Error("write single coil value decoding is wrong")
	}
}

func TestWriteValues(t *testing.T) {
	cases := []struct {
		name string
		pdu  string
		want []uint16
	}{
		{"read writes nothing", "03 0000 0002", nil},
		{"single register", "06 0001 0003", []uint16{3}},
		{"multiple coils as 0/1", "0F 0013 000A 02 CD01", []uint16{1, 0, 1, 1, 0, 0, 1, 1, 1, 0}},
		{"single coil", "05 0007 FF00", []uint16{1}},
		{"mask write as AND and OR masks", "16 0004 00F2 0025", []uint16{0xF2, 0x25}},
		{"read/write multiple: the written part", "17 0003 0006 000E 0003 06 00FF 00FE 00FD", []uint16{0xFF, 0xFE, 0xFD}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := ParseRequest(unhex(t, tc.pdu))
			if err != nil {
				t.Fatal(err)
			}
			got := req.WriteValues()
			if len(got) != len(tc.want) || (tc.want == nil) != (got == nil) {
				t.Fatalf("WriteValues = %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("WriteValues = %v, want %v", got, tc.want)
				}
			}
		})
	}
}

// rejectCase is a PDU, in hex, and the error parsing it gives.
type rejectCase struct {
	name, pdu string
	want      *Error
}

// checkRejects wants parse's error on each case's PDU to be the case's.
func checkRejects(t *testing.T, cases []rejectCase, parse func(pdu []byte) error) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := parse(unhex(t, tc.pdu)); err != tc.want {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestParseRequestRejects(t *testing.T) {
	checkRejects(t, []rejectCase{
		{"empty", "", ErrTruncated},
		{"unknown function", "41 0000 0001", ErrFunction},
		{"user-defined function 100", "64", ErrFunction},
		{"fc3 quantity 0", "03 0000 0000", ErrQuantity},
		{"fc3 quantity 126", "03 0000 007E", ErrQuantity},
		{"fc3 quantity 125 ok but past 65535", "03 FFFF 007D", ErrAddress},
		{"fc3 truncated", "03 0000 00", ErrTruncated},
		{"fc3 trailing byte", "03 0000 0001 00", ErrTrailing},
		{"fc1 quantity 2001", "01 0000 07D1", ErrQuantity},
		{"fc5 bad value", "05 0001 1234", ErrValue},
		{"fc16 quantity 0", "10 0000 0000 00", ErrQuantity},
		{"fc16 quantity 124", "10 0000 007C F8", ErrQuantity},
		{"fc16 byte count not 2x quantity", "10 0001 0002 03 000A01", ErrByteCount},
		{"fc16 data shorter than byte count", "10 0001 0002 04 000A", ErrTruncated},
		{"fc16 data longer than byte count", "10 0001 0002 04 000A 0102 03", ErrTrailing},
		{"fc15 quantity 1969", "0F 0000 07B1 F7", ErrQuantity},
		{"fc15 byte count wrong", "0F 0013 000A 01 CD", ErrByteCount},
		{"fc23 write quantity 122", "17 0000 0001 0000 007A F4", ErrQuantity},
		{"fc23 byte count wrong", "17 0003 0006 000E 0003 05 00FF 00FF 00", ErrByteCount},
		{"fc22 short", "16 0004 00F2", ErrTruncated},
		{"fc7 with data", "07 00", ErrTrailing},
		{"fc8 unknown sub-function", "08 0005 0000", ErrSubFunction},
		{"fc43 CANopen MEI", "2B 0D 00 00", ErrSubFunction},
		{"fc43 bad read code", "2B 0E 05 00", ErrValue},
		{"fc20 byte count not multiple of 7", "14 08 06 0004 0001 0002 00", ErrByteCount},
		{"fc20 bad reference type", "14 07 05 0004 0001 0002", ErrAddress},
		{"fc21 record overruns", "15 09 06 0004 0007 0003 06AF", ErrTruncated},
	}, func(pdu []byte) error {
		_, err := ParseRequest(pdu)
		return err
	})
}

func TestParseResponseRejects(t *testing.T) {
	req, _ := ParseRequest(unhex(t, "03 006B 0003"))
	checkRejects(t, []rejectCase{
		{"other function", "04 06 022B 0000 0064", ErrResponseFunction},
		{"short byte count", "03 04 022B 0000", ErrResponseLength},
		{"byte count lies", "03 06 022B 0000", ErrResponseLength},
		{"exception with data", "83 02 00", ErrResponseLength},
		{"exception code 0", "83 00", ErrResponseCode},
	}, func(pdu []byte) error {
		_, err := ParseResponse(&req, pdu)
		return err
	})
	w, _ := ParseRequest(unhex(t, "06 0001 0003"))
	if _, err := ParseResponse(&w, unhex(t, "06 0001 0004")); err != ErrResponseEcho {
		t.Fatalf("altered echo: err = %v", err)
	}
}

func TestErrorsCarryExceptions(t *testing.T) {
	var e *Error
	if !errors.As(error(ErrQuantity), &e) || e.Exception != IllegalDataValue {
		t.Fatal("ErrQuantity must answer illegal data value")
	}
	if ErrProtocolID.Exception != 0 || ErrTruncated.Exception != 0 {
		t.Fatal("framing errors must close, not answer")
	}
}

func TestReadFrame(t *testing.T) {
	good := unhex(t, "0001 0000 0006 11 03 006B 0003")
	cases := []struct {
		name  string
		input []byte
		want  error
	}{
		{"good", good, nil},
		{"bad protocol id", unhex(t, "0001 0001 0006 11 03 006B 0003"), ErrProtocolID},
		{"length 0", unhex(t, "0001 0000 0000 11"), ErrLength},
		{"length 1", unhex(t, "0001 0000 0001 11"), ErrLength},
		{"length 255", append(unhex(t, "0001 0000 00FF 11"), make([]byte, 254)...), ErrLength},
		{"length 65535", unhex(t, "0001 0000 FFFF 11"), ErrLength},
		{"truncated header", unhex(t, "0001 0000"), io.ErrUnexpectedEOF},
		{"truncated pdu", unhex(t, "0001 0000 0006 11 03 00"), io.ErrUnexpectedEOF},
		{"empty stream", nil, io.EOF},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, err := NewReader(bytes.NewReader(tc.input)).ReadFrame()
			if err != tc.want {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if err == nil && (f.Transaction != 1 || f.Unit != 0x11 || !bytes.Equal(f.Raw, good)) {
				t.Fatalf("frame = %+v", f)
			}
		})
	}
}

func TestReadFrameSequence(t *testing.T) {
	var stream []byte
	for i := uint16(0); i < 100; i++ {
		stream = AppendFrame(stream, i, byte(i), AppendReadRequest(nil, ReadHoldingRegisters, i, 1+i%125))
	}
	r := NewReader(bytes.NewReader(stream))
	for i := uint16(0); i < 100; i++ {
		f, err := r.ReadFrame()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		req, err := ParseRequest(f.PDU)
		if err != nil || f.Transaction != i || req.Address != i || req.Quantity != 1+i%125 {
			t.Fatalf("frame %d: tid %d req %+v err %v", i, f.Transaction, req, err)
		}
	}
	if _, err := r.ReadFrame(); err != io.EOF {
		t.Fatalf("after last frame: %v", err)
	}
}

// chunks returns one chunk per Read, as a socket hands over segments.
type chunks [][]byte

func (c *chunks) Read(p []byte) (int, error) {
	if len(*c) == 0 {
		return 0, io.EOF
	}
	n := copy(p, (*c)[0])
	(*c)[0] = (*c)[0][n:]
	if len((*c)[0]) == 0 {
		*c = (*c)[1:]
	}
	return n, nil
}

func TestFrameReady(t *testing.T) {
	frame := AppendFrame(nil, 7, 1, AppendReadRequest(nil, ReadHoldingRegisters, 0, 10))
	bad := append([]byte{0, 1, 0, 9}, frame[4:]...) // protocol id 9
	for _, tc := range []struct {
		name           string
		parts          [][]byte
		ready, refused bool
	}{
		{"whole frame", [][]byte{frame}, true, false},
		{"header cut", [][]byte{frame[:5], frame[5:]}, false, false},
		{"pdu cut", [][]byte{frame[:9], frame[9:]}, false, false},
		{"bad header, refused without more bytes", [][]byte{bad[:HeaderLen], bad[HeaderLen:]}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := chunks(tc.parts)
			r := NewReader(&src)
			if err := r.WaitByte(); err != nil {
				t.Fatal(err)
			}
			if got := r.FrameReady(); got != tc.ready {
				t.Fatalf("FrameReady = %v with %d bytes buffered, want %v", got, r.Buffered(), tc.ready)
			}
			if _, err := r.ReadFrame(); (err != nil) != tc.refused {
				t.Fatalf("ReadFrame: %v, want refused %v", err, tc.refused)
			}
		})
	}
}
