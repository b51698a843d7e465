package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gridseal/gridseal/internal/testwait"
)

// readmeBlock returns the shell block the README marks <!-- readme-test: name -->.
func readmeBlock(t *testing.T, readme []byte, name string) []string {
	t.Helper()
	re := regexp.MustCompile("(?s)<!-- readme-test: " + name + " -->\\s*```sh\\n(.*?)```")
	m := re.FindSubmatch(readme)
	if m == nil {
		t.Fatalf("README.md has no block marked readme-test: %s", name)
	}
	var lines []string
	for _, l := range strings.Split(string(m[1]), "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// TestReadmeSiteSequence runs the README's "Running it in front of real
// devices" as a new user would on a fresh clone: the set-up block as a
// script, each command of the run block as its own process, then every
// line of the check block, each of which must succeed. Only `make build`
// is replaced, by building the binary where the README's ../bin/gridseal
// finds it.
func TestReadmeSiteSequence(t *testing.T) {
	if _, err := exec.LookPath("mbpoll"); err != nil {
		if os.Getenv("CI") == "" {
			t.Skip("mbpoll not installed (apt-get install mbpoll)")
		}
		t.Fatal("mbpoll not installed in CI: the Makefile's tools target should have installed it")
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	setup, runs, checks := readmeBlock(t, readme, "setup"), readmeBlock(t, readme, "run"), readmeBlock(t, readme, "check")
	if setup[0] != "make build" {
		t.Fatalf("the set-up block should start with make build, not %q", setup[0])
	}
	for _, addr := range []string{"127.0.0.1:5021", "127.0.0.1:15021", "127.0.0.1:8081"} {
		if ln, err := net.Listen("tcp", addr); err != nil {
			t.Skipf("the example site's address %s is in use here: %v", addr, err)
		} else {
			_ = ln.Close()
		}
	}

	clone := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(clone, "bin", "gridseal"), ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if err := os.CopyFS(filepath.Join(clone, "deploy"), os.DirFS("../../deploy")); err != nil {
		t.Fatal(err)
	}
	sh := func(dir, script string) *exec.Cmd {
		c := exec.Command("bash", "-euo", "pipefail", "-c", script)
		c.Dir = dir
		return c
	}
	if out, err := sh(clone, strings.Join(setup[1:], "\n")).CombinedOutput(); err != nil {
		t.Fatalf("set-up block: %v\n%s", err, out)
	}
	site := filepath.Join(clone, "site")
	if fi, err := os.Stat(filepath.Join(site, "keys", "gw-1.private.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the writer's private key: %v %v", fi, err)
	}

	var logs []*bytes.Buffer
	for _, line := range runs {
		var out bytes.Buffer
		c := sh(site, "exec "+line)
		c.Stdout, c.Stderr = &out, &out
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		logs = append(logs, &out)
		t.Cleanup(func() {
			_ = c.Process.Signal(syscall.SIGTERM)
			done := make(chan error, 1)
			go func() { done <- c.Wait() }()
			select {
			case err := <-done:
				if err != nil && !strings.Contains(err.Error(), "terminated") {
					t.Errorf("%s: %v\n%s", line, err, out.String())
				}
			case <-time.After(20 * time.Second):
				_ = c.Process.Kill()
				t.Errorf("%s did not stop on SIGTERM", line)
			}
		})
	}
	testwait.For(t, "the example site's proxy to listen on 127.0.0.1:5021", func() bool {
		c, err := net.DialTimeout("tcp", "127.0.0.1:5021", time.Second)
		if err == nil {
			_ = c.Close()
		}
		return err == nil
	})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var verified bool
	for _, line := range checks {
		c := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", line)
		c.Dir = site
		out, err := c.CombinedOutput()
		if err != nil {
			for i, l := range logs {
				t.Logf("%s:\n%s", runs[i], l.String())
			}
			t.Fatalf("%s: %v\n%s", line, err, out)
		}
		if strings.Contains(line, "chain verify") {
			verified = strings.Contains(string(out), "chain OK")
		}
	}
	if !verified {
		t.Fatal("the check block does not end in a chain verify that says chain OK")
	}
}
