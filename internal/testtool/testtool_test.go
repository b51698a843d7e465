package testtool_test

import (
	"os/exec"
	"testing"

	"github.com/gridseal/gridseal/internal/testtool"
)

// TestPathFindsAnInstalledProgram: a program on PATH is found where
// exec.LookPath finds it; a missing one skips the test outside CI.
func TestPathFindsAnInstalledProgram(t *testing.T) {
	want, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh on PATH")
	}
	if got := testtool.Path(t, "sh"); got != want {
		t.Fatalf("Path(sh) = %q, want %q", got, want)
	}
	t.Run("missing", func(t *testing.T) {
		t.Setenv("CI", "")
		testtool.Path(t, "gridseal-no-such-program")
		t.Fatal("a missing program did not skip the test")
	})
}
