package chain

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// LeaseBucket is the key-value bucket where each writer id is held by one
// running recorder at a time.
const LeaseBucket = "GRIDSEAL_WRITERS"

// DefaultLeaseTTL is how long a writer's lease outlives its holder.
const DefaultLeaseTTL = 15 * time.Second

// ErrWriterBusy is returned by Open when another live process holds the
// writer's lease.
var ErrWriterBusy = errors.New("writer id in use by another process")

// leaseHolder is the value of a writer's lease: who holds it.
type leaseHolder struct {
	Host    string    `json:"host"`
	PID     int       `json:"pid"`
	Started time.Time `json:"started"`
}

// EnsureLeaseBucket opens the writers' lease bucket, creating it with ttl
// (how long a lease outlives its last renewal) if it does not exist yet.
// gridseal chain init creates it in deployments whose proxies may not
// create streams.
func EnsureLeaseBucket(ctx context.Context, js jetstream.JetStream, ttl time.Duration, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, LeaseBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: LeaseBucket, TTL: ttl,
			Storage: jetstream.FileStorage, Replicas: max(replicas, 1), History: 1,
			Description: "gridseal: which process records as each writer id"})
	}
	if err != nil {
		return nil, fmt.Errorf("writer lease bucket %s: %w", LeaseBucket, err)
	}
	return kv, nil
}

// lease is a recorder's hold on its writer id: a key in LeaseBucket that
// lives while it is renewed, and expires TTL after its holder stops.
type lease struct {
	kv     jetstream.KeyValue
	writer string
	value  []byte
	me     leaseHolder
	rev    uint64
	last   time.Time // last successful renewal
}

// acquireLease takes writer's lease, or says who holds it. A lease left by
// a process of this host that no longer runs (kill -9, a crash) is taken
// over at once rather than waited out.
func acquireLease(ctx context.Context, js jetstream.JetStream, writer string, ttl time.Duration, replicas int) (*lease, error) {
	kv, err := EnsureLeaseBucket(ctx, js, ttl, replicas)
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	l := &lease{kv: kv, writer: writer, me: leaseHolder{Host: host, PID: os.Getpid(), Started: time.Now().UTC()}}
	l.value, _ = json.Marshal(l.me)
	rev, err := kv.Create(ctx, writer, l.value)
	if errors.Is(err, jetstream.ErrKeyExists) {
		e, gerr := kv.Get(ctx, writer)
		if errors.Is(gerr, jetstream.ErrKeyNotFound) {
			return acquireLease(ctx, js, writer, ttl, replicas) // expired meanwhile
		}
		if gerr != nil {
			return nil, fmt.Errorf("writer lease %s: %w", writer, gerr)
		}
		var h leaseHolder
		_ = json.Unmarshal(e.Value(), &h)
		if h.Host != host || h.PID == os.Getpid() || processAlive(h.PID) {
			return nil, fmt.Errorf("%w: writer %s is held by pid %d on %s since %s; stop that process first (its lease expires %s after it stops)",
				ErrWriterBusy, writer, h.PID, h.Host, h.Started.Format(time.RFC3339), ttl)
		}
		rev, err = kv.Update(ctx, writer, l.value, e.Revision())
	}
	if err != nil {
		return nil, fmt.Errorf("writer lease %s: %w", writer, err)
	}
	l.rev, l.last = rev, time.Now()
	return l, nil
}

// renew extends the lease. It fails with ErrFenced if someone else holds it
// now; other errors (NATS away) leave it to be tried again.
func (l *lease) renew(ctx context.Context) error {
	rev, err := l.kv.Update(ctx, l.writer, l.value, l.rev)
	if err != nil {
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence {
			return err
		}
		// Our revision is gone: the lease expired (NATS was away longer
		// than its TTL) or was taken. Take it again only if it is free.
		if rev, err = l.kv.Create(ctx, l.writer, l.value); err != nil {
			if errors.Is(err, jetstream.ErrKeyExists) {
				return fmt.Errorf("%w: writer %s's lease was taken by another process", ErrFenced, l.writer)
			}
			return err
		}
	}
	l.rev, l.last = rev, time.Now()
	return nil
}

// release gives the lease up, so the next process need not wait it out.
func (l *lease) release(ctx context.Context) {
	_ = l.kv.Delete(ctx, l.writer, jetstream.LastRevision(l.rev))
}

// processAlive reports whether a process with this pid runs on this host.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
