package proxy

import (
	"strings"
	"testing"
	"time"

	"github.com/gridseal/gridseal/protocols/modbus"
)

// TestWithDefaults: every zero field takes DefaultConfig's value, a field
// that is set keeps its own, and what is out of range is refused naming
// the field.
func TestWithDefaults(t *testing.T) {
	got, err := Config{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if got != DefaultConfig() {
		t.Fatalf("zero config = %+v\nwant the defaults %+v", got, DefaultConfig())
	}
	set := Config{LogInterval: time.Minute, Limits: Limits{Burst: 7, RequestsPerSecond: 0.5},
		Upstream: UpstreamConfig{RetryBackoff: time.Hour}, Exceptions: Exceptions{BadReply: modbus.ServerDeviceBusy}}
	got, err = set.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.LogInterval, want.Limits.Burst, want.Limits.RequestsPerSecond = time.Minute, 7, 0.5
	want.Upstream.RetryBackoff, want.Exceptions.BadReply = time.Hour, modbus.ServerDeviceBusy
	if got != want {
		t.Fatalf("config = %+v\nwant   %+v", got, want)
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		err  string
	}{
		{"bad exception code", Config{Exceptions: Exceptions{Busy: 0x0C}}, "exceptions.upstream_busy: 12 is not a Modbus exception code"},
		{"negative limit", Config{Limits: Limits{Burst: -1}}, "limits must not be negative"},
		{"pool too large", Config{Upstream: UpstreamConfig{PoolSize: 65}}, "upstream.pool_size 65: at most 64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.cfg.withDefaults(); err == nil || !strings.HasPrefix(err.Error(), tc.err) {
				t.Fatalf("error = %v, want %q", err, tc.err)
			}
		})
	}
}
