package natsembed_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/gridseal/gridseal/internal/natsembed"
)

// TestStockClientReachesTheEmbeddedServer checks what the README tells a
// user of the stock nats CLI (a nats.go client): the embedded server's
// address is DATA-DIR/nats/client.url, its token DATA-DIR/nats/token, and
// the token as the URL's user part admits them; without it, nothing does.
func TestStockClientReachesTheEmbeddedServer(t *testing.T) {
	data := t.TempDir()
	conn, err := natsembed.Connect(t.Context(), natsembed.ConnectOptions{Name: "test", DataDir: data, Own: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(data, "nats", name))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	url, token := read("client.url"), read("token")
	cases := []struct {
		name  string
		url   string
		opt   nats.Option
		admit bool
	}{
		// The README's: NATS_URL="nats://$(cat …/token)@${url#nats://}"
		{"token in the URL", "nats://" + token + "@" + strings.TrimPrefix(url, "nats://"), nil, true},
		{"no token", url, nil, false},
		{"wrong token", strings.Replace(url, "://", "://"+strings.Repeat("0", len(token))+"@", 1), nil, false},
		// nats --user TOKEN sends a user name, which a token server does
		// not take for its token: the README does not offer it.
		{"token as a user name", url, nats.UserInfo(token, ""), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			opts := []nats.Option{nats.MaxReconnects(0)}
			if tc.opt != nil {
				opts = append(opts, tc.opt)
			}
			nc, err := nats.Connect(tc.url, opts...)
			if err == nil {
				defer nc.Close()
			}
			if (err == nil) != tc.admit {
				t.Fatalf("connect: %v, want admitted %v", err, tc.admit)
			}
		})
	}
}

// TestOnlyAnOwnerCreatesTheDataDirectory: a short command (not Own) given
// a directory no proxy or demo ever ran in is told so and creates nothing.
func TestOnlyAnOwnerCreatesTheDataDirectory(t *testing.T) {
	data := filepath.Join(t.TempDir(), "gridseal-data")
	_, err := natsembed.Connect(t.Context(), natsembed.ConnectOptions{Name: "tail", DataDir: data})
	if !errors.Is(err, natsembed.ErrNoDataDir) || !strings.Contains(err.Error(), data) {
		t.Fatalf("err = %v, want ErrNoDataDir naming %s", err, data)
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Fatalf("the data directory was created: %v", err)
	}
}

// TestRecorderHasAConnectionOfItsOwn: a process that records gets a second
// connection for the chain recorder, named for it, so a reader pulling the
// whole chain through the first (the console's verifier, an export) never
// holds up a durable write's block (BenchmarkRecordDurableBesideReader in
// chain); Close closes both. Without Recorder it is the one connection.
func TestRecorderHasAConnectionOfItsOwn(t *testing.T) {
	conn, err := natsembed.Connect(t.Context(), natsembed.ConnectOptions{Name: "test", DataDir: t.TempDir(), Own: true, Recorder: true})
	if err != nil {
		t.Fatal(err)
	}
	rec := conn.Recorder()
	if rec == conn.NC || !rec.IsConnected() || rec.Opts.Name != "gridseal test chain recorder" {
		t.Fatalf("recorder connection %p (main %p), connected %v, named %q", rec, conn.NC, rec.IsConnected(), rec.Opts.Name)
	}
	id1, _ := rec.GetClientID()
	id2, _ := conn.NC.GetClientID()
	if id1 == id2 {
		t.Fatalf("both connections are client %d of the server", id1)
	}
	if err := rec.Publish("x", []byte("y")); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if !rec.IsClosed() || !conn.NC.IsClosed() {
		t.Fatal("Close left a connection open")
	}
	short, err := natsembed.Connect(t.Context(), natsembed.ConnectOptions{Name: "test", DataDir: t.TempDir(), Own: true})
	if err != nil {
		t.Fatal(err)
	}
	defer short.Close()
	if short.Recorder() != short.NC {
		t.Fatal("a connection for the recorder opened without Recorder")
	}
}
