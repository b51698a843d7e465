package modbus

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func FuzzReadFrame(f *testing.F) {
	f.Add(AppendFrame(nil, 1, 1, AppendReadRequest(nil, ReadHoldingRegisters, 0, 10)))
	f.Add([]byte{0, 1, 0, 0, 0, 1, 1})
	f.Add([]byte{0, 1, 0, 0, 0xFF, 0xFF, 1, 3})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data))
		for i := 0; i < 64; i++ {
			fr, err := r.ReadFrame()
			if err != nil {
				var me *Error
				if err != io.EOF && err != io.ErrUnexpectedEOF && !errors.As(err, &me) {
					t.Fatalf("unexpected error type %T: %v", err, err)
				}
				return
			}
			if len(fr.PDU) < 1 || len(fr.Raw) > MaxFrameLen || int(fr.Length) != len(fr.PDU)+1 {
				t.Fatalf("frame violates limits: %+v", fr)
			}
			if fr.Protocol != 0 {
				t.Fatal("accepted a non-zero protocol id")
			}
		}
	})
}

func FuzzParseRequest(f *testing.F) {
	for _, ex := range specExamples {
		f.Add(unhex(f, ex.req))
	}
	f.Fuzz(func(t *testing.T, pdu []byte) {
		req, err := ParseRequest(pdu)
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error is not *Error: %v", err)
			}
			return
		}
		if req.Class() == 0 {
			t.Fatalf("accepted request with no class: %x", pdu)
		}
		if s, a, q, ok := req.WriteRange(); ok {
			if s == SpaceNone || q == 0 || uint32(a)+uint32(q) > 0x10000 {
				t.Fatalf("write range out of limits: %x", pdu)
			}
			if req.Function == WriteMultipleRegisters || req.Function == ReadWriteMultipleRegisters || req.Function == WriteSingleRegister {
				_ = req.RegisterValue(int(q) - 1) // must not panic
			}
			if req.Function == WriteMultipleCoils || req.Function == WriteSingleCoil {
				_ = req.CoilValue(int(q) - 1)
			}
		}
		if _, a, q, ok := req.ReadRange(); ok && (q == 0 || uint32(a)+uint32(q) > 0x10000) {
			t.Fatalf("read range out of limits: %x", pdu)
		}
		_, _ = ParseResponse(&req, pdu)
	})
}
