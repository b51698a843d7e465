package console_test

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/internal/testwait"
)

// httpTiles is an independent tlog-tiles client: x/mod's TileReader over
// HTTP GETs of the console's /log/, paths from tlog's own Tile.Path with
// its height dropped (tile/8/0/x001/234 → /log/tile/0/x001/234).
type httpTiles struct {
	t    *testing.T
	base string
}

func (h httpTiles) Height() int { return 8 }

func (h httpTiles) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		b, _, err := h.get("/log/" + "tile/" + strings.TrimPrefix(t.Path(), "tile/8/"))
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}

func (httpTiles) SaveTiles([]tlog.Tile, [][]byte) {}

func (h httpTiles) get(path string) ([]byte, http.Header, error) {
	resp, err := http.Get(h.base + path)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, resp.Header, fmt.Errorf("GET %s: %s: %s", path, resp.Status, b)
	}
	return b, resp.Header, nil
}

// checkpoint fetches /log/checkpoint and opens it with the checkpointer's
// public key alone.
func (h httpTiles) checkpoint(v note.Verifier) tlog.Tree {
	h.t.Helper()
	b, hdr, err := h.get("/log/checkpoint")
	if err != nil {
		h.t.Fatal(err)
	}
	if ct := hdr.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		h.t.Fatalf("checkpoint Content-Type %q", ct)
	}
	n, err := note.Open(b, note.VerifierList(v))
	if err != nil {
		h.t.Fatal(err)
	}
	lines := strings.Split(n.Text, "\n")
	size, err1 := strconv.ParseInt(lines[1], 10, 64)
	root, err2 := base64.StdEncoding.DecodeString(lines[2])
	if err1 != nil || err2 != nil || len(root) != 32 {
		h.t.Fatalf("checkpoint %q", n.Text)
	}
	return tlog.Tree{N: size, Hash: tlog.Hash(root)}
}

// TestLogServesTiles: the console serves its tiles over HTTP; a client
// with only x/mod/sumdb and the checkpointer's public key computes the
// root of /log/checkpoint from them, checks an event's inclusion from its
// entry bundle, and a later checkpoint's consistency with an earlier one;
// full tiles are cached as immutable, partial ones are not.
func TestLogServesTiles(t *testing.T) {
	cp := keystest.NewCheckpointer(t, "checkpointer-test")
	r := startWith(t, &cp)
	v := cp.Verifier
	h := httpTiles{t: t, base: r.web.URL}
	r.traffic(t, 1499)
	var old tlog.Tree
	testwait.For(t, "a checkpoint of 1500 events on /log/checkpoint", func() bool {
		_, _, err := h.get("/log/checkpoint")
		if err == nil {
			old = h.checkpoint(v)
		}
		return old.N == 1500
	})
	r.traffic(t, 1699)
	var tree tlog.Tree
	testwait.For(t, "a checkpoint of 3200 events on /log/checkpoint", func() bool {
		tree = h.checkpoint(v)
		return tree.N == 3200
	})
	thr := tlog.TileHashReader(tree, h)
	root, err := tlog.TreeHash(tree.N, thr)
	if err != nil || root != tree.Hash {
		t.Fatalf("root from the tiles %v, checkpoint's %v (%v)", root, tree.Hash, err)
	}
	for _, i := range []int64{0, 255, 256, 1499, 3071, 3199} {
		t.Run(fmt.Sprintf("inclusion of leaf %d", i), func(t *testing.T) {
			bundle := fmt.Sprintf("/log/tile/entries/%03d", i/256)
			if w := min(tree.N-i/256*256, 256); w < 256 {
				bundle += fmt.Sprintf(".p/%d", w)
			}
			b, _, err := h.get(bundle)
			if err != nil {
				t.Fatal(err)
			}
			var entry []byte
			for k := int64(0); k <= i%256; k++ {
				n := int(binary.BigEndian.Uint16(b))
				entry, b = b[2:2+n], b[2+n:]
			}
			proof, err := tlog.ProveRecord(tree.N, i, thr)
			if err != nil {
				t.Fatal(err)
			}
			if err := tlog.CheckRecord(proof, tree.N, tree.Hash, i, tlog.RecordHash(entry)); err != nil {
				t.Fatalf("entry %d does not check: %v", i, err)
			}
			entry[len(entry)-1] ^= 1
			if tlog.CheckRecord(proof, tree.N, tree.Hash, i, tlog.RecordHash(entry)) == nil {
				t.Fatal("a changed entry checks")
			}
		})
	}
	oldRoot, err := tlog.TreeHash(old.N, thr)
	if err != nil || oldRoot != old.Hash {
		t.Fatalf("the tiles' root at %d is not the earlier checkpoint's (%v)", old.N, err)
	}
	proof, err := tlog.ProveTree(tree.N, old.N, thr)
	if err != nil {
		t.Fatal(err)
	}
	if err := tlog.CheckTree(proof, tree.N, tree.Hash, old.N, old.Hash); err != nil {
		t.Fatalf("consistency %d → %d: %v", old.N, tree.N, err)
	}
	for _, tc := range []struct {
		path, cache string
	}{
		{"/log/tile/0/000", "public, max-age=31536000, immutable"},
		{"/log/tile/1/000.p/12", "public, max-age=60"},
		{"/log/tile/entries/011", "public, max-age=31536000, immutable"},
	} {
		t.Run("cache "+tc.path, func(t *testing.T) {
			b, hdr, err := h.get(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			if got := hdr.Get("Cache-Control"); got != tc.cache {
				t.Fatalf("Cache-Control %q, want %q", got, tc.cache)
			}
			if ct := hdr.Get("Content-Type"); ct != "application/octet-stream" || len(b) == 0 {
				t.Fatalf("Content-Type %q, %d bytes", ct, len(b))
			}
		})
	}
	for _, bad := range []string{"/log/tile/0/999", "/log/tile/0/012.p/200", "/log/tile/0/1", "/log/tile/entries/000.p/0"} {
		t.Run("404 "+bad, func(t *testing.T) {
			if _, _, err := h.get(bad); err == nil || !strings.Contains(err.Error(), "404") {
				t.Fatalf("GET %s: %v, want 404", bad, err)
			}
		})
	}
}
