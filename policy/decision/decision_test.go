package decision_test

import (
	"testing"

	"github.com/gridseal/gridseal/policy/decision"
)

func TestZeroResultIsNotAllowed(t *testing.T) {
	var v decision.Result
	if v.Allowed() {
		t.Fatal("the zero Result must not allow")
	}
}
