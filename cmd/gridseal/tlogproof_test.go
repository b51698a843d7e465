package main

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"golang.org/x/mod/sumdb/note"

	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/internal/testwait"
)

// TestTlogProofRoundTrip: chain prove --format tlog-proof, from the tiles
// a tiler keeps, writes a c2sp.org/tlog-proof file that chain verify-proof
// checks with the trust file alone; the file with one byte of its event or
// of a proof hash changed fails with exit 1.
func TestTlogProofRoundTrip(t *testing.T) {
	c := recordChain(t, 3, 100)
	keyDir := t.TempDir()
	if code, _, stderr := runCLI(t, t.Context(), "keys", "checkpoint", "cp-1", "--dir", keyDir); code != 0 {
		t.Fatal(stderr)
	}
	skey, err := os.ReadFile(filepath.Join(keyDir, "cp-1.checkpoint.key"))
	if err != nil {
		t.Fatal(err)
	}
	vkey, _ := os.ReadFile(filepath.Join(keyDir, "cp-1.checkpoint.vkey"))
	signer, err := note.NewSigner(strings.TrimSpace(string(skey)))
	if err != nil {
		t.Fatal(err)
	}
	trust, _ := os.ReadFile(c.trust)
	trust = append(trust, "checkpointers:\n  - "+strings.TrimSpace(string(vkey))+"\n"...)
	if err := os.WriteFile(c.trust, trust, 0o600); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(natstest.Connect(t, c.srv.URL()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{}, 2)
	defer func() { cancel(); <-done; <-done }()
	go func() {
		_ = (&chain.Checkpointer{Signer: signer, EveryEvents: 300, Log: zap.NewNop()}).Run(ctx, js)
		done <- struct{}{}
	}()
	tilesDir := t.TempDir()
	tl, err := chain.OpenTiler(tilesDir, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = tl.Run(ctx, js)
		done <- struct{}{}
	}()
	testwait.For(t, "300 events tiled", func() bool { return tl.Size() == 300 })
	proofPath := filepath.Join(t.TempDir(), "write.tlog-proof")
	testwait.For(t, "a proof of the 150th write", func() bool {
		code, _, _ := c.cli(t, "chain", "prove", "--seq", "2", "--index", "49", "--trust", c.trust, "--tiles", tilesDir,
			"--format", "tlog-proof", "--out", proofPath)
		return code == 0
	})
	proof, err := os.ReadFile(proofPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(proof), "\n")
	if lines[0] != "c2sp.org/tlog-proof@v1" || !strings.HasPrefix(lines[1], "extra ") || lines[2] != "index 149" {
		t.Fatalf("proof file:\n%s", proof)
	}
	code, out, stderr := runCLI(t, t.Context(), "chain", "verify-proof", proofPath, "--trust", c.trust)
	if code != 0 || !strings.Contains(out, "proof OK: leaf 149 of the tree of 300 events signed by cp-1") ||
		!strings.Contains(out, "inverter-1 unit 1 function 6 address 40127") {
		t.Fatalf("verify-proof: exit %d\n%s%s", code, out, stderr)
	}
	extra, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(lines[1], "extra "))
	for _, tc := range []struct {
		name   string
		change func([]string)
		want   string
	}{
		{"a byte of the event", func(l []string) {
			e := append([]byte(nil), extra...)
			e[30] ^= 1
			l[1] = "extra " + base64.StdEncoding.EncodeToString(e)
		}, "the event is not leaf 149"},
		{"a byte of a proof hash", func(l []string) {
			h, _ := base64.StdEncoding.DecodeString(l[4])
			h[0] ^= 1
			l[4] = base64.StdEncoding.EncodeToString(h)
		}, "the event is not leaf 149"},
		{"the index", func(l []string) { l[2] = "index 148" }, "the event is not leaf 148"},
		{"the checkpoint's size", func(l []string) {
			for i, s := range l {
				if s == "300" {
					l[i] = "301"
				}
			}
		}, "checkpoint signature"},
		{"not a proof", func(l []string) { l[0] = "c2sp.org/tlog-proof@v2" }, "the first line is not c2sp.org/tlog-proof@v1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := append([]string(nil), lines...)
			tc.change(l)
			bad := filepath.Join(t.TempDir(), "bad.tlog-proof")
			if err := os.WriteFile(bad, []byte(strings.Join(l, "\n")), 0o644); err != nil {
				t.Fatal(err)
			}
			code, out, stderr := runCLI(t, t.Context(), "chain", "verify-proof", bad, "--trust", c.trust)
			if code != 1 || !strings.Contains(stderr, tc.want) || strings.Contains(out, "proof OK") {
				t.Fatalf("exit %d, want 1 with %q:\n%s%s", code, tc.want, out, stderr)
			}
		})
	}
}
