package chain

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
