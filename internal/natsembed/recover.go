package natsembed

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/zap"
)

// owned is the embedded server a data directory's owner runs. A JetStream
// file store that failed a write (a full disk) stays failed until it is
// reloaded, so once the disk has room again owned restarts the server on
// the same address and store; clients reconnect by themselves.
type owned struct {
	opts    Options
	log     *zap.Logger
	minFree uint64

	url string // ClientURL, the same across restarts

	// mu guards srv, which is nil while a restart is under way: mu is never
	// held while the server stops or starts, since the owner's in-process
	// client asks InProcessConn for a connection holding its own lock, and
	// everything that publishes would wait behind it.
	mu  sync.Mutex
	srv *server.Server

	broken atomic.Bool
	stop   chan struct{}
	wg     sync.WaitGroup
}

// startOwned starts the server of o and watches its store.
func startOwned(o Options, log *zap.Logger, minFree uint64) (*owned, error) {
	w := &owned{opts: o, log: log, minFree: minFree, stop: make(chan struct{})}
	w.opts.Log = log
	w.opts.OnStoreError = w.storeError
	srv, err := Start(w.opts)
	if err != nil {
		return nil, err
	}
	w.opts.Port = srv.Addr().(*net.TCPAddr).Port // the same address after a restart
	w.srv, w.url = srv, srv.ClientURL()
	return w, nil
}

// ClientURL is where clients connect; it stays the same across restarts.
func (w *owned) ClientURL() string { return w.url }

// errRestarting is InProcessConn's answer while the server restarts: the
// client tries again after its reconnect wait, as it would after a refused
// TCP connection.
var errRestarting = errors.New("embedded NATS is restarting")

// InProcessConn is a connection to the server that runs now, for the
// owner's own client (nats.InProcessServer): no TCP, no syscalls, between
// the recorder and its store. A client that reconnects after a restart
// gets the new server.
func (w *owned) InProcessConn() (net.Conn, error) {
	w.mu.Lock()
	srv := w.srv
	w.mu.Unlock()
	if srv == nil {
		return nil, errRestarting
	}
	return srv.InProcessConn()
}

func (w *owned) storeError(msg string) {
	if !w.broken.CompareAndSwap(false, true) {
		return
	}
	w.log.Error("embedded NATS cannot write its store: writes are refused until the disk has room again, then it restarts",
		zap.String("store", w.opts.StoreDir), zap.String("error", msg))
	w.wg.Add(1)
	go w.recoverWhenRoom()
}

// recoverWhenRoom waits for minFree bytes free under the store, then
// restarts the server.
func (w *owned) recoverWhenRoom() {
	defer w.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
		}
		var st syscall.Statfs_t
		if syscall.Statfs(w.opts.StoreDir, &st) != nil || st.Bavail*uint64(st.Bsize) < w.minFree {
			continue
		}
		if err := w.restart(); err != nil {
			w.log.Error("embedded NATS did not restart; trying again", zap.Error(err))
			continue
		}
		w.log.Warn("embedded NATS restarted: its disk has room again", zap.String("store", w.opts.StoreDir))
		w.broken.Store(false)
		return
	}
}

func (w *owned) restart() error {
	w.mu.Lock()
	old := w.srv
	w.srv = nil
	w.mu.Unlock()
	if old != nil {
		old.Shutdown()
		old.WaitForShutdown()
	}
	var err error
	for i := 0; i < 50; i++ { // the old listener may take a moment to let go of the port
		select {
		case <-w.stop:
			return nil
		default:
		}
		var srv *server.Server
		if srv, err = Start(w.opts); err == nil {
			w.mu.Lock()
			w.srv = srv
			w.mu.Unlock()
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("restart embedded NATS on port %d: %w", w.opts.Port, err)
}

// Shutdown stops the server and the watcher.
func (w *owned) Shutdown() {
	close(w.stop)
	w.wg.Wait()
	w.mu.Lock()
	srv := w.srv
	w.srv = nil
	w.mu.Unlock()
	if srv != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
	}
}
