package gateway

import (
	"context"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/gridseal/gridseal/approvals"
	"github.com/gridseal/gridseal/audit"
	"github.com/gridseal/gridseal/chain"
)

// Single use, against whoever holds the proxy's NATS rights: the use
// stream forbids deletes and purges, but a NATS user allowed to manage
// streams can delete the stream as a whole, clear the bucket's used mark and
// restart the proxies, which would then create an empty use stream and
// forward the same approved write again. The chain cannot be emptied that
// way unnoticed (its verifier pins every writer's head), and it records
// every use twice: the durable request record of the write an approval
// allowed (phase 1, verdict allow, naming the approval) — written before the
// write moves — and the "used by …" approval step. So at start, before it
// consumes anything, a proxy reads the whole chain, of every writer, for the
// approvals it records as used, and restores each use the use stream lacks
// (publishing its record again, so every proxy sees it). Restoring rather
// than refusing every approval keeps approved operation possible after the
// attack while putting single use back for good; each restored use is
// logged as an error. If the chain cannot be read or a use cannot be
// restored, the store refuses every approval (fail closed) and /readyz says
// why.
//
// Reading the whole chain costs start-up time in proportion to its length
// (as the console's first pass does).

// restoreUses seeds store with what the chain records as used; on a failure
// the store refuses approvals.
func restoreUses(ctx context.Context, js jetstream.JetStream, store *approvals.Store, log *zap.Logger) {
	uses, unreadable, err := chainUses(ctx, js)
	if err == nil {
		var restored []approvals.ID
		restored, err = store.RestoreUses(ctx, uses)
		if len(restored) > 0 {
			log.Error("the use stream had lost approval uses the chain records (deleted and created anew?): restored them; find out who deleted it",
				zap.Int("restored", len(restored)), zap.String("stream", approvals.UsedStream))
		}
	}
	if unreadable > 0 {
		log.Warn("chain messages that are not blocks were skipped while reading approval uses (gridseal chain verify names them)", zap.Int("skipped", unreadable))
	}
	if err != nil {
		err = fmt.Errorf("approvals refused: cannot check the approval use stream against the chain: %w", err)
		log.Error("refusing every approval", zap.Error(err))
		store.Refuse(err)
		return
	}
	log.Info("approval uses recorded in the chain checked against the use stream", zap.Int("uses", len(uses)))
}

// chainUses reads the chain stream for the approvals it records as used,
// with the first record of each use, and counts the messages that are not
// blocks (skipped: they carry no trusted record, and chain verify reports
// them).
func chainUses(ctx context.Context, js jetstream.JetStream) (map[approvals.ID]approvals.Consumption, int, error) {
	uses := map[approvals.ID]approvals.Consumption{}
	unreadable := 0
	err := chain.Scan(ctx, js, 1, false, func(m *chain.Msg) error {
		b, err := chain.ParseBlock(m.Data)
		if err != nil {
			unreadable++
			return nil
		}
		for _, e := range b.Events {
			ev, err := chain.DecodeEvent(e)
			if err != nil || ev.Approval == "" || ev.Verdict != audit.Allow {
				continue
			}
			c := approvals.Consumption{At: ev.Time, By: b.Writer, Op: ev.Op}
			switch ev.Phase {
			case audit.PhaseRequest, audit.PhaseComplete:
			case audit.PhaseApproval:
				if !strings.HasPrefix(ev.Reason, "used by ") {
					continue
				}
				if _, err := fmt.Sscanf(ev.Reason, "used by %s for operation %d", &c.By, &c.Op); err != nil {
					c.By, c.Op = b.Writer, 0
				}
			default:
				continue
			}
			id, err := approvals.ParseID(ev.Approval)
			if err != nil {
				continue
			}
			if _, ok := uses[id]; !ok {
				uses[id] = c
			}
		}
		return nil
	})
	return uses, unreadable, err
}
