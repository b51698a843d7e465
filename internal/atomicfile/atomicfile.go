// Package atomicfile writes the small files gridseal must not lose or see
// half-written after a power cut: keysets, the local chain heads, the policy
// version in force.
package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// ErrExists is returned by Create when the file is already there.
var ErrExists = errors.New("file exists")

// Write replaces path with data: a temporary file is written and fsync'd,
// renamed over path, and the directory fsync'd.
func Write(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := writeSync(tmp, data, mode, os.O_TRUNC); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncPath(filepath.Dir(path))
}

// Create writes data to path, which must not exist yet, and fsyncs it.
func Create(path string, data []byte, mode os.FileMode) error {
	err := writeSync(path, data, mode, os.O_EXCL)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s: %w", path, ErrExists)
	}
	if err != nil {
		return err
	}
	return syncPath(filepath.Dir(path))
}

func writeSync(path string, data []byte, mode os.FileMode, flag int) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|flag, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// SyncDir fsyncs a directory: the names created or removed in it are on
// the disk once it returns.
func SyncDir(dir string) error { return syncPath(dir) }

// syncPath fsyncs a file or directory.
func syncPath(path string) error {
	d, err := os.Open(path)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
