//go:build linux

package patch

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hotpatch-dev/hotpatch/internal/consistency"
	"github.com/hotpatch-dev/hotpatch/internal/goruntime"
	"github.com/hotpatch-dev/hotpatch/internal/tracee"
)

// BusyError is a refusal to attach to a process that another Target (in
// this or another program) held until Options.LockWait ran out. Match it
// with errors.As on any error of this package; errors.Is(err, ErrBusy)
// matches it too.
type BusyError struct {
	Pid int
	// Holder is the PID of the program holding the process, 0 if unknown.
	Holder int
	// Waited is how long Attach waited for it.
	Waited time.Duration
}

func (e *BusyError) Error() string {
	who := "another program"
	if e.Holder > 0 {
		who = fmt.Sprintf("process %d", e.Holder)
	}
	return fmt.Sprintf("pid %d: %v (%s holds it; waited %v): retry when it has finished", e.Pid, ErrBusy, who, e.Waited.Round(time.Millisecond))
}

// Is reports target == ErrBusy.
func (e *BusyError) Is(target error) bool { return target == ErrBusy }

// GoReleaseError is a refusal of a Go target built by a release hotpatch
// does not read (outside the supported range, or a development build that
// matches none): its goroutines cannot be listed, so no patch can be
// proven safe. errors.Is(err, ErrUnsupportedGo) matches it too.
type GoReleaseError struct {
	// Version is what the binary records ("go1.19.13", "" when none).
	Version string
	// Supported is the supported range ("go1.22–go1.26").
	Supported string
	// Reason says why a development build (or one without a version) was
	// refused; "" for a release outside the range.
	Reason string
}

func (e *GoReleaseError) Error() string {
	v := e.Version
	if v == "" {
		v = "(no version recorded)"
	}
	s := fmt.Sprintf("Go release %s is not supported (supported: %s)", v, e.Supported)
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s + "; rebuild the target with a supported Go release"
}

// Is reports target == ErrUnsupportedGo.
func (e *GoReleaseError) Is(target error) bool { return target == ErrUnsupportedGo }

// BlockedError is a refusal because tasks stayed in (or would return into)
// the functions being changed until the timeout. errors.Is(err,
// ErrBlocked) matches it too.
type BlockedError struct {
	Blockers []Blocker
	// Attempts counts the pauses that found tasks in the functions.
	Attempts int
}

// Blocker is a task that made a change unsafe.
type Blocker struct {
	Task Task
	// Func is the function the task is in; "" when its stack is
	// unreliable (a stack that cannot be proven clean blocks too).
	Func string
	// Frame is the index of the frame inside Func (0: the task executes
	// there; >0: Func is a caller it will return into).
	Frame int
	// Reason says it in words.
	Reason string
}

func (e *BlockedError) Error() string {
	return fmt.Sprintf("%v: %d task(s) in the functions after %d attempt(s)", ErrBlocked, len(e.Blockers), e.Attempts)
}

// Is reports target == ErrBlocked.
func (e *BlockedError) Is(target error) bool { return target == ErrBlocked }

// As lets errors.As find, in the cause of e, the public form of a refusal
// that lower layers report with their own types: *BusyError,
// *GoReleaseError and *BlockedError.
func (e *Error) As(target any) bool {
	switch p := target.(type) {
	case **BusyError:
		var be *tracee.BusyError
		if errors.As(e.Err, &be) {
			*p = &BusyError{Pid: be.Pid, Holder: be.Holder, Waited: be.Waited}
			return true
		}
	case **GoReleaseError:
		var re *goruntime.ReleaseError
		if errors.As(e.Err, &re) {
			*p = &GoReleaseError{Version: re.Version, Supported: goruntime.SupportedRange(), Reason: re.Reason}
			return true
		}
	case **BlockedError:
		var be *consistency.BlockedError
		if errors.As(e.Err, &be) {
			out := &BlockedError{Attempts: be.Attempts}
			for _, b := range be.Blockers {
				out.Blockers = append(out.Blockers, Blocker{Task: publicTasks(be.Symbols, []consistency.Task{b.Task})[0],
					Func: b.Func, Frame: b.Frame, Reason: b.Reason})
			}
			*p = out
			return true
		}
	}
	return false
}

// OptionError is an option with a value this package does not know (a
// Mode or OnTimeout that is none of the constants). errors.Is(err,
// ErrBadRequest) matches it.
type OptionError struct {
	Option string // "Mode", "OnTimeout"
	Value  string
	// Valid lists the values the option takes.
	Valid []string
}

func (e *OptionError) Error() string {
	q := make([]string, len(e.Valid))
	for i, v := range e.Valid {
		q[i] = strconv.Quote(v)
	}
	return fmt.Sprintf("%v: %s %q is unknown; want %s (or leave it empty for the default)", ErrBadRequest, e.Option, e.Value, strings.Join(q, ", "))
}

// Is reports target == ErrBadRequest.
func (e *OptionError) Is(target error) bool { return target == ErrBadRequest }

// checkEnum refuses a value of a named string type that is neither empty
// (the default) nor one of valid.
func checkEnum[T ~string](option string, v T, valid []T) error {
	if v == "" || slices.Contains(valid, v) {
		return nil
	}
	names := make([]string, len(valid))
	for i, x := range valid {
		names[i] = string(x)
	}
	return &OptionError{Option: option, Value: string(v), Valid: names}
}

// check refuses a Mode or OnTimeout the package does not know.
func (o ApplyOptions) check() error {
	if err := checkEnum("Mode", o.Mode, modes); err != nil {
		return err
	}
	return checkEnum("OnTimeout", o.OnTimeout, onTimeouts)
}

// check refuses a Mode or OnTimeout the package does not know.
func (o FuncOptions) check() error {
	return ApplyOptions{Mode: o.Mode, OnTimeout: o.OnTimeout}.check()
}
