package chain

import (
	"fmt"

	"github.com/gridseal/gridseal/internal/atomicfile"
)

// Pin keeps the newest signed checkpoint the verification saw in the file
// at path (VerifyOptions.PinnedCheckpoint of the next run), so it stays
// pinned even if the stream's checkpoints are removed. A report without
// checkpoints pins nothing.
func (r *Report) Pin(path string) error {
	if cp := r.Checkpoints; cp != nil && cp.Newest != nil {
		if err := atomicfile.Write(path, cp.Newest.Note, 0o644); err != nil {
			return fmt.Errorf("pin checkpoint: %w", err)
		}
	}
	return nil
}
