package goldentest_test

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/gridseal/gridseal/internal/goldentest"
)

// recorder is a testing.TB whose Fatal keeps the failure and stops the
// goroutine, as testing's does, without failing the test, so Check's
// verdicts can be checked.
type recorder struct {
	testing.TB
	failed string
}

func (r *recorder) Fatal(args ...any) {
	r.failed = fmt.Sprint(args...)
	runtime.Goexit()
}

func (r *recorder) Fatalf(format string, _ ...any) {
	r.failed = format
	runtime.Goexit()
}

func (r *recorder) Helper() {}

// check runs goldentest.Check as a test would and returns its failure.
func check(t *testing.T, name, got string) string {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		goldentest.Check(r, name, []byte(got), "bump its version instead")
	}()
	<-done
	return r.failed
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "testdata"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "testdata", "v1.txt"), []byte("block 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	for _, tc := range []struct {
		name, file, got string
		fails           string // "": passes; else a prefix of the failure's format
	}{
		{"same bytes", "v1.txt", "block 1\n", ""},
		{"changed", "v1.txt", "block 2\n", "%s changed: %s"},
		{"no golden file", "v2.txt", "block 1\n", "%v (run go test -update"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			failed := check(t, tc.file, tc.got)
			if tc.fails == "" && failed != "" || !strings.HasPrefix(failed, tc.fails) {
				t.Fatalf("failure %q, want one starting %q", failed, tc.fails)
			}
		})
	}
}
