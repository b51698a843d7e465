package chain_test

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/atomicfile"
)

// TestCosignerKeyFiles: gridseal keys witness writes a key pair whose
// cosignatures verify with the verifier key it prints — by
// CosignatureVerifier and, written out here from c2sp.org/tlog-cosignature
// alone, by Ed25519 over "cosignature/v1\ntime T\n" ‖ the note's text —
// and not on another checkpoint; the secret key is refused when others
// may read it, and a second key of the same name is refused.
func TestCosignerKeyFiles(t *testing.T) {
	dir := t.TempDir()
	vkey, err := chain.NewCosignerKey(dir, "mirror.example/m1")
	if err != nil {
		t.Fatal(err)
	}
	sp, vp := chain.CosignerKeyPaths(dir, "mirror.example/m1")
	if b, err := os.ReadFile(vp); err != nil || strings.TrimSpace(string(b)) != vkey {
		t.Fatalf("verifier key file %s: %q, %v", vp, b, err)
	}
	c, err := chain.LoadCosigner(sp)
	if err != nil {
		t.Fatal(err)
	}
	v, err := chain.NewCosignatureVerifier(vkey)
	if err != nil || v.String() != vkey || c.Verifier().String() != vkey {
		t.Fatalf("verifier key %q: %v, %v", vkey, v, err)
	}

	s, _, _ := checkpointKey(t)
	cp, err := chain.SignCheckpoint(7, chain.Hash{1, 2, 3}, s)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Unix(1764072000, 0)
	line := c.Cosign([]byte(cp.Body()), at)
	cosigned := append(append([]byte(nil), cp.Note...), line...)
	cs, err := chain.Cosignatures(cosigned, []*chain.CosignatureVerifier{v})
	if err != nil || len(cs) != 1 || cs[0].Witness != "mirror.example/m1" || !cs[0].Time.Equal(at) {
		t.Fatalf("cosignatures %+v, %v", cs, err)
	}

	// By the spec, with nothing of ours: key ID, timestamp, signature.
	raw, _ := base64.StdEncoding.DecodeString(strings.TrimSpace(strings.TrimPrefix(string(line), "— mirror.example/m1 ")))
	pub, _ := base64.StdEncoding.DecodeString(strings.SplitN(vkey, "+", 3)[2])
	msg := "cosignature/v1\ntime 1764072000\n" + cp.Body()
	if len(raw) != 4+8+64 || binary.BigEndian.Uint64(raw[4:12]) != 1764072000 || pub[0] != 0x04 ||
		!ed25519.Verify(ed25519.PublicKey(pub[1:]), []byte(msg), raw[12:]) {
		t.Fatalf("the cosignature line %q does not verify as c2sp.org/tlog-cosignature says", line)
	}

	other, err := chain.SignCheckpoint(8, chain.Hash{1, 2, 3}, s)
	if err != nil {
		t.Fatal(err)
	}
	forged := append(append([]byte(nil), other.Note...), line...)
	if _, err := chain.Cosignatures(forged, []*chain.CosignatureVerifier{v}); !errors.Is(err, chain.ErrBadCosignature) {
		t.Fatalf("the cosignature moved to another checkpoint: %v, want ErrBadCosignature", err)
	}
	if _, err := note.Open(forged, note.VerifierList(v)); err == nil {
		t.Fatal("note.Open accepts a cosignature of another checkpoint")
	}

	if _, err := chain.NewCosignerKey(dir, "mirror.example/m1"); !errors.Is(err, atomicfile.ErrExists) {
		t.Fatalf("a second key of the same name: %v, want ErrExists", err)
	}
	if err := os.Chmod(sp, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := chain.LoadCosigner(sp); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a secret key others may read: %v", err)
	}
	for _, bad := range []string{"", "PRIVATE+KEY+x", strings.Replace(mustRead(t, sp), "+", "+0", 1)} {
		if _, err := chain.NewCosigner(strings.TrimSpace(bad)); err == nil {
			t.Fatalf("secret key %q accepted", bad)
		}
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
