package chain

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

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
	// Witnesses are cosignature/v1 verifier keys of the witnesses whose
	// cosignatures count (c2sp.org/tlog-cosignature); WitnessQuorum of them
	// must have cosigned the newest checkpoint, within WitnessMaxAge
	// (default DefaultWitnessMaxAge).
	Witnesses     []string      `yaml:"witnesses"`
	WitnessQuorum int           `yaml:"witness_quorum"`
	WitnessMaxAge time.Duration `yaml:"witness_max_age"`
}

// DefaultWitnessMaxAge is how old the quorum's cosignature of the newest
// checkpoint may be when the trust file does not say: the checkpointer
// asks every few seconds while events come, and a plant's proxies see
// polling all day, so an hour is long past a witness's restart.
const DefaultWitnessMaxAge = time.Hour

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
	if err := tf.witnesses(&t); err != nil {
		return t, fmt.Errorf("trust file %s: %w", path, err)
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
	return WriteTrustFile(path, map[string]string{writer: publicKeyset}, checkpointers...)
}

// TrustArgs reads gridseal chain trust's arguments: writers as
// ID=PUBLIC-KEYSET each, checkpointers as verifier keys or the .vkey files
// that hold them (gridseal keys checkpoint writes NAME.checkpoint.vkey).
func TrustArgs(writers, checkpointers []string) (map[string]string, []string, error) {
	ws := map[string]string{}
	for _, w := range writers {
		id, path, ok := strings.Cut(w, "=")
		if !ok || id == "" || path == "" {
			return nil, nil, fmt.Errorf("--writer %q: want ID=PUBLIC-KEYSET", w)
		}
		ws[id] = path
	}
	var vkeys []string
	for _, c := range checkpointers {
		if b, err := os.ReadFile(c); err == nil {
			c = strings.TrimSpace(string(b))
		}
		vkeys = append(vkeys, c)
	}
	return ws, vkeys, nil
}

// WriteTrustFile writes a trust file pinning each writer's public keyset
// (writer id → keyset path, written relative to the file) and checkpointer
// verifier keys. It checks what it pins: valid writer ids, keysets that
// load, verifier keys that parse.
func WriteTrustFile(path string, writers map[string]string, checkpointers ...string) error {
	if len(writers) == 0 {
		return fmt.Errorf("trust file %s: name at least one writer", path)
	}
	var b strings.Builder
	b.WriteString("# Writers whose chains gridseal chain verify accepts, and their public keysets.\nwriters:\n")
	ids := make([]string, 0, len(writers))
	for id := range writers {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if err := CheckWriterID(id); err != nil {
			return err
		}
		if _, err := keys.LoadVerifier(writers[id]); err != nil {
			return fmt.Errorf("writer %s: %w", id, err)
		}
		rel, err := filepath.Rel(filepath.Dir(path), writers[id])
		if err != nil {
			rel = writers[id]
		}
		fmt.Fprintf(&b, "  - id: %s\n    keyset: %s\n", id, rel)
	}
	if len(checkpointers) > 0 {
		b.WriteString("# Keys whose signed checkpoints of the whole stream are checked.\ncheckpointers:\n")
		for _, k := range checkpointers {
			if _, err := note.NewVerifier(k); err != nil {
				return fmt.Errorf("checkpointer key %q: %v", k, err)
			}
			fmt.Fprintf(&b, "  - %q\n", k)
		}
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// witnesses checks the witness policy and sets it in t.
func (tf *TrustFile) witnesses(t *Trust) error {
	if len(tf.Witnesses) == 0 {
		if tf.WitnessQuorum != 0 {
			return fmt.Errorf("witness_quorum %d, but no witnesses are listed", tf.WitnessQuorum)
		}
		return nil
	}
	if len(tf.Checkpointers) == 0 {
		return errors.New("witnesses cosign checkpoints: list the checkpointers' keys too")
	}
	names := map[string]bool{}
	for _, k := range tf.Witnesses {
		v, err := NewCosignatureVerifier(k)
		if err != nil {
			return err
		}
		if names[v.Name()] {
			return fmt.Errorf("witness %s is listed twice", v.Name())
		}
		names[v.Name()] = true
		t.Witnesses = append(t.Witnesses, v)
	}
	if tf.WitnessQuorum < 1 || tf.WitnessQuorum > len(tf.Witnesses) {
		return fmt.Errorf("witness_quorum %d: say how many of the %d witnesses must cosign (1..%d)",
			tf.WitnessQuorum, len(tf.Witnesses), len(tf.Witnesses))
	}
	t.WitnessQuorum = tf.WitnessQuorum
	t.WitnessMaxAge = tf.WitnessMaxAge
	if t.WitnessMaxAge <= 0 {
		t.WitnessMaxAge = DefaultWitnessMaxAge
	}
	return nil
}
