package chain_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/natsembed"
	"github.com/gridseal/gridseal/internal/testwait"
)

// smallDisk mounts a tmpfs of size bytes for the test (root only; CI runs
// as root, so there the test must not skip).
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mount a small tmpfs (CI runs as root): %v %s", err, out)
		}
		t.Skipf("cannot mount a small tmpfs here (needs root): %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}

// TestDiskFullRecoversByItself: the data directory's disk fills up under
// the embedded server; writes are refused (fail closed), the server's
// out-of-space error reaches the log, and once space returns the recorder
// records again without a restart of the process.
func TestDiskFullRecoversByItself(t *testing.T) {
	for _, journal := range []bool{false, true} {
		t.Run(map[bool]string{false: "block acknowledged", true: "journal, as gridseal proxy runs it"}[journal], func(t *testing.T) {
			diskFull(t, journal)
		})
	}
}

func diskFull(t *testing.T, journal bool) {
	dataDir := smallDisk(t, "6m")
	core, logs := observer.New(zap.WarnLevel)
	conn, err := natsembed.Connect(t.Context(), natsembed.ConnectOptions{Name: "test", DataDir: dataDir, Own: true,
		Recorder: true, Log: zap.New(core), MinFree: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	signer, _ := newKey(t)
	// On the recorder's own connection, as gridseal proxy runs it: it too
	// must find the restarted server.
	cfg := chain.Config{Writer: "gw-1", Signer: signer, DurableTimeout: time.Second, PublishTimeout: 500 * time.Millisecond}
	if journal {
		cfg.HeadDir, cfg.Journal = filepath.Join(dataDir, "heads"), true
	}
	r, err := chain.Open(t.Context(), conn.Recorder(), cfg, nopLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close(time.Second) })
	if err := r.Record(t.Context(), event(1, audit.Allow), true); err != nil {
		t.Fatal(err)
	}
	filler := filepath.Join(dataDir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			break // the disk is full
		}
	}
	_ = f.Close()
	var refused bool
	for i := uint64(2); i < 2000 && !refused; i++ {
		err := r.Record(t.Context(), event(i, audit.Allow), true)
		refused = errors.Is(err, chain.ErrUnavailable) || errors.Is(err, chain.ErrSpoolFull)
		if err != nil && !refused {
			t.Fatal(err)
		}
	}
	if !refused {
		t.Fatal("durable writes still succeed on a full disk")
	}
	testwait.For(t, "the out-of-space error in the log", func() bool {
		for _, e := range logs.All() {
			if strings.Contains(e.Message, "no space left on device") || strings.Contains(e.ContextMap()["error"].(string), "no space left") {
				return true
			}
		}
		return false
	})
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "a durable write to succeed once space returned", func() bool {
		return r.Record(t.Context(), event(9999, audit.Allow), true) == nil
	})
}

// A journal on a disk without room for a file's preallocation says so
// once in the log, and works all the same (appending as the file grows).
func TestJournalSaysWhenTheDiskHasNoRoomForIt(t *testing.T) {
	heads := smallDisk(t, "6m") // under the 9 MiB a journal file takes
	e := newChain(t)
	core, logs := observer.New(zap.WarnLevel)
	r, err := chain.Open(t.Context(), e.nc, chain.Config{Writer: "gw-1", Signer: e.signer, HeadDir: heads,
		Journal: true, LeaseTTL: -1}, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close(time.Second) })
	recordOps(t, r, 1, 20, func(i int) bool { return i%5 == 0 })
	warned := logs.FilterMessageSnippet("no room preallocated").All()
	if len(warned) != 1 || !strings.Contains(fmt.Sprint(warned[0].ContextMap()["error"]), "no space left") {
		t.Fatalf("warnings %v, want one saying the disk had no room for the journal's file", logs.All())
	}
}
