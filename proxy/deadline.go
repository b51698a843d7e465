package proxy

import "time"

// deadline is a connection's read or write deadline, moved only when it
// has drifted out of [7/8, 1] of a timeout ahead. Setting a deadline costs
// a runtime timer update; set before every read and write it was a tenth
// of the proxy's own CPU per request. A limit such as "a client idle for
// five minutes is closed" or "a reply not taken within a second closes the
// connection" holds as well within an eighth.
type deadline struct{ at time.Time }

// due reports whether the deadline must be set anew to now+timeout, and if
// so keeps that as the deadline in force.
func (d *deadline) due(now time.Time, timeout time.Duration) bool {
	if left := d.at.Sub(now); left >= timeout-timeout/8 && left <= timeout {
		return false
	}
	d.at = now.Add(timeout)
	return true
}
