package consistency

import (
	"context"
	"fmt"
	"time"
)

// Policy says how long to keep trying when tasks block.
type Policy struct {
	// Timeout bounds the whole attempt (0: a single attempt).
	Timeout time.Duration
	// Backoff is the first wait between attempts; it doubles up to
	// MaxBackoff.
	Backoff, MaxBackoff time.Duration
	// Retry, when set, is called after each refused attempt that another
	// follows, with the attempt's number, its pause and its blockers.
	Retry func(attempt int, pause time.Duration, blockers []Blocker)
}

// Result describes a successful StopAndCheck.
type Result struct {
	// Pause is how long the target was stopped for the successful attempt.
	Pause time.Duration
	// Attempts counts the pauses, including refused ones.
	Attempts int
}

// StopAndCheck stops every thread, takes a snapshot of every task (threads,
// and goroutines of Go targets) and checks the regions. When
// no task blocks it calls act with the target still stopped, then resumes it;
// the pause reported covers exactly that stop. When tasks block it resumes
// everyone at once and retries with backoff until the policy's timeout, then
// returns a *BlockedError naming the blockers. A cancelled ctx ends the
// retries at once with an error matching both ctx.Err() and, when tasks
// blocked, the *BlockedError. An error from act is returned as is (act must
// leave the target as it found it when it fails).
func StopAndCheck(ctx context.Context, src Source, regions []Region, pol Policy, symbolize func(uint64) string, act func(Snapshot) error) (Result, error) {
	if pol.Backoff <= 0 {
		pol.Backoff = time.Millisecond
	}
	if pol.MaxBackoff <= 0 {
		pol.MaxBackoff = 100 * time.Millisecond
	}
	deadline := time.Now().Add(pol.Timeout)
	wait := pol.Backoff
	var res Result
	var last []Blocker // the previous attempt's
	for {
		if err := ctx.Err(); err != nil {
			if len(last) > 0 {
				// Both causes stay matchable: the cancellation and the
				// tasks that kept us waiting.
				return res, fmt.Errorf("consistency: %w before attempt %d (last attempt: %w)", err, res.Attempts+1, &BlockedError{Blockers: last, Attempts: res.Attempts, Symbolize: symbolize, Symbols: src.Symbols})
			}
			return res, fmt.Errorf("consistency: %w before attempt %d", err, res.Attempts+1)
		}
		res.Attempts++
		// Goroutines are walked while the target runs; the stop walks
		// again only those whose inputs changed. A failed walk here
		// only means everything is walked in the stop.
		prior, _ := src.PrewalkFor(regions)
		p := src.Proc
		release := holdForPause(src)
		var blockers []Blocker
		pause, err := p.Paused(func() error {
			snap, err := src.TakeAfter(prior)
			if err != nil {
				return err
			}
			if blockers = CheckAfter(snap, regions, prior); len(blockers) == 0 {
				return act(snap)
			}
			return nil
		})
		release()
		// What Prewalk mapped in the target goes: a failure to unmap it
		// leaves scratch memory a later tool removes (tracee.Recover).
		prior.Close()
		if err != nil {
			return res, err
		}
		res.Pause = pause
		if len(blockers) == 0 {
			return res, nil
		}
		last = blockers
		if time.Now().Add(wait).After(deadline) {
			return res, &BlockedError{Blockers: blockers, Attempts: res.Attempts, Symbolize: symbolize, Symbols: src.Symbols}
		}
		if pol.Retry != nil {
			pol.Retry(res.Attempts, res.Pause, blockers)
		}
		select {
		case <-ctx.Done():
			// Both causes stay matchable: the cancellation and the
			// tasks that kept us waiting.
			return res, fmt.Errorf("consistency: %w (last attempt: %w)", ctx.Err(), &BlockedError{Blockers: blockers, Attempts: res.Attempts, Symbolize: symbolize, Symbols: src.Symbols})
		case <-time.After(wait):
		}
		if wait *= 2; wait > pol.MaxBackoff {
			wait = pol.MaxBackoff
		}
	}
}

// holdForPause seizes every thread of a Go target right before its stop
// (tracee's Hold), so that the pause is interrupt, wait, continue rather
// than seize, interrupt, wait, detach; the returned func releases them
// after it. A C target is held across the whole operation by its caller
// already; a Go target is not held longer than this: while held, every
// signal it receives (the runtime's SIGURG preemption) stops a thread
// until tracee continues it. A hold that cannot be taken leaves the stop
// to seize (it reports what is wrong).
func holdForPause(src Source) func() {
	p := src.Proc
	if src.Go == nil || p.Held() {
		return func() {}
	}
	if err := p.Hold(); err != nil {
		return func() {}
	}
	return func() { p.Release() }
}
