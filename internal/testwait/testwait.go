// Package testwait is the one way gridseal's tests wait on a condition:
// poll it, return as soon as it holds, fail the test after a deadline;
// and how they wait for what they ran in the background (Go).
package testwait

import (
	"context"
	"testing"
	"time"
)

// Timeout is how long For waits. It is generous because a loaded CI
// machine is slow; a condition that holds returns at once.
const Timeout = 20 * time.Second

// For polls cond until it returns true, and fails the test with
// "timed out waiting for <what>" if it does not within Timeout. It polls
// quickly at first (from 100 µs) and then every 5 ms at most. Like
// t.Fatal, it must be called from the test's own goroutine.
func For(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !poll(cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}

// NoError is For with a condition that fails with an error: it polls try
// until it returns nil, and on timeout names what and try's last error.
func NoError(t testing.TB, what string, try func() error) {
	t.Helper()
	var err error
	if !poll(func() bool { err = try(); return err == nil }) {
		t.Fatalf("timed out waiting for %s: %v", what, err)
	}
}

// Go runs run in a goroutine of its own until the test ends; then it
// cancels run's context, waits for run to return and fails the test if it
// returned an error, naming what.
func Go(t testing.TB, what string, run func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", what, err)
		}
	})
}

func poll(cond func() bool) bool {
	deadline := time.Now().Add(Timeout)
	for pause := 100 * time.Microsecond; !cond(); pause = min(2*pause, 5*time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pause)
	}
	return true
}
