package natsembed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// ErrCertWithoutKey is returned for a client certificate without its key,
// or a key without its certificate.
var ErrCertWithoutKey = errors.New("a NATS client certificate and its key go together")

// ErrNoDataDir is returned to a process that does not own the data
// directory (ConnectOptions.Own false) when no embedded server ever ran
// there.
var ErrNoDataDir = errors.New("no gridseal data directory")

// ConnectOptions say which NATS a gridseal process records to: a cluster
// (URL and its credentials) or the embedded server of a data directory.
type ConnectOptions struct {
	Name string // client name, "gridseal " + Name

	URL   string // comma list of NATS URLs; empty: the embedded server under DataDir
	Creds string // credentials file (JWT and nkey) for URL
	CA    string // CA bundle to verify URL's servers
	Cert  string // client certificate for URL (with Key)
	Key   string

	DataDir string // where the embedded server stores (DataDir/nats)
	// Own says this process is long-running (the proxy, the demo) and must
	// run the embedded server itself: if a short command holds the data
	// directory it waits for it, rather than depend on a server that is
	// about to go away. Only an owner creates the data directory; any
	// other process gets ErrNoDataDir where it does not exist.
	Own bool
	// Recorder opens a second connection for the chain recorder
	// (Conn.Recorder), for a process that records to the chain.
	Recorder bool
	// Log receives the embedded server's warnings and errors (a full disk
	// among them), when this process runs it.
	Log *zap.Logger
	// MinFree is how much free space the data directory's file system must
	// have again before an embedded server whose store write failed is
	// restarted [64 MiB].
	MinFree uint64
}

// Conn is a connection to the chain's NATS, and whatever must be stopped
// with it (an embedded server this process started).
type Conn struct {
	NC *nats.Conn
	// Embedded is true when this process runs the embedded server.
	Embedded bool
	stop     func()
	rec      *nats.Conn
	// How NC was dialled, for the recorder's connection.
	dialURL  string
	dialOpts []nats.Option
}

// Recorder is the connection the chain recorder publishes on: one of its
// own, so a block's publish and acknowledgement never wait behind what
// readers of the chain (the console's verifier, a search, an export) pull
// through NC.
func (c *Conn) Recorder() *nats.Conn {
	if c.rec != nil {
		return c.rec
	}
	return c.NC
}

// Close disconnects and stops the embedded server this process runs, if any.
func (c *Conn) Close() {
	if c.rec != nil {
		c.rec.Close()
	}
	c.NC.Close()
	if c.stop != nil {
		c.stop()
	}
}

// JetStream opens JetStream on the connection.
func (c *Conn) JetStream() (jetstream.JetStream, error) { return jetstream.New(c.NC) }

// Connect connects to o.URL, or else to the embedded server under
// o.DataDir: the one another gridseal process already runs there, or a new
// one this process runs (fsync always, loopback only, token required; the
// token is in DATA-DIR/nats/token, mode 0600, and the server's address in
// DATA-DIR/nats/client.url while it runs). One process owns a data
// directory at a time, by an exclusive lock on DATA-DIR/nats/LOCK.
func Connect(ctx context.Context, o ConnectOptions) (*Conn, error) {
	c, err := connect(ctx, o)
	if err != nil || !o.Recorder {
		return c, err
	}
	// The chain recorder's connection of its own (see Conn.Recorder),
	// named so in the server's connection list.
	opts := append(slices.Clone(c.dialOpts), nats.Name("gridseal "+o.Name+" chain recorder"))
	if c.rec, err = nats.Connect(c.dialURL, opts...); err != nil {
		c.Close()
		return nil, fmt.Errorf("connect the chain recorder to NATS: %w", err)
	}
	return c, nil
}

func connect(ctx context.Context, o ConnectOptions) (*Conn, error) {
	opts := []nats.Option{
		nats.Name("gridseal " + o.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.Timeout(3 * time.Second),
		// No publishes buffered while disconnected: a chain block or an
		// approval update either reaches the server now or fails and is
		// retried by its owner, never sent late behind its owner's back
		// (after a timeout, or after the process handed its spool on).
		nats.ReconnectBufSize(-1),
	}
	if o.URL != "" {
		return connectURL(o, opts)
	}
	dir := filepath.Join(o.DataDir, "nats")
	if !o.Own {
		// A short command reads what a proxy or demo recorded; where none
		// ever ran it must not start a server of its own on an empty store.
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w at %s (start the proxy or demo there, or pass --nats)", ErrNoDataDir, o.DataDir)
		}
	}
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
		if o.Own {
			if time.Now().After(deadline) {
				pid, _ := os.ReadFile(filepath.Join(dir, "LOCK"))
				_ = lock.Close()
				return nil, fmt.Errorf("%s is in use by another gridseal process (pid %s): one proxy per data directory", o.DataDir, strings.TrimSpace(string(pid)))
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
			return nil, fmt.Errorf("connect to the embedded NATS of %s at %s: %w", o.DataDir, url, err)
		}
		return &Conn{NC: nc, dialURL: url, dialOpts: opts}, nil
	}
	_ = lock.Truncate(0)
	_, _ = lock.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	log := o.Log
	if log == nil {
		log = zap.NewNop()
	}
	if o.MinFree == 0 {
		o.MinFree = 64 << 20
	}
	srv, err := startOwned(Options{Port: -1, StoreDir: dir, SyncAlways: true, Token: token}, log, o.MinFree)
	if err != nil {
		_ = lock.Close()
		return nil, err
	}
	url := srv.ClientURL()
	stop := func() {
		srv.Shutdown()
		_ = os.Remove(urlFile)
		_ = lock.Close()
	}
	if err := os.WriteFile(urlFile, []byte(url), 0o600); err != nil {
		stop()
		return nil, fmt.Errorf("data directory: %w", err)
	}
	// The owner talks to its own server in process; other processes (the
	// CLI, a second proxy) connect to url.
	opts = append(opts, nats.InProcessServer(srv))
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		stop()
		return nil, fmt.Errorf("connect to embedded NATS: %w", err)
	}
	return &Conn{NC: nc, Embedded: true, stop: stop, dialURL: url, dialOpts: opts}, nil
}

func connectURL(o ConnectOptions, opts []nats.Option) (*Conn, error) {
	if o.Creds != "" {
		opts = append(opts, nats.UserCredentials(o.Creds))
	}
	if o.CA != "" {
		opts = append(opts, nats.RootCAs(o.CA))
	}
	if (o.Cert == "") != (o.Key == "") {
		return nil, ErrCertWithoutKey
	}
	if o.Cert != "" {
		opts = append(opts, nats.ClientCert(o.Cert, o.Key))
	}
	opts = append(opts, nats.RetryOnFailedConnect(true))
	nc, err := nats.Connect(o.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS %s: %w", RedactURLs(o.URL), err)
	}
	return &Conn{NC: nc, dialURL: o.URL, dialOpts: opts}, nil
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

// RedactURLs hides user:password and tokens in a comma list of NATS URLs,
// so a log line or error never carries a credential.
func RedactURLs(s string) string {
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
