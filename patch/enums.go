package patch

// Mode is how Apply (ApplyOptions.Mode) and Func (FuncOptions.Mode) make
// sure that no task runs a function while it changes. Its text is the one
// the JSON output and the record carry.
type Mode string

// Modes of Apply and Func.
const (
	// ModeStop: one pause in which no task may be in the functions
	// (retried until the timeout).
	ModeStop Mode = "stop"
	// ModeGradual: per-task universes; busy tasks keep the old code until
	// their stacks are clean.
	ModeGradual Mode = "gradual"
	// ModeAuto: stop-and-check first, gradual when tasks stay busy.
	ModeAuto Mode = "auto"
)

var modes = []Mode{ModeStop, ModeGradual, ModeAuto}

// Modes returns the valid Modes.
func Modes() []Mode { return append([]Mode(nil), modes...) }

func (m Mode) String() string { return string(m) }

// OnTimeout is what a gradual transition does when its timeout passes with
// tasks still pending (ApplyOptions.OnTimeout, FuncOptions.OnTimeout).
type OnTimeout string

// What a gradual transition does at its timeout.
const (
	// OnTimeoutRevert goes back to the old code, the same way.
	OnTimeoutRevert OnTimeout = "revert"
	// OnTimeoutStay returns, leaving the target in transition: Resume or
	// Revert continue it later.
	OnTimeoutStay OnTimeout = "stay"
)

var onTimeouts = []OnTimeout{OnTimeoutRevert, OnTimeoutStay}

// OnTimeouts returns the valid OnTimeout values.
func OnTimeouts() []OnTimeout { return append([]OnTimeout(nil), onTimeouts...) }

func (o OnTimeout) String() string { return string(o) }

// State is where a patch stands (Record.State, Result.State).
type State string

// States of a patch.
const (
	// StatePrepared: the patch memory is filled, no jump is written (inert).
	StatePrepared State = "prepared"
	// StateApplied: every function jumps to its replacement.
	StateApplied State = "applied"
	// StatePartial: some jumps are written (a patcher died mid-write).
	StatePartial State = "partial"
	// StateTransition: a gradual apply has tasks still on the old code.
	StateTransition State = "transition"
	// StateReverting: a gradual revert has tasks still on the new code.
	StateReverting State = "reverting"
	// StateSuperseded: another patch replaced this one in one pause
	// (ApplyOptions.Supersede); its memory is left to unmap.
	StateSuperseded State = "superseded"
	// StateReverted: the original code is back.
	StateReverted State = "reverted"
	// StateUnknown: the target could not be read back (the error says why).
	StateUnknown State = "unknown"
)

func (s State) String() string { return string(s) }

// Event is what a Progress report says happened.
type Event string

// Events of Progress.
const (
	// EventTransition: the first pause of a gradual transition; every
	// task has its universe.
	EventTransition Event = "transition"
	// EventProgress: a later pause moved tasks or found them still busy.
	EventProgress Event = "progress"
	// EventForced: ApplyOptions.Force moved the pending tasks at the
	// timeout.
	EventForced Event = "forced"
	// EventApplied: the transition finished on the new code.
	EventApplied Event = "applied"
	// EventReverting: the transition turned back toward the old code.
	EventReverting Event = "reverting"
	// EventReverted: the transition finished on the old code.
	EventReverted Event = "reverted"
	// EventTimeout: the timeout passed with tasks pending.
	EventTimeout Event = "timeout"
	// EventRetry: in stop mode, a pause found tasks in the functions;
	// nothing was written and another pause follows.
	EventRetry Event = "retry"
)

func (e Event) String() string { return string(e) }

// TaskKind says what a task is (Task.Kind, PendingTask.Kind).
type TaskKind string

// Kinds of task.
const (
	TaskThread    TaskKind = "thread"
	TaskGoroutine TaskKind = "goroutine"
)

func (k TaskKind) String() string { return string(k) }
