// Package consistency is the safety model of a patch: it takes a snapshot of
// every task of a stopped target (its threads, and in Go targets every
// goroutine, running or parked) with its unwound stack, and decides whether any task is executing
// in, or will return into, a function that is about to change. StopAndCheck
// drives the stop-check-act-resume cycle with retries and backoff.
package consistency

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/unwind"
)

// ErrBlocked is matched by *BlockedError.
var ErrBlocked = errors.New("activeness check failed")

// Task is one schedulable unit of the target with its stack.
type Task struct {
	// Kind is "thread" or "goroutine".
	Kind string
	// ID is the thread ID or the goroutine ID.
	ID int
	// Status is a goroutine's status ("waiting", "running", ...).
	Status string
	// Wait is a waiting goroutine's wait reason ("chan receive").
	Wait string
	// Thread is the thread a running goroutine was found on (its stack is
	// that thread's), 0 otherwise.
	Thread int
	// Key identifies the task to a dispatch stub: a goroutine's g pointer;
	// for a thread of a Go target the g it runs (its TLS slot); for a
	// thread of another target its thread pointer. 0 when unknown.
	Key   uint64
	Stack unwind.Stack
}

func (t Task) String() string {
	if t.Kind != "goroutine" {
		return fmt.Sprintf("%s %d", t.Kind, t.ID)
	}
	state := t.Status
	if t.Wait != "" {
		state = t.Wait
	}
	if t.Thread != 0 {
		state += fmt.Sprintf(", on thread %d", t.Thread)
	}
	return fmt.Sprintf("goroutine %d [%s]", t.ID, state)
}

// Snapshot is every task of a stopped target.
type Snapshot struct {
	// Tasks lists the threads, then the goroutines, in no particular order.
	Tasks []Task
}

// Region is code that is about to change: a function, and the bytes of it
// that will be overwritten.
type Region struct {
	Name       string
	Start, End uint64 // the function, [Start, End)
}

// Blocker is a task that makes a change unsafe now.
type Blocker struct {
	Task Task
	// Func is the region's name; "" for an unreliable stack.
	Func string
	// Frame is the index of the frame that is inside Func (0: the task is
	// executing there; >0: Func is a caller that will be returned into).
	Frame int
	// Reason says it in words.
	Reason string
}

// Check returns every task that blocks changing the regions: a task whose
// program counter or any return address on its stack lies inside a region,
// and every task whose stack could not be unwound reliably (a stack we are
// not sure of is never assumed clean).
func Check(s Snapshot, regions []Region) []Blocker {
	var out []Blocker
	for i := range s.Tasks {
		out = checkTask(out, &s.Tasks[i], regions)
	}
	return out
}

// CheckAfter is Check for a snapshot TakeAfter took with prior: a task
// whose walk it reused unchanged, and which prior checked against the same
// regions before the stop (PrewalkFor), is clean without being looked at
// again (Check is a function of the stack and the regions only).
func CheckAfter(s Snapshot, regions []Region, prior *Walks) []Blocker {
	if prior == nil || len(prior.clean) != len(s.Tasks) || !slices.Equal(prior.regions, regions) {
		return Check(s, regions)
	}
	var out []Blocker
	for i := range s.Tasks {
		if !prior.clean[i] {
			out = checkTask(out, &s.Tasks[i], regions)
		}
	}
	return out
}

// checkTask appends t's blockers to out.
func checkTask(out []Blocker, t *Task, regions []Region) []Blocker {
	blocked := false
	for i := range t.Stack.Frames {
		pc := t.Stack.Frames[i].PC
		for _, r := range regions {
			// A caller's pc is a return address: the call before it
			// counts too (a call of a noreturn function may be a
			// function's last instruction, its return address the
			// function's end).
			in := pc >= r.Start && pc < r.End
			if i > 0 && !in {
				in = pc-1 >= r.Start && pc-1 < r.End
			}
			if in {
				reason := fmt.Sprintf("executing in %s", r.Name)
				if i > 0 {
					reason = fmt.Sprintf("%s is on its stack (frame %d), it will return into it", r.Name, i)
				}
				out = append(out, Blocker{Task: *t, Func: r.Name, Frame: i, Reason: reason})
				blocked = true
			}
		}
	}
	for _, r := range regions {
		if blocked {
			break
		}
		for _, u := range t.Stack.Unwalked {
			if r.Start < u.End && u.Start < r.End {
				out = append(out, Blocker{Task: *t, Func: r.Name, Frame: len(t.Stack.Frames),
					Reason: fmt.Sprintf("%s may be on its stack above its last frame, which could not be walked further (%s): it may return into it", r.Name, t.Stack.Reason)})
				blocked = true
				break
			}
		}
	}
	if !t.Stack.Reliable && !blocked {
		out = append(out, Blocker{Task: *t, Frame: -1, Reason: "stack unreliable: " + t.Stack.Reason})
	}
	return out
}

// BlockedError is a refusal because tasks stayed in the functions being
// changed until the deadline.
type BlockedError struct {
	Blockers []Blocker
	Attempts int
	// Symbolize formats an address for the report (may be nil).
	Symbolize func(uint64) string
	// Symbols, when set, is the target's symbol table, for a caller that
	// names the blockers' frames (the report uses Symbolize).
	Symbols *elfsym.Table
}

// Is reports target == ErrBlocked.
func (e *BlockedError) Is(target error) bool { return target == ErrBlocked }

// MaxReported bounds the blockers BlockedError.Error shows with their
// stacks; the rest are counted by function.
const MaxReported = 10

func (e *BlockedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v after %d attempts: %d blocking task(s); retry later, allow a longer timeout, or patch functions that are not in use:", ErrBlocked, e.Attempts, len(e.Blockers))
	for i, bl := range e.Blockers {
		if i == MaxReported {
			break
		}
		fmt.Fprintf(&b, "\n  %s: %s", bl.Task, bl.Reason)
		b.WriteString(FormatStack(bl.Task.Stack, e.Symbolize, "\n      "))
	}
	if rest := len(e.Blockers) - MaxReported; rest > 0 {
		counts := map[string]int{}
		var order []string
		for _, bl := range e.Blockers[MaxReported:] {
			k := bl.Func
			if k == "" {
				k = "an unreliable stack"
			}
			if counts[k] == 0 {
				order = append(order, k)
			}
			counts[k]++
		}
		fmt.Fprintf(&b, "\n  ... and %d more:", rest)
		for _, k := range order {
			fmt.Fprintf(&b, " %d in %s;", counts[k], k)
		}
	}
	return b.String()
}

// FormatStack renders a stack, one frame per line, each line preceded by
// prefix.
func FormatStack(s unwind.Stack, symbolize func(uint64) string, prefix string) string {
	var b strings.Builder
	for i, f := range s.Frames {
		name := fmt.Sprintf("%#x", f.PC)
		if symbolize != nil {
			name = symbolize(f.PC)
		}
		fmt.Fprintf(&b, "%s#%-2d %#016x %s", prefix, i, f.PC, name)
	}
	if !s.Reliable {
		fmt.Fprintf(&b, "%s(unreliable: %s)", prefix, s.Reason)
	}
	return b.String()
}
