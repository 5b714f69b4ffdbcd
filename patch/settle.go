//go:build linux

package patch

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/hotpatch-dev/hotpatch/internal/consistency"
)

// Every wait of this package is bounded by a timeout and by the caller's
// context, and every state it reports is read back from the target after
// the operation: what we meant to do is no evidence of what happened.

// withDefaults fills in the zero timeout and interval.
func (o ApplyOptions) withDefaults() ApplyOptions {
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.Interval <= 0 {
		o.Interval = 20 * time.Millisecond
	}
	return o
}

// sleep waits d, or less if ctx is cancelled first (then it returns
// ctx.Err()).
func sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d <= 0 {
		return nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-tm.C:
		return nil
	}
}

// cancelled is the error of a wait ended by its context: it matches both
// ctx.Err() and the cause we were waiting on (nil: none known yet).
func cancelled(ctxErr, cause error) error {
	if cause == nil {
		return ctxErr
	}
	return fmt.Errorf("%w while waiting: %w", ctxErr, cause)
}

// blocked names the tasks a transition waits for (nil when there are none).
func (t *Target) blocked(bs []consistency.Blocker, attempts int) error {
	if len(bs) == 0 {
		return nil
	}
	return &consistency.BlockedError{Blockers: bs, Attempts: attempts, Symbolize: t.syms.Symbolize, Symbols: t.syms}
}

// readBack sets res.State and res.Pending from the target: the state of the
// patch's record checked against the code bytes (Status), or, once the
// patch memory is gone, "reverted" when every entry holds its original
// bytes. waiting is the number of tasks the last pause saw the transition
// wait for; a transition waits for at least those (the table lists only
// some of them: a revert also waits for unlisted tasks returning into the
// patch memory). When the target cannot be read, State is "unknown" and
// the error says why.
func (t *Target) readBack(rec *Record, res *Result, waiting int) error {
	res.State, res.Pending = "unknown", 0
	recs, err := t.Status()
	if err != nil {
		return err
	}
	for _, r := range recs {
		if r.ID != rec.ID {
			continue
		}
		res.State, res.Pending = r.State, r.Pending
		if r.State == StateTransition || r.State == StateReverting {
			res.Pending = max(r.Pending, waiting)
		}
		return nil
	}
	for _, f := range rec.Functions {
		live := make([]byte, len(f.Original))
		if _, err := t.proc.ReadAt(live, int64(f.PatchAddr)); err != nil {
			return fmt.Errorf("read back %s at %#x: %w", f.Old, f.PatchAddr, err)
		}
		if !bytes.Equal(live, f.Original) {
			return fmt.Errorf("%w: the memory of patch %s is gone but %s at %#x is % x, not its original bytes", ErrCodeChanged, rec.ID, f.Old, f.PatchAddr, live)
		}
	}
	res.State = StateReverted
	return nil
}

// stateHint says where a transition that did not finish left the target,
// and what to do.
func stateHint(res *Result) string {
	switch res.State {
	case "transition":
		return fmt.Sprintf("the patch is in transition, %d task(s) pending; the target is consistent: Resume continues it, Revert goes back", res.Pending)
	case "reverting":
		return fmt.Sprintf("the patch is reverting, %d task(s) pending; the target is consistent: Resume or Revert finish the revert once they leave", res.Pending)
	case "applied", "reverted":
		return "the patch is " + string(res.State)
	}
	return fmt.Sprintf("the patch is %s: read its state with Status before anything else", res.State)
}
