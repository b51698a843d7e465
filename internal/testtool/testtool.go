// Package testtool finds the outside programs some tests drive (mbpoll,
// an independent Modbus client; chromium, for the console), which
// `make test` installs.
package testtool

import (
	"os"
	"os/exec"
	"testing"
)

// Path returns where name is installed. Without it the test is skipped,
// except in CI (CI set), where it fails: there the Makefile's tools target
// should have installed it.
func Path(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "" {
			t.Skip(name + " not installed; `make test` installs it")
		}
		t.Fatal(name + " not installed in CI: the Makefile's tools target should have installed it")
	}
	return p
}
