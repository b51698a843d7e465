package deploy_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

// dockerStages parses ../Dockerfile with BuildKit's own parser and
// instruction checks (and its linter: any warning fails the test).
func dockerStages(t *testing.T) []instructions.Stage {
	t.Helper()
	f, err := os.Open("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range res.Warnings {
		t.Errorf("Dockerfile: %s", w.Short)
	}
	lint := linter.New(&linter.Config{Warn: func(rule, _, _, msg string, _ []parser.Range) {
		t.Errorf("Dockerfile lint %s: %s", rule, msg)
	}})
	stages, _, err := instructions.Parse(res.AST, lint)
	if err != nil {
		t.Fatal(err)
	}
	return stages
}

// TestDockerfile: multi-stage; the build stage makes a static binary
// (CGO_ENABLED=0, -trimpath) stamped with its version; the default
// (last) stage is distroless, runs as an unprivileged user and starts
// gridseal; every file it copies from the context exists.
func TestDockerfile(t *testing.T) {
	stages := dockerStages(t)
	var names []string
	for _, s := range stages {
		names = append(names, s.Name)
	}
	if !slices.Equal(names, []string{"build", "setup", "runtime"}) {
		t.Fatalf("stages %v, want build, setup, runtime", names)
	}
	var build strings.Builder
	for _, c := range stages[0].Commands {
		if r, ok := c.(*instructions.RunCommand); ok {
			build.WriteString(strings.Join(r.CmdLine, " "))
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-X main.version=${VERSION}", "-X main.commit=${COMMIT}", "-X main.date=${DATE}", "./cmd/gridseal"} {
		if !strings.Contains(build.String(), want) {
			t.Errorf("the build stage's go build lacks %q: %s", want, build.String())
		}
	}
	for _, s := range stages {
		user := "root"
		for _, c := range s.Commands {
			switch c := c.(type) {
			case *instructions.UserCommand:
				user = c.User
			case *instructions.CopyCommand:
				if c.From != "" {
					continue
				}
				for _, src := range c.SourcePaths {
					if _, err := os.Stat(filepath.Join("..", src)); err != nil {
						t.Errorf("stage %s copies %s: %v", s.Name, src, err)
					}
				}
			}
		}
		if s.Name != "build" && (user == "root" || strings.HasPrefix(user, "0")) {
			t.Errorf("stage %s runs as %s", s.Name, user)
		}
	}
	rt := stages[len(stages)-1]
	if !strings.HasPrefix(rt.BaseName, "gcr.io/distroless/static") {
		t.Errorf("the runtime stage is based on %s, want distroless static", rt.BaseName)
	}
	var entry []string
	for _, c := range rt.Commands {
		if e, ok := c.(*instructions.EntrypointCommand); ok {
			entry = e.CmdLine
		}
	}
	if !slices.Equal(entry, []string{"/usr/local/bin/gridseal"}) {
		t.Errorf("entrypoint %v", entry)
	}
}

// TestComposeFile loads deploy/compose/compose.yaml with the Compose
// specification's reference loader (compose-go, which docker compose uses:
// the JSON schema, interpolation, normalisation, consistency checks), then
// checks what the schema cannot: every bind-mounted file exists, every
// build target is a Dockerfile stage, and three NATS nodes form the
// cluster.
func TestComposeFile(t *testing.T) {
	wd, _ := filepath.Abs("compose")
	proj, err := loader.LoadWithContext(t.Context(), types.ConfigDetails{WorkingDir: wd,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(wd, "compose.yaml")}}, Environment: types.Mapping{}},
		func(o *loader.Options) { o.SetProjectName("gridseal", true) })
	if err != nil {
		t.Fatal(err)
	}
	var stages []string
	for _, s := range dockerStages(t) {
		stages = append(stages, s.Name)
	}
	want := []string{"grafana", "gridseal", "nats-1", "nats-2", "nats-3", "prometheus", "setup", "sim"}
	for _, name := range want {
		if _, err := proj.GetService(name); err != nil {
			t.Errorf("service %s: %v", name, err)
		}
	}
	var nodes []string
	for name, svc := range proj.AllServices() {
		for _, v := range svc.Volumes {
			if v.Type == types.VolumeTypeBind {
				if _, err := os.Stat(v.Source); err != nil {
					t.Errorf("service %s mounts %s: %v", name, v.Source, err)
				}
			}
		}
		if svc.Build != nil && !slices.Contains(stages, svc.Build.Target) {
			t.Errorf("service %s builds target %q, not a stage of the Dockerfile %v", name, svc.Build.Target, stages)
		}
		if i := slices.Index(svc.Command, "--name"); i >= 0 && strings.HasPrefix(name, "nats-") {
			nodes = append(nodes, svc.Command[i+1])
		}
	}
	slices.Sort(nodes)
	if !slices.Equal(nodes, []string{"nats-1", "nats-2", "nats-3"}) {
		t.Errorf("NATS nodes %v", nodes)
	}
	conf, err := os.ReadFile("compose/nats/nats.conf")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if !bytes.Contains(conf, []byte("nats-route://"+n+":6222")) {
			t.Errorf("nats.conf routes to no %s", n)
		}
	}
	setup, _ := proj.GetService("setup")
	for _, env := range []string{"GW_NATS", "ADMIN_NATS"} {
		v := setup.Environment[env]
		if v == nil || strings.Count(*v, "@nats-") != 3 {
			t.Errorf("setup's %s names not the three nodes: %v", env, v)
		}
	}
}

// TestComposeAccountsAreTheShippedOnes: the compose demo's NATS accounts
// are deploy/nats/gridseal-accounts.conf with the demo's passwords, and
// nothing else changed, so the demo runs exactly the production
// permissions.
func TestComposeAccountsAreTheShippedOnes(t *testing.T) {
	shipped, err := os.ReadFile("nats/gridseal-accounts.conf")
	if err != nil {
		t.Fatal(err)
	}
	demo, err := os.ReadFile("compose/nats/accounts.conf")
	if err != nil {
		t.Fatal(err)
	}
	pw := regexp.MustCompile(`user: (\S+)\n(\s*)password: "[^"]*"`)
	want := pw.ReplaceAllString(string(shipped), `user: $1`+"\n"+`${2}password: "demo-$1"`)
	got := string(demo)
	if i := strings.Index(got, "accounts {"); i < 0 || !strings.HasSuffix(want, got[i:]) {
		t.Fatal("deploy/compose/nats/accounts.conf is not deploy/nats/gridseal-accounts.conf with the demo passwords: regenerate it")
	}
}

// TestComposeSetupMakesARunningSite runs the compose demo's setup script
// as its container would (without the NATS cluster: the proxy then runs
// its embedded server), checks the policy it signed verifies, and starts
// the proxy on the site it made.
func TestComposeSetupMakesARunningSite(t *testing.T) {
	bin := gridseal(t)
	site, examples := t.TempDir(), t.TempDir()
	for _, f := range []string{"gridseal.yaml", "policy.yaml"} {
		b, err := os.ReadFile(filepath.Join("examples", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(examples, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run := func(name string, args []string, env ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir = site
		cmd.Env = append(os.Environ(), env...)
		cmd.Env = append(cmd.Env, "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	setup, _ := filepath.Abs("compose/setup.sh")
	run("sh", []string{setup}, "SITE="+site, "EXAMPLES="+examples)
	run(bin, []string{"policy", "verify", "policy.yaml", "--root", "policy-root.yaml"})
	cfg, err := os.ReadFile(filepath.Join(site, "gridseal.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(cfg, []byte("listen: 0.0.0.0:5020")) {
		t.Fatalf("setup did not make the proxy listen on the container's 5020:\n%s", cfg)
	}
	if pol, _ := os.ReadFile(filepath.Join(site, "policy.yaml")); !bytes.Contains(pol, []byte("upstream: sim:15021")) {
		t.Fatal("setup did not point the policy at the sim service")
	}
	// On this machine: loopback ports of its own.
	listen, web := freeAddr(t), freeAddr(t)
	cfg = bytes.Replace(cfg, []byte("0.0.0.0:5020"), []byte(listen), 1)
	cfg = bytes.Replace(cfg, []byte("listen: 127.0.0.1:8081"), []byte("listen: "+web), 1)
	if err := os.WriteFile(filepath.Join(site, "gridseal.yaml"), cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "proxy", "--config", "gridseal.yaml", "--data-dir", t.TempDir(), "--log-format", "json")
	cmd.Dir = site
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if s, err := scrapeOnce("http://" + web + "/metrics"); err == nil && strings.Contains(s, `gridseal_policy_info{`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the proxy on the setup's site did not serve /metrics in 30 s:\n%s", out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
