//go:build linux

package patch

import "github.com/hotpatch-dev/hotpatch/internal/consistency"

// hold keeps every thread of a C target seized (tracee's Hold) across the
// pauses of one operation, from before its first stop to after its last,
// so that each pause is only interrupt, wait, (walk, check, write),
// continue; the returned func ends the hold (the kernel detaches every
// thread without stopping it).
//
// Go targets are held only around each pause (consistency.StopAndCheck
// seizes right before the stop and releases right after it): while held,
// every signal the process receives (the runtime's SIGURG preemption, sent
// by sysmon to every goroutine running 10 ms) stops its thread until our
// ptrace thread continues it, which must not last the whole operation.
//
// A hold that cannot be taken leaves the operation to seize in each pause
// as before (the stop reports what is wrong).
func (t *Target) hold(src consistency.Source) func() {
	if src.Go != nil {
		return func() {}
	}
	if err := t.proc.Hold(); err != nil {
		t.log.Debug("threads not held; each pause seizes them", "err", err)
		return func() {}
	}
	return func() {
		if err := t.proc.Release(); err != nil {
			t.log.Warn("releasing the threads", "err", err)
		}
	}
}
