package gateway

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/gridseal/gridseal/chain"
	"github.com/gridseal/gridseal/console"
	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/proxy"
)

// Config is the gateway's configuration: the YAML file `gridseal proxy
// --config` reads (deploy/examples/gridseal.yaml), or one the demo builds.
type Config struct {
	Policy     string `yaml:"policy"`
	PolicyRoot string `yaml:"policy_root"` // admins' root file; the policy must carry their m-of-n signatures
	// Candidate is a shadow candidate policy, signed like the policy: it is
	// evaluated beside the policy in force, which still decides; requests
	// it decides otherwise are flagged in the chain, counted in /metrics
	// and badged in the console — a dry run before the reload.
	Candidate string `yaml:"candidate"`
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
	// EVE is the proxy's own Suricata-EVE file, for a log forwarder to tail.
	EVE  EVEConfig `yaml:"eve"`
	Log  LogConfig `yaml:"log"`
	path string
}

// EVEConfig names the proxy's EVE file (no path, no file) and when it is
// rotated; SIGHUP reopens it.
type EVEConfig struct {
	Path   string          `yaml:"path"`
	Rotate EVERotateConfig `yaml:"rotate"`
}

// EVERotateConfig rotates the EVE file by size or age, keeping Keep old files.
type EVERotateConfig struct {
	Size  ByteSize      `yaml:"size"`  // e.g. 100MB; 0: not by size
	Every time.Duration `yaml:"every"` // e.g. 24h; 0: not by age
	Keep  int           `yaml:"keep"`  // rotated files kept (default 10)
}

// ByteSize is a size in bytes, written as a number or with a KB, MB or GB
// suffix (powers of 1024).
type ByteSize int64

// UnmarshalYAML reads 1048576, 1024KB, 1MB or 1GB.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	s := strings.TrimSpace(n.Value)
	mult := int64(1)
	for suffix, m := range map[string]int64{"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30} {
		if v, ok := strings.CutSuffix(strings.ToUpper(s), suffix); ok {
			s, mult = strings.TrimSpace(v), m
			break
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if n.Kind != yaml.ScalarNode || err != nil || v < 0 || v > (1<<62)/mult {
		return fmt.Errorf("line %d: %q is not a size (e.g. 100MB, 1GB, or a number of bytes)", n.Line, n.Value)
	}
	*b = ByteSize(v * mult)
	return nil
}

// CheckpointConfig names the checkpointer's key and period; no key, no
// checkpointer.
type CheckpointConfig struct {
	Key   string        `yaml:"key"`   // signed-note signer key (gridseal keys checkpoint)
	Every time.Duration `yaml:"every"` // default 10s
	// Witnesses are asked to cosign every checkpoint (c2sp.org/tlog-witness).
	Witnesses []WitnessConfig `yaml:"witnesses"`
	// WitnessQuorum is how many cosignatures make a checkpoint witnessed,
	// for metrics and RequireWitnessed; default: every witness.
	WitnessQuorum int `yaml:"witness_quorum"`
	// WitnessTimeout bounds one round of requests to the witnesses; the
	// checkpoint is published with what came by then. Default 5s.
	WitnessTimeout time.Duration `yaml:"witness_timeout"`
	// RequireWitnessed, if above 0, makes /readyz fail when no checkpoint
	// with a quorum of cosignatures was published for that long. Default 0:
	// a witness is a third party, often off-site; readiness of a plant's
	// proxy should not hang on it. Writes never wait for witnesses.
	RequireWitnessed time.Duration `yaml:"require_witnessed"`
}

// WitnessConfig is one witness: its submission URL and its cosignature
// verifier key (name+id+base64(0x04 ‖ Ed25519 key), as litewitness prints).
type WitnessConfig struct {
	URL string `yaml:"url"`
	Key string `yaml:"key"`
}

// witnesses checks the witnesses' part of the configuration.
func (c *CheckpointConfig) witnesses(path string) ([]chain.Witness, error) {
	var out []chain.Witness
	for i, w := range c.Witnesses {
		u, err := url.Parse(w.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("%s: checkpoint.witnesses[%d].url %q: want http(s)://host[:port][/prefix]", path, i, w.URL)
		}
		v, err := chain.NewCosignatureVerifier(w.Key)
		if err != nil {
			return nil, fmt.Errorf("%s: checkpoint.witnesses[%d].key: %w", path, i, err)
		}
		out = append(out, chain.Witness{URL: w.URL, Verifier: v})
	}
	if c.WitnessQuorum < 0 || c.WitnessQuorum > len(out) {
		return nil, fmt.Errorf("%s: checkpoint.witness_quorum %d: want 0 (every witness) to %d", path, c.WitnessQuorum, len(out))
	}
	if len(out) > 0 && c.Key == "" {
		return nil, fmt.Errorf("%s: checkpoint.witnesses need checkpoint.key: no checkpointer, no checkpoints to cosign", path)
	}
	return out, nil
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
	if err := checkAddr(addr); err != nil {
		return nil, fmt.Errorf("console: listen %s: %w", addr, err)
	}
	host, _, _ := net.SplitHostPort(addr)
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
		var err error
		if cs.auth, err = console.NewAuth(tokens, clientCerts); err != nil {
			return nil, err
		}
	}
	return cs, nil
}

// checkAddr refuses a listen address that is not HOST:PORT with a port
// from 0 to 65535 (or a service name).
func checkAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("want HOST:PORT (e.g. 127.0.0.1:5020)")
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return fmt.Errorf("invalid port %q", port)
	}
	return nil
}

// ChainConfig says where and as whom the proxy records.
type ChainConfig struct {
	Writer         string        `yaml:"writer"`          // writer id, unique per proxy instance
	Key            string        `yaml:"key"`             // the writer's private Tink keyset
	NATS           string        `yaml:"nats"`            // NATS URL(s); default --nats, else embedded
	Replicas       int           `yaml:"replicas"`        // stream replicas when creating it
	DurableTimeout time.Duration `yaml:"durable_timeout"` // how long a write waits for its record, up to 1m (0 or unset: 2s)
	SpoolBytes     int           `yaml:"spool_bytes"`     // events held while NATS is away
	Linger         time.Duration `yaml:"linger"`          // how long a block waits for more events, up to 1s (0 or unset: 20ms)
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

var (
	yamlLineRE      = regexp.MustCompile(`line (\d+): (.*)`)
	unknownFieldRE  = regexp.MustCompile(`^field (\S+) not found in type (\S+)$`)
	cannotDecodeRE  = regexp.MustCompile("^cannot unmarshal !!(\\w+)(?: `(.*)`)? into (\\S+)$")
	typeDescription = map[string]string{
		"time.Duration": "a duration (e.g. 30s, 5m)", "bool": "true or false", "string": "a single value",
		"int": "a whole number", "uint8": "a number from 0 to 255", "uint16": "a number from 0 to 65535",
		"int64": "a whole number", "uint64": "a whole number", "float64": "a number",
	}
)

// yamlError makes the decoder's first complaint about the file at path one
// line a user can act on: "path:line: key: what is wrong", naming the keys
// allowed where a key is unknown, and no Go type names.
func yamlError(path string, data []byte, err error) error {
	msg := err.Error()
	more := 0
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msg, more = te.Errors[0], len(te.Errors)-1
	}
	msg = strings.Join(strings.Fields(strings.TrimPrefix(msg, "yaml: ")), " ")
	where, what := path, msg
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		where, what = path+":"+m[1], m[2]
		line, _ := strconv.Atoi(m[1])
		if f := unknownFieldRE.FindStringSubmatch(what); f != nil {
			what = fmt.Sprintf("unknown key %q (allowed: %s)", f[1], strings.Join(yamlKeys(reflect.TypeFor[Config](), f[2]), ", "))
		} else if f := cannotDecodeRE.FindStringSubmatch(what); f != nil {
			got := map[string]string{"seq": "a list", "map": "a mapping"}[f[1]]
			if f[2] != "" || got == "" {
				got = strconv.Quote(f[2])
			}
			want := typeDescription[f[3]]
			switch {
			case want != "":
			case strings.HasPrefix(f[3], "[]"):
				want = "a list"
			default:
				want = "a mapping"
			}
			what = fmt.Sprintf("%s is not %s", got, want)
			if key := keyAtLine(data, line, f[1], f[2]); key != "" {
				what = key + ": " + what
			}
		}
	}
	if more > 0 {
		what += fmt.Sprintf(" (and %d more problems)", more)
	}
	return fmt.Errorf("%s: %s", where, what)
}

// yamlKeys lists the keys of the struct type named name (as Go prints it)
// found anywhere under t, in declaration order.
func yamlKeys(t reflect.Type, name string) []string {
	seen := map[reflect.Type]bool{}
	var find func(reflect.Type) []string
	find = func(t reflect.Type) []string {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || seen[t] {
			return nil
		}
		seen[t] = true
		var keys []string
		for f := range t.Fields() {
			tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if f.IsExported() && tag != "-" {
				if tag == "" {
					tag = strings.ToLower(f.Name)
				}
				keys = append(keys, tag)
			}
		}
		if t.String() == name {
			return keys
		}
		for f := range t.Fields() {
			if k := find(f.Type); k != nil {
				return k
			}
		}
		return nil
	}
	return find(t)
}

// keyAtLine is the key of the innermost value on line of the YAML document
// in data that is the scalar value (or, for value "", a node of kind: seq
// or map); "" if there is none.
func keyAtLine(data []byte, line int, kind, value string) string {
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil {
		return ""
	}
	fits := func(n *yaml.Node) bool {
		switch {
		case n.Line != line:
			return false
		case value != "":
			return n.Kind == yaml.ScalarNode && n.Value == value
		case kind == "seq":
			return n.Kind == yaml.SequenceNode
		case kind == "map":
			return n.Kind == yaml.MappingNode
		}
		return n.Kind == yaml.ScalarNode
	}
	var walk func(n *yaml.Node, depth int) string
	walk = func(n *yaml.Node, depth int) string {
		if depth > 64 {
			return ""
		}
		for i, c := range n.Content {
			if k := walk(c, depth+1); k != "" {
				return k
			}
			if n.Kind == yaml.MappingNode && i%2 == 1 && fits(c) {
				return n.Content[i-1].Value
			}
		}
		return ""
	}
	return walk(&doc, 0)
}

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
		return nil, yamlError(path, data, err)
	}
	if c.Policy == "" {
		return nil, fmt.Errorf("%s: missing policy (path of the policy file)", path)
	}
	if !filepath.IsAbs(c.Policy) {
		c.Policy = filepath.Join(filepath.Dir(path), c.Policy)
	}
	if c.Candidate != "" && !filepath.IsAbs(c.Candidate) {
		c.Candidate = filepath.Join(filepath.Dir(path), c.Candidate)
	}
	if c.PolicyRoot != "" && !filepath.IsAbs(c.PolicyRoot) {
		c.PolicyRoot = filepath.Join(filepath.Dir(path), c.PolicyRoot)
	}
	if c.Chain.Writer == "" {
		return nil, fmt.Errorf("%s: chain.writer: name this proxy's chain (e.g. gw-1)", path)
	}
	if c.Chain.Linger < 0 || c.Chain.Linger > time.Second {
		return nil, fmt.Errorf("%s: chain.linger: want 0 to 1s (how long a block waits for more events), not %v", path, c.Chain.Linger)
	}
	if c.Chain.DurableTimeout < 0 || c.Chain.DurableTimeout > time.Minute {
		return nil, fmt.Errorf("%s: chain.durable_timeout: want 0 to 1m (how long a write waits for its record before it is refused; 0: 2s), not %v", path, c.Chain.DurableTimeout)
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
	if c.EVE.Path != "" && !filepath.IsAbs(c.EVE.Path) {
		c.EVE.Path = filepath.Join(filepath.Dir(path), c.EVE.Path)
	}
	if c.EVE.Rotate.Keep < 0 || c.EVE.Rotate.Every < 0 {
		return nil, fmt.Errorf("%s: eve.rotate: keep and every must not be negative", path)
	}
	if _, err := c.Checkpoint.witnesses(path); err != nil {
		return nil, err
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
