package deploy_test

import (
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildLog  []byte
)

// gridseal builds the repository's gridseal once per test run, with the
// main module's own go.mod, and returns its path.
func gridseal(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "gridseal-deploy-test")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "gridseal")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/gridseal")
		cmd.Dir = ".."
		buildLog, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("go build ./cmd/gridseal: %v\n%s", buildErr, buildLog)
	}
	return binPath
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// demo runs `gridseal demo` with its guided tour on free loopback ports
// until the test ends and returns its /metrics URL once the tour is over
// (allowed, denied and approved writes, a replay) and a checkpoint was
// signed.
func demo(t *testing.T) string {
	t.Helper()
	bin := gridseal(t)
	web := freeAddr(t)
	cmd := exec.Command(bin, "demo", "--listen", freeAddr(t), "--sim-listen", freeAddr(t),
		"--http", web, "--data-dir", t.TempDir(), "--checkpoint-every", "300ms", "--log-format", "json")
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("demo: %v\n%s", err, out.String())
			}
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("the demo did not stop in 30 s of SIGINT:\n%s", out.String())
		}
	})
	url := "http://" + web + "/metrics"
	deadline := time.Now().Add(60 * time.Second)
	for {
		s, err := scrapeOnce(url)
		if err == nil && strings.Contains(out.String(), "The proxy keeps running") &&
			!strings.Contains(s, "gridseal_checkpoint_last_success_timestamp_seconds 0\n") {
			return url
		}
		if time.Now().After(deadline) {
			t.Fatalf("the demo's tour did not finish in 60 s (%v):\n%s", err, out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func scrapeOnce(url string) (string, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
