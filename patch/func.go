package patch

import (
	"errors"
	"time"
)

// ErrNotSupported: patching is available on Linux only, on x86-64 and
// arm64. Elsewhere every entry point of the self-patching API (Func,
// FuncWith, FuncByName, and package patchtest) returns it, so that code and
// tests that use them still build on every developer machine.
var ErrNotSupported = errors.New("hotpatch supports Linux on x86-64 and arm64 only")

// ErrNotPatchable: Func was given a function value whose code is not the
// function callers run: an instantiation of a generic function (its code is
// a shape function shared by instantiations, called with a dictionary), the
// compiler's wrapper of a value-receiver method ((*T).M for func (T) M), or
// a method value (x.M). The error says what to patch instead.
var ErrNotPatchable = errors.New("not a patchable function")

// ErrSelfHelper: the helper process that patches this process could not be
// started, or stopped answering.
var ErrSelfHelper = errors.New("self-patch helper process failed")

// FuncOptions tune Func. The zero value is an auto-mode patch with the
// default timeout.
type FuncOptions struct {
	// Mode is ModeAuto (the default: a few stop-and-check pauses, then the
	// goroutines still inside the function keep the old code until they
	// leave it; Func returns when every goroutine runs the new code),
	// ModeStop (only pauses in which no goroutine is inside the function)
	// or ModeGradual.
	Mode Mode
	// Timeout bounds how long the patch waits for goroutines to leave the
	// function (default 5s).
	Timeout time.Duration
	// OnTimeout is what a gradual patch does at Timeout with goroutines
	// still on the old code: OnTimeoutRevert (default) or OnTimeoutStay
	// (the Handle is returned in transition; Handle.Resume finishes it).
	OnTimeout OnTimeout
}
