package chain

import (
	"sync"
	"sync/atomic"
	"time"
)

// BreakJournal makes every later journal append of r fail with err, as a
// full disk or an I/O error would (for the external tests).
func BreakJournal(r *Recorder, err error) {
	r.jmu.Lock()
	r.jr.broken = err
	r.jmu.Unlock()
}

// FailForTest stops r as keepLease does when its lease was taken.
func FailForTest(r *Recorder, err error) { r.fail(err) }

// MendJournal undoes BreakJournal, as space returning to a full disk does
// for a write that failed (not an fsync: that breaks it for good).
func MendJournal(r *Recorder) {
	r.jmu.Lock()
	r.jr.broken = nil
	r.jbroken.Store(nil)
	r.jmu.Unlock()
}

// HoldJournalSync makes r's next journal fsync wait, as a disk busy with
// another writer's flush would, until the returned func is called (or at
// most d).
func HoldJournalSync(r *Recorder, d time.Duration) (release func()) {
	return HoldJournalSyncs(r, 1, d)
}

// HoldJournalSyncs holds r's next n journal fsyncs as HoldJournalSync
// holds one.
func HoldJournalSyncs(r *Recorder, n int32, d time.Duration) (release func()) {
	var seen atomic.Int32
	ch := make(chan struct{})
	var once sync.Once
	r.jmu.Lock()
	r.jr.beforeSync = func() {
		if seen.Add(1) <= n {
			select {
			case <-ch:
			case <-time.After(d):
			}
		}
	}
	r.jmu.Unlock()
	return func() { once.Do(func() { close(ch) }) }
}
