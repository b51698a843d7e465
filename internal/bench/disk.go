package bench

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gridseal/gridseal/internal/loadgen"
)

// DiskReport is the disk under gridseal's journal, measured before the
// scenarios: a durable record waits for one fdatasync of it, so the mix
// with writes is a measure of this disk as much as of gridseal. Compare
// ratios across machines only with it beside them.
type DiskReport struct {
	Dir string `json:"dir"` // where the bench kept gridseal's files (--dir)
	// FS is the file system's type; on tmpfs an fsync costs nothing and
	// the figures flatter a site's disk.
	FS         string  `json:"fs"`
	Samples    int     `json:"samples"`
	FsyncP50us float64 `json:"fsync_p50_us"`
	FsyncP99us float64 `json:"fsync_p99_us"`
}

// Probe limits: enough samples for a p99, over at most a second (a disk
// whose fsync takes 10 ms gives 100).
const (
	probeSamples = 300
	probeBudget  = time.Second
)

// ProbeDisk times fdatasyncs in dir the way gridseal's journal does them:
// a 300-byte record written into a preallocated file, then fdatasync,
// until probeSamples or probeBudget, with nothing else running (under
// load each takes longer: the scenarios' write latencies show that). The
// file is removed.
func ProbeDisk(dir string) (*DiskReport, error) {
	f, err := os.CreateTemp(dir, "fsync-probe-")
	if err != nil {
		return nil, fmt.Errorf("disk probe: %w", err)
	}
	defer func() {
		_ = f.Close()
		_ = os.Remove(f.Name())
	}()
	fd := int(f.Fd())
	// As the journal: preallocated, so an fdatasync need not write a new
	// size (a file system without fallocate grows the file instead).
	if err := syscall.Fallocate(fd, 0, 0, 1<<20); err != nil && !errors.Is(err, syscall.EOPNOTSUPP) {
		return nil, fmt.Errorf("disk probe: fallocate: %w", err)
	}
	rec := make([]byte, 300)
	var took []time.Duration
	start := time.Now()
	for off := int64(0); len(took) < probeSamples && time.Since(start) < probeBudget; off += int64(len(rec)) {
		if _, err := f.WriteAt(rec, off%(1<<20-int64(len(rec)))); err != nil {
			return nil, fmt.Errorf("disk probe: %w", err)
		}
		t0 := time.Now()
		if err := unix.Fdatasync(fd); err != nil {
			return nil, fmt.Errorf("disk probe: fdatasync: %w", err)
		}
		took = append(took, time.Since(t0))
	}
	// The percentiles of the bench's other figures.
	r := loadgen.ResultOf(took, 0, 0, time.Since(start))
	return &DiskReport{Dir: dir, FS: fsType(dir), Samples: len(took), FsyncP50us: us(r.Percentile(0.5)), FsyncP99us: us(r.Percentile(0.99))}, nil
}

// fsType names the file system of dir by its magic number.
func fsType(dir string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return "unknown"
	}
	switch uint32(st.Type) {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4" // also ext2 and ext3: one magic
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlay"
	case 0x2fc12fc1:
		return "zfs"
	case unix.F2FS_SUPER_MAGIC:
		return "f2fs"
	case unix.NFS_SUPER_MAGIC:
		return "nfs"
	}
	return fmt.Sprintf("0x%x", uint32(st.Type))
}

// printDisk writes the disk line of the report, and a warning when the
// journal was on memory.
func printDisk(w io.Writer, d *DiskReport) {
	if d == nil {
		return
	}
	fmt.Fprintf(w, "journal disk %s (%s): fdatasync p50 %.0f µs, p99 %.0f µs (%d samples)\n", d.Dir, d.FS, d.FsyncP50us, d.FsyncP99us, d.Samples)
	if d.FS == "tmpfs" {
		fmt.Fprintln(w, "  on tmpfs an fsync is free: the figures with writes flatter any disk; measure on gridseal's own with --dir")
	}
}

// us is d in microseconds.
func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
