package chain

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"gopkg.in/yaml.v3"

	"github.com/gridseal/gridseal/internal/keys"
)

// TrustFile is the YAML a verifier pins: the writers it accepts and the
// public keyset of each. Keyset paths are relative to the file.
//
//	writers:
//	  - id: gridseal-1
//	    keyset: keys/gridseal-1.public.json
type TrustFile struct {
	Writers []struct {
		ID     string `yaml:"id"`
		Keyset string `yaml:"keyset"`
	} `yaml:"writers"`
	// Checkpointers are the signed-note verifier keys whose checkpoints
	// are checked (name+hash+key, as gridseal keys checkpoint prints).
	Checkpointers []string `yaml:"checkpointers"`
}

// LoadTrust reads a trust file and, if headDir is not empty, the local heads
// kept there.
func LoadTrust(path, headDir string) (Trust, error) {
	t := Trust{Writers: map[string]WriterKeys{}, Heads: map[string]Head{}}
	data, err := os.ReadFile(path)
	if err != nil {
		return t, fmt.Errorf("trust file: %w", err)
	}
	var tf TrustFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&tf); err != nil {
		return t, fmt.Errorf("trust file %s: %v", path, strings.Join(strings.Fields(err.Error()), " "))
	}
	if len(tf.Writers) == 0 {
		return t, fmt.Errorf("trust file %s: lists no writers", path)
	}
	var vs []note.Verifier
	for _, k := range tf.Checkpointers {
		v, err := note.NewVerifier(k)
		if err != nil {
			return t, fmt.Errorf("trust file %s: checkpointer key %q: %v", path, k, err)
		}
		vs = append(vs, v)
	}
	if len(vs) > 0 {
		t.Checkpointers = note.VerifierList(vs...)
	}
	for _, w := range tf.Writers {
		if err := CheckWriterID(w.ID); err != nil {
			return t, fmt.Errorf("trust file %s: %w", path, err)
		}
		kp := w.Keyset
		if !filepath.IsAbs(kp) {
			kp = filepath.Join(filepath.Dir(path), kp)
		}
		v, err := keys.LoadVerifier(kp)
		if err != nil {
			return t, fmt.Errorf("trust file %s: writer %s: %w", path, w.ID, err)
		}
		t.Writers[w.ID] = WriterKeys{Verifier: v, KeyIDs: v.KeyIDs}
		h, ok, err := LoadHead(headDir, w.ID)
		if err != nil {
			return t, err
		}
		if ok {
			t.Heads[w.ID] = h
		}
	}
	return t, nil
}

// WriteTrust writes a trust file pinning one writer's public keyset and,
// optionally, checkpointer verifier keys.
func WriteTrust(path, writer, publicKeyset string, checkpointers ...string) error {
	rel, err := filepath.Rel(filepath.Dir(path), publicKeyset)
	if err != nil {
		rel = publicKeyset
	}
	body := fmt.Sprintf("# Writers whose chains gridseal chain verify accepts, and their public keysets.\nwriters:\n  - id: %s\n    keyset: %s\n", writer, rel)
	if len(checkpointers) > 0 {
		body += "# Keys whose signed checkpoints of the whole stream are checked.\ncheckpointers:\n"
		for _, k := range checkpointers {
			body += fmt.Sprintf("  - %q\n", k)
		}
	}
	return os.WriteFile(path, []byte(body), 0o644)
}
