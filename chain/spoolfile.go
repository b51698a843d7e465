package chain

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/gridseal/gridseal/internal/atomicfile"
)

// The spool file keeps, across a restart, the events a recorder could not
// commit before it stopped: DATA-DIR/heads/<writer>.spool, a sequence of
// u32 length | encoded event. The next Open puts them back at the front of
// the spool, and the file goes once they are committed.
func spoolPath(dir, writer string) string { return filepath.Join(dir, writer+".spool") }

// opsPath keeps the operation numbers reserved by earlier runs.
func opsPath(dir, writer string) string { return filepath.Join(dir, writer+".ops") }

// saveSpool writes what is still spooled (and a gap event for what could
// not be spooled) to the spool file. Durable waiters were already told.
func (r *Recorder) saveSpool() error {
	r.mu.Lock()
	r.appendGapLocked("the recorder's spool was full when it stopped")
	spool := r.spool
	if r.jr != nil && r.failed == nil {
		spool = r.spool[r.journaled-r.base:] // the rest is in the journal
	}
	lost := r.lost
	r.mu.Unlock()
	if len(spool) == 0 && lost == 0 {
		return nil
	}
	if r.cfg.HeadDir == "" {
		return fmt.Errorf("%d chain events not recorded (no head directory to keep them in)", len(spool))
	}
	var b []byte
	for _, e := range spool {
		b = binary.BigEndian.AppendUint32(b, uint32(len(e.data)))
		b = append(b, e.data...)
	}
	if err := atomicfile.Write(spoolPath(r.cfg.HeadDir, r.cfg.Writer), b, 0o600); err != nil {
		return fmt.Errorf("%d chain events not recorded, and not kept: %w", len(spool), err)
	}
	r.log.Warn("chain events kept for the next start", zap.Int("events", len(spool)),
		zap.String("file", spoolPath(r.cfg.HeadDir, r.cfg.Writer)))
	return nil
}

// loadSpool puts the events a previous run kept back into the spool (with
// a journal, into the journal: see foldSpool).
func (r *Recorder) loadSpool() error {
	if r.cfg.HeadDir == "" {
		return nil
	}
	if r.jr != nil {
		return r.foldSpool()
	}
	events, err := readSpoolFile(spoolPath(r.cfg.HeadDir, r.cfg.Writer))
	if err != nil {
		return err
	}
	if len(events) == 0 {
		return nil
	}
	if err := r.respool(events); err != nil {
		return fmt.Errorf("chain spool file %s: %w", spoolPath(r.cfg.HeadDir, r.cfg.Writer), err)
	}
	r.log.Info("chain events kept by the last run spooled again", zap.Int("events", r.restored))
	return nil
}

// dropRestoredLocked drops n restored events, recorded already, from the
// front of the spool. r.mu is held.
func (r *Recorder) dropRestoredLocked(n int) {
	for _, e := range r.spool[:n] {
		r.spoolBytes -= len(e.data)
	}
	clear(r.spool[:n])
	r.spool = r.spool[n:]
	if r.jr != nil {
		r.base += uint64(n) // they were journaled: dropJournaled
	}
	r.restored = max(r.restored-n, 0)
	r.levelLocked()
}

// respool puts events a previous run kept (spool file or journal) back at
// the end of the spool, noting their operation numbers. Before the
// recorder runs: r.mu is not needed.
func (r *Recorder) respool(events [][]byte) error {
	for _, data := range events {
		ev, err := DecodeEvent(data)
		if err != nil {
			return err
		}
		r.noteOp(ev.Op)
		r.spool = append(r.spool, entry{data: data})
		r.spoolBytes += len(data)
	}
	r.restored = len(r.spool)
	r.levelLocked()
	return nil
}

// readSpoolFile returns the events of a spool file, none if there is none.
func readSpoolFile(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("chain spool file: %w", err)
	}
	var events [][]byte
	for len(b) > 0 {
		if len(b) < 4 || int(binary.BigEndian.Uint32(b)) > len(b)-4 {
			return nil, fmt.Errorf("chain spool file %s is truncated: check it, then move it away to start without it", path)
		}
		n := binary.BigEndian.Uint32(b)
		events = append(events, b[4:4+n:4+n])
		b = b[4+n:]
	}
	return events, nil
}

// foldSpool moves the events of a spool file (a run without a journal
// left it) into the journal, fsync'd, then removes the file. After a crash
// in between (nothing is committed before Open returns) the journal's
// last records are those events: they are not appended twice.
func (r *Recorder) foldSpool() error {
	path := spoolPath(r.cfg.HeadDir, r.cfg.Writer)
	events, err := readSpoolFile(path)
	if err != nil || len(events) == 0 {
		return err
	}
	folded := len(events) <= len(r.spool)
	for i, e := range events {
		folded = folded && bytes.Equal(e, r.spool[len(r.spool)-len(events)+i].data)
	}
	if !folded {
		if err := r.respool(events); err != nil {
			return fmt.Errorf("chain spool file %s: %w", path, err)
		}
		if err := r.jr.append(events, r.journaled, true); err != nil {
			return err
		}
		r.journaled += uint64(len(events))
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("chain spool file: %w", err)
	}
	if err := atomicfile.SyncDir(r.cfg.HeadDir); err != nil {
		return fmt.Errorf("chain spool file: %w", err)
	}
	r.log.Info("chain events kept by the last run moved to the journal", zap.Int("events", len(events)))
	return nil
}

// dropLanded removes from the front of the restored spool the events of
// the writer's last block when they are exactly those: the previous run's
// last publish landed although its acknowledgement never came (or a
// buffered publish went out as it stopped), so they are recorded already.
func (r *Recorder) dropLanded(events [][]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(events)
	if n == 0 || n > r.restored || n > len(r.spool) {
		return
	}
	for i, e := range events {
		if !bytes.Equal(e, r.spool[i].data) {
			return
		}
	}
	r.dropRestoredLocked(n)
	r.log.Info("kept chain events were recorded already by the last run's last block", zap.Int("events", n))
	if r.restored == 0 {
		r.removeSpoolFile()
	}
}

func (r *Recorder) removeSpoolFile() {
	if err := os.Remove(spoolPath(r.cfg.HeadDir, r.cfg.Writer)); err != nil && !errors.Is(err, os.ErrNotExist) {
		r.log.Warn("chain spool file not removed", zap.Error(err))
	}
}

// noteOp remembers the highest operation number seen in this writer's
// chain or spool.
func (r *Recorder) noteOp(op uint64) {
	r.mu.Lock()
	r.lastOp = max(r.lastOp, op)
	r.mu.Unlock()
}

// ReserveOps returns the first of span operation numbers this writer has
// not used before, across restarts and crashes: above every op in its last
// block and its kept spool, and above what earlier runs reserved (kept in
// DATA-DIR/heads/<writer>.ops, written before the numbers are handed out).
// Call it once, after Open, before recording.
func (r *Recorder) ReserveOps(span uint64) (uint64, error) {
	r.mu.Lock()
	first := r.lastOp
	r.mu.Unlock()
	if r.cfg.HeadDir == "" {
		return first, nil
	}
	path := opsPath(r.cfg.HeadDir, r.cfg.Writer)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		hw, perr := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if perr != nil {
			return 0, fmt.Errorf("operation numbers file %s is corrupt: %v", path, perr)
		}
		first = max(first, hw)
	case !errors.Is(err, os.ErrNotExist):
		return 0, fmt.Errorf("operation numbers file: %w", err)
	}
	if err := atomicfile.Write(path, []byte(strconv.FormatUint(first+span, 10)+"\n"), 0o600); err != nil {
		return 0, fmt.Errorf("operation numbers file: %w", err)
	}
	return first, nil
}
