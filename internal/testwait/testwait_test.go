package testwait_test

import (
	"testing"

	"github.com/gridseal/gridseal/internal/testwait"
)

func TestForReturnsOnceTheConditionHolds(t *testing.T) {
	n := 0
	testwait.For(t, "the third poll", func() bool { n++; return n == 3 })
	if n != 3 {
		t.Fatalf("polled %d times, want 3", n)
	}
}
