package mirror

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Alarm kinds: what the mirror found wrong.
const (
	// KindBlock: a block of the copy does not verify (signature, key,
	// hash links, Merkle root, event encoding) or a message is no block.
	KindBlock = "block"
	// KindPolicy: an event names a policy digest that is not a known one.
	KindPolicy = "policy"
	// KindSource: the source's stream no longer holds what the mirror
	// copied (rolled back, rebuilt, rewritten) or skips a sequence.
	KindSource = "source"
	// KindSplitView: two signed checkpoints of one origin that cannot both
	// be true, or a signed checkpoint the verified copy contradicts.
	KindSplitView = "split-view"
)

// Alarm is one inconsistency the mirror found. Alarms are kept in the
// mirror's directory (alarms.jsonl, one JSON object a line) and never
// cleared by the mirror: "gridseal mirror check" fails while there is one.
type Alarm struct {
	Time time.Time `json:"time"`
	Kind string    `json:"kind"`
	// Key, if set, names what the alarm is about, for dropping repeats
	// whose reason differs only in a detail that changes (how far the
	// source now reaches); by default, its kind and reason do.
	Key    string `json:"key,omitempty"`
	Seq    uint64 `json:"seq,omitempty"` // stream sequence it is about, if one
	Reason string `json:"reason"`
	// Checkpoints are the signed notes that show it, verbatim: for a split
	// view, the two that disagree (or the one the copy contradicts).
	Checkpoints []string `json:"checkpoints,omitempty"`
}

func (a Alarm) dedup() string {
	if a.Key != "" {
		return a.Kind + "\x00" + a.Key
	}
	return a.Kind + "\x00" + a.Reason
}

func (a Alarm) String() string {
	return fmt.Sprintf("%s %s: %s", a.Time.UTC().Format(time.RFC3339), a.Kind, a.Reason)
}

// AlarmsFile is where a mirror keeps its alarms under its directory.
const AlarmsFile = "alarms.jsonl"

// alarmLog appends alarms to the alarms file, each fsync'd before it
// counts, and drops repeats (same kind and reason) of one it has.
type alarmLog struct {
	mu   sync.Mutex
	f    *os.File
	seen map[string]bool
	all  []Alarm
}

func openAlarmLog(dir string) (*alarmLog, error) {
	path := filepath.Join(dir, AlarmsFile)
	old, err := ReadAlarms(dir)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("mirror alarms: %w", err)
	}
	l := &alarmLog{f: f, seen: map[string]bool{}, all: old}
	for _, a := range old {
		l.seen[a.dedup()] = true
	}
	return l, nil
}

// add records a; it reports false for a repeat, which is not recorded.
func (l *alarmLog) add(a Alarm) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	key := a.dedup()
	if l.seen[key] {
		return false, nil
	}
	b, err := json.Marshal(a)
	if err != nil {
		return false, err
	}
	if _, err := l.f.Write(append(b, '\n')); err != nil {
		return true, fmt.Errorf("mirror alarms: %w", err)
	}
	if err := l.f.Sync(); err != nil {
		return true, fmt.Errorf("mirror alarms: %w", err)
	}
	l.seen[key] = true
	l.all = append(l.all, a)
	return true, nil
}

func (l *alarmLog) list() []Alarm {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Alarm(nil), l.all...)
}

func (l *alarmLog) close() error { return l.f.Close() }

// ReadAlarms returns the alarms a mirror recorded in its directory dir;
// none if it recorded none (or never ran there).
func ReadAlarms(dir string) ([]Alarm, error) {
	f, err := os.Open(filepath.Join(dir, AlarmsFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("mirror alarms: %w", err)
	}
	defer func() { _ = f.Close() }()
	var out []Alarm
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for line := 1; sc.Scan(); line++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var a Alarm
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			// A crash mid-append leaves at most a torn last line; say so
			// rather than guess: the alarm it held may matter.
			return out, fmt.Errorf("%s:%d: not an alarm record: %v", f.Name(), line, err)
		}
		out = append(out, a)
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("mirror alarms: %w", err)
	}
	return out, nil
}
