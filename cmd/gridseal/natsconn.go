package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gridseal/gridseal/internal/natsembed"
)

// natsConn is a connection to the chain's NATS, and whatever must be
// stopped with it (an embedded server this process started).
type natsConn struct {
	nc       *nats.Conn
	embedded bool
	stop     func()
}

func (c *natsConn) Close() {
	c.nc.Close()
	if c.stop != nil {
		c.stop()
	}
}

// connectNATS connects to --nats URL, or else to the embedded server under
// --data-dir: the one another gridseal process already runs there, or a new
// one this process runs (fsync always, loopback only, token required; the
// token is in DATA-DIR/nats/token, mode 0600). A long-running owner (the
// proxy, the demo) must run the server itself: if a short command holds
// the data directory it waits for it, rather than depend on a server that
// is about to go away.
func (g *globals) connectNATS(ctx context.Context, name string) (*natsConn, error) {
	return g.connectNATSOwner(ctx, name, false)
}

func (g *globals) connectNATSOwner(ctx context.Context, name string, own bool) (*natsConn, error) {
	opts := []nats.Option{
		nats.Name("gridseal " + name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.Timeout(3 * time.Second),
	}
	if g.natsURL != "" {
		if g.natsCreds != "" {
			opts = append(opts, nats.UserCredentials(g.natsCreds))
		}
		if g.natsCA != "" {
			opts = append(opts, nats.RootCAs(g.natsCA))
		}
		if (g.natsCert == "") != (g.natsKey == "") {
			return nil, fmt.Errorf("%w: --nats-tls-cert and --nats-tls-key go together", errUsage)
		}
		if g.natsCert != "" {
			opts = append(opts, nats.ClientCert(g.natsCert, g.natsKey))
		}
		nc, err := nats.Connect(g.natsURL, append(opts, nats.RetryOnFailedConnect(true))...)
		if err != nil {
			return nil, fmt.Errorf("connect to NATS %s: %w", redactURLs(g.natsURL), err)
		}
		return &natsConn{nc: nc}, nil
	}
	dir := filepath.Join(g.dataDir, "nats")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	urlFile := filepath.Join(dir, "client.url")
	token, err := loadToken(filepath.Join(dir, "token"))
	if err != nil {
		_ = lock.Close()
		return nil, err
	}
	opts = append(opts, nats.Token(token))
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			_ = lock.Close()
			return nil, fmt.Errorf("lock %s: %w", dir, err)
		}
		if own {
			if time.Now().After(deadline) {
				pid, _ := os.ReadFile(filepath.Join(dir, "LOCK"))
				_ = lock.Close()
				return nil, fmt.Errorf("%s is in use by another gridseal process (pid %s): one proxy per data directory", g.dataDir, strings.TrimSpace(string(pid)))
			}
			select {
			case <-ctx.Done():
				_ = lock.Close()
				return nil, ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		// Another gridseal process runs the embedded server: use it.
		_ = lock.Close()
		url, err := waitURL(ctx, urlFile)
		if err != nil {
			return nil, err
		}
		nc, err := nats.Connect(url, opts...)
		if err != nil {
			return nil, fmt.Errorf("connect to the embedded NATS of %s at %s: %w", g.dataDir, url, err)
		}
		return &natsConn{nc: nc}, nil
	}
	_ = lock.Truncate(0)
	_, _ = lock.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	srv, err := natsembed.Start(natsembed.Options{Port: -1, StoreDir: dir, SyncAlways: true, Token: token})
	if err != nil {
		_ = lock.Close()
		return nil, err
	}
	url := srv.ClientURL()
	stop := func() {
		srv.Shutdown()
		srv.WaitForShutdown()
		_ = os.Remove(urlFile)
		_ = lock.Close()
	}
	if err := os.WriteFile(urlFile, []byte(url), 0o600); err != nil {
		stop()
		return nil, fmt.Errorf("data directory: %w", err)
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		stop()
		return nil, fmt.Errorf("connect to embedded NATS: %w", err)
	}
	return &natsConn{nc: nc, embedded: true, stop: stop}, nil
}

// jetStream connects as connectNATS does and opens JetStream on it.
func (g *globals) jetStream(ctx context.Context, name string) (*natsConn, jetstream.JetStream, error) {
	conn, err := g.connectNATS(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(conn.nc)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, js, nil
}

// loadToken reads the embedded server's client token, creating a random
// one (0600) on first use.
func loadToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil && len(strings.TrimSpace(string(b))) >= 32 {
		return strings.TrimSpace(string(b)), nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("embedded NATS token: %w", err)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	tok := hex.EncodeToString(raw[:])
	if err := os.WriteFile(path, []byte(tok), 0o600); err != nil {
		return "", fmt.Errorf("embedded NATS token: %w", err)
	}
	return tok, nil
}

// redactURLs hides user:password and tokens in a comma list of NATS URLs,
// so a log line or error never carries a credential.
func redactURLs(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			u.User = url.User("REDACTED")
			parts[i] = u.String()
		}
	}
	return strings.Join(parts, ",")
}

func waitURL(ctx context.Context, path string) (string, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil && len(b) > 0 {
			return strings.TrimSpace(string(b)), nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("another process holds %s but published no NATS address", filepath.Dir(path))
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
