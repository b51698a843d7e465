package chain

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// VerifyOptions says what VerifyStream trusts and how it reports progress.
type VerifyOptions struct {
	// Trust pins the writers' keys and heads and, if Trust.Checkpointers
	// is set, the keys whose signed checkpoints are checked.
	Trust Trust
	// PinnedCheckpoint is the path of a checkpoint an earlier verification
	// kept (Report.Checkpoints.Newest). It is checked with the stream's own
	// checkpoints, so removing those from the stream does not hide a
	// truncation. A missing file is no pinned checkpoint; "" is none.
	// Ignored unless Trust.Checkpointers is set.
	PinnedCheckpoint string
	// MaxCheckpointAge, if above 0 and Trust.Checkpointers is set, is how
	// long an event may stay outside every signed checkpoint: one recorded
	// longer ago that none covers is a problem, so a checkpointer that is
	// not running or cannot publish is caught. A quiet chain is no problem.
	MaxCheckpointAge time.Duration
	// Progress, if set, is called every ProgressEvery (default 2s) during
	// the scan with the blocks and events verified so far.
	Progress      func(blocks, events uint64)
	ProgressEvery time.Duration
}

// Report is what VerifyStream found. The chain verified if Problems is empty.
type Report struct {
	Writers     map[string]WriterState // by writer id
	Blocks      uint64
	Events      uint64
	First, Last time.Time // times of the first and last block; zero if none
	// Problems lists every bad block and missing piece in stream order,
	// the first first; a bad block does not stop the scan, so one injected
	// message cannot hide what comes after it.
	Problems []*Problem
	// Checkpoints is nil unless Trust.Checkpointers is set.
	Checkpoints *CheckpointReport
}

// CheckpointReport is what VerifyStream found of signed checkpoints.
type CheckpointReport struct {
	Confirmed int   // checkpoints whose root matches the stream
	Events    int64 // events in the stream's tree
	// Newest is the largest checkpoint seen (in the stream or pinned), for
	// the caller to keep as its next PinnedCheckpoint; nil if none.
	Newest *Checkpoint
	// Cosignatures are the valid cosignatures of Newest by the trust
	// file's witnesses.
	Cosignatures []Cosignature
}

// VerifyStream verifies the whole chain stream: every block's hash, Merkle
// root, signature and height against opts.Trust, every pinned head, and the
// signed checkpoints if the trust pins checkpointer keys. It returns an
// error only if it could not verify (NATS, an unreadable pinned
// checkpoint); what it found wrong is in Report.Problems.
func VerifyStream(ctx context.Context, js jetstream.JetStream, opts VerifyOptions) (*Report, error) {
	trust := opts.Trust
	v := NewVerifier(trust)
	rep := &Report{}
	var cpCheck *CheckpointCheck
	if trust.Checkpointers != nil {
		cps, err := Checkpoints(ctx, js, trust.Checkpointers)
		if err != nil {
			return nil, err
		}
		if opts.PinnedCheckpoint != "" {
			if b, err := os.ReadFile(opts.PinnedCheckpoint); err == nil {
				cp, err := OpenCheckpoint(b, trust.Checkpointers)
				if err != nil {
					return nil, fmt.Errorf("pinned checkpoint %s: %w", opts.PinnedCheckpoint, err)
				}
				cps = append(cps, cp)
			}
		}
		cpCheck = NewCheckpointCheck(cps)
		rep.Checkpoints = &CheckpointReport{}
		for _, cp := range cps {
			if rep.Checkpoints.Newest == nil || cp.Size > rep.Checkpoints.Newest.Size {
				rep.Checkpoints.Newest = cp
			}
		}
	}
	every := opts.ProgressEvery
	if every <= 0 {
		every = 2 * time.Second
	}
	lastProgress := time.Now()
	// Once a message is missing, the stream's tree lacks its events: the
	// checkpoints cannot be checked beyond it, and are not.
	gap := false
	next := uint64(1)
	var covered, events int64 // events the newest checkpoint covers; seen
	if rep.Checkpoints != nil && rep.Checkpoints.Newest != nil {
		covered = rep.Checkpoints.Newest.Size
	}
	checkAge := cpCheck != nil && opts.MaxCheckpointAge > 0
	now := time.Now()
	// Each block's checks on its own run on every core; the rest, here,
	// in stream order.
	pl := newPipeline(&v.trust, func(m *Msg, c *blockCheck) error {
		if opts.Progress != nil && time.Since(lastProgress) > every {
			lastProgress = time.Now()
			opts.Progress(v.Blocks, v.Events)
		}
		gap = gap || m.Seq != next
		next = m.Seq + 1
		if cpCheck != nil && !gap {
			var p *Problem
			if err := cpCheck.addLeaves(m, c.leaves); errors.As(err, &p) {
				rep.Problems = append(rep.Problems, p)
			}
		}
		if checkAge {
			events += int64(len(c.leaves))
			if age := now.Sub(m.Stored); events > covered && age > opts.MaxCheckpointAge {
				checkAge = false // the first such block says it
				rep.Problems = append(rep.Problems, &Problem{Seq: m.Seq, Writer: m.Writer(), Reason: fmt.Sprintf(
					"recorded %v ago, yet no signed checkpoint covers it (the newest covers %d events; the most an event may wait is %v): the checkpointer is not running or cannot publish",
					age.Round(time.Second), covered, opts.MaxCheckpointAge)})
			}
		}
		ps, err := problems(v.addChecked(m, c))
		rep.Problems = append(rep.Problems, ps...)
		return err
	})
	defer pl.close()
	err := Scan(ctx, js, 1, false, pl.add)
	var ue *UnreadableError
	if err == nil || errors.As(err, &ue) {
		if ferr := pl.flush(); ferr != nil {
			err = ferr
		}
	}
	switch {
	case errors.As(err, &ue):
		// The last messages never came: report them, then finish.
		gap = true
		ps, _ := problems(v.Missing(ue.First, ue.Last, ue.Err))
		rep.Problems = append(rep.Problems, ps...)
	case errors.Is(err, jetstream.ErrStreamNotFound) && len(trust.Writers) > 0:
		// The trust pins writers, so the chain existed: its stream is gone.
		for _, w := range slices.Sorted(maps.Keys(trust.Writers)) {
			rep.Problems = append(rep.Problems, &Problem{Writer: w,
				Reason: "the chain stream " + StreamName + " does not exist: deleted? (the trust file pins this writer)"})
		}
	case err != nil:
		return nil, err
	}
	ps, err := problems(v.Finish())
	if err != nil {
		return nil, err
	}
	rep.Problems = append(rep.Problems, ps...)
	if cpCheck != nil {
		if !gap {
			ps, _ := problems(cpCheck.Finish())
			rep.Problems = append(rep.Problems, ps...)
		}
		rep.Checkpoints.Confirmed, rep.Checkpoints.Events = cpCheck.Confirmed()
		if len(trust.Witnesses) > 0 {
			var p *Problem
			rep.Checkpoints.Cosignatures, p = checkWitnessed(rep.Checkpoints.Newest, trust, now)
			if p != nil {
				rep.Problems = append(rep.Problems, p)
			}
		}
	}
	rep.Writers = make(map[string]WriterState, len(v.Writers()))
	for w, st := range v.Writers() {
		rep.Writers[w] = *st
	}
	rep.Blocks, rep.Events, rep.First, rep.Last = v.Blocks, v.Events, v.First, v.Last
	return rep, nil
}

// problems splits what the verifier returned into the problems it found
// (one, or several joined) and an error that stops verification.
func problems(err error) ([]*Problem, error) {
	if err == nil {
		return nil, nil
	}
	var p *Problem
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		var out []*Problem
		for _, e := range joined.Unwrap() {
			ps, err := problems(e)
			if err != nil {
				return out, err
			}
			out = append(out, ps...)
		}
		return out, nil
	}
	if errors.As(err, &p) {
		return []*Problem{p}, nil
	}
	return nil, err
}

// cosignatureSkew is how far in the future a cosignature's time may be and
// still count: the witness's clock may run a little ahead of ours.
const cosignatureSkew = 5 * time.Minute

// checkWitnessed applies the trust file's witness policy to the newest
// checkpoint: valid cosignatures by WitnessQuorum of its witnesses, the
// quorum's newest no older than WitnessMaxAge.
func checkWitnessed(newest *Checkpoint, trust Trust, now time.Time) ([]Cosignature, *Problem) {
	need := fmt.Sprintf("the trust file requires cosignatures by %d of its %d witnesses, within %v", trust.WitnessQuorum, len(trust.Witnesses), trust.WitnessMaxAge)
	if newest == nil {
		return nil, &Problem{Reason: "no signed checkpoint, yet " + need}
	}
	cosigs, err := Cosignatures(newest.Note, trust.Witnesses)
	if err != nil {
		return nil, &Problem{Reason: fmt.Sprintf("the newest checkpoint (%d events): %v", newest.Size, err)}
	}
	var times []time.Time
	for _, c := range cosigs {
		if c.Time.Before(now.Add(cosignatureSkew)) {
			times = append(times, c.Time)
		}
	}
	if len(times) < trust.WitnessQuorum {
		return cosigs, &Problem{Reason: fmt.Sprintf("the newest checkpoint (%d events) carries %d valid cosignatures, but %s: the witnesses are down, or refused it (a rolled-back or forked chain)",
			newest.Size, len(times), need)}
	}
	slices.SortFunc(times, func(a, b time.Time) int { return b.Compare(a) })
	if at := times[trust.WitnessQuorum-1]; now.Sub(at) > trust.WitnessMaxAge {
		return cosigs, &Problem{Reason: fmt.Sprintf("the newest checkpoint (%d events) was cosigned by a quorum at %s, %v ago, but %s: the checkpointer cannot reach the witnesses, or the chain is stale",
			newest.Size, at.UTC().Format(time.RFC3339), now.Sub(at).Round(time.Second), need)}
	}
	return cosigs, nil
}

// maxProblemsShown is how many problems WriteProblems lists before it
// counts the rest.
const maxProblemsShown = 20

// WriteProblems lists rep's first problems, one a line, and counts the
// others, as chain verify prints them.
func (rep *Report) WriteProblems(w io.Writer) {
	for i, p := range rep.Problems {
		if i == maxProblemsShown {
			fmt.Fprintf(w, "  … and %d more\n", len(rep.Problems)-maxProblemsShown)
			break
		}
		fmt.Fprintf(w, "  problem %d: %v\n", i+1, p)
	}
}

// WriteSummary writes what chain verify prints of a chain without
// problems, verified in elapsed: writers, blocks, events and their times,
// and the checkpoints confirmed and who cosigned the newest.
func (rep *Report) WriteSummary(w io.Writer, elapsed time.Duration) {
	fmt.Fprintf(w, "chain OK: %d writers, %d blocks, %d events", len(rep.Writers), rep.Blocks, rep.Events)
	if rep.Blocks > 0 {
		fmt.Fprintf(w, ", %s … %s", rep.First.Format(time.RFC3339), rep.Last.Format(time.RFC3339))
	}
	fmt.Fprintf(w, " (verified in %v)\n", elapsed.Round(time.Millisecond))
	if cp := rep.Checkpoints; cp != nil {
		fmt.Fprintf(w, "  checkpoints: %d signed checkpoints match the stream (%d events in the tree)\n", cp.Confirmed, cp.Events)
		for _, c := range cp.Cosignatures {
			fmt.Fprintf(w, "  witness %s cosigned the newest checkpoint at %s\n", c.Witness, c.Time.UTC().Format(time.RFC3339))
		}
	}
}

// WriteWriters writes a line per writer, in id order: its height, events,
// last hash and whether heads holds a local head for it.
func (rep *Report) WriteWriters(w io.Writer, heads map[string]Head) {
	for _, id := range slices.Sorted(maps.Keys(rep.Writers)) {
		st := rep.Writers[id]
		pinned := "no local head"
		if h, ok := heads[id]; ok {
			pinned = fmt.Sprintf("local head %d present", h.Height)
		}
		fmt.Fprintf(w, "  writer %-16s blocks 0..%d  events %d  last hash %s  (%s)\n", id, st.Height, st.Events, st.Hash.String()[:16], pinned)
	}
}
