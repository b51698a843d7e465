package proxy_test

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/internal/testpki"
	"github.com/gridseal/gridseal/internal/testwait"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/protocols/modbus"
	"github.com/gridseal/gridseal/proxy"
)

// TestModbusTCPSecurity: clients authenticate with certificates whose role
// the policy checks, and the proxy speaks TLS to the PLC too.
func TestModbusTCPSecurity(t *testing.T) {
	ca := testpki.New(t)
	// The PLC side: a device behind TLS that requires the proxy's certificate.
	up := startUpstream(t, nil)
	plcLn, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{ca.Issue("plc", "", true)}, ClientCAs: ca.Pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = plcLn.Close() })
	go func() { // terminate TLS in front of the plain test device
		for {
			c, err := plcLn.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				d, err := net.Dial("tcp", up.addr())
				if err != nil {
					return
				}
				defer d.Close()
				go func() { _, _ = copyAll(d, c) }()
				_, _ = copyAll(c, d)
			}()
		}
	}()

	pol, err := policy.Parse("p.yaml", fmt.Appendf(nil, `id: secure
devices:
  - name: plc
    upstream: %s
    rules:
      - {name: reads, allow: read, functions: [3]}
      - {name: setpoints, allow: write, functions: [6], addresses: 0-9, values: 0-100, roles: [operator]}
`, plcLn.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	events := &eventLog{}
	dev := proxy.Device{Name: "plc", Upstream: plcLn.Addr().String(), TLS: &tls.Config{
		RootCAs: ca.Pool, Certificates: []tls.Certificate{ca.Issue("gridseal", "", false)}, MinVersion: tls.VersionTLS12}}
	srv, err := proxy.New(proxy.Config{Limits: proxy.Limits{ReadTimeout: time.Second}}, []proxy.Device{dev},
		policy.NewEngine(pol, zap.NewNop()), events, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{ca.Issue("gridseal", "", true)}, ClientCAs: ca.Pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln, plcRoute()) }()
	t.Cleanup(func() { _ = srv.Close() })

	client := func(cert *tls.Certificate) *conn {
		t.Helper()
		cfg := &tls.Config{RootCAs: ca.Pool, MinVersion: tls.VersionTLS12}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return &conn{t: t, c: c, rd: modbus.NewReader(c)}
	}
	write := modbus.AppendWriteSingleRegister(nil, 3, 42)

	operator := ca.Issue("alice", "operator", false)
	op := client(&operator)
	if resp := op.roundTrip(1, 1, write); !bytes.Equal(resp, write) {
		t.Fatalf("operator's write over TLS, to a TLS PLC: %x", resp)
	}
	viewer := ca.Issue("dave", "viewer", false)
	vw := client(&viewer)
	if resp := vw.roundTrip(1, 1, modbus.AppendReadRequest(nil, modbus.ReadHoldingRegisters, 0, 1)); resp[0] != 3 {
		t.Fatalf("viewer's read: %x", resp)
	}
	if resp := vw.roundTrip(2, 1, write); !bytes.Equal(resp, exception(modbus.WriteSingleRegister, modbus.IllegalFunction)) {
		t.Fatalf("viewer's write: %x, want exception 1", resp)
	}
	anon := client(nil)                                       // no client certificate: the handshake fails
	_, _ = anon.c.Write(modbus.AppendFrame(nil, 1, 1, write)) // may fail: the handshake is refused
	if !anon.closed() {
		t.Fatal("a client without a certificate was served")
	}
	testwait.For(t, "four recorded operations", func() bool { return len(events.completed()) >= 4 })
	var roles []string
	for _, e := range events.completed() {
		roles = append(roles, fmt.Sprintf("%s/%s", e.Role, e.Verdict))
		if e.Verdict == audit.Deny && e.Role == "viewer" && e.Reason != "rule setpoints: client role viewer not allowed (rule is for operator)" {
			t.Errorf("deny reason %q", e.Reason)
		}
	}
	if fmt.Sprint(roles) != "[operator/allow viewer/allow viewer/deny /malformed]" {
		t.Fatalf("recorded roles and verdicts: %v", roles)
	}
	for _, f := range up.received() {
		if f[modbus.HeaderLen] == 6 && f[modbus.HeaderLen+4] != 42 {
			t.Fatalf("unexpected write upstream: %x", f)
		}
	}
}

func copyAll(dst, src net.Conn) (int64, error) {
	buf := make([]byte, 4096)
	var n int64
	for {
		k, err := src.Read(buf)
		if k > 0 {
			if _, werr := dst.Write(buf[:k]); werr != nil {
				return n, werr
			}
			n += int64(k)
		}
		if err != nil {
			return n, err
		}
	}
}
