package console

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/gridseal/gridseal/chain"
)

// logTiles is the console's tlog-tiles log: a chain.Tiler that follows the
// chain into tiles under TreeDir, served read-only under /log/ and read
// for the console's inclusion proofs.
type logTiles struct {
	mu    sync.Mutex
	tiler *chain.Tiler
	err   error // why there are no tiles to serve, if there are none

	cpMu sync.Mutex
	cpAt time.Time
	cp   *chain.Checkpoint // newest signed checkpoint the tiles were checked against
}

// errNoTiles is served until the tiler has opened its directory.
var errNoTiles = errors.New("the console keeps no tiles yet")

// reader returns the tiles to read, or why none may be read: not open, or
// not matching the stream or a signed checkpoint (never served then).
func (l *logTiles) reader() (*chain.Tiles, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return nil, l.err
	}
	if l.tiler == nil {
		return nil, errNoTiles
	}
	if err := l.tiler.Err(); err != nil {
		return nil, err
	}
	return l.tiler.Tiles(), nil
}

func (l *logTiles) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err == nil {
		l.err = err
	}
}

// runTiles keeps the tiles until ctx ends: in TreeDir/tiles, continued
// from where the last run stopped, or in a temporary directory removed at
// the end. A NATS error restarts following after a second; tiles that do
// not match the stream stop it for good.
func (s *Server) runTiles(ctx context.Context) {
	if s.cfg.JetStream == nil {
		s.tiles.fail(errors.New("the console reads no chain"))
		return
	}
	log := s.cfg.Log.Named("tiles")
	dir := filepath.Join(s.cfg.TreeDir, "tiles")
	if s.cfg.TreeDir == "" {
		tmp, err := os.MkdirTemp("", "gridseal-tiles-")
		if err != nil {
			log.Error("no tiles kept; proofs and /log/ unavailable", zap.Error(err))
			s.tiles.fail(fmt.Errorf("tiles: %w", err))
			return
		}
		defer func() { _ = os.RemoveAll(tmp) }()
		dir = tmp
	}
	tl, err := chain.OpenTiler(dir, log)
	if err != nil {
		log.Error("no tiles kept; proofs and /log/ unavailable", zap.Error(err))
		s.tiles.fail(err)
		return
	}
	defer func() { _ = tl.Close() }()
	s.tiles.mu.Lock()
	s.tiles.tiler = tl
	s.tiles.mu.Unlock()
	for ctx.Err() == nil {
		err := tl.Run(ctx, s.cfg.JetStream)
		if errors.Is(err, chain.ErrTilesMismatch) {
			return // logged by the tiler; Err keeps the tiles from being served
		}
		if err != nil && ctx.Err() == nil {
			log.Warn("tiles: following the chain failed; trying again", zap.Error(err))
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// logCheckpointEvery bounds how often /log/checkpoint asks NATS for the
// newest checkpoint, however many clients poll.
const logCheckpointEvery = time.Second

// checkpoint returns the newest signed checkpoint the tiles reach, after
// checking the tiles have its root; while the newest is ahead of the
// tiles, the last one checked. A checkpoint whose root the tiles do not
// have stops them being served: either the stream was rewritten after it
// was signed, or the tiles are wrong.
func (s *Server) logCheckpoint(ctx context.Context, ts *chain.Tiles) (*chain.Checkpoint, error) {
	l := &s.tiles
	l.cpMu.Lock()
	defer l.cpMu.Unlock()
	if time.Since(l.cpAt) < logCheckpointEvery && l.cp != nil {
		return l.cp, nil
	}
	l.cpAt = time.Now()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	cp, err := chain.LatestCheckpoint(ctx, s.cfg.JetStream, s.cfg.Trust.Checkpointers)
	if err != nil {
		return l.cp, err
	}
	if cp != nil && cp.Size <= ts.Size() && (l.cp == nil || cp.Size >= l.cp.Size) {
		root, err := ts.Root(cp.Size)
		if err != nil {
			return l.cp, err
		}
		if root != cp.Root {
			err := fmt.Errorf("%w: the tiles' root of the first %d events is not the signed one", chain.ErrCheckpointMismatch, cp.Size)
			s.cfg.Log.Error("tiles no longer served", zap.Error(err))
			l.fail(err)
			return nil, err
		}
		l.cp = cp
	}
	return l.cp, nil
}

// serveCheckpoint answers /log/checkpoint: the newest signed checkpoint
// (with every signature it carries) that the tiles reach.
func (s *Server) serveCheckpoint(w http.ResponseWriter, r *http.Request) {
	if s.cfg.JetStream == nil || s.cfg.Trust.Checkpointers == nil {
		http.Error(w, "no checkpoint: the trust file lists no checkpointers", http.StatusNotFound)
		return
	}
	ts, err := s.tiles.reader()
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	cp, err := s.logCheckpoint(r.Context(), ts)
	if cp == nil {
		msg := "no signed checkpoint the tiles reach yet"
		if err != nil {
			msg = err.Error()
		}
		http.Error(w, msg, http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(cp.Note)
}

// serveTile answers /log/tile/<L>/<N>[.p/<W>] and
// /log/tile/entries/<N>[.p/<W>]. Full tiles never change: they are cached
// for a year; partial ones are replaced by wider ones and then the full
// one, so they are cached only for a minute.
func (s *Server) serveTile(w http.ResponseWriter, r *http.Request) {
	t, err := chain.ParseTilePath("tile/" + r.PathValue("path"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	ts, err := s.tiles.reader()
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	data, err := ts.ReadTile(t)
	if errors.Is(err, chain.ErrNoTile) {
		http.Error(w, "no such tile", http.StatusNotFound)
		return
	}
	if err != nil {
		s.cfg.Log.Warn("tile not read", zap.String("tile", chain.TilePath(t)), zap.Error(err))
		http.Error(w, "tile not read", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	if t.W == 1<<chain.TileHeight {
		h.Set("Cache-Control", "public, max-age=31536000, immutable")
	} else {
		h.Set("Cache-Control", "public, max-age=60")
	}
	if t.L == -1 && strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
		h.Set("Content-Encoding", "gzip")
		h.Set("Vary", "Accept-Encoding")
		zw := gzip.NewWriter(w)
		_, _ = zw.Write(data)
		_ = zw.Close()
		return
	}
	_, _ = w.Write(data)
}
