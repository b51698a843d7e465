package testwait_test

import (
	"errors"
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

func TestNoErrorReturnsOnceTryDoes(t *testing.T) {
	n := 0
	testwait.NoError(t, "the third try", func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if n != 3 {
		t.Fatalf("tried %d times, want 3", n)
	}
}
