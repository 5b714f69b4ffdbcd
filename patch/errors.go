package patch

import (
	"errors"
	"fmt"
	"slices"
	"strings"

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
	// ErrPIDReused: the process exited and its PID now names another
	// process, which was not touched. errors.Is(ErrPIDReused, ErrNoProcess)
	// is true.
	ErrPIDReused = tracee.ErrPIDReused
	// ErrKernelThread: the PID is a kernel thread, with no user-space code.
	ErrKernelThread = tracee.ErrKernelThread
	// ErrBusy: another Target (in this or another program) holds the
	// process until Options.LockWait ran out; operations on one process are
	// serialised (matched by *tracee.BusyError, which names the holder).
	ErrBusy = tracee.ErrBusy
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
	// ErrInTransition: another patch is in a gradual transition.
	ErrInTransition = errors.New("a patch is in transition")
	// ErrNoTransition: Resume found no transition to drive.
	ErrNoTransition = errors.New("no transition")
	// ErrInlined: the compiler copied the function into callers, which a
	// patch of the function does not change (matched by *InlinedError).
	ErrInlined = errors.New("function was inlined")
)

// InlinedError is a refusal to patch a function that was inlined: its
// inlined copies would keep running the old code.
type InlinedError struct {
	Func  string
	Sites []elfsym.InlineSite
}

// Is reports target == ErrInlined.
func (e *InlinedError) Is(target error) bool { return target == ErrInlined }

func (e *InlinedError) Error() string {
	return fmt.Sprintf("%v into %s; those copies would keep the old code. Patch the callers too, or opt in to patching only the out-of-line copy (--allow-inlined, ApplyOptions.AllowInlined)",
		ErrInlined, FormatInlineSites(e.Sites))
}

// FormatInlineSites lists the callers of inline sites, each once, with the
// number of sites in it and the first address when known:
// "main.a (2 sites, first at 0x4a3c8e), main.b".
func FormatInlineSites(sites []elfsym.InlineSite) string {
	var order []string
	addrs := map[string][]uint64{}
	for _, s := range sites {
		if _, ok := addrs[s.Caller]; !ok {
			order = append(order, s.Caller)
			addrs[s.Caller] = nil
		}
		if s.Addr != 0 && !slices.Contains(addrs[s.Caller], s.Addr) {
			addrs[s.Caller] = append(addrs[s.Caller], s.Addr)
		}
	}
	var b strings.Builder
	for i, c := range order {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(c)
		switch a := addrs[c]; len(a) {
		case 0:
		case 1:
			fmt.Fprintf(&b, " (at %#x)", a[0])
		default:
			fmt.Fprintf(&b, " (%d sites, first at %#x)", len(a), slices.Min(a))
		}
	}
	return b.String()
}

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
