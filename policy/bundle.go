package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/tink-crypto/tink-go/v2/keyset"
	"gopkg.in/yaml.v3"

	"github.com/gridseal/gridseal/internal/keys"
)

// A policy file is signed by policy admins in a sidecar FILE.sig. Each
// signature is a Tink signature over policySignTag ‖ SHA-256(file bytes).
const policySignTag = "gridseal/policy/v1\x00"

// ErrUnsigned is returned for a policy without enough admin signatures.
var ErrUnsigned = errors.New("policy not signed by enough admins")

// SigPath is the sidecar file holding a policy file's signatures.
func SigPath(policyPath string) string { return policyPath + ".sig" }

// SigFile is the sidecar's content.
type SigFile struct {
	Policy     string           `yaml:"policy"` // hex SHA-256 of the signed file
	Signatures []AdminSignature `yaml:"signatures"`
}

// AdminSignature is one policy admin's signature over a policy file, as the
// sidecar holds it: the Tink key id and the signature bytes.
type AdminSignature struct {
	KeyID     uint32 `yaml:"key_id"`
	Signature []byte `yaml:"signature"`
}

// Root is the trust anchor for policies: the admins and how many of them
// must sign.
type Root struct {
	Threshold int
	admins    map[uint32]rootAdmin
	names     []string
}

type rootAdmin struct {
	name     string
	verifier *keys.Verifier
}

// LoadRoot reads a root trust file:
//
//	threshold: 2
//	admins:
//	  - name: admin-1
//	    keyset: |
//	      { ...public Tink keyset JSON... }
func LoadRoot(path string) (*Root, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("policy root: %w", err)
	}
	var rf struct {
		Threshold int `yaml:"threshold"`
		Admins    []struct {
			Name   string `yaml:"name"`
			Keyset string `yaml:"keyset"`
		} `yaml:"admins"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&rf); err != nil {
		return nil, fmt.Errorf("policy root %s: %s", path, strings.Join(strings.Fields(err.Error()), " "))
	}
	r := &Root{Threshold: rf.Threshold, admins: map[uint32]rootAdmin{}}
	if len(rf.Admins) == 0 || rf.Threshold < 1 || rf.Threshold > len(rf.Admins) {
		return nil, fmt.Errorf("policy root %s: threshold %d of %d admins: want 1 ≤ threshold ≤ admins", path, rf.Threshold, len(rf.Admins))
	}
	for _, a := range rf.Admins {
		h, err := keyset.ReadWithNoSecrets(keyset.NewJSONReader(strings.NewReader(a.Keyset)))
		if err != nil {
			return nil, fmt.Errorf("policy root %s: admin %q: keyset is not a Tink public keyset", path, a.Name)
		}
		v, err := keys.VerifierFromHandle(h)
		if err != nil {
			return nil, fmt.Errorf("policy root %s: admin %q: %w", path, a.Name, err)
		}
		for id := range v.KeyIDs {
			if _, dup := r.admins[id]; dup {
				return nil, fmt.Errorf("policy root %s: key id %d listed twice", path, id)
			}
			r.admins[id] = rootAdmin{name: a.Name, verifier: v}
		}
		r.names = append(r.names, a.Name)
	}
	return r, nil
}

func policySignInput(data []byte) []byte {
	sum := sha256.Sum256(data)
	return append([]byte(policySignTag), sum[:]...)
}

// SignPolicy adds signer's signature over the policy file at path to its
// sidecar, creating the sidecar if needed.
func SignPolicy(path string, signer *keys.Signer) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read policy: %w", err)
	}
	if _, err := Parse(path, data); err != nil {
		return err
	}
	sig, err := signer.Sign(policySignInput(data))
	if err != nil {
		return fmt.Errorf("sign policy: %w", err)
	}
	sum := sha256.Sum256(data)
	sf := SigFile{Policy: hex.EncodeToString(sum[:])}
	if old, err := readSigFile(path); err == nil && old.Policy == sf.Policy {
		for _, s := range old.Signatures {
			if s.KeyID != signer.KeyID {
				sf.Signatures = append(sf.Signatures, s)
			}
		}
	}
	sf.Signatures = append(sf.Signatures, AdminSignature{KeyID: signer.KeyID, Signature: sig})
	out, err := yaml.Marshal(sf)
	if err != nil {
		return err
	}
	out = append([]byte("# gridseal policy signatures: Tink signatures over \"gridseal/policy/v1\\0\" and the SHA-256 of the policy file\n"), out...)
	return os.WriteFile(SigPath(path), out, 0o644)
}

func readSigFile(path string) (*SigFile, error) {
	data, err := os.ReadFile(SigPath(path))
	if err != nil {
		return nil, err
	}
	var sf SigFile
	if err := yaml.Unmarshal(data, &sf); err != nil {
		return nil, fmt.Errorf("%s: %v", SigPath(path), err)
	}
	return &sf, nil
}

// VerifyBundle checks data's signatures against root and returns the admins
// whose signatures count (distinct admins, not keys or signatures).
func (r *Root) VerifyBundle(data []byte, sf *SigFile) ([]string, error) {
	input := policySignInput(data)
	signed := map[string]bool{}
	for _, s := range sf.Signatures {
		a, ok := r.admins[s.KeyID]
		if !ok {
			continue
		}
		if id, ok := keys.SignatureKeyID(s.Signature); !ok || id != s.KeyID {
			continue
		}
		if a.verifier.Verify(s.Signature, input) == nil {
			signed[a.name] = true
		}
	}
	names := make([]string, 0, len(signed))
	for n := range signed {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) < r.Threshold {
		return names, fmt.Errorf("%w: %d of %d required (signed by: %s)", ErrUnsigned, len(names), r.Threshold, strings.Join(names, ", "))
	}
	return names, nil
}

// LoadSigned reads the policy at path and refuses it unless its sidecar
// holds signatures of at least root.Threshold distinct admins.
func LoadSigned(path string, root *Root) (*Policy, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read policy: %w", err)
	}
	p, err := Parse(path, data)
	if err != nil {
		return nil, nil, err
	}
	sf, err := readSigFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("%s: %w: no signatures (%s missing; sign with gridseal policy sign)", path, ErrUnsigned, SigPath(path))
	}
	if err != nil {
		return nil, nil, err
	}
	names, err := root.VerifyBundle(data, sf)
	if err != nil {
		return nil, names, fmt.Errorf("%s: %w", path, err)
	}
	return p, names, nil
}
