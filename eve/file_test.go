//go:build unix

package eve_test

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/eve"
	"github.com/gridseal/gridseal/eve/evetest"
	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/protocols/modbus"
)

func readEvent(op uint64) *audit.Event {
	return &audit.Event{Time: time.Now(), Op: op, Phase: audit.PhaseComplete, Client: client, Listener: listener, Device: "inverter-1",
		Unit: 1, Function: 3, Class: "read", Address: 40084, Quantity: 1, PDU: modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 40084, 1),
		Verdict: audit.Allow, Rule: "telemetry", Reason: "telemetry", Response: []byte{3, 2, 0, 1}}
}

func countLines(t *testing.T, path string) int {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(b, []byte("\n"))
}

// TestFileRotation: by age (a line after Every goes to a new file, the old
// one is Path.1) and by size, keeping at most Keep rotated files.
func TestFileRotation(t *testing.T) {
	t.Run("age", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "eve.json")
		f, err := eve.OpenFile(eve.FileConfig{Path: path, Every: 100 * time.Millisecond}, eve.Mapper{Writer: "gw-1"}, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		start := time.Now()
		_ = f.Record(t.Context(), readEvent(1), false)
		testwait.For(t, "the first line", func() bool { return countLines(t, path) == 1 })
		testwait.For(t, "the file's age", func() bool { return time.Since(start) > 150*time.Millisecond })
		_ = f.Record(t.Context(), readEvent(2), false)
		testwait.For(t, "rotation", func() bool { return countLines(t, path+".1") == 1 && countLines(t, path) == 1 })
	})
	t.Run("size", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "eve.json")
		f, err := eve.OpenFile(eve.FileConfig{Path: path, MaxSize: 2000, Keep: 3}, eve.Mapper{Writer: "gw-1"}, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		for i := range 20 {
			_ = f.Record(t.Context(), readEvent(uint64(i+1)), false)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		for i := 1; i <= 3; i++ {
			fi, err := os.Stat(path + "." + strconv.Itoa(i))
			if err != nil || fi.Size() < 2000 || fi.Size() > 4000 {
				t.Fatalf("%s.%d: %v", path, i, err)
			}
		}
		if _, err := os.Stat(path + ".4"); !os.IsNotExist(err) {
			t.Fatalf("%s.4 kept beyond keep 3: %v", path, err)
		}
		b, _ := os.ReadFile(path + ".1")
		evetest.Check(t, b)
	})
}

// TestFileNeverBlocks: a disk that takes nothing (a pipe nobody reads)
// does not hold Record up; what the queue cannot keep is counted, and
// every event is either written or counted.
func TestFileNeverBlocks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "eve.json")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Skip("no FIFO:", err)
	}
	rd, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	f, err := eve.OpenFile(eve.FileConfig{Path: path, Buffer: 4}, eve.Mapper{Writer: "gw-1"}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	const n = 400 // ~500 KB of lines: more than the pipe, the writer's buffer and the queue hold
	for i := range n {
		_ = f.Record(t.Context(), readEvent(uint64(i+1)), false)
	}
	if f.Dropped() == 0 {
		t.Fatal("nothing dropped although the disk took nothing")
	}
	if err := syscall.SetNonblock(int(rd.Fd()), false); err != nil {
		t.Fatal(err)
	}
	lines := make(chan int)
	go func() {
		c, sc := 0, bufio.NewScanner(rd)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			c++
		}
		lines <- c
	}()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := <-lines + int(f.Dropped()); got != n {
		t.Fatalf("%d written + %d dropped = %d, want %d", got-int(f.Dropped()), f.Dropped(), got, n)
	}
}
