package console_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/gridseal/gridseal/console"
	"github.com/gridseal/gridseal/internal/testpki"
	"github.com/gridseal/gridseal/internal/testwait"
)

func tokenFile(t *testing.T, lines ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "console-tokens")
	if err := os.WriteFile(path, []byte("# console viewers\n"+strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func status(t *testing.T, c *http.Client, req *http.Request) int {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestConsoleTokens: with a token file, nothing but /healthz, the sign-in
// page and its style is served without a listed token; Prometheus-style
// bearer tokens work; a browser signs in once and its session cookie opens
// the live stream; forged and unknown credentials do not.
func TestConsoleTokens(t *testing.T) {
	soc, err := console.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	prom, _ := console.NewToken()
	auth, err := console.NewAuth(tokenFile(t, console.TokenLine("soc-1", soc), console.TokenLine("prometheus", prom)), false)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	core, logs := observer.New(zap.InfoLevel)
	c := console.New(console.Config{Metrics: console.NewMetrics(reg), Gatherer: reg, Auth: auth, Log: zap.New(core)})
	web := httptest.NewServer(c.Handler())
	defer web.Close()
	defer func() {
		// Sign-ins are logged with the viewer's name; tokens never are.
		var in, refused int
		for _, e := range logs.All() {
			for _, f := range e.Context {
				if strings.Contains(f.String, soc) || strings.Contains(f.String, prom) {
					t.Errorf("a token was logged: %s %v", e.Message, e.Context)
				}
			}
			switch {
			case e.Message == "console sign-in" && e.ContextMap()["viewer"] == "soc-1":
				in++
			case strings.HasPrefix(e.Message, "console sign-in refused"):
				refused++
			}
		}
		if in != 1 || refused != 1 {
			t.Errorf("sign-ins logged %d, refusals %d; want 1 and 1", in, refused)
		}
	}()
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(path, bearer string) int {
		req, _ := http.NewRequest("GET", web.URL+path, nil)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		return status(t, noRedirect, req)
	}
	for _, p := range []string{"/metrics", "/api/status", "/api/events", "/api/approvals", "/api/proof?seq=1&index=0", "/app.js", "/readyz",
		"/log/checkpoint", "/log/tile/0/000", "/log/tile/entries/000.p/1"} {
		if code := get(p, ""); code != http.StatusUnauthorized {
			t.Errorf("%s without a token: %d, want 401", p, code)
		}
		if code := get(p, "gst_not-a-listed-token"); code != http.StatusUnauthorized {
			t.Errorf("%s with an unknown token: %d, want 401", p, code)
		}
	}
	if code := get("/", ""); code != http.StatusSeeOther {
		t.Errorf("/ without a token: %d, want a redirect to /login", code)
	}
	for _, p := range []string{"/healthz", "/login", "/style.css"} {
		if code := get(p, ""); code != http.StatusOK {
			t.Errorf("%s: %d, want open", p, code)
		}
	}
	if resp, err := http.Get(web.URL + "/login"); err != nil || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'self'") ||
		resp.Header.Get("X-Frame-Options") != "DENY" {
		t.Fatalf("sign-in page headers: %v %v", resp.Header, err)
	} else {
		resp.Body.Close()
	}
	if code := get("/metrics", prom); code != http.StatusOK {
		t.Errorf("/metrics with the Prometheus token: %d", code)
	}

	// A browser: sign in with a wrong token, then the right one.
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar}
	resp, err := browser.PostForm(web.URL+"/login", url.Values{"token": {prom + "x"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || len(jar.Cookies(mustURL(web.URL))) != 0 {
		t.Fatalf("wrong token at /login: %d, cookies %v", resp.StatusCode, jar.Cookies(mustURL(web.URL)))
	}
	resp, err = browser.PostForm(web.URL+"/login", url.Values{"token": {soc}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Path != "/" {
		t.Fatalf("sign-in: %d at %s", resp.StatusCode, resp.Request.URL)
	}
	cookies := jar.Cookies(mustURL(web.URL))
	if len(cookies) != 1 || strings.Contains(cookies[0].Value, soc) {
		t.Fatalf("session cookie %v: want one, not holding the token", cookies)
	}
	req, _ := http.NewRequest("GET", web.URL+"/api/status", nil)
	if code := status(t, browser, req); code != http.StatusOK {
		t.Fatalf("/api/status with the session: %d", code)
	}
	// A session cookie altered by one character is refused.
	v := []byte(cookies[0].Value)
	v[0] ^= 1
	req, _ = http.NewRequest("GET", web.URL+"/api/status", nil)
	req.AddCookie(&http.Cookie{Name: cookies[0].Name, Value: string(v)})
	if code := status(t, noRedirect, req); code != http.StatusUnauthorized {
		t.Fatalf("forged session: %d", code)
	}
}

// TestConsoleSessionsExpire: a session cookie stops working after its TTL.
func TestConsoleSessionsExpire(t *testing.T) {
	tok, _ := console.NewToken()
	auth, err := console.NewAuth(tokenFile(t, console.TokenLine("soc-1", tok)), false)
	if err != nil {
		t.Fatal(err)
	}
	auth.SessionTTL = time.Second
	reg := prometheus.NewRegistry()
	web := httptest.NewServer(console.New(console.Config{Metrics: console.NewMetrics(reg), Gatherer: reg, Auth: auth, Log: zap.NewNop()}).Handler())
	defer web.Close()
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := browser.PostForm(web.URL+"/login", url.Values{"token": {tok}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cookies := resp.Cookies()
	if len(cookies) != 1 {
		t.Fatalf("no session cookie")
	}
	send := func() int {
		req, _ := http.NewRequest("GET", web.URL+"/metrics", nil)
		req.AddCookie(cookies[0]) // sent even after the browser would have dropped it
		return status(t, browser, req)
	}
	if code := send(); code != http.StatusOK {
		t.Fatalf("fresh session: %d", code)
	}
	time.Sleep(1100 * time.Millisecond)
	if code := send(); code != http.StatusUnauthorized {
		t.Fatalf("expired session: %d", code)
	}
}

// TestConsoleClientCertificates: over mutual TLS, a certificate from the
// viewers' CA is enough; without one only /healthz answers; one from
// another CA fails the handshake.
func TestConsoleClientCertificates(t *testing.T) {
	ca := testpki.New(t)
	auth, err := console.NewAuth("", true)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	web := httptest.NewUnstartedServer(console.New(console.Config{Metrics: console.NewMetrics(reg), Gatherer: reg, Auth: auth, Log: zap.NewNop()}).Handler())
	web.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Issue("console", "", true)}, ClientCAs: ca.Pool,
		ClientAuth: tls.VerifyClientCertIfGiven, MinVersion: tls.VersionTLS12} // as gridseal proxy configures it
	web.StartTLS()
	defer web.Close()
	client := func(certs ...tls.Certificate) *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool, Certificates: certs}}}
	}
	req, _ := http.NewRequest("GET", web.URL+"/api/status", nil)
	if code := status(t, client(ca.Issue("analyst-1", "", false)), req); code != http.StatusOK {
		t.Fatalf("with a client certificate: %d", code)
	}
	req, _ = http.NewRequest("GET", web.URL+"/api/status", nil)
	if code := status(t, client(), req); code != http.StatusUnauthorized {
		t.Fatalf("no client certificate: %d, want 401", code)
	}
	req, _ = http.NewRequest("GET", web.URL+"/healthz", nil)
	if code := status(t, client(), req); code != http.StatusOK {
		t.Fatalf("a liveness probe without a certificate: %d", code)
	}
	other := testpki.New(t)
	if _, err := client(other.Issue("mallory", "", false)).Get(web.URL + "/api/status"); err == nil {
		t.Fatal("a certificate from another CA went through")
	}
}

func TestConsoleTokenFileChecks(t *testing.T) {
	tok, _ := console.NewToken()
	open := tokenFile(t, console.TokenLine("soc-1", tok))
	if err := os.Chmod(open, 0o644); err != nil {
		t.Fatal(err)
	}
	for name, path := range map[string]string{
		"readable by others": open,
		"bad line":           tokenFile(t, "soc-1 "+tok),
		"empty":              tokenFile(t),
		"missing":            filepath.Join(t.TempDir(), "nope"),
	} {
		if _, err := console.NewAuth(path, false); err == nil {
			t.Errorf("%s token file accepted", name)
		}
	}
	if _, err := console.NewAuth("", false); err == nil {
		t.Error("an Auth that admits nobody was accepted")
	}
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

// TestConsoleConnectionLimits: one address holds at most MaxConnsPerClient
// connections (more are closed at once), and a request turned away for
// lack of credentials does not keep its connection.
func TestConsoleConnectionLimits(t *testing.T) {
	tok, _ := console.NewToken()
	auth, err := console.NewAuth(tokenFile(t, console.TokenLine("soc-1", tok)), false)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	c := console.New(console.Config{Metrics: console.NewMetrics(reg), Gatherer: reg, Auth: auth, MaxConnsPerClient: 2, Log: zap.NewNop()})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testwait.Go(t, "console", func(ctx context.Context) error { return c.Serve(ctx, ln) })
	addr := ln.Addr().String()
	var held []net.Conn
	for i := 0; i < 2; i++ {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		held = append(held, conn)
	}
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = extra.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a third connection from one address was kept open: %v", err)
	}
	extra.Close()
	held[0].Close()
	// One request at a time on a fresh connection; the server frees a
	// slot when it sees a connection close, so try again for a moment.
	hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var resp *http.Response
	testwait.NoError(t, "/healthz once a slot is freed", func() (err error) {
		resp, err = hc.Get("http://" + addr + "/healthz")
		return err
	})
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz after a slot was freed: %d", resp.StatusCode)
	}
	// Keep-alive on, as browsers and scrapers do: the 401 still closes.
	testwait.NoError(t, "/api/status with keep-alive", func() (err error) {
		resp, err = (&http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{}}).Get("http://" + addr + "/api/status")
		return err
	})
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || !resp.Close {
		t.Fatalf("unauthorized answer: %d, connection kept: %v", resp.StatusCode, !resp.Close)
	}
}

// TestAddToken: a token is added to a new or existing file as its hash
// only (the file stays 0600 and loads), after a last line without a
// newline too; a name already listed and a file others may read are
// refused.
func TestAddToken(t *testing.T) {
	for _, tc := range []struct {
		name, old string
		perm      os.FileMode
		wantErr   string
	}{
		{"new file", "", 0, ""},
		{"existing file", "# viewers\n" + console.TokenLine("soc-1", "gst_x") + "\n", 0o600, ""},
		{"no final newline", console.TokenLine("soc-1", "gst_x"), 0o600, ""},
		{"name taken", console.TokenLine("prometheus", "gst_x") + "\n", 0o600, "prometheus already has a token in "},
		{"readable by others", "# viewers\n", 0o644, " is readable by others; chmod 600 it first"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "console-tokens")
			if tc.perm != 0 {
				if err := os.WriteFile(path, []byte(tc.old), tc.perm); err != nil {
					t.Fatal(err)
				}
			}
			tok, err := console.AddToken(path, "prometheus")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				if b, _ := os.ReadFile(path); string(b) != tc.old {
					t.Fatalf("a refused token changed the file: %q", b)
				}
				return
			}
			if err != nil || !strings.HasPrefix(tok, "gst_") {
				t.Fatalf("token %q, %v", tok, err)
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.old
			if want != "" && !strings.HasSuffix(want, "\n") {
				want += "\n"
			}
			if want += console.TokenLine("prometheus", tok) + "\n"; string(b) != want || strings.Contains(string(b), tok) {
				t.Fatalf("file %q, want %q", b, want)
			}
			if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("mode %v, %v", fi.Mode(), err)
			}
			if _, err := console.NewAuth(path, false); err != nil {
				t.Fatal(err)
			}
		})
	}
}
