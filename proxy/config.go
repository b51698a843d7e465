package proxy

import (
	"fmt"
	"reflect"
	"time"

	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/protocols/modbus"
)

// Config holds the proxy's limits, timeouts and answers. Zero fields take
// the defaults of DefaultConfig.
type Config struct {
	Limits     Limits
	Upstream   UpstreamConfig
	Exceptions Exceptions
	// DurableReads records reads durably before forwarding them, as writes
	// always are. Off by default: a read is recorded with its answer, and
	// the recorder spools it without making the client wait.
	DurableReads bool
	// FirstOp is the operation number the proxy's count starts after: the
	// recorder's ReserveOps, so numbers stay unique across restarts.
	FirstOp uint64
	// LogInterval is how long repeats of a warning that a client or device
	// can cause at will (a refused connection, a reply that does not fit
	// its request) are counted before their number is logged as one line;
	// the first of each kind is logged at once. The record is unaffected.
	LogInterval time.Duration
}

// Limits bound what one client, and all of them, may ask of the proxy.
// The timeouts are kept as socket deadlines moved only once they fall
// behind 7/8 of their timeout (a timer update per request was a tenth of
// the proxy's CPU): each may act up to an eighth early, never late.
type Limits struct {
	MaxConnections          int           `yaml:"max_connections"`            // total client connections
	MaxConnectionsPerClient int           `yaml:"max_connections_per_client"` // per client IP address
	IdleTimeout             time.Duration `yaml:"idle_timeout"`               // no request for this long: close
	ReadTimeout             time.Duration `yaml:"read_timeout"`               // a started frame must complete within this
	// WriteTimeout bounds how long a reply may wait for room in the client's
	// socket. A client that reads its replies never comes near it; one that
	// does not is disconnected, and meanwhile it stalls the replies of its
	// device's other clients, so keep it short.
	WriteTimeout      time.Duration `yaml:"write_timeout"`
	RequestsPerSecond float64       `yaml:"requests_per_second"` // per connection, sustained
	Burst             int           `yaml:"burst"`               // per connection
	MaxPipeline       int           `yaml:"max_pipeline"`        // outstanding requests per connection
}

// UpstreamConfig governs the connections to each PLC.
type UpstreamConfig struct {
	PoolSize        int           `yaml:"pool_size"`        // connections per device (PLCs allow few)
	MaxInflight     int           `yaml:"max_inflight"`     // outstanding requests per connection
	DialTimeout     time.Duration `yaml:"dial_timeout"`     // connecting to the PLC
	ResponseTimeout time.Duration `yaml:"response_timeout"` // after this, the client gets exception 0x0B
	RetryBackoff    time.Duration `yaml:"retry_backoff"`    // after a failed dial, answer 0x0A without redialling for this long
}

// Exceptions are the codes the proxy answers with when it refuses a request.
type Exceptions struct {
	Function   modbus.ExceptionCode `yaml:"function"`      // policy forbids the function
	Address    modbus.ExceptionCode `yaml:"address"`       // policy forbids the range or unit
	Value      modbus.ExceptionCode `yaml:"value"`         // policy forbids the values
	Approval   modbus.ExceptionCode `yaml:"approval"`      // the command needs an m-of-n approval that is not there
	Unrouted   modbus.ExceptionCode `yaml:"unrouted"`      // no device for this unit id
	RateLimit  modbus.ExceptionCode `yaml:"rate_limit"`    // client over its request rate
	Unrecorded modbus.ExceptionCode `yaml:"unrecorded"`    // a write could not be recorded: fail closed
	Busy       modbus.ExceptionCode `yaml:"upstream_busy"` // upstream queue full past the response timeout
	// BadReply answers a request whose device reply is well framed but
	// does not fit the request (the wrong function, length or count).
	BadReply modbus.ExceptionCode `yaml:"bad_reply"`
}

// DefaultConfig returns the limits and answers gridseal ships with.
func DefaultConfig() Config {
	return Config{
		Limits: Limits{
			MaxConnections:          1024,
			MaxConnectionsPerClient: 64,
			IdleTimeout:             5 * time.Minute,
			ReadTimeout:             10 * time.Second,
			WriteTimeout:            time.Second,
			RequestsPerSecond:       2000,
			Burst:                   4000,
			MaxPipeline:             32,
		},
		Upstream: UpstreamConfig{
			PoolSize:        1,
			MaxInflight:     64,
			DialTimeout:     3 * time.Second,
			ResponseTimeout: 3 * time.Second,
			RetryBackoff:    time.Second,
		},
		LogInterval: audit.DefaultLogInterval,
		Exceptions: Exceptions{
			Function:   modbus.IllegalFunction,
			Address:    modbus.IllegalDataAddress,
			Value:      modbus.IllegalDataValue,
			Approval:   modbus.IllegalFunction,
			Unrouted:   modbus.GatewayPathUnavailable,
			RateLimit:  modbus.ServerDeviceBusy,
			Unrecorded: modbus.ServerDeviceBusy,
			Busy:       modbus.ServerDeviceBusy,
			BadReply:   modbus.ServerDeviceFailure,
		},
	}
}

// withDefaults fills zero fields from DefaultConfig and checks the rest.
func (c Config) withDefaults() (Config, error) {
	d := DefaultConfig()
	if c.LogInterval == 0 {
		c.LogInterval = d.LogInterval
	}
	fillZero(&c.Limits, d.Limits)
	fillZero(&c.Upstream, d.Upstream)
	fillZero(&c.Exceptions, d.Exceptions)
	l, u := &c.Limits, &c.Upstream
	ev := reflect.ValueOf(c.Exceptions)
	for i := range ev.NumField() {
		if code := ev.Field(i).Interface().(modbus.ExceptionCode); !code.Valid() {
			return c, fmt.Errorf("exceptions.%s: %d is not a Modbus exception code", ev.Type().Field(i).Tag.Get("yaml"), code)
		}
	}
	if l.MaxConnections < 0 || l.MaxConnectionsPerClient < 0 || l.Burst < 0 || l.MaxPipeline < 0 ||
		u.PoolSize < 0 || u.MaxInflight < 0 || l.RequestsPerSecond < 0 {
		return c, fmt.Errorf("limits must not be negative")
	}
	if u.PoolSize > 64 {
		return c, fmt.Errorf("upstream.pool_size %d: at most 64 (PLCs accept few connections)", u.PoolSize)
	}
	return c, nil
}

// fillZero sets each field of *v that is zero to the same field of def.
func fillZero[T any](v *T, def T) {
	rv, rd := reflect.ValueOf(v).Elem(), reflect.ValueOf(def)
	for i := range rv.NumField() {
		if f := rv.Field(i); f.IsZero() {
			f.Set(rd.Field(i))
		}
	}
}
