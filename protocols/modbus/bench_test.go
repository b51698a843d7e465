package modbus

import (
	"bytes"
	"testing"
)

// loopReader replays one buffer forever without allocating.
type loopReader struct {
	b   []byte
	off int
}

func (l *loopReader) Read(p []byte) (int, error) {
	n := copy(p, l.b[l.off:])
	l.off = (l.off + n) % len(l.b)
	return n, nil
}

func BenchmarkReadFrameAndParse(b *testing.B) {
	frame := AppendFrame(nil, 7, 1, AppendWriteMultipleRegisters(nil, 40000, []uint16{1, 2, 3, 4, 5, 6, 7, 8}))
	r := NewReader(&loopReader{b: bytes.Repeat(frame, 64)})
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	for b.Loop() {
		f, err := r.ReadFrame()
		if err != nil {
			b.Fatal(err)
		}
		if _, err := ParseRequest(f.PDU); err != nil {
			b.Fatal(err)
		}
	}
}

func TestDecodeDoesNotAllocate(t *testing.T) {
	frame := AppendFrame(nil, 7, 1, AppendReadRequest(nil, ReadHoldingRegisters, 0, 125))
	resp := []byte{3, 250}
	resp = append(resp, make([]byte, 250)...)
	r := NewReader(&loopReader{b: bytes.Repeat(frame, 16)})
	allocs := testing.AllocsPerRun(1000, func() {
		f, err := r.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		req, err := ParseRequest(f.PDU)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseResponse(&req, resp); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("decoding allocated %.1f times per frame", allocs)
	}
}
