package mirror

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/atomicfile"
)

// StateFile is where a mirror keeps, under its directory, the checkpoint
// it last cosigned: the tlog-witness state it must never go back on.
const StateFile = "witness.json"

// witnessState is the checkpoint the mirror last cosigned.
type witnessState struct {
	Size int64      `json:"size"`
	Root chain.Hash `json:"-"`
	Note []byte     `json:"note,omitempty"` // the signed note, as received
}

type stateFile struct {
	Format string `json:"format"`
	Size   int64  `json:"size"`
	Root   string `json:"root"`
	Note   []byte `json:"note,omitempty"`
}

const stateFormat = "gridseal-mirror-witness-v1"

func loadState(dir string) (witnessState, error) {
	path := filepath.Join(dir, StateFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return witnessState{}, nil
	}
	if err != nil {
		return witnessState{}, fmt.Errorf("mirror state: %w", err)
	}
	var f stateFile
	if err := json.Unmarshal(b, &f); err != nil || f.Format != stateFormat || f.Size < 0 {
		return witnessState{}, fmt.Errorf("%s: not a %s file; it holds the checkpoint this mirror last cosigned, so it must not be guessed: restore it", path, stateFormat)
	}
	st := witnessState{Size: f.Size, Note: f.Note}
	if f.Size > 0 {
		root, err := parseHash(f.Root)
		if err != nil {
			return witnessState{}, fmt.Errorf("%s: root: %w", path, err)
		}
		st.Root = root
	}
	return st, nil
}

// ReadCosigned returns the size and signed note of the checkpoint the
// mirror with directory dir last cosigned; 0 and nil if none.
func ReadCosigned(dir string) (int64, []byte, error) {
	st, err := loadState(dir)
	return st.Size, st.Note, err
}

func saveState(dir string, st witnessState) error {
	b, err := json.Marshal(stateFile{Format: stateFormat, Size: st.Size, Root: st.Root.String(), Note: st.Note})
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dir, StateFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("mirror state: %w", err)
	}
	return nil
}

func parseHash(s string) (chain.Hash, error) {
	var h chain.Hash
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(h) {
		return h, fmt.Errorf("%q is not 64 hex digits", s)
	}
	copy(h[:], b)
	return h, nil
}
