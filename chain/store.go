package chain

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Stream and subject names.
const (
	StreamName    = "GRIDSEAL_CHAIN"
	SubjectPrefix = "gridseal.chain."
)

var writerPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// CheckWriterID reports whether id can name a writer (a NATS subject token).
func CheckWriterID(id string) error {
	if !writerPattern.MatchString(id) {
		return fmt.Errorf("writer id %q: use 1-63 lower-case letters, digits, '_' or '-'", id)
	}
	return nil
}

// Subject returns the subject a writer appends to.
func Subject(writer string) string { return SubjectPrefix + writer }

// StreamConfig is the chain stream's configuration: file storage, messages
// neither deletable nor purgeable, no rollups, direct gets for readers.
func StreamConfig(replicas int) jetstream.StreamConfig {
	if replicas <= 0 {
		replicas = 1
	}
	return jetstream.StreamConfig{
		Name:        StreamName,
		Description: "gridseal tamper-evident operation record",
		Subjects:    []string{SubjectPrefix + ">"},
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardNew,
		DenyDelete:  true,
		DenyPurge:   true,
		AllowRollup: false,
		AllowDirect: true,
		Duplicates:  2 * time.Minute,
		MaxMsgSize:  -1,
	}
}

// EnsureStream creates the chain stream, or checks that the existing one
// still forbids deletes, purges and rollups.
func EnsureStream(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, StreamName)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = js.CreateStream(ctx, StreamConfig(replicas))
		// Right after a stream of this name was deleted, the server may
		// still be removing its files and refuse the new store for a
		// moment (err_code 10049); right after a cluster starts, its meta
		// leader may not yet see every peer online and refuse to place the
		// replicas (10005): try again, for up to two seconds.
		for i := 0; i < 20 && isTransientCreateErr(err) && ctx.Err() == nil; i++ {
			time.Sleep(100 * time.Millisecond)
			s, err = js.CreateStream(ctx, StreamConfig(replicas))
		}
	}
	if err != nil {
		return nil, fmt.Errorf("chain stream %s: %w", StreamName, err)
	}
	if err := checkStream(s.CachedInfo().Config); err != nil {
		return nil, err
	}
	return s, nil
}

func isTransientCreateErr(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == 10049 || // JSStreamCreateErrF: error creating store for stream
			apiErr.ErrorCode == 10005) // JSClusterNoPeersErrF: no suitable peers for placement
}

// checkStream refuses a chain stream that could lose blocks: one that
// allows deletes, purges or rollups, or discards old messages by age, count
// or size, or is sealed.
func checkStream(cfg jetstream.StreamConfig) error {
	switch {
	case !cfg.DenyDelete || !cfg.DenyPurge || cfg.AllowRollup:
		return fmt.Errorf("chain stream %s allows deletes, purges or rollups: refusing to record into it", StreamName)
	case cfg.MaxAge > 0 || cfg.MaxMsgs > 0 || cfg.MaxBytes > 0 || cfg.MaxMsgsPerSubject > 0:
		return fmt.Errorf("chain stream %s has retention limits (max age, messages or bytes): blocks would be discarded; refusing to record into it", StreamName)
	case cfg.Sealed:
		return fmt.Errorf("chain stream %s is sealed", StreamName)
	}
	return nil
}

// Msg is one stored block message.
type Msg struct {
	Seq     uint64
	Subject string
	Data    []byte
	MsgID   string
	Stored  time.Time
}

// Writer returns the writer id named by the message's subject.
func (m *Msg) Writer() string { return strings.TrimPrefix(m.Subject, SubjectPrefix) }

// ErrUnreadable says the chain stream holds a message its store cannot
// return: a record corrupt on disk (its checksum fails) or lost. Deletes
// and purges are denied, so no sequence up to the last may be missing.
var ErrUnreadable = errors.New("unreadable: the stream holds it but its store cannot return it (a record corrupt on disk, or lost)")

// UnreadableError names the sequences First..Last of the chain stream that
// are stored but cannot be read. It matches ErrUnreadable.
type UnreadableError struct {
	First, Last uint64
	Err         error // what the store answered when asked for First
}

func (e *UnreadableError) Error() string {
	seqs := fmt.Sprintf("sequence %d", e.First)
	if e.Last > e.First {
		seqs = fmt.Sprintf("sequences %d..%d", e.First, e.Last)
	}
	if e.Err == nil {
		return fmt.Sprintf("%s: %v", seqs, ErrUnreadable)
	}
	return fmt.Sprintf("%s: %v: %v", seqs, ErrUnreadable, e.Err)
}

// Is matches ErrUnreadable.
func (e *UnreadableError) Is(target error) bool { return target == ErrUnreadable }

// unreadable asks the store for seq, the first of first..last that was not
// delivered, and returns the *UnreadableError if it cannot return it; nil
// if it can (the message is late, not lost) or the question failed.
func unreadable(ctx context.Context, s jetstream.Stream, first, last uint64) error {
	_, err := s.GetMsg(ctx, first)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return &UnreadableError{First: first, Last: last, Err: err}
	}
	return nil
}

// scanPullBytes bounds what Scan asks the server for at a time.
const scanPullBytes = 16 << 20

// scanIdle is how long Scan waits for the next message it knows is stored
// before it asks the store whether it can be read at all.
const scanIdle = 2 * time.Second

// Scan calls fn for every message of the stream, in stream order, from
// sequence from up to the last message stored when Scan started (or, with
// follow, until ctx ends). A message the store cannot return is skipped:
// fn sees the gap in Msg.Seq. If the messages from some sequence to the
// last never arrive, Scan returns an *UnreadableError naming them instead
// of waiting for them.
func Scan(ctx context.Context, js jetstream.JetStream, from uint64, follow bool, fn func(*Msg) error) error {
	s, err := js.Stream(ctx, StreamName)
	if err != nil {
		return fmt.Errorf("chain stream %s: %w", StreamName, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return fmt.Errorf("chain stream %s: %w", StreamName, err)
	}
	last := info.State.LastSeq
	if from < 1 {
		from = 1
	}
	if !follow && (info.State.Msgs == 0 || from > last) {
		return nil
	}
	want := from // the next sequence not yet delivered
	for attempt := 1; ; attempt++ {
		err := scanFrom(ctx, s, &want, last, follow, fn)
		if !errors.Is(err, errConsumerStalled) {
			return err
		}
		if attempt == scanAttempts {
			return fmt.Errorf("read chain at sequence %d (of %d): %w %d times", want, last, err, attempt)
		}
	}
}

// scanAttempts bounds how often Scan starts a new consumer after one
// stalled.
const scanAttempts = 3

// errConsumerStalled: a consumer delivered nothing for scanStall while the
// stream holds messages it has not delivered.
var errConsumerStalled = errors.New("the chain consumer stalled")

// scanStall is how long Scan lets a consumer deliver nothing, however it
// is stuck, before it stops it and starts another where it was.
const scanStall = 5 * scanIdle

// scanFrom is one consumer's part of Scan, from *want on; it advances
// *want as messages are delivered.
func scanFrom(ctx context.Context, s jetstream.Stream, want *uint64, last uint64, follow bool, fn func(*Msg) error) error {
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   *want,
	})
	if err != nil {
		return fmt.Errorf("chain consumer: %w", err)
	}
	// Pull by bytes, not by messages: blocks run to 1 MiB, and 512 of them
	// at a time is far past what the client buffers (a 1 M-event chain
	// read 7 times slower than with this bound).
	it, err := cons.Messages(jetstream.PullMaxBytes(scanPullBytes))
	if err != nil {
		return fmt.Errorf("chain consumer: %w", err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	var next []jetstream.NextOpt
	var stalled atomic.Bool
	kick := func() {}
	if !follow {
		next = append(next, jetstream.NextMaxWait(scanIdle))
		// However the consumer is stuck (its Next not even timing out), a
		// scan of what is stored never hangs: stop it, start another.
		watchdog := time.AfterFunc(scanStall, func() { stalled.Store(true); it.Stop() })
		defer watchdog.Stop()
		kick = func() { watchdog.Reset(scanStall) }
	}
	return scanLoop(ctx, s, it, next, want, last, follow, fn, kick, &stalled)
}

// scanLoop reads it until the scan is done or fails; kick is called on
// every message.
func scanLoop(ctx context.Context, s jetstream.Stream, it jetstream.MessagesContext, next []jetstream.NextOpt, want *uint64, last uint64,
	follow bool, fn func(*Msg) error, kick func(), stalled *atomic.Bool) error {
	for {
		m, err := it.Next(next...)
		if stalled.Load() && ctx.Err() == nil {
			return errConsumerStalled
		}
		if errors.Is(err, nats.ErrTimeout) && ctx.Err() == nil {
			if err := unreadable(ctx, s, *want, last); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				if follow {
					return nil
				}
				return ctx.Err()
			}
			return fmt.Errorf("read chain: %w", err)
		}
		kick()
		md, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("read chain: %w", err)
		}
		msg := &Msg{Seq: md.Sequence.Stream, Subject: m.Subject(), Data: m.Data(),
			MsgID: m.Headers().Get(jetstream.MsgIDHeader), Stored: md.Timestamp}
		*want = msg.Seq + 1
		if err := fn(msg); err != nil {
			return err
		}
		if !follow && msg.Seq >= last {
			return nil
		}
	}
}

// scanContiguous is Scan for readers that must see every message: a
// message the store skips is an *UnreadableError, not a gap.
func scanContiguous(ctx context.Context, js jetstream.JetStream, from uint64, follow bool, fn func(*Msg) error) error {
	want := max(from, 1)
	return Scan(ctx, js, from, follow, func(m *Msg) error {
		if m.Seq != want {
			return &UnreadableError{First: want, Last: m.Seq - 1}
		}
		want++
		return fn(m)
	})
}

// followStream runs scanContiguous from from, following, in a goroutine
// of its own, and hands over msgs a copy of each message (its data the
// receiver's to keep). errc receives the scan's end; stop cancels the
// scan and waits for it, so nothing of the follower outlives the caller's
// call of stop.
func followStream(ctx context.Context, js jetstream.JetStream, from uint64, buffer int) (msgs <-chan *Msg, errc <-chan error, stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	out := make(chan *Msg, buffer)
	ec := make(chan error, 1)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		ec <- scanContiguous(ctx, js, from, true, func(m *Msg) error {
			cp := *m
			cp.Data = append([]byte(nil), m.Data...)
			select {
			case out <- &cp:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	return out, ec, func() {
		cancel()
		<-scanned
	}
}
