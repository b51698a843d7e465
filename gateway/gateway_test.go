package gateway_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	mbclient "github.com/simonvetter/modbus"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/gateway"
	"github.com/gridseal/gridseal/internal/natsembed"
	"github.com/gridseal/gridseal/internal/natstest"
	"github.com/gridseal/gridseal/simulators"
	"github.com/gridseal/gridseal/simulators/simtest"
)

func reads(t *testing.T, addr string, n int) {
	t.Helper()
	c := simtest.Client(t, addr, 1, 5*time.Second)
	defer func() { _ = c.Close() }()
	for i := 0; i < n; i++ {
		if _, err := c.ReadRegister(simulators.InverterPower, mbclient.HOLDING_REGISTER); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRestartedGatewayKeepsOperationNumbersUnique: one site run twice on
// one data directory records no operation number twice, and while it runs
// a second gateway with the same writer id refuses to start.
func TestRestartedGatewayKeepsOperationNumbersUnique(t *testing.T) {
	simAddr, _ := simtest.Start(t, simulators.Options{})
	cfg := site(t, simAddr)
	dataDir := t.TempDir()
	opts := gateway.Options{DataDir: dataDir, Log: zap.NewNop()}
	for run := 0; run < 2; run++ {
		gw, err := gateway.New(t.Context(), cfg, opts)
		if err != nil {
			t.Fatal(err)
		}
		reads(t, gw.Addrs()[0], 10)
		if run == 0 {
			// The same writer id from another data directory (another
			// embedded server would not see the lease: share this one's).
			url, err := os.ReadFile(filepath.Join(dataDir, "nats", "client.url"))
			if err != nil {
				t.Fatal(err)
			}
			token, _ := os.ReadFile(filepath.Join(dataDir, "nats", "token"))
			other := opts
			other.DataDir = t.TempDir()
			other.NATS = natsembed.ConnectOptions{URL: strings.Replace(string(url), "nats://", "nats://"+string(token)+"@", 1)}
			_, err = gateway.New(t.Context(), cfg, other)
			if !errors.Is(err, chain.ErrWriterBusy) {
				t.Fatalf("a second gateway as gw-1: %v, want ErrWriterBusy", err)
			}
		}
		gw.Close()
	}
	seen := map[uint64]bool{}
	n := 0
	recorded(t, dataDir, func(ev *audit.Event) error {
		if seen[ev.Op] {
			t.Errorf("operation %d recorded twice", ev.Op)
		}
		seen[ev.Op] = true
		n++
		return nil
	})
	if n != 20 {
		t.Fatalf("%d operations in the chain, want 20", n)
	}
}

// TestInitStreams: chain init creates every stream once with the replicas
// asked for and says so; run again, it finds them there and changes none;
// a stream with other replicas than asked is noted.
func TestInitStreams(t *testing.T) {
	js, err := jetstream.New(natstest.Connect(t, natstest.RunJetStream(t).URL()))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		existed bool
	}{{"first run", false}, {"second run", true}} {
		t.Run(tc.name, func(t *testing.T) {
			streams, err := gateway.InitStreams(t.Context(), js, 1)
			if err != nil {
				t.Fatal(err)
			}
			if len(streams) != len(gateway.Streams()) {
				t.Fatalf("%d streams, want %d", len(streams), len(gateway.Streams()))
			}
			var out strings.Builder
			for i, st := range streams {
				if st.Name != gateway.Streams()[i] || st.Existed != tc.existed || st.Replicas != 1 {
					t.Errorf("stream %+v", st)
				}
				st.WriteText(&out, 1)
			}
			state := "created"
			if tc.existed {
				state = "already there"
			}
			if strings.Count(out.String(), " "+state+", 1 replicas\n") != len(streams) {
				t.Errorf("output:\n%s", out.String())
			}
		})
	}
	var out strings.Builder
	gateway.StreamState{Name: chain.StreamName, Existed: true, Replicas: 1}.WriteText(&out, 3)
	if want := "stream GRIDSEAL_CHAIN           already there, 1 replicas (not 3: a NATS administrator changes that with nats stream edit)\n"; out.String() != want {
		t.Errorf("%q, want %q", out.String(), want)
	}
}
