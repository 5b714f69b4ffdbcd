//go:build linux

package patch

import (
	"github.com/hotpatch-dev/hotpatch/internal/consistency"
	"github.com/hotpatch-dev/hotpatch/internal/tracee"
)

// Test hooks.

// DieAfterWrites makes the n-th next write of target memory panic, as if the
// patcher were killed right before it (0 disables).
func DieAfterWrites(n int) { faultCountdown = n }

// IsInjectedDeath reports a panic value raised by DieAfterWrites.
func IsInjectedDeath(v any) bool { return v == errInjectedDeath }

// Abandon detaches from a target left stopped by an injected death and
// lets go of it, as the kernel does when the tracer dies (which drops the
// process's lock too).
func Abandon(t *Target) error { return t.proc.Close() }

// UseDlopen makes Apply load libraries through the named loader functions
// only (to test the __libc_dlopen_mode fallback); the returned func undoes it.
func UseDlopen(names ...string) func() {
	old := dlopenFuncs
	dlopenFuncs = names
	return func() { dlopenFuncs = old }
}

// HoldInStub makes every pause see a task inside a dispatch stub, at most
// retries pauses in a row; the returned func undoes it.
func HoldInStub(retries int) func() {
	old := stubRetries
	holdInStub, stubRetries = true, retries
	return func() { holdInStub, stubRetries = false, old }
}

// OnLibChecked runs f between the pin check of a patch library and its
// load into the target (to replace the file meanwhile); the returned func
// undoes it.
func OnLibChecked(f func(path string)) func() {
	old := testHookLibChecked
	testHookLibChecked = f
	return func() { testHookLibChecked = old }
}

// OnStep calls f with the name of each numbered step of apply, transition,
// finalize, revert, library loading and remote calls as the tool passes
// it; the returned func undoes it.
func OnStep(f func(step string)) func() {
	old, oldT := testHookStep, tracee.StepHook
	testHookStep, tracee.StepHook = f, f
	return func() { testHookStep, tracee.StepHook = old, oldT }
}

// SourceOf returns where the pauses of t take their snapshots from.
func SourceOf(t *Target) (consistency.Source, error) { return t.source() }

// Snapshot is Threads with the stacks as the consistency check sees them.
func Snapshot(t *Target) (consistency.Snapshot, error) { return t.snapshot() }
