package gateway

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/gridseal/gridseal/console"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/proxy"
)

// Config is the gateway's configuration: the YAML file `gridseal proxy
// --config` reads (deploy/examples/gridseal.yaml), or one the demo builds.
type Config struct {
	Policy     string `yaml:"policy"`
	PolicyRoot string `yaml:"policy_root"` // admins' root file; the policy must carry their m-of-n signatures
	// InsecureUnsignedPolicy runs a policy no admin signed. Tests and labs only.
	InsecureUnsignedPolicy bool `yaml:"insecure_unsigned_policy"`
	// AllowPolicyRollback accepts a policy older than one already in force.
	AllowPolicyRollback bool                 `yaml:"allow_policy_rollback"`
	Listeners           []ListenerConfig     `yaml:"listeners"`
	Limits              proxy.Limits         `yaml:"limits"`
	Upstream            proxy.UpstreamConfig `yaml:"upstream"`
	Exceptions          proxy.Exceptions     `yaml:"exceptions"`
	Chain               ChainConfig          `yaml:"chain"`
	// UpstreamTLS speaks Modbus/TCP Security to the named devices.
	UpstreamTLS map[string]*TLSConfig `yaml:"upstream_tls"`
	// Checkpoint signs checkpoints of the whole chain stream (one
	// checkpointer per deployment is enough).
	Checkpoint CheckpointConfig `yaml:"checkpoint"`
	// Console is the web console, /metrics, /healthz and /readyz.
	Console ConsoleConfig `yaml:"console"`
	Log     LogConfig     `yaml:"log"`
	path    string
}

// CheckpointConfig names the checkpointer's key and period; no key, no
// checkpointer.
type CheckpointConfig struct {
	Key   string        `yaml:"key"`   // signed-note signer key (gridseal keys checkpoint)
	Every time.Duration `yaml:"every"` // default 10s
}

// ConsoleConfig says where the console listens and whom it admits. Off
// loopback it must use TLS and admit only client certificates from ca or
// the tokens listed in the token file.
type ConsoleConfig struct {
	Listen         string     `yaml:"listen"` // default 127.0.0.1:8080; "off": none; --http overrides
	TLS            *TLSConfig `yaml:"tls"`    // cert, key; ca: viewers' client certificates
	Tokens         string     `yaml:"tokens"` // token file (gridseal keys console-token)
	MaxConnections int        `yaml:"max_connections"`
}

// consoleSetup is a console's resolved listener and admission.
type consoleSetup struct {
	addr     string
	tls      *tls.Config
	auth     *console.Auth
	maxConns int
}

// setup checks the console configuration: off loopback, TLS and a way to
// admit viewers are required, since the command stream is plant data.
func (c *ConsoleConfig) setup(base, addr string) (*consoleSetup, error) {
	cs := &consoleSetup{addr: addr, maxConns: c.MaxConnections}
	if addr == "" || addr == "off" {
		return cs, nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("console: listen %q: %v", addr, err)
	}
	ip, _ := netip.ParseAddr(host)
	loopback := host == "localhost" || (ip.IsValid() && ip.IsLoopback())
	tokens := c.Tokens
	if tokens != "" && !filepath.IsAbs(tokens) {
		tokens = filepath.Join(base, tokens)
	}
	clientCerts := false
	if c.TLS != nil {
		cert, pool, err := c.TLS.load(base)
		if err != nil {
			return nil, fmt.Errorf("console: %w", err)
		}
		if cert == nil {
			return nil, errors.New("console: tls needs cert and key")
		}
		cs.tls = &tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12}
		if pool != nil {
			// A certificate, when given, must chain to ca; whether a request
			// needs one is the console's sign-in check, so /healthz answers
			// a probe without one and a browser may sign in with a token.
			clientCerts = true
			cs.tls.ClientCAs = pool
			cs.tls.ClientAuth = tls.VerifyClientCertIfGiven
		}
	}
	if !loopback && (cs.tls == nil || (!clientCerts && tokens == "")) {
		return nil, fmt.Errorf("console: %s is not a loopback address: set console.tls (cert, key) and console.tls.ca or console.tokens, so only your analysts see the command stream", addr)
	}
	if clientCerts || tokens != "" {
		if cs.auth, err = console.NewAuth(tokens, clientCerts); err != nil {
			return nil, err
		}
	}
	return cs, nil
}

// ChainConfig says where and as whom the proxy records.
type ChainConfig struct {
	Writer         string        `yaml:"writer"`          // writer id, unique per proxy instance
	Key            string        `yaml:"key"`             // the writer's private Tink keyset
	NATS           string        `yaml:"nats"`            // NATS URL(s); default --nats, else embedded
	Replicas       int           `yaml:"replicas"`        // stream replicas when creating it
	DurableTimeout time.Duration `yaml:"durable_timeout"` // how long a write waits for its record
	SpoolBytes     int           `yaml:"spool_bytes"`     // events held while NATS is away
	DurableReads   bool          `yaml:"durable_reads"`   // reads too wait for their record
	Trust          string        `yaml:"trust"`           // trust file the console verifies against (default DATA-DIR/trust.yaml)
}

// ListenerConfig is one client-facing address and the devices behind it.
type ListenerConfig struct {
	Listen  string     `yaml:"listen"`
	Devices []string   `yaml:"devices"`
	TLS     *TLSConfig `yaml:"tls"` // Modbus/TCP Security: mutual TLS, roles from client certificates
}

// TLSConfig names PEM files. On a listener: the server's certificate and
// key and the CA that issues client certificates. Toward a PLC: the CA that
// issued its certificate, and the proxy's client certificate and key.
type TLSConfig struct {
	Cert       string `yaml:"cert"`
	Key        string `yaml:"key"`
	CA         string `yaml:"ca"`
	ServerName string `yaml:"server_name"` // toward a PLC: the name in its certificate
}

// server builds the listener side: TLS 1.2+, client certificates required.
func (t *TLSConfig) server(base string) (*tls.Config, error) {
	cert, pool, err := t.load(base)
	if err != nil {
		return nil, err
	}
	if cert == nil || pool == nil {
		return nil, errors.New("tls: a listener needs cert, key and ca (the CA of client certificates)")
	}
	return &tls.Config{Certificates: []tls.Certificate{*cert}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}, nil
}

// client builds the PLC side.
func (t *TLSConfig) client(base string) (*tls.Config, error) {
	cert, pool, err := t.load(base)
	if err != nil {
		return nil, err
	}
	c := &tls.Config{RootCAs: pool, ServerName: t.ServerName, MinVersion: tls.VersionTLS12}
	if cert != nil {
		c.Certificates = []tls.Certificate{*cert}
	}
	return c, nil
}

func (t *TLSConfig) load(base string) (*tls.Certificate, *x509.CertPool, error) {
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(base, p)
	}
	var cert *tls.Certificate
	if t.Cert != "" || t.Key != "" {
		c, err := tls.LoadX509KeyPair(abs(t.Cert), abs(t.Key))
		if err != nil {
			return nil, nil, fmt.Errorf("tls: %w", err)
		}
		cert = &c
	}
	var pool *x509.CertPool
	if t.CA != "" {
		pem, err := os.ReadFile(abs(t.CA))
		if err != nil {
			return nil, nil, fmt.Errorf("tls: %w", err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("tls: %s holds no PEM certificate", t.CA)
		}
	}
	return cert, pool, nil
}

// LogConfig sets the log's level and format (the command line's flags are
// the defaults).
type LogConfig struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

var yamlLineRE = regexp.MustCompile(`line (\d+): (.*)`)

// Load reads the configuration at path; errors read "path:line: what".
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	c := Config{path: path}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		msg := strings.Join(strings.Fields(err.Error()), " ")
		if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
			return nil, fmt.Errorf("%s:%s: %s", path, m[1], m[2])
		}
		return nil, fmt.Errorf("%s: %s", path, msg)
	}
	if c.Policy == "" {
		return nil, fmt.Errorf("%s: missing policy (path of the policy file)", path)
	}
	if !filepath.IsAbs(c.Policy) {
		c.Policy = filepath.Join(filepath.Dir(path), c.Policy)
	}
	if c.PolicyRoot != "" && !filepath.IsAbs(c.PolicyRoot) {
		c.PolicyRoot = filepath.Join(filepath.Dir(path), c.PolicyRoot)
	}
	if c.Chain.Writer == "" {
		return nil, fmt.Errorf("%s: chain.writer: name this proxy's chain (e.g. gw-1)", path)
	}
	if c.Chain.Key == "" {
		return nil, fmt.Errorf("%s: chain.key: the writer's private keyset (create one with: gridseal keys new %s --dir DIR)", path, c.Chain.Writer)
	}
	if !filepath.IsAbs(c.Chain.Key) {
		c.Chain.Key = filepath.Join(filepath.Dir(path), c.Chain.Key)
	}
	if c.Checkpoint.Key != "" && !filepath.IsAbs(c.Checkpoint.Key) {
		c.Checkpoint.Key = filepath.Join(filepath.Dir(path), c.Checkpoint.Key)
	}
	if c.Chain.Trust != "" && !filepath.IsAbs(c.Chain.Trust) {
		c.Chain.Trust = filepath.Join(filepath.Dir(path), c.Chain.Trust)
	}
	if len(c.Listeners) == 0 {
		return nil, fmt.Errorf("%s: listeners must name at least one listen address", path)
	}
	return &c, nil
}

// proxyConfig returns the proxy's part of the file.
func (c *Config) proxyConfig() proxy.Config {
	return proxy.Config{Limits: c.Limits, Upstream: c.Upstream, Exceptions: c.Exceptions, DurableReads: c.Chain.DurableReads}
}

type listenerSpec struct {
	addr  string
	route proxy.Route
	tls   *tls.Config
}

// routes maps each listener's devices to unit ids, as the policy assigns them.
func routes(listeners []ListenerConfig, p *policy.Policy) ([]listenerSpec, error) {
	var out []listenerSpec
	for i, l := range listeners {
		if l.Listen == "" {
			return nil, fmt.Errorf("listeners[%d]: missing listen address", i)
		}
		if len(l.Devices) == 0 {
			return nil, fmt.Errorf("listener %s: names no devices", l.Listen)
		}
		rt := proxy.Route{Units: map[byte]string{}}
		for _, name := range l.Devices {
			d := p.Device(name)
			if d == nil {
				return nil, fmt.Errorf("listener %s: device %q is not in policy %s", l.Listen, name, p.ID)
			}
			if len(d.Units) == 0 {
				if rt.Default != "" {
					return nil, fmt.Errorf("listener %s: devices %q and %q both take every unit id; give them units in the policy", l.Listen, rt.Default, name)
				}
				rt.Default = name
			}
			for _, u := range d.Units {
				if other, dup := rt.Units[u]; dup {
					return nil, fmt.Errorf("listener %s: unit %d is both %q and %q", l.Listen, u, other, name)
				}
				rt.Units[u] = name
			}
		}
		out = append(out, listenerSpec{addr: l.Listen, route: rt})
	}
	return out, nil
}

// devices lists the policy's devices, with TLS toward those that have it.
func devices(p *policy.Policy, upTLS map[string]*tls.Config) []proxy.Device {
	out := make([]proxy.Device, 0, len(p.Devices))
	for _, d := range p.Devices {
		out = append(out, proxy.Device{Name: d.Name, Upstream: d.Upstream, TLS: upTLS[d.Name]})
	}
	return out
}

// tlsSetup loads the listeners' and the PLCs' TLS configurations.
func (c *Config) tlsSetup(specs []listenerSpec) (map[string]*tls.Config, error) {
	base := filepath.Dir(c.path)
	for i, l := range c.Listeners {
		if l.TLS == nil {
			continue
		}
		cfg, err := l.TLS.server(base)
		if err != nil {
			return nil, fmt.Errorf("%s: listener %s: %w", c.path, l.Listen, err)
		}
		specs[i].tls = cfg
	}
	up := map[string]*tls.Config{}
	for name, t := range c.UpstreamTLS {
		cfg, err := t.client(base)
		if err != nil {
			return nil, fmt.Errorf("%s: upstream_tls %s: %w", c.path, name, err)
		}
		up[name] = cfg
	}
	return up, nil
}
