package console

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/gridseal/gridseal/internal/atomicfile"
	"go.uber.org/zap"
)

// Auth says who may see the console. The command stream is plant data, so
// a console reachable from the network admits only a client certificate
// the TLS listener verified, or a bearer token from the token file. A
// browser signs in once with its token at /login and then carries a
// session cookie (EventSource cannot send headers); sessions are HMACs
// under a key made at start, so a restart signs everyone out.
type Auth struct {
	tokens     map[[32]byte]string // SHA-256 of a token → its name
	sessionKey [32]byte
	// SessionTTL bounds a browser session (default 12 h).
	SessionTTL time.Duration
	// ClientCerts admits any request whose TLS client certificate the
	// listener verified (mutual TLS).
	ClientCerts bool
	log         *zap.Logger // set by New: sign-ins are logged
}

// ErrTokenFile is returned for a token file that cannot be used.
var ErrTokenFile = errors.New("console token file")

// TokenLine is a token file line for name: the token's SHA-256, never the
// token itself.
func TokenLine(name, token string) string {
	sum := sha256.Sum256([]byte(token))
	return name + " " + hex.EncodeToString(sum[:])
}

// NewToken returns a fresh random token (256 bits, URL-safe base64).
func NewToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return "gst_" + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// AddToken creates a sign-in token for name and appends its line
// (TokenLine) to the token file at path, created 0600 if missing; it
// refuses a file others may read and a name the file already lists. The
// token is returned to be shown once: the file keeps only its hash.
func AddToken(path, name string) (string, error) {
	old, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return "", err
	default:
		fi, err := os.Stat(path)
		if err != nil {
			return "", err
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return "", fmt.Errorf("%s is readable by others; chmod 600 it first", path)
		}
		for _, line := range strings.Split(string(old), "\n") {
			if f := strings.Fields(line); len(f) > 0 && f[0] == name {
				return "", fmt.Errorf("%s already has a token in %s: remove its line to replace it", name, path)
			}
		}
	}
	tok, err := NewToken()
	if err != nil {
		return "", err
	}
	data := old
	if len(data) > 0 && data[len(data)-1] != '\n' {
		data = append(data, '\n')
	}
	data = append(data, TokenLine(name, tok)+"\n"...)
	if err := atomicfile.Write(path, data, 0o600); err != nil {
		return "", err
	}
	return tok, nil
}

// NewAuth returns an Auth admitting the tokens listed in tokenFile (one
// "NAME SHA256-HEX" a line; # comments) if it is not empty, and verified
// client certificates if clientCerts. The file must not be readable by
// others: knowing a hash does not let one in, but the names and count are
// nobody else's business either.
func NewAuth(tokenFile string, clientCerts bool) (*Auth, error) {
	a := &Auth{tokens: map[[32]byte]string{}, ClientCerts: clientCerts, SessionTTL: 12 * time.Hour}
	if _, err := rand.Read(a.sessionKey[:]); err != nil {
		return nil, err
	}
	if tokenFile == "" {
		if !clientCerts {
			return nil, fmt.Errorf("%w: neither tokens nor client certificates admit anyone", ErrTokenFile)
		}
		return a, nil
	}
	fi, err := os.Stat(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTokenFile, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w %s is readable by others; chmod 600 it", ErrTokenFile, tokenFile)
	}
	data, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTokenFile, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		var sum [32]byte
		raw, err := hex.DecodeString(f[len(f)-1])
		if len(f) != 2 || err != nil || len(raw) != 32 {
			return nil, fmt.Errorf("%w %s:%d: want NAME SHA256-HEX (gridseal keys console-token writes it)", ErrTokenFile, tokenFile, n)
		}
		copy(sum[:], raw)
		a.tokens[sum] = f[0]
	}
	if len(a.tokens) == 0 && !clientCerts {
		return nil, fmt.Errorf("%w %s lists no tokens", ErrTokenFile, tokenFile)
	}
	return a, nil
}

// tokenName returns the name of token, or "" if it is not listed.
func (a *Auth) tokenName(token string) string {
	if token == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(token))
	name, ok := a.tokens[sum] // the map is keyed by a hash: timing reveals nothing of the token
	if !ok {
		return ""
	}
	return name
}

const sessionCookie = "gridseal_session"

// session is name|expiry|HMAC.
func (a *Auth) session(name string, until time.Time) string {
	var exp [8]byte
	binary.BigEndian.PutUint64(exp[:], uint64(until.Unix()))
	body := base64.RawURLEncoding.EncodeToString([]byte(name)) + "." + base64.RawURLEncoding.EncodeToString(exp[:])
	m := hmac.New(sha256.New, a.sessionKey[:])
	m.Write([]byte(body))
	return body + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (a *Auth) sessionName(v string, now time.Time) string {
	parts := strings.Split(v, ".")
	if len(parts) != 3 {
		return ""
	}
	m := hmac.New(sha256.New, a.sessionKey[:])
	m.Write([]byte(parts[0] + "." + parts[1]))
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || subtle.ConstantTimeCompare(sig, m.Sum(nil)) != 1 {
		return ""
	}
	name, err1 := base64.RawURLEncoding.DecodeString(parts[0])
	exp, err2 := base64.RawURLEncoding.DecodeString(parts[1])
	if err1 != nil || err2 != nil || len(exp) != 8 || now.Unix() >= int64(binary.BigEndian.Uint64(exp)) {
		return ""
	}
	return string(name)
}

// who returns the viewer's name, or "" if the request is not admitted.
func (a *Auth) who(r *http.Request) string {
	if a.ClientCerts && r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		return "cert:" + r.TLS.VerifiedChains[0][0].Subject.CommonName
	}
	if h := r.Header.Get("Authorization"); h != "" {
		if tok, ok := strings.CutPrefix(h, "Bearer "); ok {
			return a.tokenName(strings.TrimSpace(tok))
		}
		return ""
	}
	if c, err := r.Cookie(sessionCookie); err == nil {
		return a.sessionName(c.Value, time.Now())
	}
	return ""
}

// wrap admits only known viewers to next; /healthz and /login are open.
func (a *Auth) wrap(next http.Handler) http.Handler {
	login := http.HandlerFunc(a.login)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz", "/style.css": // liveness, and the sign-in page's style
			next.ServeHTTP(w, r)
			return
		case "/login":
			login.ServeHTTP(w, r)
			return
		}
		if a.who(r) != "" {
			next.ServeHTTP(w, r)
			return
		}
		if r.Method == http.MethodGet && r.URL.Path == "/" {
			http.Redirect(w, r, "/login", http.StatusSeeOther)
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="gridseal console"`)
		w.Header().Set("Connection", "close") // a stranger keeps no connection slot
		http.Error(w, "sign in: a bearer token, a client certificate, or /login", http.StatusUnauthorized)
	})
}

const loginPage = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gridseal console: sign in</title>
<link rel="stylesheet" href="style.css"></head>
<body><main class="panel login">
<h1>gridseal</h1><p class="muted">%s</p>
<form method="post" action="login">
<label>console token <input name="token" type="password" autocomplete="current-password" size="40" autofocus></label>
<button type="submit">Sign in</button></form></main></body></html>
`

// login shows the sign-in form and, for a listed token, sets the session
// cookie (HttpOnly, SameSite=Strict, Secure over TLS).
func (a *Auth) login(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	switch r.Method {
	case http.MethodGet:
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, loginPage, "Read-only view of the command stream. Sign in with your console token.")
	case http.MethodPost:
		r.Body = http.MaxBytesReader(w, r.Body, 4096)
		if err := r.ParseForm(); err != nil {
			http.Error(w, "bad form", http.StatusBadRequest)
			return
		}
		name := a.tokenName(r.PostForm.Get("token"))
		if a.log != nil { // who signed in, and failed attempts; never the token
			if name == "" {
				a.log.Warn("console sign-in refused: unknown token", zap.String("remote", r.RemoteAddr))
			} else {
				a.log.Info("console sign-in", zap.String("viewer", name), zap.String("remote", r.RemoteAddr))
			}
		}
		if name == "" {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintf(w, loginPage, "That token is not listed. Try again.")
			return
		}
		http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: a.session(name, time.Now().Add(a.SessionTTL)),
			Path: "/", HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode, MaxAge: int(a.SessionTTL.Seconds())})
		http.Redirect(w, r, "/", http.StatusSeeOther)
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}
