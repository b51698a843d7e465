package bench

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

func TestProbeDiskTimesFsyncsAndNamesTheFileSystem(t *testing.T) {
	dir := t.TempDir()
	d, err := ProbeDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	if d.Samples < 1 || d.FsyncP50us < 0 || d.FsyncP99us < d.FsyncP50us || d.FS == "" || d.FS == "unknown" {
		t.Fatalf("probe of %s: %+v", dir, d)
	}
	left, err := os.ReadDir(dir)
	if err != nil || len(left) != 0 {
		t.Fatalf("the probe left %v (%v)", left, err)
	}
	if _, err := ProbeDisk(dir + "/missing"); err == nil {
		t.Fatal("a probe of a missing directory succeeded")
	}
}

func TestReportWarnsOfAJournalOnTmpfs(t *testing.T) {
	if st, err := os.Stat("/dev/shm"); err != nil || !st.IsDir() {
		t.Skip("no /dev/shm here")
	}
	d, err := ProbeDisk("/dev/shm")
	if err != nil {
		t.Fatal(err)
	}
	if d.FS != "tmpfs" {
		t.Skipf("/dev/shm is %s here", d.FS)
	}
	var out bytes.Buffer
	PrintReport(&out, &Report{Disk: d})
	if !strings.Contains(out.String(), "(tmpfs)") || !strings.Contains(out.String(), "flatter") {
		t.Fatalf("report of a journal on tmpfs:\n%s", out.String())
	}
	d.FS = "ext4"
	out.Reset()
	PrintReport(&out, &Report{Disk: d})
	if strings.Contains(out.String(), "flatter") {
		t.Fatalf("an ext4 disk warned of:\n%s", out.String())
	}
}
