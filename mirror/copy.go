package mirror

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/chain"
)

// The copier reads the source's chain stream with a NATS client and
// publishes each message into the local chain stream, in order: the same
// subject, data and message id, at the same sequence (each publish expects
// the local stream's last sequence to be the one before). Before each
// round it checks the source still holds, at the last sequence copied,
// the message copied there: a source rolled back or rebuilt is an alarm,
// and nothing more is copied from it until it holds that message again.

// copyWindow is how many publishes the copier has in flight at once,
// roundMessages how many messages one round copies at most, and
// roundTimeout how long a round may take: a request to a server that went
// away mid-request is not waited for past it.
const (
	copyWindow    = 256
	roundMessages = 16384
	roundTimeout  = 30 * time.Second
	askTimeout    = 2 * time.Second // one request about the source's streams: asked again after
)

// ask bounds one request: a reply lost with a connection is not waited for.
func ask(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, askTimeout)
}

// localDuplicates is the local stream's duplicate window: the smallest
// JetStream allows. The source's stream already refused duplicates within
// its own window; a message id that comes again later there is a message
// of its own, and the copy must hold it too.
const localDuplicates = 100 * time.Millisecond

// copier is the copy loop's own state.
type copier struct {
	local   jetstream.Stream
	last    uint64     // last sequence copied
	sum     chain.Hash // SHA-256 of its data
	subject string
}

// LocalStreamConfig is the configuration of the mirror's own chain
// stream: the chain's (no deletes, no purges, no limits) but for the
// duplicate window.
func LocalStreamConfig() jetstream.StreamConfig {
	cfg := chain.StreamConfig(1)
	cfg.Description = "gridseal mirror: a verified copy of an operator's chain stream"
	cfg.Duplicates = localDuplicates
	return cfg
}

func (m *Mirror) copyLoop(ctx context.Context) error {
	c := &copier{}
	return m.retry(ctx, "copying the source's chain", m.cfg.Poll, func(ctx context.Context) error {
		if c.local == nil {
			if err := c.open(ctx, m.cfg.Local); err != nil {
				return err
			}
			m.setCopied(c.last)
		}
		err := m.copyRound(ctx, c)
		if err != nil {
			c.local = nil // read the local stream's end again
		}
		return err
	})
}

// open finds the local stream's last message: where copying goes on.
func (c *copier) open(ctx context.Context, js jetstream.JetStream) error {
	s, err := js.Stream(ctx, chain.StreamName)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = js.CreateStream(ctx, LocalStreamConfig())
	}
	if err != nil {
		return fmt.Errorf("the mirror's own chain stream: %w", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return fmt.Errorf("the mirror's own chain stream: %w", err)
	}
	c.local, c.last, c.sum, c.subject = s, info.State.LastSeq, chain.Hash{}, ""
	if c.last > 0 {
		msg, err := s.GetMsg(ctx, c.last)
		if err != nil {
			return fmt.Errorf("the mirror's own chain stream, message %d: %w", c.last, err)
		}
		c.sum, c.subject = sha256.Sum256(msg.Data), msg.Subject
	}
	return nil
}

func (m *Mirror) setCopied(seq uint64) {
	m.mu.Lock()
	m.copied = seq
	m.mu.Unlock()
	m.met.copied.Set(float64(seq))
}

// copyRound checks the source still holds what was copied, then copies
// what it holds after it.
func (m *Mirror) copyRound(ctx context.Context, c *copier) error {
	ctx, cancel := context.WithTimeout(ctx, roundTimeout)
	defer cancel()
	actx, acancel := ask(ctx)
	defer acancel()
	src, err := m.cfg.Source.Stream(actx, chain.StreamName)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if c.last > 0 {
			m.raise(Alarm{Kind: KindSource, Reason: fmt.Sprintf(
				"the source has no %s stream any more, yet the mirror copied %d of its messages: it was deleted", chain.StreamName, c.last)})
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("the source's chain stream: %w", err)
	}
	info, err := src.Info(actx)
	if err != nil {
		return fmt.Errorf("the source's chain stream: %w", err)
	}
	srcLast := info.State.LastSeq
	if c.last > 0 {
		if srcLast < c.last {
			m.raise(Alarm{Kind: KindSource, Seq: c.last, Key: fmt.Sprintf("source ends before %d", c.last), Reason: fmt.Sprintf(
				"the source's %s ends at sequence %d, but the mirror copied %d of its messages: its history was rolled back or rebuilt",
				chain.StreamName, srcLast, c.last)})
			return nil
		}
		sm, err := src.GetMsg(actx, c.last)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			m.raise(Alarm{Kind: KindSource, Seq: c.last, Reason: fmt.Sprintf(
				"the source no longer holds message %d, which the mirror copied: its history was rewritten", c.last)})
			return nil
		}
		if err != nil {
			return fmt.Errorf("the source's chain stream, message %d: %w", c.last, err)
		}
		if sm.Subject != c.subject || sha256.Sum256(sm.Data) != c.sum {
			m.raise(Alarm{Kind: KindSource, Seq: c.last, Reason: fmt.Sprintf(
				"message %d of the source is not the one the mirror copied: its history was rewritten", c.last)})
			return nil
		}
	}
	if srcLast <= c.last {
		return nil
	}
	type sent struct {
		seq uint64
		f   jetstream.PubAckFuture
	}
	var inFlight []sent
	settle := func() error {
		if len(inFlight) == 0 {
			return nil
		}
		select {
		case <-m.cfg.Local.PublishAsyncComplete():
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Second):
			return errors.New("the mirror's own NATS does not acknowledge the copy")
		}
		for _, s := range inFlight {
			select {
			case ack := <-s.f.Ok():
				if ack.Duplicate || ack.Sequence != s.seq {
					// A message id the local stream saw within its
					// window: wait the window out, and copy it again.
					time.Sleep(2 * localDuplicates)
					return fmt.Errorf("message %d stored at local sequence %d (duplicate %v)", s.seq, ack.Sequence, ack.Duplicate)
				}
				c.last, c.sum, c.subject = s.seq, sha256.Sum256(s.f.Msg().Data), s.f.Msg().Subject
			case err := <-s.f.Err():
				return fmt.Errorf("copy message %d: %w", s.seq, err)
			}
		}
		inFlight = inFlight[:0]
		m.setCopied(c.last)
		return nil
	}
	acancel()
	next, copied := c.last+1, 0
	errGap, errEnough := errors.New("gap"), errors.New("enough for one round")
	err = chain.Scan(ctx, m.cfg.Source, next, false, func(msg *chain.Msg) error {
		if msg.Seq != next {
			m.raise(Alarm{Kind: KindSource, Seq: next, Reason: fmt.Sprintf(
				"the source's chain stream has no message %d (it goes on at %d): a chain stream denies deletes, so its history was cut", next, msg.Seq)})
			return errGap
		}
		opts := []jetstream.PublishOpt{jetstream.WithExpectLastSequence(msg.Seq - 1)}
		if msg.MsgID != "" {
			opts = append(opts, jetstream.WithMsgID(msg.MsgID))
		}
		nm := &nats.Msg{Subject: msg.Subject, Data: append([]byte(nil), msg.Data...)}
		f, err := m.cfg.Local.PublishMsgAsync(nm, opts...)
		if err != nil {
			return fmt.Errorf("copy message %d: %w", msg.Seq, err)
		}
		inFlight = append(inFlight, sent{msg.Seq, f})
		next++
		if len(inFlight) >= copyWindow {
			if err := settle(); err != nil {
				return err
			}
		}
		if copied++; copied >= roundMessages {
			return errEnough
		}
		return nil
	})
	serr := settle()
	switch {
	case errors.Is(err, errGap), errors.Is(err, errEnough):
		return serr
	case err != nil:
		return errors.Join(err, serr)
	}
	return serr
}

// checkpointLoop reads the source's checkpoint stream: every checkpoint
// signed by a pinned key, with whatever cosignatures other witnesses
// added, is checked against the copy (observe).
func (m *Mirror) checkpointLoop(ctx context.Context) error {
	var next uint64 = 1
	return m.retry(ctx, "reading the source's checkpoints", m.cfg.Poll, func(ctx context.Context) error {
		ctx, cancel := ask(ctx)
		defer cancel()
		s, err := m.cfg.Source.Stream(ctx, chain.CheckpointStream)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return err
		}
		if info.State.LastSeq+1 < next {
			next = 1 // the checkpoint stream was made anew: read it all
		}
		next = max(next, info.State.FirstSeq)
		for read := 0; next <= info.State.LastSeq && read < 1024; read++ {
			msg, err := s.GetMsg(ctx, next)
			if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
				return err
			}
			next++
			if err != nil {
				continue
			}
			cp, err := chain.OpenCheckpoint(msg.Data, m.cfg.Trust.Checkpointers)
			if err != nil {
				m.log.Debug("checkpoint message not signed by a pinned key; ignored", zap.Uint64("seq", msg.Sequence), zap.Error(err))
				continue
			}
			m.observe(cp, "the source's checkpoint stream")
		}
		return nil
	})
}
