//go:build linux

package patch

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/consistency"
	"github.com/hotpatch-dev/hotpatch/internal/goruntime"
	"github.com/hotpatch-dev/hotpatch/internal/tracee"
	"github.com/hotpatch-dev/hotpatch/internal/unwind"
)

// TestPublicErrorTypes: a refusal a lower layer reports with its own
// (internal) type is found by errors.As as this package's public type,
// with the same facts, wherever it sits in an *Error's cause; and the
// sentinel still matches.
func TestPublicErrorTypes(t *testing.T) {
	busy := &Error{Op: "attach", Pid: 42, Err: &tracee.BusyError{Pid: 42, Holder: 7, Waited: time.Second}}
	var be *BusyError
	require.ErrorAs(t, busy, &be)
	require.Equal(t, BusyError{Pid: 42, Holder: 7, Waited: time.Second}, *be)
	require.ErrorIs(t, busy, ErrBusy)
	require.ErrorIs(t, be, ErrBusy)

	old := &Error{Op: "threads", Pid: 42, Err: fmt.Errorf("listing goroutines: %w", &goruntime.ReleaseError{Version: "go1.19.13"})}
	var re *GoReleaseError
	require.ErrorAs(t, old, &re)
	require.Equal(t, "go1.19.13", re.Version)
	require.Equal(t, goruntime.SupportedRange(), re.Supported)
	require.ErrorIs(t, re, ErrUnsupportedGo)

	task := consistency.Task{Kind: "goroutine", ID: 9, Status: "waiting", Wait: "chan receive",
		Stack: unwind.Stack{Frames: []unwind.Frame{{PC: 0x1000}, {PC: 0x2000}}, Reliable: true}}
	blocked := &Error{Op: "apply", Pid: 42, Err: fmt.Errorf("w: %w", &consistency.BlockedError{Attempts: 3,
		Blockers: []consistency.Blocker{{Task: task, Func: "main.hold", Frame: 1, Reason: "returns into main.hold"}}})}
	var ble *BlockedError
	require.ErrorAs(t, blocked, &ble)
	require.Equal(t, 3, ble.Attempts)
	require.Len(t, ble.Blockers, 1)
	b := ble.Blockers[0]
	require.Equal(t, Blocker{Func: "main.hold", Frame: 1, Reason: "returns into main.hold", Task: Task{Kind: TaskGoroutine, ID: 9,
		Status: "waiting", Wait: "chan receive", Stack: Stack{Reliable: true, Frames: []Frame{{PC: 0x1000}, {PC: 0x2000}}}}}, b)
	require.ErrorIs(t, ble, ErrBlocked)

	require.False(t, errors.As(&Error{Op: "apply", Err: ErrBadRequest}, &be), "no busy refusal in the cause")
}
