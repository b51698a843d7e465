package chain_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/internal/keys/keystest"
)

// TestTrustFileWitnesses: the trust file's witness policy is read as
// written, defaults its age bound, and a policy that cannot be met or is
// not a policy is refused with a message naming what to fix.
func TestTrustFileWitnesses(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := keys.WritePair(dir, "gw-1", keystest.New(t).Handle); err != nil {
		t.Fatal(err)
	}
	_, _, cpKey := checkpointKey(t)
	w1 := otherWitnessKey(t, "witness.test/w1").String()
	w2 := otherWitnessKey(t, "witness.test/w2").String()
	head := "writers:\n  - id: gw-1\n    keyset: gw-1.public.json\ncheckpointers: [\"" + cpKey + "\"]\n"
	for _, tc := range []struct {
		name, yaml string
		quorum     int
		maxAge     time.Duration
		err        string
	}{
		{"two of two, default age", head + "witnesses: [\"" + w1 + "\", \"" + w2 + "\"]\nwitness_quorum: 2\n", 2, chain.DefaultWitnessMaxAge, ""},
		{"one of two, 10m", head + "witnesses: [\"" + w1 + "\", \"" + w2 + "\"]\nwitness_quorum: 1\nwitness_max_age: 10m\n", 1, 10 * time.Minute, ""},
		{"no quorum", head + "witnesses: [\"" + w1 + "\"]\n", 0, 0, "witness_quorum 0: say how many of the 1 witnesses must cosign"},
		{"quorum above the witnesses", head + "witnesses: [\"" + w1 + "\"]\nwitness_quorum: 2\n", 0, 0, "(1..1)"},
		{"twice the same", head + "witnesses: [\"" + w1 + "\", \"" + w1 + "\"]\nwitness_quorum: 1\n", 0, 0, "listed twice"},
		{"a checkpointer key, not a witness key", head + "witnesses: [\"" + cpKey + "\"]\nwitness_quorum: 1\n", 0, 0, "is not a cosignature/v1 (Ed25519) key"},
		{"no checkpointers", "writers:\n  - id: gw-1\n    keyset: gw-1.public.json\nwitnesses: [\"" + w1 + "\"]\nwitness_quorum: 1\n", 0, 0, "list the checkpointers' keys too"},
		{"a quorum of nobody", head + "witness_quorum: 1\n", 0, 0, "no witnesses are listed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "trust.yaml")
			if err := os.WriteFile(path, []byte(tc.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			trust, err := chain.LoadTrust(path, "")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("LoadTrust: %v, want an error saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if trust.WitnessQuorum != tc.quorum || trust.WitnessMaxAge != tc.maxAge || len(trust.Witnesses) != 2 || trust.Witnesses[0].String() != w1 {
				t.Fatalf("witness policy: quorum %d, max age %v, %d witnesses", trust.WitnessQuorum, trust.WitnessMaxAge, len(trust.Witnesses))
			}
		})
	}
}

// TestLoadCheckpointers: a trust file's checkpointer keys load; one that
// lists none is refused by name.
func TestLoadCheckpointers(t *testing.T) {
	_, pub, err := keys.WritePair(t.TempDir(), "gw-1", keystest.New(t).Handle)
	if err != nil {
		t.Fatal(err)
	}
	cpk := keystest.NewCheckpointer(t, "checkpointer-1")
	for _, tc := range []struct {
		name    string
		vkeys   []string
		wantErr string
	}{
		{"one checkpointer", []string{cpk.VerifierKey}, ""},
		{"none", nil, "lists no checkpointers"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "trust.yaml")
			if err := chain.WriteTrustFile(path, map[string]string{"gw-1": pub}, tc.vkeys...); err != nil {
				t.Fatal(err)
			}
			known, err := chain.LoadCheckpointers(path)
			if tc.wantErr != "" {
				if err == nil || err.Error() != "trust file "+path+" "+tc.wantErr {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, err := known.Verifier(cpk.Verifier.Name(), cpk.Verifier.KeyHash()); err != nil {
				t.Fatal(err)
			}
		})
	}
}
