//go:build linux

package patch

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/consistency"
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
	// serialised (matched by *BusyError, which names the holder).
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
	// ErrBlocked: tasks kept executing in the functions until the timeout
	// (matched by *BlockedError, which lists them).
	ErrBlocked = consistency.ErrBlocked
	// ErrUnsupportedGo: the Go target was built by a release hotpatch does
	// not read (matched by *GoReleaseError).
	ErrUnsupportedGo = elfsym.ErrUnsupportedGo
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
	// ApplyOptions.Unpinned was not given.
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
	// ErrABI: the replacement does not follow the calling convention of
	// the function it replaces (C code for a Go function, a Go shared
	// object loaded behind the Go runtime's back); matched by *ABIError.
	ErrABI = errors.New("replacement has another calling convention")
	// ErrSignature: the replacement takes or returns other types than the
	// function it replaces (matched by *SignatureError).
	ErrSignature = errors.New("signatures differ")
	// ErrGradualNotGo: a gradual transition was asked for a function of a
	// Go target that is not Go code (C code linked with cgo): its dispatch
	// stub would read R14 as the goroutine, which C code does not keep
	// there. Stop mode patches such functions safely.
	ErrGradualNotGo = errors.New("gradual transitions of C functions in a Go program are not supported; use stop mode")
	// ErrGradualSupersede: a patch that supersedes another is applied in
	// one pause (stop mode); a gradual transition from one fix to the
	// next is not supported yet.
	ErrGradualSupersede = errors.New("superseding a patch in a gradual transition is not supported; use stop mode")
	// ErrNoTaskKey: a task that must keep the old code cannot be told
	// apart by a dispatch stub (its key, a Go thread's g, is unknown).
	ErrNoTaskKey = errors.New("a busy task has no key a dispatch stub can look up")
)

// ABIError is a replacement that cannot run in place of the function: it
// is not code of the same language runtime and calling convention.
type ABIError struct {
	Func string // the function to replace ("" for a refused library)
	New  string // the replacement ("" for a refused library)
	Lib  string // the patch library concerned, if any
	// Reason says what is wrong and what to do instead.
	Reason string
}

// Is reports target == ErrABI.
func (e *ABIError) Is(target error) bool { return target == ErrABI }

func (e *ABIError) Error() string {
	if e.Func == "" {
		return fmt.Sprintf("%v: patch library %s: %s", ErrABI, e.Lib, e.Reason)
	}
	return fmt.Sprintf("%v: %s cannot replace %s: %s", ErrABI, e.New, e.Func, e.Reason)
}

// SignatureError is a replacement whose parameters or results differ from
// those of the function it replaces, as the binaries record them.
type SignatureError struct {
	Func, New string // the names
	// Old and NewSig are the two signatures as text
	// ("main.discount(int) int").
	Old, NewSig string
	// Source is where they were read: "DWARF" or "the Go function table".
	Source string
}

// Is reports target == ErrSignature.
func (e *SignatureError) Is(target error) bool { return target == ErrSignature }

func (e *SignatureError) Error() string {
	return fmt.Sprintf("%v (%s): %s replaced by %s; a call would pass arguments the replacement does not expect, or read results it does not return. Replace it with a function of the same signature (ApplyOptions.SkipSignatureCheck overrides this check)",
		ErrSignature, e.Source, e.Old, e.NewSig)
}

// InlinedError is a refusal to patch a function that was inlined: its
// inlined copies would keep running the old code.
type InlinedError struct {
	Func  string
	Sites []elfsym.InlineSite
	// Reason, when there are no Sites, says why the function may have been
	// inlined without a trace.
	Reason string
}

// Is reports target == ErrInlined.
func (e *InlinedError) Is(target error) bool { return target == ErrInlined }

func (e *InlinedError) Error() string {
	if len(e.Sites) == 0 && e.Reason != "" {
		return fmt.Sprintf("%v? %s: %s; if so, a patch of its out-of-line copy changes nothing. Mark it //go:noinline in the source, or opt in to patching only the out-of-line copy (ApplyOptions.AllowInlined)",
			ErrInlined, e.Func, e.Reason)
	}
	return fmt.Sprintf("%v into %s; those copies would keep the old code. Patch the callers too, or opt in to patching only the out-of-line copy (ApplyOptions.AllowInlined)",
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
