package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/demo"
	"github.com/gridseal/gridseal/internal/witnesstest"
)

// TestDemoWitnessedByLitewitness: litewitness cosigns the demo's
// checkpoints and chain verify checks the cosignature with the witness's
// key; after the whole data directory (chain, heads, pinned checkpoint) is
// put back as it was two runs ago, the demo's new checkpoints are refused
// by the witness (its tree is older than the one the witness kept), so
// chain verify fails on the quorum rule.
func TestDemoWitnessedByLitewitness(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	data := t.TempDir()
	vkey, err := chain.NewCheckpointKey(filepath.Join(data, "keys"), demo.Checkpointer)
	if err != nil {
		t.Fatal(err)
	}
	lw := witnesstest.Start(t, "witness.test/w1", chain.CheckpointOrigin, vkey)
	runDemo := func() (string, string) {
		t.Helper()
		code, out, stderr := runCLI(t, ctx, "demo", "--listen", "127.0.0.1:0", "--sim-listen", "127.0.0.1:0", "--http", "off",
			"--duration", "1500ms", "--checkpoint-every", "200ms", "--log-format", "json", "--data-dir", data,
			"--witness", lw.URL+"="+lw.VKey)
		if code != 0 {
			t.Fatalf("demo exit %d\n%s\n%s", code, out, stderr)
		}
		return out, stderr
	}
	verify := func() (int, string) {
		t.Helper()
		code, out, stderr := runCLI(t, ctx, "chain", "verify", "--data-dir", data)
		return code, out + stderr
	}
	out, _ := runDemo()
	for _, want := range []string{"checkpoint origin: " + chain.CheckpointOrigin, "checkpoint verifier key: " + vkey} {
		if !strings.Contains(out, want) {
			t.Fatalf("the demo does not print %q:\n%s", want, out)
		}
	}
	if code, out := verify(); code != 0 || !strings.Contains(out, "witness witness.test/w1 cosigned the newest checkpoint") {
		t.Fatalf("chain verify after a witnessed demo: exit %d\n%s", code, out)
	}
	snap := t.TempDir()
	copyDir(t, data, snap)
	runDemo()
	if code, out := verify(); code != 0 {
		t.Fatalf("chain verify after the second run: exit %d\n%s", code, out)
	}
	// Roll the whole data directory back to after the first run.
	if err := os.RemoveAll(data); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	copyDir(t, snap, data)
	_, stderr := runDemo()
	if !strings.Contains(stderr, "the witness refused the checkpoint") {
		t.Fatalf("the demo's log shows no refusal by the witness:\n%s", stderr)
	}
	code, out := verify()
	if code == 0 || !strings.Contains(out, "carries 0 valid cosignatures") {
		t.Fatalf("chain verify of a rolled-back data directory: exit %d, want the quorum problem\n%s", code, out)
	}
}

// copyDir copies the directory from to to, keeping every file's mode
// (the data directory's keys must stay private).
func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", from+"/.", to).CombinedOutput(); err != nil {
		t.Fatalf("cp -a %s %s: %v\n%s", from, to, err, out)
	}
}
