package chain_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/chaintest"
	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/internal/testwait"
)

// verifyWithSumdb is the whole offline check of a gridseal tlog-proof with
// golang.org/x/mod/sumdb alone and the checkpointer's verifier key, as
// docs/FORMAT.md shows it: it returns the proved event.
func verifyWithSumdb(proof []byte, vkey string) ([]byte, error) {
	head, cpNote, ok := bytes.Cut(proof, []byte("\n\n"))
	lines := strings.Split(string(head), "\n")
	if !ok || len(lines) < 3 || lines[0] != "c2sp.org/tlog-proof@v1" {
		return nil, fmt.Errorf("not a tlog-proof")
	}
	event, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(lines[1], "extra "))
	if err != nil {
		return nil, err
	}
	index, err := strconv.ParseInt(strings.TrimPrefix(lines[2], "index "), 10, 64)
	if err != nil {
		return nil, err
	}
	var rp tlog.RecordProof
	for _, l := range lines[3:] {
		h, err := base64.StdEncoding.DecodeString(l)
		if err != nil || len(h) != 32 {
			return nil, fmt.Errorf("proof hash %q", l)
		}
		rp = append(rp, tlog.Hash(h))
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, err
	}
	n, err := note.Open(cpNote, note.VerifierList(v))
	if err != nil {
		return nil, err
	}
	body := strings.Split(n.Text, "\n") // origin, size, root
	size, err := strconv.ParseInt(body[1], 10, 64)
	if err != nil || body[0] != "gridseal/chain/GRIDSEAL_CHAIN" {
		return nil, fmt.Errorf("checkpoint %q", n.Text)
	}
	root, err := base64.StdEncoding.DecodeString(body[2])
	if err != nil || len(root) != 32 {
		return nil, fmt.Errorf("checkpoint root %q", body[2])
	}
	return event, tlog.CheckRecord(rp, size, tlog.Hash(root), index, tlog.RecordHash(event))
}

// TestTlogProofVerifiesWithSumdbAlone: a proof written by gridseal checks
// with x/mod/sumdb and the public key only, and with chain's own Verify;
// a changed event checks with neither.
func TestTlogProofVerifiesWithSumdbAlone(t *testing.T) {
	skey, vkey, err := note.GenerateKey(rand.Reader, "cp-1")
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	known := note.VerifierList(v)
	var tree chain.Tree
	var events [][]byte
	for i := range 1000 {
		events = append(events, fmt.Appendf(nil, "event %d", i))
	}
	if err := tree.AppendBlock(1, events); err != nil {
		t.Fatal(err)
	}
	root, _ := tree.Root(1000)
	cp, err := chain.SignCheckpoint(1000, root, signer)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 1, 511, 999} {
		t.Run(fmt.Sprint("leaf ", i), func(t *testing.T) {
			inc, err := chain.ProveInTree(&tree, cp, 1, i)
			if err != nil {
				t.Fatal(err)
			}
			file := chain.NewTlogProof(inc, events[i]).Marshal()
			if got, err := verifyWithSumdb(file, vkey); err != nil || !bytes.Equal(got, events[i]) {
				t.Fatalf("sumdb alone: %q, %v", got, err)
			}
			p, err := chain.ParseTlogProof(file)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := p.Verify(known); err != nil {
				t.Fatal(err)
			}
			p.Extra = events[(i+1)%len(events)]
			bad := p.Marshal()
			if _, err := verifyWithSumdb(bad, vkey); err == nil {
				t.Fatal("another event checks with sumdb")
			}
			if _, err := p.Verify(known); err == nil {
				t.Fatal("another event checks")
			}
		})
	}
}

// FuzzParseTlogProof: any input parses or is refused without a panic, and
// what parses is written back byte for byte.
func FuzzParseTlogProof(f *testing.F) {
	f.Add([]byte("c2sp.org/tlog-proof@v1\nextra ZXZlbnQ=\nindex 3\n" + strings.Repeat("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", 2) +
		"\ngridseal/chain/GRIDSEAL_CHAIN\n4\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n— cp x\n"))
	f.Add([]byte("c2sp.org/tlog-proof@v1\nindex 0\n\ncp\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := chain.ParseTlogProof(data)
		if err != nil {
			return
		}
		if out := p.Marshal(); !bytes.Equal(out, data) {
			t.Fatalf("parsed and written back:\n%q\nwas\n%q", out, data)
		}
	})
}

// TestProveFromStreamAndTiles: an event's inclusion proof and the newest
// checkpoint's consistency proof come out the same from the stream and
// from the tiles, print as chain prove prints them, and a tlog-proof file
// of the event checks offline; a rewritten old root, a leaf that is not
// the event, a proof under another key are refused.
func TestProveFromStreamAndTiles(t *testing.T) {
	e := newChain(t)
	r := e.recorder(t, "")
	cpk := keystest.NewCheckpointer(t, "checkpointer-1")
	known := cpk.Verifiers()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	cpr := &chain.Checkpointer{Signer: cpk.Signer, Every: 50 * time.Millisecond, Log: nopLog()}
	go func() { _ = cpr.Run(ctx, e.js) }()
	for i := uint64(0); i < 40; i++ {
		if err := r.Record(t.Context(), event(i, audit.Allow), i%10 == 9); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "a checkpoint of all 40 events", func() bool {
		cp, _ := chain.LatestCheckpoint(t.Context(), e.js, known)
		return cp != nil && cp.Size == 40
	})
	tl := chaintest.OpenTiler(t, t.TempDir())
	stop := runTiler(t, tl, e.js)
	testwait.For(t, "40 events tiled", func() bool { return tl.Size() == 40 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tl.Close() }()
	msgs := readAll(t, e.nc)
	m := msgs[1]
	b, err := chain.ParseBlock(m.Data)
	if err != nil || len(b.Events) < 2 {
		t.Fatalf("block at %d: %d events, %v", m.Seq, len(b.Events), err)
	}
	index := len(b.Events) - 1
	for _, tc := range []struct {
		name string
		ts   *chain.Tiles
	}{{"stream", nil}, {"tiles", tl.Tiles()}} {
		t.Run(tc.name, func(t *testing.T) {
			inc, err := chain.ProveEventFrom(t.Context(), e.js, known, tc.ts, m.Seq, index)
			if err != nil {
				t.Fatal(err)
			}
			event, err := chain.ProvedEvent(t.Context(), e.js, tc.ts, inc, m.Seq, index)
			if err != nil || string(event) != string(b.Events[index]) {
				t.Fatalf("proved event %x, %v; want the block's", event, err)
			}
			text := string(inc.Text(m.Seq, index))
			head := fmt.Sprintf("event %d of block %d is leaf %d of the signed tree of 40 events\nleaf hash %s\nproof (%d hashes):\n",
				index, m.Seq, inc.Leaf, inc.LeafHash, len(inc.Proof))
			if !strings.HasPrefix(text, head) || !strings.HasSuffix(text, "checkpoint:\n"+string(inc.Checkpoint.Note)) ||
				strings.Count(text, "\n  ") != len(inc.Proof) {
				t.Errorf("text:\n%s", text)
			}
			other := *inc
			other.LeafHash = chain.LeafHash([]byte("another event"))
			if _, err := chain.ProvedEvent(t.Context(), e.js, tc.ts, &other, m.Seq, index); !errors.Is(err, chain.ErrCheckpointMismatch) {
				t.Errorf("an event not of the proved leaf: %v", err)
			}

			c, err := chain.ProveExtends(t.Context(), e.js, known, tc.ts, nil, "", 17)
			if err != nil || c.OldSize != 17 || c.New.Size != 40 {
				t.Fatalf("consistency %+v, %v", c, err)
			}
			var out strings.Builder
			c.WriteText(&out)
			if want := fmt.Sprintf("the signed tree of 40 events extends the tree of 17 events\nold root %s\nnew root %s\nproof (%d hashes):\n",
				c.OldRoot, c.New.Root, len(c.Proof)); !strings.HasPrefix(out.String(), want) {
				t.Errorf("consistency text:\n%s", out.String())
			}
			kept := &chain.Checkpoint{Size: 17, Root: chain.LeafHash([]byte("not the root"))}
			if _, err := chain.ProveExtends(t.Context(), e.js, known, tc.ts, kept, "kept.cp", 0); err == nil ||
				!strings.Contains(err.Error(), "signed in kept.cp: the chain was rewritten") {
				t.Errorf("a rewritten old tree: %v", err)
			}

			path := filepath.Join(t.TempDir(), "op.tlog-proof")
			if err := os.WriteFile(path, chain.NewTlogProof(inc, event).Marshal(), 0o600); err != nil {
				t.Fatal(err)
			}
			p, err := chain.CheckTlogProofFile(path, known)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := chain.DecodeEvent(b.Events[index])
			if p.Event.Op != want.Op || p.Checkpoint.Size != 40 {
				t.Errorf("checked proof of op %d in %d events", p.Event.Op, p.Checkpoint.Size)
			}
			out.Reset()
			p.WriteText(&out)
			for _, line := range []string{
				fmt.Sprintf("proof OK: leaf %d of the tree of 40 events signed by checkpointer-1\n", inc.Leaf),
				"command   inverter-1 unit 1 function 6 address 40127 quantity 1 pdu ",
				"verdict   allow (phase complete), exception 0\n",
				"rule      power-limit-setpoint\n",
			} {
				if !strings.Contains(out.String(), line) {
					t.Errorf("verify-proof text lacks %q:\n%s", line, out.String())
				}
			}
			if strings.Contains(out.String(), "BREAK-GLASS") {
				t.Error("an ordinary approval printed as break-glass")
			}
			if _, err := chain.CheckTlogProofFile(path, keystest.NewCheckpointer(t, "other").Verifiers()); err == nil || !strings.HasPrefix(err.Error(), path+": ") {
				t.Errorf("a proof under an unknown key: %v", err)
			}
		})
	}
}
