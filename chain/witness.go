package chain

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/mod/sumdb/note"
)

// Witnesses (c2sp.org/tlog-witness): the checkpointer sends each new
// checkpoint, with a consistency proof from the size the witness last
// cosigned, to POST <url>/add-checkpoint; the witness checks the proof
// against the tree it kept and answers with its cosignature. A witness
// keeps only the newest tree it cosigned, so it refuses an older tree or
// one that does not extend it: a chain rolled back, or forked, gets no
// cosignature from it.

// Witness is one witness the checkpointer asks to cosign.
type Witness struct {
	URL      string // submission prefix: the request goes to URL + "/add-checkpoint"
	Verifier *CosignatureVerifier
}

// ErrWitnessRefused says a witness refused the checkpoint for what it is:
// a tree older than one it cosigned, a proof that does not check (the
// chain was rolled back or forked), an unknown log or a bad signature.
// Retrying the same checkpoint does not help.
var ErrWitnessRefused = errors.New("the witness refused the checkpoint")

// WitnessStatus is what the checkpointer knows of one witness.
type WitnessStatus struct {
	Name, URL string
	// Size is the tree size the witness last cosigned, as far as the
	// checkpointer knows (its answer to the last request); -1: unknown.
	Size int64
	// LastCosigned is when the last cosignature arrived; zero if none.
	LastCosigned time.Time
	Cosignatures uint64 // cosignatures received
	Failures     uint64 // requests that brought none
	LastErr      error  // why the last request failed; nil after a success
	// RoundTrip is how long the last successful add-checkpoint took,
	// retries after a 409 included.
	RoundTrip time.Duration
}

// witnessClient talks to one witness and keeps its state. Its methods are
// safe for concurrent use.
type witnessClient struct {
	w    Witness
	http *http.Client
	log  *zap.Logger

	mu      sync.Mutex
	st      WitnessStatus
	known   int64     // the size to send as "old"
	nextTry time.Time // after failures, the witness is left alone until then
	backoff time.Duration
}

// Backoff between requests to a witness that failed: from witnessRetry
// within one checkpoint, and from witnessBackoff doubling up to
// witnessMaxBackoff across checkpoints.
const (
	witnessRetry      = 200 * time.Millisecond
	witnessAttempts   = 4
	witnessBackoff    = time.Second
	witnessMaxBackoff = 5 * time.Minute
	witnessMaxBody    = 64 << 10
	maxProofLines     = 63 // tlog-witness: a client sends no more
)

func newWitnessClient(w Witness, hc *http.Client, log *zap.Logger) *witnessClient {
	return &witnessClient{w: w, http: hc, log: log.With(zap.String("witness", w.Verifier.Name())),
		st: WitnessStatus{Name: w.Verifier.Name(), URL: w.URL, Size: -1}}
}

func (c *witnessClient) status() WitnessStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}

// prover returns a consistency proof from a tree of oldSize leaves to the
// checkpoint's tree.
type prover func(oldSize int64) ([]Hash, error)

// cosign asks the witness to cosign cp and returns its signature lines,
// or an error. A 409 (the witness is at another size) is answered by
// proving from that size; a network error or 5xx is retried with backoff
// until ctx ends; a refusal is not retried.
func (c *witnessClient) cosign(ctx context.Context, cp *Checkpoint, prove prover) ([]byte, error) {
	c.mu.Lock()
	if time.Now().Before(c.nextTry) {
		err := fmt.Errorf("witness %s: not asked until %s after failures: %w", c.st.Name, c.nextTry.Format(time.RFC3339), c.st.LastErr)
		c.mu.Unlock()
		return nil, err
	}
	c.mu.Unlock()
	start := time.Now()
	sigs, err := c.attempt(ctx, cp, prove)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.st.Failures++
		c.st.LastErr = err
		// A refusal came fast and will come again for what it is; asking
		// about the next checkpoint costs little. A witness that does not
		// answer is left alone for a while, so it delays checkpoints less.
		if !errors.Is(err, ErrWitnessRefused) {
			c.backoff = min(max(2*c.backoff, witnessBackoff), witnessMaxBackoff)
			c.nextTry = time.Now().Add(c.backoff)
		}
		return nil, err
	}
	c.st.Cosignatures++
	c.st.LastErr, c.st.LastCosigned, c.st.RoundTrip = nil, time.Now(), time.Since(start)
	c.st.Size, c.known = cp.Size, cp.Size
	c.backoff, c.nextTry = 0, time.Time{}
	return sigs, nil
}

func (c *witnessClient) attempt(ctx context.Context, cp *Checkpoint, prove prover) ([]byte, error) {
	name := c.w.Verifier.Name()
	pause := witnessRetry
	var last error
	for try := 0; try < witnessAttempts; try++ {
		c.mu.Lock()
		old := c.known
		c.mu.Unlock()
		if old > cp.Size {
			return nil, fmt.Errorf("witness %s has cosigned a tree of %d events, this checkpoint has %d: %w (the chain was rolled back)",
				name, old, cp.Size, ErrWitnessRefused)
		}
		body, err := addCheckpointBody(cp, old, prove)
		if err != nil {
			return nil, fmt.Errorf("witness %s: consistency proof from %d: %w", name, old, err)
		}
		status, resp, ctype, err := c.post(ctx, body)
		switch {
		case err != nil:
			last = fmt.Errorf("witness %s: %w", name, err)
		case status == http.StatusOK:
			sigs, err := c.signatureLines(cp, resp)
			if err != nil {
				return nil, fmt.Errorf("witness %s: %w", name, err)
			}
			return sigs, nil
		case status == http.StatusConflict:
			size, err := strconv.ParseInt(strings.TrimSuffix(string(resp), "\n"), 10, 64)
			if err != nil || size < 0 || !strings.HasPrefix(ctype, "text/x.tlog.size") {
				return nil, fmt.Errorf("witness %s: 409 with a body that is not a tree size (%s): %q", name, ctype, clip(resp))
			}
			c.mu.Lock()
			c.known, c.st.Size = size, size
			c.mu.Unlock()
			if size == old {
				return nil, fmt.Errorf("witness %s: 409 but its size is the %d sent", name, size)
			}
			c.log.Info("witness is at another size; proving from there", zap.Int64("witness_size", size), zap.Int64("sent", old))
			continue // at once: this is not a failure
		case status == http.StatusUnprocessableEntity:
			return nil, fmt.Errorf("witness %s: the consistency proof from its tree of %d events does not check: %w (the chain was rolled back or forked): %s",
				name, old, ErrWitnessRefused, clip(resp))
		case status == http.StatusNotFound, status == http.StatusForbidden, status == http.StatusBadRequest:
			return nil, fmt.Errorf("witness %s: %d %s: %w: %s (does it know origin %q and this checkpointer's key?)",
				name, status, http.StatusText(status), ErrWitnessRefused, clip(resp), CheckpointOrigin)
		default:
			last = fmt.Errorf("witness %s: %d %s: %s", name, status, http.StatusText(status), clip(resp))
		}
		if try+1 == witnessAttempts {
			break
		}
		select {
		case <-ctx.Done():
			return nil, last
		case <-time.After(pause):
		}
		pause *= 2
	}
	return nil, last
}

// addCheckpointBody is the request: "old N", the proof, a blank line, the
// signed checkpoint.
func addCheckpointBody(cp *Checkpoint, old int64, prove prover) ([]byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "old %d\n", old)
	if old > 0 && old < cp.Size {
		proof, err := prove(old)
		if err != nil {
			return nil, err
		}
		if len(proof) > maxProofLines {
			return nil, fmt.Errorf("%d proof lines, more than %d", len(proof), maxProofLines)
		}
		for _, h := range proof {
			b.WriteString(base64.StdEncoding.EncodeToString(h[:]))
			b.WriteByte('\n')
		}
	}
	b.WriteByte('\n')
	b.Write(cp.Note)
	return b.Bytes(), nil
}

func (c *witnessClient) post(ctx context.Context, body []byte) (status int, resp []byte, ctype string, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(c.w.URL, "/")+"/add-checkpoint", bytes.NewReader(body))
	if err != nil {
		return 0, nil, "", err
	}
	res, err := c.http.Do(req)
	if err != nil {
		return 0, nil, "", err
	}
	defer func() { _ = res.Body.Close() }()
	resp, err = io.ReadAll(io.LimitReader(res.Body, witnessMaxBody))
	if err != nil {
		return 0, nil, "", err
	}
	return res.StatusCode, resp, res.Header.Get("Content-Type"), nil
}

// signatureLines checks the witness's answer: signature lines of which one
// at least is a valid cosignature of cp by this witness. It returns only
// those, as lines to append to the note.
func (c *witnessClient) signatureLines(cp *Checkpoint, resp []byte) ([]byte, error) {
	if len(resp) == 0 || resp[len(resp)-1] != '\n' {
		return nil, fmt.Errorf("answer %q is not signature lines", clip(resp))
	}
	n, err := note.Open(append(append([]byte(nil), cp.Note...), resp...), note.VerifierList(c.w.Verifier))
	if err != nil {
		return nil, fmt.Errorf("answer does not carry its valid cosignature: %w", err)
	}
	var out []byte
	for _, s := range n.Sigs {
		out = append(out, "— "+s.Name+" "+s.Base64+"\n"...)
	}
	return out, nil
}

func clip(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// witnessRound asks every witness at once to cosign cp, for at most
// timeout, and returns the note with every cosignature collected appended
// to its signature lines (in the witnesses' order) and how many there are.
func witnessRound(ctx context.Context, clients []*witnessClient, cp *Checkpoint, prove prover, timeout time.Duration, log *zap.Logger) ([]byte, int) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	sigs := make([][]byte, len(clients))
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Go(func() {
			s, err := c.cosign(ctx, cp, prove)
			if err != nil {
				lvl := log.Warn
				if errors.Is(err, ErrWitnessRefused) {
					lvl = log.Error
				}
				lvl("checkpoint not cosigned", zap.Int64("size", cp.Size), zap.Error(err))
				return
			}
			sigs[i] = s
		})
	}
	wg.Wait()
	out := append([]byte(nil), cp.Note...)
	n := 0
	for _, s := range sigs {
		if s != nil {
			out = append(out, s...)
			n++
		}
	}
	return out, n
}

// startWitnesses makes the witness clients and the tree their proofs come
// from.
func (c *Checkpointer) startWitnesses() (*Tree, error) {
	hc := c.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: c.witnessTimeout()}
	}
	clients := make([]*witnessClient, len(c.Witnesses))
	for i, w := range c.Witnesses {
		if w.Verifier == nil || w.URL == "" {
			return nil, fmt.Errorf("witness %d: needs a URL and a cosignature verifier key", i+1)
		}
		clients[i] = newWitnessClient(w, hc, c.Log)
	}
	c.mu.Lock()
	c.witnesses = clients
	c.mu.Unlock()
	if c.TreeDir == "" {
		return &Tree{}, nil
	}
	return TempTreeFiles(c.TreeDir)
}

func (c *Checkpointer) witnessTimeout() time.Duration {
	if c.WitnessTimeout > 0 {
		return c.WitnessTimeout
	}
	return 5 * time.Second
}

// WitnessStatus returns what the checkpointer knows of each witness, in
// the order configured; nil before Run started or without witnesses. Safe
// to call from any goroutine.
func (c *Checkpointer) WitnessStatus() []WitnessStatus {
	c.mu.Lock()
	clients := c.witnesses
	c.mu.Unlock()
	out := make([]WitnessStatus, len(clients))
	for i, w := range clients {
		out[i] = w.status()
	}
	return out
}

// Witnessed returns how many cosignatures the last published checkpoint
// carried, and when a checkpoint with at least WitnessQuorum (at least
// one) was last published; zero if never.
func (c *Checkpointer) Witnessed() (cosignatures int, quorumAt time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastCosigs, c.witnessedAt
}
