package keys

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func TestKeysetFiles(t *testing.T) {
	dir := t.TempDir()
	for _, alg := range []string{Ed25519, ECDSAP256} {
		name := "k-" + strings.ReplaceAll(alg, "-", "")
		h, err := New(alg)
		if err != nil {
			t.Fatal(err)
		}
		priv, pub, err := WritePair(dir, name, h)
		if err != nil {
			t.Fatal(err)
		}
		if fi, _ := os.Stat(priv); fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: private keyset mode %v", alg, fi.Mode().Perm())
		}
		s, err := LoadSigner(priv)
		if err != nil {
			t.Fatal(err)
		}
		v, err := LoadVerifier(pub)
		if err != nil {
			t.Fatal(err)
		}
		sig, err := s.Sign([]byte("setpoint 30"))
		if err != nil {
			t.Fatal(err)
		}
		if err := v.Verify(sig, []byte("setpoint 30")); err != nil || !v.KeyIDs[s.KeyID] {
			t.Fatalf("%s: verify: %v", alg, err)
		}
		if v.Verify(sig, []byte("setpoint 31")) == nil {
			t.Fatalf("%s: a signature verified for other data", alg)
		}
		if _, err := LoadSigner(pub); err == nil {
			t.Fatalf("%s: a public keyset loaded as a signer", alg)
		}
		if _, _, err := WritePair(dir, name, h); !errors.Is(err, ErrExists) {
			t.Fatalf("%s: overwrite: %v", alg, err)
		}
		if err := os.Chmod(priv, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadSigner(priv); err == nil || !strings.Contains(err.Error(), "readable by others") {
			t.Fatalf("%s: world-readable private keyset accepted: %v", alg, err)
		}
	}
	if _, err := New("rsa"); err == nil {
		t.Fatal("unknown algorithm accepted")
	}
}
