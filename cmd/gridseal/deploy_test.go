package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/internal/keys/keystest"
	"github.com/gridseal/gridseal/internal/natstest"
)

// TestShippedNATSConfigs parses the cluster configurations under
// deploy/nats, and runs a server with the shipped accounts to check the
// permissions do what they say: the proxy records and publishes approval
// use, an operator may write approvals but not chain blocks or uses, an
// analyst only reads.
func TestShippedNATSConfigs(t *testing.T) {
	dir := t.TempDir()
	tlsBlock := regexp.MustCompile(`(?s)\n\s*tls \{.*?\n\s*\}\n`)
	for i := 1; i <= 3; i++ {
		src, err := os.ReadFile(filepath.Join("..", "..", "deploy", "nats", "nats-"+string(rune('0'+i))+".conf"))
		if err != nil {
			t.Fatal(err)
		}
		// Certificates are the site's; everything else must parse as shipped.
		conf := tlsBlock.ReplaceAllString(string(src), "\n")
		p := filepath.Join(dir, "node.conf")
		if err := os.WriteFile(p, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		accounts, _ := os.ReadFile(filepath.Join("..", "..", "deploy", "nats", "gridseal-accounts.conf"))
		if err := os.WriteFile(filepath.Join(dir, "gridseal-accounts.conf"), accounts, 0o600); err != nil {
			t.Fatal(err)
		}
		o, err := server.ProcessConfigFile(p)
		if err != nil {
			t.Fatalf("nats-%d.conf: %v", i, err)
		}
		if !o.JetStream || !o.SyncAlways || o.Cluster.Name != "gridseal" || len(o.Routes) != 3 {
			t.Fatalf("nats-%d.conf: jetstream %v sync-always %v cluster %q routes %d", i, o.JetStream, o.SyncAlways, o.Cluster.Name, len(o.Routes))
		}
	}

	// A single server with the shipped accounts (test passwords).
	accounts, _ := os.ReadFile(filepath.Join("..", "..", "deploy", "nats", "gridseal-accounts.conf"))
	n := 0
	withPw := regexp.MustCompile(`password: "[^"]*"`).ReplaceAllStringFunc(string(accounts), func(string) string {
		n++
		return `password: "pw` + string(rune('0'+n)) + `"`
	})
	if n != 3 {
		t.Fatalf("%d users in the accounts file, want proxy, operator, analyst", n)
	}
	_ = os.WriteFile(filepath.Join(dir, "gridseal-accounts.conf"), []byte(withPw), 0o600)
	conf := "listen: 127.0.0.1:-1\njetstream { store_dir: " + filepath.Join(dir, "js") + "\n sync_interval: always }\ninclude ./gridseal-accounts.conf\n"
	_ = os.WriteFile(filepath.Join(dir, "single.conf"), []byte(conf), 0o600)
	srv := natstest.RunConfig(t, filepath.Join(dir, "single.conf"))
	connect := func(user, pw string) (*nats.Conn, jetstream.JetStream) {
		nc, err := nats.Connect(srv.ClientURL(), nats.UserInfo(user, pw),
			nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})) // violations are what we test for
		if err != nil {
			t.Fatalf("%s: %v", user, err)
		}
		t.Cleanup(nc.Close)
		js, _ := jetstream.New(nc)
		return nc, js
	}
	denied := func(who string, js jetstream.JetStream, subject string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		defer cancel()
		if _, err := js.Publish(ctx, subject, []byte("x")); err == nil {
			t.Fatalf("%s could publish to %s", who, subject)
		}
	}

	// The proxy records and creates what it needs.
	pnc, pjs := connect("proxy", "pw1")
	rec, err := chain.Open(t.Context(), pnc, chain.Config{Writer: "gw-1", Signer: keystest.Signer(t)}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if err := rec.Record(t.Context(), &audit.Event{Time: time.Now(), Phase: audit.PhaseComplete, Verdict: audit.Allow}, true); err != nil {
		t.Fatalf("proxy cannot record: %v", err)
	}
	_ = rec.Close(time.Second)
	if _, err := approvals.OpenStore(t.Context(), pjs, 1, zap.NewNop()); err != nil {
		t.Fatalf("proxy cannot open the approvals store: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if _, err := pjs.Publish(ctx, "gridseal.approval.used.00", []byte("{}"), jetstream.WithExpectLastSequencePerSubject(0)); err != nil {
		t.Fatalf("proxy cannot record an approval's use: %v", err)
	}

	// An operator writes approvals, never blocks or uses.
	_, ojs := connect("operator", "pw2")
	kv, err := ojs.KeyValue(t.Context(), approvals.Bucket)
	if err != nil {
		t.Fatalf("operator cannot see the approvals bucket: %v", err)
	}
	if _, err := kv.Put(t.Context(), "p.abc", []byte("{}")); err != nil {
		t.Fatalf("operator cannot write an approval: %v", err)
	}
	short, cancelShort := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancelShort()
	if _, err := kv.Put(short, "policy.current", []byte("{}")); err == nil {
		t.Fatal("operator could rewrite the policy in force")
	}
	denied("operator", ojs, "gridseal.chain.gw-1")
	denied("operator", ojs, "gridseal.approval.used.01")

	// An analyst reads the chain and nothing more.
	_, ajs := connect("analyst", "pw3")
	blocks := 0
	if err := chain.Scan(t.Context(), ajs, 1, false, func(*chain.Msg) error { blocks++; return nil }); err != nil || blocks != 1 {
		t.Fatalf("analyst cannot read the chain: %d blocks, %v", blocks, err)
	}
	denied("analyst", ajs, "gridseal.chain.gw-1")
	denied("analyst", ajs, "$KV.GRIDSEAL_APPROVALS.p.x")
	short2, cancelShort2 := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancelShort2()
	if _, err := ajs.CreateStream(short2, jetstream.StreamConfig{Name: "X", Subjects: []string{"x.>"}}); err == nil {
		t.Fatal("analyst could create a stream")
	}
}
