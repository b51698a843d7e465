package mirror_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/mirror"
)

// TestMirrorCosignsWhatItVerified: a mirror on its own JetStream copies
// the operator's chain as a real recorder writes it, and the operator's
// checkpointer, which knows it as one more witness, publishes each
// checkpoint with the mirror's cosignature; the copy holds the source's
// messages byte for byte at the same sequences, and chain verify of the
// copy passes.
func TestMirrorCosignsWhatItVerified(t *testing.T) {
	k := newKeyring(t)
	o := newOperator(t, k)
	m := startMirror(t, k, o, nil)
	o.connect(t, m.witness())
	for _, n := range []int{10, 7, 1, 33} {
		cp := o.record(t, n)
		if !m.cosigned(t, cp) {
			t.Fatalf("the checkpoint of %d events carries no cosignature of the mirror", cp.Size)
		}
	}
	st := m.Status()
	if st.Cosigned != 51 || st.Clean != st.Events || st.Events < 51 || st.Alarms != 0 {
		t.Fatalf("mirror status %+v", st)
	}
	if got := metric(t, m, "gridseal_mirror_cosignatures_total"); got < 4 {
		t.Fatalf("gridseal_mirror_cosignatures_total = %v", got)
	}
	local := natstest.Connect(t, m.srv.URL())
	ljs, _ := jetstream.New(local)
	src := all(t, o.js)
	testwait.For(t, "the copy to hold every message", func() bool { return len(all(t, ljs)) == len(src) })
	for i, c := range all(t, ljs) {
		if c.Seq != src[i].Seq || c.Subject != src[i].Subject || c.MsgID != src[i].MsgID || !bytes.Equal(c.Data, src[i].Data) {
			t.Fatalf("copy of sequence %d differs from the source's", src[i].Seq)
		}
	}
	rep, err := chain.VerifyStream(t.Context(), ljs, chain.VerifyOptions{Trust: k.trust()})
	if err != nil || len(rep.Problems) > 0 {
		t.Fatalf("chain verify of the copy: %v %v", err, rep.Problems)
	}
}

// TestMirrorReportsRewrittenHistory: a writer that rewrites its history
// and re-signs it with its own key — a different block at a height the
// mirror already verified, or the whole stream rebuilt — is reported by
// the mirror (an alarm naming it), and the checkpoints of the rewritten
// history get no cosignature from it, though every signature is valid.
func TestMirrorReportsRewrittenHistory(t *testing.T) {
	for _, tc := range []struct {
		name string
		// rewrite rewrites the history and returns the checkpoint the
		// checkpointer then signed of it.
		rewrite func(t *testing.T, o *operator) *chain.Checkpoint
		kind    string
		alarm   string // what the alarm says
		refusal string // what the checkpointer is told last, if it is still asked
	}{
		{"another block at a verified height", func(t *testing.T, o *operator) *chain.Checkpoint {
			prev := blockAt(t, o.js, 1)
			msg, hash := signedBlock(t, o.keys.writer.Signer, 2, prev.Hash, 9001, 9002)
			if _, err := o.js.PublishMsg(t.Context(), &nats.Msg{Subject: chain.Subject("gw-1"), Data: msg},
				jetstream.WithMsgID(hash.String())); err != nil {
				t.Fatal(err)
			}
			return o.checkpointed(t)
		}, mirror.KindBlock, "fork: block 2 appears again", "does not verify after its first"},
		{"stream rebuilt and re-signed", func(t *testing.T, o *operator) *chain.Checkpoint {
			ws := o.cpr.Witnesses
			o.stop()
			js, _ := jetstream.New(natstest.Connect(t, o.srv.URL()))
			for _, s := range []string{chain.StreamName, chain.CheckpointStream} {
				if err := js.DeleteStream(t.Context(), s); err != nil {
					t.Fatal(err)
				}
			}
			o.connect(t, ws...)
			o.next = 5000 // other events, each block re-signed with the writer's key
			var cp *chain.Checkpoint
			for range 6 {
				cp = o.record(t, 3)
			}
			return cp
		}, mirror.KindSource, "is not the one the mirror copied", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newKeyring(t)
			o := newOperator(t, k)
			m := startMirror(t, k, o, nil)
			o.connect(t, m.witness())
			for range 4 { // blocks 0..3
				if cp := o.record(t, 3); !m.cosigned(t, cp) {
					t.Fatalf("the genuine checkpoint of %d events is not cosigned", cp.Size)
				}
			}
			cosigned := m.Status().Cosigned
			cp := tc.rewrite(t, o)
			m.alarm(t, tc.kind, tc.alarm)
			if tc.refusal != "" {
				refusedWith(t, o, tc.refusal)
			}
			if m.cosigned(t, cp) {
				t.Fatalf("the rewritten history's checkpoint of %d events is cosigned", cp.Size)
			}
			if got := m.Status().Cosigned; got != cosigned {
				t.Fatalf("the mirror cosigned a tree of %d events after the rewrite (before: %d)", got, cosigned)
			}
			saved, err := mirror.ReadAlarms(m.dir)
			if err != nil || len(saved) == 0 {
				t.Fatalf("alarms kept in the mirror's directory: %v, %v", saved, err)
			}
			if metric(t, m, "gridseal_mirror_alarm") != 1 {
				t.Fatal("gridseal_mirror_alarm is not 1")
			}
		})
	}
}

// TestMirrorDetectsSplitView: one checkpoint key signs the trees of two
// different streams. The mirror copies one; the other's checkpointer asks
// it to cosign too: it refuses, and records both signed checkpoints as a
// split view. Compare finds the same pair without a running mirror: by
// root at one size, and at different sizes with a tree of the copy.
func TestMirrorDetectsSplitView(t *testing.T) {
	k := newKeyring(t)
	a := newOperator(t, k)
	m := startMirror(t, k, a, nil)
	a.connect(t, m.witness())
	cpA := a.record(t, 10)
	if !m.cosigned(t, cpA) {
		t.Fatal("stream A's checkpoint is not cosigned")
	}
	b := newOperator(t, k)
	b.next = 7000
	b.connect(t, m.witness())
	cpB := b.record(t, 10)
	if m.cosigned(t, cpB) {
		t.Fatal("the other stream's checkpoint, of the same size, is cosigned too")
	}
	split := m.alarm(t, mirror.KindSplitView, "of 10 events")
	if len(split.Checkpoints) != 2 || !strings.Contains(split.Checkpoints[0]+split.Checkpoints[1], string(cpB.Note[:len(cpB.Note)-1])) {
		t.Fatalf("the split view alarm does not hold both signed checkpoints: %+v", split)
	}

	cmp, err := mirror.Compare([]*chain.Checkpoint{cpA, cpB}, nil)
	if err != nil || len(cmp.Splits) != 1 {
		t.Fatalf("Compare of two checkpoints of one size, two roots: %+v, %v", cmp, err)
	}
	cpA2 := a.record(t, 5)
	cmp, err = mirror.Compare([]*chain.Checkpoint{cpA2, cpB}, nil)
	if err != nil || len(cmp.Splits) != 0 || len(cmp.Unchecked) != 1 {
		t.Fatalf("Compare of two sizes without a tree: %+v, %v (want: unchecked)", cmp, err)
	}
	tree := treeOf(t, a.js)
	cmp, err = mirror.Compare([]*chain.Checkpoint{cpA2, cpB}, tree)
	if err != nil || len(cmp.Splits) != 1 || cmp.Splits[0].A != cpB || cmp.Confirmed != 1 {
		t.Fatalf("Compare with stream A's tree: %+v, %v", cmp, err)
	}
}

// TestMirrorCatchesUpAfterDowntime: while the mirror is down the
// checkpoints are published without its cosignature; started again on
// its directory, it verifies its copy again, copies what it missed, and
// cosigns the next checkpoint.
func TestMirrorCatchesUpAfterDowntime(t *testing.T) {
	k := newKeyring(t)
	o := newOperator(t, k)
	m := startMirror(t, k, o, nil)
	o.connect(t, m.witness())
	if cp := o.record(t, 8); !m.cosigned(t, cp) {
		t.Fatal("not cosigned before the downtime")
	}
	m.stop(t)
	if cp := o.record(t, 4); m.cosigned(t, cp) {
		t.Fatal("cosigned by a mirror that is down")
	}
	m.start(t)
	var cp *chain.Checkpoint
	testwait.For(t, "a checkpoint cosigned by the mirror again", func() bool {
		cp = o.record(t, 1)
		return m.cosigned(t, cp)
	})
	st := m.Status()
	if st.Cosigned != cp.Size || st.Alarms != 0 || st.Clean < cp.Size {
		t.Fatalf("mirror status after catching up: %+v (checkpoint of %d)", st, cp.Size)
	}
}

// TestMirrorRefusesRollback: the operator's data directory put back as it
// was (its JetStream store restored from a copy) loses the events the
// mirror cosigned since; the mirror reports the source rolled back, and
// cosigns none of the rolled-back chain's checkpoints — not the smaller
// tree, nor the larger one that is not an extension of its own.
func TestMirrorRefusesRollback(t *testing.T) {
	k := newKeyring(t)
	o := newOperator(t, k)
	m := startMirror(t, k, o, nil)
	o.connect(t, m.witness())
	o.record(t, 10)
	snap := t.TempDir()
	store := o.srv.StoreDir() // asked while it runs: a stopped server has none
	o.stop()
	o.srv.Stop()
	copyDir(t, store, snap)
	o.srv.Restart()
	o.connect(t, m.witness())
	o.record(t, 9)
	var last *chain.Checkpoint
	testwait.For(t, "the mirror cosigning after the operator's restart", func() bool {
		last = o.record(t, 1)
		return m.cosigned(t, last)
	})
	o.stop()
	o.srv.Stop()
	replaceDir(t, store, snap)
	o.srv.Restart()
	o.connect(t, m.witness())
	o.next = 3000
	if cp := o.record(t, 5); m.cosigned(t, cp) {
		t.Fatalf("a rolled-back tree of %d events is cosigned", cp.Size)
	}
	m.alarm(t, mirror.KindSource, "rolled back")
	refusedWith(t, o, "rolled back")
	if cp := o.record(t, int(last.Size)); m.cosigned(t, cp) || cp.Size != 15+last.Size {
		t.Fatalf("the rolled-back chain grown to %d events: cosigned %v", cp.Size, m.cosigned(t, cp))
	}
	m.alarm(t, mirror.KindSplitView, fmt.Sprintf("does not extend the checkpoint of %d events", last.Size))
	if st := m.Status(); st.Cosigned != last.Size {
		t.Fatalf("the mirror's cosigned size after the rollback: %d, want %d", st.Cosigned, last.Size)
	}
}
