package audit

import (
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// DefaultLogInterval is how long a LogThrottle counts repeats of a warning
// before it logs their number.
const DefaultLogInterval = 10 * time.Second

// maxThrottleKinds bounds the kinds of warning a LogThrottle counts apart;
// further kinds, while that many are being counted, share one count.
const maxThrottleKinds = 256

// LogThrottle logs warnings that a peer can cause at will — refused
// connections, malformed frames — without letting a flood of them flood
// the log. The first warning of a kind is logged at once; repeats within
// the interval are counted, and logged as one line "N more: …" when the
// interval ends (a new interval then starts if there were any) or at
// Close. It logs; it records nothing, so what the chain keeps is unaffected.
// It is safe for concurrent use.
type LogThrottle struct {
	log   *zap.Logger
	every time.Duration

	mu     sync.Mutex
	closed bool
	kinds  map[string]*throttled
}

type throttled struct {
	msg   string
	kind  zap.Field
	more  int
	timer *time.Timer
}

// NewLogThrottle returns a throttle logging to log that counts repeats for
// every (DefaultLogInterval if every is not positive).
func NewLogThrottle(log *zap.Logger, every time.Duration) *LogThrottle {
	if every <= 0 {
		every = DefaultLogInterval
	}
	return &LogThrottle{log: log, every: every, kinds: map[string]*throttled{}}
}

// Warn logs msg at warning level with kind and detail, unless a warning of
// the same msg and kind was logged within the interval; then it counts it.
// kind is what repeats have in common (a reason, a device) and is logged on
// the summary line too; detail (a client address) only on the first line.
func (t *LogThrottle) Warn(msg string, kind zap.Field, detail ...zap.Field) {
	if !t.log.Core().Enabled(zapcore.WarnLevel) {
		return
	}
	key := msg + "\x00" + kind.Key + "\x00" + kind.String
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		t.log.Warn(msg, append(detail, kind)...)
		return
	}
	e := t.kinds[key]
	fresh := &throttled{msg: msg, kind: kind}
	if e == nil && len(t.kinds) >= maxThrottleKinds {
		key = "\x00other"
		e = t.kinds[key]
		fresh = &throttled{msg: "warnings of other kinds", kind: zap.Skip()}
	}
	if e != nil {
		e.more++
		t.mu.Unlock()
		return
	}
	t.start(key, fresh)
	t.mu.Unlock()
	t.log.Warn(msg, append(detail, kind)...)
}

// start counts repeats of e from now. Callers hold mu.
func (t *LogThrottle) start(key string, e *throttled) {
	t.kinds[key] = e
	e.timer = time.AfterFunc(t.every, func() { t.flush(key, e) })
}

// flush ends e's interval: it logs the count of repeats and starts a new
// interval, or forgets the kind if there were none.
func (t *LogThrottle) flush(key string, e *throttled) {
	t.mu.Lock()
	if t.kinds[key] != e {
		t.mu.Unlock()
		return
	}
	n := e.more
	if n == 0 {
		delete(t.kinds, key)
		t.mu.Unlock()
		return
	}
	e.more = 0
	e.timer.Reset(t.every)
	t.mu.Unlock()
	t.summary(e.msg, e.kind, n)
}

func (t *LogThrottle) summary(msg string, kind zap.Field, n int) {
	t.log.Warn(fmt.Sprintf("%d more: %s", n, msg), kind, zap.Int("count", n), zap.Duration("within", t.every))
}

// Close logs the counts not yet logged and stops counting: later warnings
// are logged one by one. It is idempotent.
func (t *LogThrottle) Close() {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	t.closed = true
	var pending []throttled
	for key, e := range t.kinds {
		e.timer.Stop()
		if e.more > 0 {
			pending = append(pending, throttled{msg: e.msg, kind: e.kind, more: e.more})
		}
		delete(t.kinds, key)
	}
	t.mu.Unlock()
	for _, e := range pending {
		t.summary(e.msg, e.kind, e.more)
	}
}
