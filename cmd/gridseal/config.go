package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/gridseal/gridseal/policy"
	"github.com/gridseal/gridseal/proxy"
)

// fileConfig is the proxy's configuration file.
type fileConfig struct {
	Policy     string `yaml:"policy"`
	PolicyRoot string `yaml:"policy_root"` // admins' root file; the policy must carry their m-of-n signatures
	// InsecureUnsignedPolicy runs a policy no admin signed. Tests and labs only.
	InsecureUnsignedPolicy bool `yaml:"insecure_unsigned_policy"`
	// AllowPolicyRollback accepts a policy older than one already in force.
	AllowPolicyRollback bool                 `yaml:"allow_policy_rollback"`
	Listeners           []listenerConfig     `yaml:"listeners"`
	Limits              proxy.Limits         `yaml:"limits"`
	Upstream            proxy.UpstreamConfig `yaml:"upstream"`
	Exceptions          proxy.Exceptions     `yaml:"exceptions"`
	Chain               chainConfig          `yaml:"chain"`
	Log                 logConfig            `yaml:"log"`
}

// chainConfig says where and as whom the proxy records.
type chainConfig struct {
	Writer         string        `yaml:"writer"`          // writer id, unique per proxy instance
	Key            string        `yaml:"key"`             // the writer's private Tink keyset
	NATS           string        `yaml:"nats"`            // NATS URL(s); default --nats, else embedded
	Replicas       int           `yaml:"replicas"`        // stream replicas when creating it
	DurableTimeout time.Duration `yaml:"durable_timeout"` // how long a write waits for its record
	SpoolBytes     int           `yaml:"spool_bytes"`     // events held while NATS is away
	DurableReads   bool          `yaml:"durable_reads"`   // reads too wait for their record
	Trust          string        `yaml:"trust"`           // trust file the console verifies against (default DATA-DIR/trust.yaml)
}

type listenerConfig struct {
	Listen  string   `yaml:"listen"`
	Devices []string `yaml:"devices"`
}

type logConfig struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

var yamlLineRE = regexp.MustCompile(`line (\d+): (.*)`)

// loadConfig reads the configuration at path; errors read "path:line: what".
func loadConfig(path string) (*fileConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	var c fileConfig
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
	if c.Chain.Trust != "" && !filepath.IsAbs(c.Chain.Trust) {
		c.Chain.Trust = filepath.Join(filepath.Dir(path), c.Chain.Trust)
	}
	if len(c.Listeners) == 0 {
		return nil, fmt.Errorf("%s: listeners must name at least one listen address", path)
	}
	return &c, nil
}

// proxyConfig returns the proxy's part of the file.
func (c *fileConfig) proxyConfig() proxy.Config {
	return proxy.Config{Limits: c.Limits, Upstream: c.Upstream, Exceptions: c.Exceptions, DurableReads: c.Chain.DurableReads}
}

type listenerSpec struct {
	addr  string
	route proxy.Route
}

// routes maps each listener's devices to unit ids, as the policy assigns them.
func routes(listeners []listenerConfig, p *policy.Policy) ([]listenerSpec, error) {
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

func devices(p *policy.Policy) []proxy.Device {
	out := make([]proxy.Device, 0, len(p.Devices))
	for _, d := range p.Devices {
		out = append(out, proxy.Device{Name: d.Name, Upstream: d.Upstream})
	}
	return out
}

var errUsage = errors.New("usage")
