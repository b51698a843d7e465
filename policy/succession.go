package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/gridseal/gridseal/internal/atomicfile"
)

// ErrRollback is returned for a policy older than one already in force.
var ErrRollback = errors.New("policy rollback refused")

// Accepted is this proxy's record of the newest policy it has accepted,
// kept on disk so that an older signed policy cannot be put back (its
// signatures stay valid forever; its version does not). It is local to one
// proxy; approvals.Published is what proxies publish for the CLI.
type Accepted struct {
	ID      string `json:"id"`
	Version int    `json:"version"`
	Digest  string `json:"digest"`
	// Observe lists its devices in observe mode, so a restart can tell a
	// device entering or leaving observe mode from one that stays.
	Observe []string `json:"observe,omitempty"`
}

// CheckSuccession refuses next if it is older than prev, or the same
// version with other content.
func CheckSuccession(prev *Accepted, next *Policy) error {
	if prev == nil || prev.ID != next.ID {
		return nil
	}
	switch {
	case next.Version < prev.Version:
		return fmt.Errorf("%w: policy %s version %d is older than version %d, already in force", ErrRollback, next.ID, next.Version, prev.Version)
	case next.Version == prev.Version && next.Digest != prev.Digest:
		return fmt.Errorf("%w: policy %s version %d changed without a new version number (sha256 %s…, was %s…)",
			ErrRollback, next.ID, next.Version, next.Digest[:12], prev.Digest[:12])
	}
	return nil
}

// LoadAccepted reads the record at path; a missing file is no record (nil).
func LoadAccepted(path string) (*Accepted, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("policy state: %w", err)
	}
	var s Accepted
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("policy state %s is corrupt: %w", path, err)
	}
	return &s, nil
}

// SaveAccepted records p at path as the newest policy accepted.
func SaveAccepted(path string, p *Policy) error {
	data, err := json.Marshal(Accepted{ID: p.ID, Version: p.Version, Digest: p.Digest, Observe: p.ObservedDevices()})
	if err != nil {
		return err
	}
	return atomicfile.Write(path, data, 0o600)
}
