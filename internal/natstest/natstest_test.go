package natstest_test

import (
	"testing"

	"github.com/gridseal/gridseal/internal/natstest"
)

// TestRestartKeepsTheURL: the server picks its own port, and a restart
// comes back on it, so a client's URL stays good.
func TestRestartKeepsTheURL(t *testing.T) {
	srv := natstest.RunJetStream(t)
	url := srv.URL()
	if url != srv.ClientURL() {
		t.Fatalf("URL %s, but the server listens at %s", url, srv.ClientURL())
	}
	srv.Stop()
	srv.Restart()
	if srv.URL() != url || srv.ClientURL() != url {
		t.Fatalf("after Restart: URL %s, listening at %s; want %s", srv.URL(), srv.ClientURL(), url)
	}
	nc := natstest.Connect(t, url)
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}
