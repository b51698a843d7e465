package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gridseal/gridseal/internal/keys"
	"github.com/gridseal/gridseal/internal/loadgen"
)

// Procs runs every bench target as a process of its own, as a site runs
// them: the device and the bare relay as `gridseal bench-serve`, gridseal
// as `gridseal proxy` with its embedded NATS (fsync always) under a data
// directory of its own. CPU is read from each child's /proc entry.
type Procs struct {
	Self string   // the gridseal binary to run
	Env  []string // extra environment for the children
	Dir  string   // where the children keep their files
	// Console runs gridseal's console (on a free loopback port), as its
	// default configuration does; off, gridseal records and nothing reads.
	Console bool

	n     int
	procs []*exec.Cmd
}

// Device starts dev's behaviour in a child and returns its address and pid.
func (p *Procs) Device(ctx context.Context, dev *loadgen.Device) (string, int, error) {
	addrs, pid, err := p.Devices(ctx, dev, 1)
	if err != nil {
		return "", 0, err
	}
	return addrs[0], pid, nil
}

// Devices starts n devices with dev's behaviour in one child, each on a
// port of its own; above 1, the i-th answers unit id i only. It returns
// their addresses in that order and the child's pid.
func (p *Procs) Devices(ctx context.Context, dev *loadgen.Device, n int) ([]string, int, error) {
	args := []string{"bench-serve", "device", "--service-time", dev.ServiceTime.String(), "--devices", strconv.Itoa(n)}
	if dev.Serial {
		args = append(args, "--serial")
	}
	addrs, pid, err := p.serve(ctx, args)
	if err == nil && len(addrs) != n {
		err = fmt.Errorf("bench-serve device listed %d addresses, want %d", len(addrs), n)
	}
	return addrs, pid, err
}

// Relay starts a bare TCP relay to upstream in a child.
func (p *Procs) Relay(ctx context.Context, upstream string) (string, int, error) {
	addrs, pid, err := p.serve(ctx, []string{"bench-serve", "relay", "--to", upstream})
	if err != nil {
		return "", 0, err
	}
	return addrs[0], pid, nil
}

// serve starts a bench-serve child and reads the addresses it prints.
func (p *Procs) serve(ctx context.Context, args []string) ([]string, int, error) {
	c := exec.CommandContext(ctx, p.Self, args...)
	c.Env = append(os.Environ(), p.Env...)
	c.Stderr = os.Stderr
	out, err := c.StdoutPipe()
	if err != nil {
		return nil, 0, err
	}
	if err := c.Start(); err != nil {
		return nil, 0, fmt.Errorf("start %s: %w", strings.Join(args[:2], " "), err)
	}
	p.procs = append(p.procs, c)
	line, err := bufio.NewReader(out).ReadString('\n')
	addrs, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if err != nil || !ok || addrs == "" {
		return nil, 0, fmt.Errorf("%s did not say where it listens: %q %v", strings.Join(args[:2], " "), line, err)
	}
	return strings.Fields(addrs), c.Process.Pid, nil
}

// Gridseal starts `gridseal proxy` in front of upstream with the policy
// polYAML (unsigned: the bench measures forwarding and recording, not
// policy signatures), recording to its own embedded NATS. It returns the
// proxy's address, its pid and its data directory.
func (p *Procs) Gridseal(ctx context.Context, polYAML string) (string, int, string, error) {
	addrs, pid, data, err := p.GridsealListeners(ctx, polYAML, [][]string{{"dev"}})
	if err != nil {
		return "", 0, "", err
	}
	return addrs[0], pid, data, nil
}

// GridsealListeners is Gridseal with a listener for each list of the
// policy's devices (which take the unit ids the policy gives them); it
// returns the listeners' addresses in that order.
func (p *Procs) GridsealListeners(ctx context.Context, polYAML string, listeners [][]string) ([]string, int, string, error) {
	p.n++
	dir := filepath.Join(p.Dir, fmt.Sprintf("gridseal-%d", p.n))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, 0, "", err
	}
	h, err := keys.New(keys.Ed25519)
	if err != nil {
		return nil, 0, "", err
	}
	if _, _, err := keys.WritePair(dir, "bench", h); err != nil {
		return nil, 0, "", err
	}
	addrs, err := freeAddrs(len(listeners))
	if err != nil {
		return nil, 0, "", err
	}
	consoleListen := "off"
	if p.Console {
		consoleListen = "127.0.0.1:0"
	}
	var ls strings.Builder
	for i, devs := range listeners {
		fmt.Fprintf(&ls, "  - {listen: %q, devices: [%s]}\n", addrs[i], strings.Join(devs, ", "))
	}
	cfg := fmt.Sprintf(`policy: policy.yaml
insecure_unsigned_policy: true
listeners:
%slimits: {requests_per_second: 1e9, burst: 1073741824, max_connections: 8192, max_connections_per_client: 8192}
chain: {writer: bench, key: bench.private.json}
console: {listen: %q}
log: {level: error, format: json}
`, ls.String(), consoleListen)
	for name, body := range map[string]string{"gridseal.yaml": cfg, "policy.yaml": polYAML} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			return nil, 0, "", err
		}
	}
	data := filepath.Join(dir, "data")
	c := exec.CommandContext(ctx, p.Self, "proxy", "--config", filepath.Join(dir, "gridseal.yaml"), "--data-dir", data)
	c.Env = append(os.Environ(), p.Env...)
	c.Stdout, c.Stderr = os.Stderr, os.Stderr
	if err := c.Start(); err != nil {
		return nil, 0, "", fmt.Errorf("start gridseal proxy: %w", err)
	}
	p.procs = append(p.procs, c)
	deadline := time.Now().Add(20 * time.Second)
	for _, addr := range addrs {
		for ; ; time.Sleep(20 * time.Millisecond) {
			conn, err := net.Dial("tcp", addr)
			if err == nil {
				_ = conn.Close()
				break
			}
			if time.Now().After(deadline) {
				return nil, 0, "", fmt.Errorf("gridseal proxy did not listen on %s within 20 s", addr)
			}
		}
	}
	return addrs, c.Process.Pid, data, nil
}

// Close stops every child (SIGTERM, so gridseal commits its spool) and
// waits for them.
func (p *Procs) Close() {
	for _, c := range p.procs {
		_ = c.Process.Signal(syscall.SIGTERM)
	}
	for _, c := range p.procs {
		done := make(chan struct{})
		go func() { _ = c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = c.Process.Kill()
			<-done
		}
	}
	p.procs = nil
}

// freeAddrs returns n distinct loopback addresses nothing listens on now.
func freeAddrs(n int) ([]string, error) {
	var addrs []string
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}()
	for i := 0; i < n; i++ { // held open until all are picked: no port twice
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs, nil
}

// clockTick is Linux's USER_HZ, the unit of /proc/PID/stat's times.
const clockTick = 100

// procCPU returns the CPU time (user + system) process pid has used; pid 0
// is this process.
func procCPU(pid int) (time.Duration, error) {
	path := "/proc/self/stat"
	if pid != 0 {
		path = "/proc/" + strconv.Itoa(pid) + "/stat"
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; the fields after its
	// closing parenthesis are fixed: utime and stime are the 12th and 13th.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, errors.New("unreadable " + path)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("short " + path)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("unreadable times in " + path)
	}
	return time.Duration(ut+st) * time.Second / clockTick, nil
}

// procRSS returns the resident set size of process pid (0: this one).
func procRSS(pid int) int64 { return procStatus(pid, "VmRSS:") }

// procPeakRSS returns the most process pid (0: this one) has held
// resident since it started.
func procPeakRSS(pid int) int64 { return procStatus(pid, "VmHWM:") }

// procStatus returns a size in /proc/PID/status, in bytes; 0 if unread.
func procStatus(pid int, field string) int64 {
	path := "/proc/self/status"
	if pid != 0 {
		path = "/proc/" + strconv.Itoa(pid) + "/status"
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, field) {
			f := strings.Fields(line)
			if len(f) >= 2 {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}
