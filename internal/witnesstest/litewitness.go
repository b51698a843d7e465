// Package witnesstest runs litewitness (filippo.io/torchwood), a witness
// of c2sp.org/tlog-witness that nobody here wrote, for interoperability
// tests. It builds litewitness and witnessctl at the version pinned in
// tools/witness/go.mod, keeps the witness key in a dedicated ssh-agent (as
// litewitness wants) and listens on 127.0.0.1.
package witnesstest

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gridseal/gridseal/internal/testnet"
	"github.com/gridseal/gridseal/internal/testwait"
)

// Litewitness is a running litewitness that knows one log.
type Litewitness struct {
	URL  string // the submission prefix: POST URL/add-checkpoint
	Name string // the witness's name in its cosignature lines
	VKey string // its cosignature/v1 verifier key, as litewitness prints it
	DB   string // its SQLite database

	t         testing.TB
	bin, sock string
	addr, fp  string
	cmd       *exec.Cmd
	done      chan struct{}
	mu        sync.Mutex
	stderr    bytes.Buffer
}

// Start builds litewitness, gives it a new Ed25519 key in its own
// ssh-agent, adds the log (origin, the log's note verifier key) with
// witnessctl, and starts it. It skips the test when OpenSSH's ssh-agent is
// missing, unless CI is set (then it fails: `make tools` installs it).
func Start(t testing.TB, name, origin, logVKey string) *Litewitness {
	t.Helper()
	for _, tool := range []string{"ssh-agent", "ssh-keygen", "ssh-add"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "" {
				t.Skipf("%s not installed (apt-get install openssh-client)", tool)
			}
			t.Fatalf("%s not installed in CI: the Makefile's tools target should have installed it", tool)
		}
	}
	w := &Litewitness{t: t, Name: name, bin: build(t)}
	dir := t.TempDir()
	// A unix socket's path is limited to about 100 bytes: keep it short.
	sockDir, err := os.MkdirTemp("", "lw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })
	w.sock = filepath.Join(sockDir, "agent.sock")
	agent := exec.Command("ssh-agent", "-D", "-a", w.sock)
	if err := agent.Start(); err != nil {
		t.Fatalf("ssh-agent: %v", err)
	}
	t.Cleanup(func() {
		_ = agent.Process.Kill()
		_ = agent.Wait()
	})
	testwait.For(t, "ssh-agent's socket", func() bool { _, err := os.Stat(w.sock); return err == nil })
	key := filepath.Join(dir, "witness")
	run(t, nil, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "litewitness", "-f", key)
	run(t, []string{"SSH_AUTH_SOCK=" + w.sock}, "ssh-add", "-q", key)
	out := run(t, nil, "ssh-keygen", "-l", "-E", "sha256", "-f", key+".pub")
	fields := strings.Fields(out)
	if len(fields) < 2 || !strings.HasPrefix(fields[1], "SHA256:") {
		t.Fatalf("ssh-keygen -l: %q", out)
	}
	w.fp = fields[1]
	w.DB = filepath.Join(dir, "litewitness.db")
	run(t, nil, filepath.Join(w.bin, "witnessctl"), "add-log", "-db", w.DB, "-origin", origin)
	run(t, nil, filepath.Join(w.bin, "witnessctl"), "add-key", "-db", w.DB, "-origin", origin, "-key", logVKey)
	w.addr = testnet.FreeAddr(t)
	w.URL = "http://" + w.addr
	w.start()
	t.Cleanup(w.Stop)
	return w
}

var vkeyLine = regexp.MustCompile(`msg="verifier key" vkey=(\S+)`)

func (w *Litewitness) start() {
	t := w.t
	t.Helper()
	w.mu.Lock()
	w.stderr.Reset()
	w.mu.Unlock()
	w.cmd = exec.Command(filepath.Join(w.bin, "litewitness"), "-db", w.DB, "-name", w.Name,
		"-key", w.fp, "-ssh-agent", w.sock, "-listen", w.addr)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	w.cmd.Stderr = pw
	if err := w.cmd.Start(); err != nil {
		t.Fatalf("litewitness: %v", err)
	}
	_ = pw.Close()
	w.done = make(chan struct{})
	go func() {
		defer close(w.done)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			w.mu.Lock()
			w.stderr.WriteString(sc.Text() + "\n")
			w.mu.Unlock()
		}
		_ = w.cmd.Wait()
	}()
	// Listening, and its key line read from its stderr: the port may
	// answer before the reader goroutine has the line (or be another
	// process's, when litewitness then exits unable to bind it).
	testwait.For(t, "litewitness to listen on "+w.addr+" and print its key", func() bool {
		c, err := net.Dial("tcp", w.addr)
		if err == nil {
			_ = c.Close()
		}
		select {
		case <-w.done:
			t.Fatalf("litewitness exited:\n%s", w.Log())
		default:
		}
		return err == nil && vkeyLine.MatchString(w.Log())
	})
	m := vkeyLine.FindStringSubmatch(w.Log())
	if m == nil {
		t.Fatalf("litewitness printed no verifier key:\n%s", w.Log())
	}
	if w.VKey != "" && w.VKey != m[1] {
		t.Fatalf("litewitness's key changed across a restart: %s, then %s", w.VKey, m[1])
	}
	w.VKey = m[1]
}

// Stop stops litewitness (an interrupt, as its operator would); its
// database stays. Stopping a stopped witness does nothing.
func (w *Litewitness) Stop() {
	if w.cmd == nil {
		return
	}
	_ = w.cmd.Process.Signal(os.Interrupt)
	select {
	case <-w.done:
	case <-time.After(10 * time.Second):
		_ = w.cmd.Process.Signal(syscall.SIGKILL)
		<-w.done
	}
	w.cmd = nil
}

// Restart starts a stopped litewitness again on the same address, with the
// same key and database.
func (w *Litewitness) Restart() {
	w.t.Helper()
	w.start()
}

// Log is what litewitness wrote to its standard error so far.
func (w *Litewitness) Log() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stderr.String()
}

var buildOnce struct {
	sync.Once
	dir string
	err error
}

// build builds litewitness and witnessctl once per test binary, from the
// pinned tools module (the go command caches the build across runs).
func build(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			buildOnce.err = err
			return
		}
		dir, err := os.MkdirTemp("", "litewitness-bin")
		if err != nil {
			buildOnce.err = err
			return
		}
		cmd := exec.Command("go", "build", "-modfile="+filepath.Join(root, "tools", "witness", "go.mod"), "-o", dir+string(os.PathSeparator),
			"filippo.io/torchwood/cmd/litewitness", "filippo.io/torchwood/cmd/witnessctl")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildOnce.err = fmt.Errorf("go build litewitness: %v\n%s", err, out)
		}
		buildOnce.dir = dir
	})
	if buildOnce.err != nil {
		t.Fatal(buildOnce.err)
	}
	return buildOnce.dir
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the gridseal module")
	}
	return filepath.Dir(mod), nil
}

func run(t testing.TB, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
