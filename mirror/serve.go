package mirror

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/mod/sumdb/note"

	"github.com/gridseal/gridseal/chain"
)

// Serve runs a mirror as `gridseal mirror` does: it opens cfg.Dir, listens
// on listen for add-checkpoint (Handler), /metrics (the mirror's, Go's and
// the process's) and /healthz, calls ready with the bound address, and
// copies, verifies and cosigns until ctx ends. cfg.Metrics is set here.
func Serve(ctx context.Context, cfg Config, listen string, ready func(addr net.Addr)) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cfg.Metrics = reg
	m, err := New(cfg)
	if err != nil {
		return err
	}
	defer func() { _ = m.Close() }()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", listen, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/", m.Handler())
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{MaxRequestsInFlight: 8}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	ready(ln.Addr())
	return m.Run(ctx)
}

// Check writes what the mirror kept in dir has found — the size it last
// cosigned and every alarm — and fails if there is any alarm.
func Check(dir string, w io.Writer) error {
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("no mirror ran at %s: %w", filepath.Dir(dir), err)
	}
	alarms, err := ReadAlarms(dir)
	if err != nil {
		return err
	}
	size, _, err := ReadCosigned(dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "mirror at %s: last cosigned a tree of %d events\n", filepath.Dir(dir), size)
	if len(alarms) == 0 {
		fmt.Fprintln(w, "no alarms")
		return nil
	}
	for _, a := range alarms {
		fmt.Fprintf(w, "ALARM %s\n", a)
	}
	return fmt.Errorf("the mirror has %d alarms (%s): the operator's chain or its checkpoints are inconsistent", len(alarms),
		filepath.Join(dir, AlarmsFile))
}

// CompareFiles is Compare over signed checkpoint files, each one note
// signed by one of known, and writes what it found, naming the files. It
// fails on a split view.
func CompareFiles(files []string, known note.Verifiers, tree Tree, w io.Writer) error {
	var cps []*chain.Checkpoint
	name := map[*chain.Checkpoint]string{}
	for _, f := range files {
		cp, err := chain.ReadCheckpoint(f, known)
		if err != nil {
			return err
		}
		cps = append(cps, cp)
		name[cp] = f
	}
	c, err := Compare(cps, tree)
	if err != nil {
		return err
	}
	for _, s := range c.Splits {
		who := name[s.A]
		if s.B != nil {
			who += " and " + name[s.B]
		}
		fmt.Fprintf(w, "SPLIT VIEW %s: %s\n", who, s.Reason)
	}
	for _, u := range c.Unchecked {
		fmt.Fprintf(w, "not checked: %s\n", u)
	}
	if tree != nil {
		fmt.Fprintf(w, "%d of %d checkpoints have the root of the tree (%d events)\n", c.Confirmed, len(cps), tree.Size())
	}
	if len(c.Splits) > 0 {
		return fmt.Errorf("split view: %d disagreements among %d checkpoints signed by one key", len(c.Splits), len(cps))
	}
	fmt.Fprintf(w, "no split view among %d checkpoints\n", len(cps))
	return nil
}

// KnownPolicies is the set Config.KnownPolicies wants from hex SHA-256
// digests of policies, as given (any case).
func KnownPolicies(digests []string) (map[string]bool, error) {
	set := map[string]bool{}
	for _, d := range digests {
		if b, err := hex.DecodeString(d); err != nil || len(b) != 32 {
			return nil, fmt.Errorf("%q: want the 64 hex digits of a policy's SHA-256 (sha256sum policy.yaml)", d)
		}
		set[strings.ToLower(d)] = true
	}
	return set, nil
}
