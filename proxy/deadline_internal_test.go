package proxy

import (
	"testing"
	"time"
)

// A deadline moves only when it would fall outside [7/8, 1] of its
// timeout: often enough that every limit holds within an eighth, rarely
// enough that a busy connection does not update a timer per request.
func TestDeadlineStaysWithinAnEighth(t *testing.T) {
	var d deadline
	t0 := time.Now()
	if !d.due(t0, 8*time.Second) || !d.at.Equal(t0.Add(8*time.Second)) {
		t.Fatalf("first deadline not set: %v", d.at)
	}
	if d.due(t0.Add(time.Second), 8*time.Second) {
		t.Fatal("moved while still 7/8 of the timeout ahead")
	}
	if !d.due(t0.Add(1001*time.Millisecond), 8*time.Second) || !d.at.Equal(t0.Add(9001*time.Millisecond)) {
		t.Fatalf("not moved once less than 7/8 ahead: %v", d.at)
	}
	// A shorter limit (the read timeout after the idle timeout) moves it
	// nearer at once.
	if !d.due(t0.Add(2*time.Second), time.Second) || !d.at.Equal(t0.Add(3*time.Second)) {
		t.Fatalf("a shorter timeout did not bring the deadline nearer: %v", d.at)
	}
}
