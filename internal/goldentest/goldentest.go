// Package goldentest compares what a test produced with a golden file in
// testdata: the formats others read (events, blocks, EVE exports) are
// pinned there, and rewritten only on purpose, with go test -update.
package goldentest

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata")

// Check fails t unless got equals testdata/name, saying why the file must
// not simply be regenerated (contract). With -update it writes got there
// first.
func Check(t testing.TB, name string, got []byte, contract string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update in this package to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s changed: %s\ngot:\n%s\nwant:\n%s", path, contract, got, want)
	}
}
