package patch

import (
	"errors"
	"fmt"

	"github.com/hotpatch-dev/hotpatch/consistency"
	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/tracee"
	"github.com/hotpatch-dev/hotpatch/trampoline"
)

// Errors a caller can branch on with errors.Is. Every error returned by this
// package is an *Error that wraps one of them (or a lower-level cause).
var (
	// ErrNoProcess: the PID does not exist, or the process exited.
	ErrNoProcess = tracee.ErrNoProcess
	// ErrPermission: we may not trace the process (the message says why:
	// ptrace_scope, not dumpable, other user).
	ErrPermission = tracee.ErrPermission
	// ErrUnknownSymbol: a name is not defined in the target.
	ErrUnknownSymbol = elfsym.ErrUnknownSymbol
	// ErrAmbiguous: a name is defined by several modules.
	ErrAmbiguous = elfsym.ErrAmbiguous
	// ErrTooShort: the function, with its padding, is shorter than a jump.
	ErrTooShort = trampoline.ErrTooShort
	// ErrBranchIntoPatch: code inside the function branches into the bytes
	// the jump would overwrite.
	ErrBranchIntoPatch = trampoline.ErrBranchIntoPatch
	// ErrCannotRelocate: an instruction the jump displaces cannot be moved.
	ErrCannotRelocate = trampoline.ErrCannotRelocate
	// ErrBlocked: tasks kept executing in the functions until the timeout.
	ErrBlocked = consistency.ErrBlocked
	// ErrAlreadyApplied: a function of the set is already patched.
	ErrAlreadyApplied = errors.New("already applied")
	// ErrNotApplied: no applied patch has that ID.
	ErrNotApplied = errors.New("not applied")
	// ErrCodeChanged: the code bytes are not what we expect (another tool, a
	// debugger breakpoint, or a different binary).
	ErrCodeChanged = errors.New("code bytes changed")
	// ErrBadRequest: the request itself is malformed.
	ErrBadRequest = errors.New("bad request")
	// ErrBuildIDMismatch: the patch library is pinned (HOTPATCH_PIN) to
	// another build of the module that holds the function (*BuildIDError).
	ErrBuildIDMismatch = errors.New("build ID mismatch")
	// ErrUnpinned: the patch library declares no HOTPATCH_PIN and
	// ApplyOptions.Unpinned (--unpinned) was not given.
	ErrUnpinned = errors.New("patch library is not pinned to a build ID")
	// ErrLoadLibrary: the target could not load the patch library
	// (*LoadError carries the target's dlerror() text).
	ErrLoadLibrary = errors.New("loading the patch library failed")
)

// Error is a failed operation on a target. The target is left as it was.
type Error struct {
	Op   string // "attach", "apply", "revert", "status"
	Pid  int
	Func string // the function concerned, if any
	ID   string // the patch concerned, if any
	Err  error
	// Hint says what to do next, when the cause does not already say it.
	Hint string
}

func (e *Error) Error() string {
	s := fmt.Sprintf("hotpatch: %s pid %d", e.Op, e.Pid)
	if e.ID != "" {
		s += " patch " + e.ID
	}
	if e.Func != "" {
		s += " " + e.Func
	}
	s += ": " + e.Err.Error()
	if e.Hint != "" {
		s += "; " + e.Hint
	}
	return s
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }
