package mirror

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
	"time"

	"go.uber.org/zap"
	"golang.org/x/mod/sumdb/note"

	"github.com/gridseal/gridseal/chain"
)

// The mirror's witness side (c2sp.org/tlog-witness): POST /add-checkpoint
// with "old N", a consistency proof and the signed checkpoint. It cosigns
// only if the checkpoint is signed by a pinned checkpointer key, its old
// size is the size the mirror last cosigned and the proof from there
// checks, and — what a consistency-only witness cannot tell — the mirror
// has copied and verified every block up to the checkpoint's size with no
// problem and its own tree at that size has the checkpoint's root.
// Otherwise: 400 (malformed), 404 (another origin), 403 (no pinned
// signature), 409 (another old size, body the mirror's; or its size with
// another root), 422 (the proof does not check, the history does not
// verify, or the root is not the copy's), 503 (the copy has not reached
// the checkpoint yet: ask again).

// maxRequest bounds an add-checkpoint body: 63 proof lines and a note
// with a few dozen signatures fit many times over.
const maxRequest = 64 << 10

// Handler serves POST /add-checkpoint (c2sp.org/tlog-witness) to the
// checkpointers, and GET /healthz.
func (m *Mirror) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /add-checkpoint", m.addCheckpoint)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		st := m.Status()
		fmt.Fprintf(w, "copied %d, verified %d (%d events, %d clean), cosigned %d, alarms %d\n",
			st.Copied, st.Verified, st.Events, st.Clean, st.Cosigned, st.Alarms)
	})
	return mux
}

// refusal is an add-checkpoint answer without a cosignature.
type refusal struct {
	code  int
	body  string
	ctype string
}

func (m *Mirror) addCheckpoint(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequest+1))
	var line []byte
	var ref *refusal
	var size int64 = -1
	switch {
	case err != nil:
		ref = &refusal{code: http.StatusBadRequest, body: "cannot read the request: " + err.Error()}
	case len(body) > maxRequest:
		ref = &refusal{code: http.StatusRequestEntityTooLarge, body: fmt.Sprintf("request larger than %d bytes", maxRequest)}
	default:
		line, size, ref = m.cosignRequest(r.Context(), body)
	}
	if ref != nil {
		m.met.refusals.WithLabelValues(strconv.Itoa(ref.code)).Inc()
		lvl := m.log.Warn
		if ref.code == http.StatusConflict || ref.code == http.StatusServiceUnavailable {
			lvl = m.log.Info // the protocol at work: the client asks again
		}
		lvl("checkpoint not cosigned", zap.Int("status", ref.code), zap.Int64("size", size), zap.String("why", strings.TrimSpace(ref.body)))
		ctype := ref.ctype
		if ctype == "" {
			ctype = "text/plain; charset=utf-8"
		}
		w.Header().Set("Content-Type", ctype)
		w.WriteHeader(ref.code)
		_, _ = io.WriteString(w, ref.body)
		return
	}
	m.met.cosignatures.Inc()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write(line)
}

// parseAddCheckpoint splits a request body into its old size, proof and
// signed note.
func parseAddCheckpoint(body []byte) (old int64, proof []chain.Hash, signed []byte, err error) {
	head, signed, ok := bytes.Cut(body, []byte("\n\n"))
	if !ok {
		return 0, nil, nil, errors.New("no blank line before the checkpoint")
	}
	lines := strings.Split(string(head), "\n")
	sizeText, ok := strings.CutPrefix(lines[0], "old ")
	if !ok {
		return 0, nil, nil, errors.New(`the first line is not "old <size>"`)
	}
	old, err = strconv.ParseInt(sizeText, 10, 64)
	if err != nil || old < 0 || strconv.FormatInt(old, 10) != sizeText {
		return 0, nil, nil, fmt.Errorf("old size %q is not a decimal size", sizeText)
	}
	if len(lines)-1 > 63 {
		return 0, nil, nil, fmt.Errorf("%d proof lines, more than 63", len(lines)-1)
	}
	for _, l := range lines[1:] {
		raw, err := base64.StdEncoding.DecodeString(l)
		if err != nil || len(raw) != 32 {
			return 0, nil, nil, fmt.Errorf("proof line %q is not a base64 hash", l)
		}
		proof = append(proof, chain.Hash(raw))
	}
	return old, proof, signed, nil
}

// cosignRequest decides one request: a cosignature line, or a refusal.
func (m *Mirror) cosignRequest(ctx context.Context, body []byte) ([]byte, int64, *refusal) {
	old, proof, signed, err := parseAddCheckpoint(body)
	if err != nil {
		return nil, -1, &refusal{code: http.StatusBadRequest, body: err.Error() + "\n"}
	}
	origin, _, _ := strings.Cut(string(signed), "\n")
	if origin != chain.CheckpointOrigin {
		return nil, -1, &refusal{code: http.StatusNotFound, body: fmt.Sprintf("unknown origin %q: this mirror witnesses %s\n", origin, chain.CheckpointOrigin)}
	}
	n, err := note.Open(signed, m.cfg.Trust.Checkpointers)
	if err != nil {
		return nil, -1, &refusal{code: http.StatusForbidden, body: "not signed by a checkpointer key this mirror pins: " + err.Error() + "\n"}
	}
	cp, err := chain.OpenCheckpoint(signed, m.cfg.Trust.Checkpointers)
	if err != nil {
		return nil, -1, &refusal{code: http.StatusBadRequest, body: err.Error() + "\n"}
	}
	m.observe(cp, "an add-checkpoint request")
	if old > cp.Size {
		return nil, cp.Size, &refusal{code: http.StatusBadRequest, body: fmt.Sprintf("old size %d is larger than the checkpoint's %d\n", old, cp.Size)}
	}
	if old == 0 && len(proof) > 0 {
		return nil, cp.Size, &refusal{code: http.StatusBadRequest, body: "a proof from size 0\n"}
	}

	m.wmu.Lock()
	defer m.wmu.Unlock()
	st := m.state
	if old != st.Size {
		return nil, cp.Size, &refusal{code: http.StatusConflict, body: fmt.Sprintf("%d\n", st.Size), ctype: "text/x.tlog.size"}
	}
	if old == cp.Size && old > 0 && cp.Root != st.Root {
		m.raise(Alarm{Kind: KindSplitView, Reason: fmt.Sprintf(
			"the checkpoint of %d events this mirror cosigned has root %s; a checkpoint of the same size signed by %s has root %s: a split view",
			st.Size, st.Root, signers(cp), cp.Root), Checkpoints: []string{string(st.Note), string(cp.Note)}})
		return nil, cp.Size, &refusal{code: http.StatusConflict, body: fmt.Sprintf("%d\n", st.Size), ctype: "text/x.tlog.size"}
	}
	if old > 0 && old < cp.Size {
		if err := chain.CheckConsistency(proof, cp.Size, cp.Root, old, st.Root); err != nil {
			m.raise(Alarm{Kind: KindSplitView, Reason: fmt.Sprintf(
				"a checkpoint of %d events signed by %s does not extend the checkpoint of %d events this mirror cosigned (its consistency proof does not check): a split view",
				cp.Size, signers(cp), old), Checkpoints: []string{string(st.Note), string(cp.Note)}})
			return nil, cp.Size, &refusal{code: http.StatusUnprocessableEntity, body: fmt.Sprintf("the consistency proof from %d to %d does not check\n", old, cp.Size)}
		}
	}
	if ref := m.waitVerified(ctx, cp); ref != nil {
		return nil, cp.Size, ref
	}
	line := m.cfg.Cosigner.Cosign([]byte(n.Text), time.Now())
	next := witnessState{Size: cp.Size, Root: cp.Root, Note: cp.Note}
	if err := saveState(m.cfg.Dir, next); err != nil {
		m.log.Error("cannot keep the cosigned checkpoint; not cosigning", zap.Error(err))
		return nil, cp.Size, &refusal{code: http.StatusInternalServerError, body: "the mirror cannot keep its state\n"}
	}
	m.state = next
	m.cosigned.Store(cp.Size)
	m.met.cosignedSize.Set(float64(cp.Size))
	return line, cp.Size, nil
}

// waitVerified waits, for at most cfg.Wait, until the copy has been
// verified with no problem up to cp's size, and checks the copy's root
// there.
func (m *Mirror) waitVerified(ctx context.Context, cp *chain.Checkpoint) *refusal {
	deadline := time.NewTimer(m.cfg.Wait)
	defer deadline.Stop()
	for {
		m.mu.Lock()
		tree, clean, events, tainted, grown := m.tree, m.clean, m.events, m.tainted, m.grown
		m.mu.Unlock()
		switch {
		case tree != nil && clean >= cp.Size:
			root, err := tree.Root(cp.Size)
			if err != nil {
				return &refusal{code: http.StatusInternalServerError, body: "the mirror's tree cannot be read\n"}
			}
			if root != cp.Root {
				// observe raised the alarm.
				return &refusal{code: http.StatusUnprocessableEntity, body: fmt.Sprintf(
					"the first %d events of the stream this mirror copied and verified have root %s, not the checkpoint's %s\n", cp.Size, root, cp.Root)}
			}
			return nil
		case tainted != nil:
			return &refusal{code: http.StatusUnprocessableEntity, body: fmt.Sprintf(
				"the stream's history does not verify after its first %d events: %s\n", clean, tainted.Reason)}
		}
		select {
		case <-grown:
		case <-deadline.C:
			return &refusal{code: http.StatusServiceUnavailable, body: fmt.Sprintf(
				"the mirror has copied and verified %d of the checkpoint's %d events; ask again\n", events, cp.Size)}
		case <-ctx.Done():
			return &refusal{code: http.StatusServiceUnavailable, body: "request ended\n"}
		}
	}
}
