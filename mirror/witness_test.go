package mirror_test

import (
	"crypto/rand"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/mirror"
)

// TestAddCheckpointAnswers: each add-checkpoint request gets the answer
// c2sp.org/tlog-witness prescribes — 400 for a malformed body, 404 for
// another origin, 403 for a checkpoint no pinned key signed, 409 with the
// mirror's size for another old size — and the mirror's own: 503 for a
// checkpoint the copy has not reached yet; a checkpoint of the copy gets
// a cosignature line that verifies.
func TestAddCheckpointAnswers(t *testing.T) {
	k := newKeyring(t)
	o := newOperator(t, k)
	m := startMirror(t, k, o, func(c *mirror.Config) { c.Wait = 100 * time.Millisecond })
	o.connect(t) // no witnesses: the test asks the mirror itself
	cp := o.record(t, 12)
	ahead, err := chain.SignCheckpoint(1000, chain.Hash{7}, k.cpSigner)
	if err != nil {
		t.Fatal(err)
	}
	skey, _, _ := note.GenerateKey(rand.Reader, "stranger")
	stranger, _ := note.NewSigner(skey)
	unknown, _ := chain.SignCheckpoint(cp.Size, cp.Root, stranger)
	otherOrigin, _ := note.Sign(&note.Note{Text: "example.com/log\n12\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"}, k.cpSigner)
	for _, tc := range []struct {
		name  string
		body  string
		code  int
		ctype string
		says  string
	}{
		{"no blank line before the checkpoint", "old 0\n" + string(cp.Note), http.StatusBadRequest, "", "is not a base64 hash"},
		{"no checkpoint", "old 0\n", http.StatusBadRequest, "", "blank line"},
		{"old size not a number", "old x\n\n" + string(cp.Note), http.StatusBadRequest, "", "not a decimal size"},
		{"old size with a leading zero", "old 00\n\n" + string(cp.Note), http.StatusBadRequest, "", "not a decimal size"},
		{"another origin", "old 0\n\n" + string(otherOrigin), http.StatusNotFound, "", "unknown origin"},
		{"signed by no pinned key", "old 0\n\n" + string(unknown.Note), http.StatusForbidden, "", "not signed by a checkpointer key"},
		{"old size larger than the checkpoint", "old 13\n\n" + string(cp.Note), http.StatusBadRequest, "", "larger than"},
		{"old size not the mirror's", "old 5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n" + string(cp.Note), http.StatusConflict, "text/x.tlog.size", "0\n"},
		{"beyond the copy", "old 0\n\n" + string(ahead.Note), http.StatusServiceUnavailable, "", "ask again"},
		{"the copy's checkpoint", "old 0\n\n" + string(cp.Note), http.StatusOK, "", "— mirror.test/m1 "},
		{"again, from the size cosigned", "old 12\n\n" + string(cp.Note), http.StatusOK, "", "— mirror.test/m1 "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := http.Post("http://"+m.addr+"/add-checkpoint", "text/plain", strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			b, _ := io.ReadAll(res.Body)
			if res.StatusCode != tc.code || !strings.Contains(string(b), tc.says) || tc.ctype != "" && res.Header.Get("Content-Type") != tc.ctype {
				t.Fatalf("%d %s %q, want %d %s saying %q", res.StatusCode, res.Header.Get("Content-Type"), b, tc.code, tc.ctype, tc.says)
			}
			if tc.code != http.StatusOK {
				return
			}
			cs, err := chain.Cosignatures(append(append([]byte(nil), cp.Note...), b...), []*chain.CosignatureVerifier{k.cosigner.Verifier()})
			if err != nil || len(cs) != 1 {
				t.Fatalf("the answer %q is not a valid cosignature: %v", b, err)
			}
		})
	}
	if len(m.Alarms()) != 0 {
		t.Fatalf("alarms from requests that were merely wrong: %v", m.Alarms())
	}
}

// TestMirrorKnowsPolicies: with known policy digests, an event that names
// another policy is an alarm, and the checkpoint over it is not cosigned;
// the same chain, with its policy known, is.
func TestMirrorKnowsPolicies(t *testing.T) {
	for _, tc := range []struct {
		name  string
		known string
		ok    bool
	}{
		{"the writers' policy is known", "7fbde7198b85dc50ef0d112d46d9d889159460634310496d1b19cdf65da7db40", true},
		{"another policy is known", "0000000000000000000000000000000000000000000000000000000000000001", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newKeyring(t)
			o := newOperator(t, k)
			m := startMirror(t, k, o, func(c *mirror.Config) { c.KnownPolicies = map[string]bool{tc.known: true} })
			o.connect(t, m.witness())
			cp := o.record(t, 5)
			if got := m.cosigned(t, cp); got != tc.ok {
				t.Fatalf("cosigned %v, want %v", got, tc.ok)
			}
			if !tc.ok {
				m.alarm(t, mirror.KindPolicy, "names policy 7fbde7198b85dc50ef0d112d46d9d889159460634310496d1b19cdf65da7db40, which is not a known policy")
				refusedWith(t, o, "does not verify after its first 0 events")
			}
		})
	}
}
