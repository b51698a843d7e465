package cli

import (
	"io"
	"os"
	"path/filepath"
	"testing"
)

// TestCommandName: the commands gridseal prints for a user to run next
// start the way they started it.
func TestCommandName(t *testing.T) {
	cases := []struct{ name, arg0, wd, want string }{
		{"make demo", "./bin/gridseal", "/src/gridseal", "bin/gridseal"},
		{"found on PATH", "gridseal", "/home/op", "gridseal"},
		{"from the site folder", "../bin/gridseal", "/src/gridseal/site", "../bin/gridseal"},
		{"absolute path elsewhere", "/usr/local/bin/gridseal", "/home/op/plant", "/usr/local/bin/gridseal"},
		{"absolute path below", "/src/gridseal/bin/gridseal", "/src/gridseal", "bin/gridseal"},
		{"in the working directory", "./gridseal", "/opt/gs", "./gridseal"},
		{"go run", "/tmp/go-build1234/b001/exe/gridseal", "/src/gridseal", "gridseal"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := CommandName(tc.arg0, tc.wd); got != tc.want {
				t.Fatalf("commandName(%q, %q) = %q, want %q", tc.arg0, tc.wd, got, tc.want)
			}
		})
	}
}

// TestStartCPUProfile: the profile file is written once stopped; a path
// that cannot be created is an error.
func TestStartCPUProfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cpu.pprof")
	stop, err := StartCPUProfile(path, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	stop()
	if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
		t.Fatalf("profile %v, %v", fi, err)
	}
	if _, err := StartCPUProfile(filepath.Join(t.TempDir(), "no", "such", "dir"), io.Discard); err == nil {
		t.Fatal("a profile in a missing directory started")
	}
}
