package policy_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/policy"
)

func writeRoot(t *testing.T, dir string, threshold int, admins ...*keystest.Person) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "threshold: %d\nadmins:\n", threshold)
	for _, a := range admins {
		policy.WriteKeysetEntry(&b, a.Name, nil, a.PublicJSON(t))
	}
	path := filepath.Join(dir, "policy-root.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestSignedPolicyBundle(t *testing.T) {
	dir := t.TempDir()
	a1, a2, a3 := keystest.NewPerson(t, "admin-1"), keystest.NewPerson(t, "admin-2"), keystest.NewPerson(t, "admin-3")
	a1second := a1.SecondKey(t)
	root, err := policy.LoadRoot(writeRoot(t, dir, 2, a1, a2, a3))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "policy.yaml")
	body, err := os.ReadFile("testdata/plant.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, body, 0o644); err != nil {
		t.Fatal(err)
	}
	load := func() error { _, _, err := policy.LoadSigned(path, root); return err }
	if err := load(); !errors.Is(err, policy.ErrUnsigned) || !strings.Contains(err.Error(), "no signatures") {
		t.Fatalf("unsigned: %v", err)
	}
	if err := policy.SignPolicy(path, a1.Signer); err != nil {
		t.Fatal(err)
	}
	if err := load(); !errors.Is(err, policy.ErrUnsigned) || !strings.Contains(err.Error(), "1 of 2") {
		t.Fatalf("one admin: %v", err)
	}
	if err := policy.SignPolicy(path, a1second); err != nil { // same admin, another key
		t.Fatal(err)
	}
	if err := load(); !errors.Is(err, policy.ErrUnsigned) {
		t.Fatalf("one admin with two keys counted twice: %v", err)
	}
	outsider := keystest.NewPerson(t, "outsider")
	if err := policy.SignPolicy(path, outsider.Signer); err != nil {
		t.Fatal(err)
	}
	if err := load(); !errors.Is(err, policy.ErrUnsigned) {
		t.Fatalf("a key outside the root counted: %v", err)
	}
	if err := policy.SignPolicy(path, a2.Signer); err != nil {
		t.Fatal(err)
	}
	p, names, err := policy.LoadSigned(path, root)
	if err != nil || p.ID != "demo-plant" || strings.Join(names, ",") != "admin-1,admin-2" {
		t.Fatalf("two admins: %v %v", names, err)
	}
	// Any change to the signed bytes voids every signature.
	if err := os.WriteFile(path, append(body, []byte("# edited\n")...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := load(); !errors.Is(err, policy.ErrUnsigned) || !strings.Contains(err.Error(), "0 of 2") {
		t.Fatalf("edited after signing: %v", err)
	}
	if _, err := policy.LoadRoot(writeRoot(t, t.TempDir(), 3, a1, a2)); err == nil {
		t.Fatal("a threshold above the number of admins was accepted")
	}
}

func TestPolicySuccession(t *testing.T) {
	v := func(version int, extra string) *policy.Policy {
		p, err := policy.Parse("p.yaml", []byte(fmt.Sprintf("id: plant\nversion: %d\ndevices:\n  - {name: a, upstream: 'h:1'}\n%s", version, extra)))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	state := filepath.Join(t.TempDir(), "in-force.json")
	prev, err := policy.LoadAccepted(state)
	if err != nil || prev != nil {
		t.Fatalf("no state yet: %v %v", prev, err)
	}
	if err := policy.SaveAccepted(state, v(3, "")); err != nil {
		t.Fatal(err)
	}
	prev, _ = policy.LoadAccepted(state)
	for _, tc := range []struct {
		name string
		next *policy.Policy
		ok   bool
	}{
		{"newer", v(4, ""), true},
		{"same", v(3, ""), true},
		{"older", v(2, ""), false},
		{"same version, other content", v(3, "# changed\n"), false},
	} {
		err := policy.CheckSuccession(prev, tc.next)
		if (err == nil) != tc.ok || (!tc.ok && !errors.Is(err, policy.ErrRollback)) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}
