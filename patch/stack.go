//go:build linux

package patch

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/consistency"
	"github.com/hotpatch-dev/hotpatch/internal/unwind"
)

// Task is one schedulable unit of a stopped target, with its stack: a
// thread, or in a Go target a goroutine (running or parked).
type Task struct {
	Kind TaskKind
	// ID is the thread ID or the goroutine ID.
	ID int
	// Status is a goroutine's status ("waiting", "running", ...).
	Status string
	// Wait is a waiting goroutine's wait reason ("chan receive").
	Wait string
	// Thread is the thread a running goroutine was found on (its stack is
	// that thread's), 0 otherwise.
	Thread int
	// Key identifies the task to a gradual transition's dispatch stub: a
	// goroutine's g pointer; for a thread of a Go target the g it runs;
	// for a thread of another target its thread pointer. 0 when unknown.
	Key   uint64
	Stack Stack
}

func (t Task) String() string {
	if t.Kind != TaskGoroutine {
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

// Stack is a task's stack, innermost frame first.
type Stack struct {
	Frames []Frame
	// Reliable reports that the walk proved every frame up to the
	// stack's root. A patch never takes an unreliable stack for clean: its
	// task blocks the functions being changed.
	Reliable bool
	// Why says why the stack is unreliable, or how a reliable walk ended.
	Why string
}

// String renders the stack one frame per line:
// "#0  0x00000000004a3c8e main.compute+0x1e".
func (s Stack) String() string {
	var lines []string
	for i, f := range s.Frames {
		lines = append(lines, fmt.Sprintf("#%-2d %#016x %s", i, f.PC, f))
	}
	if !s.Reliable {
		lines = append(lines, fmt.Sprintf("(unreliable: %s)", s.Why))
	}
	return strings.Join(lines, "\n")
}

// Frame is one frame of a stack.
type Frame struct {
	// PC is the frame's program counter: the next instruction of the
	// innermost frame, a return address in the others.
	PC uint64
	// Func is the function that holds PC, "" when no symbol does, and
	// Offset is PC's distance from its entry.
	Func   string
	Offset uint64
	// Module is the path of the object whose code holds PC ("" when none
	// does: code mapped at run time).
	Module string
	// File and Line are the source position of the Go code at PC (of the
	// call, for a return address); "" and 0 for other code.
	File string
	Line int
}

// String names the frame's code: "main.compute+0x1e", or the module and
// offset when no function holds it, or the bare address.
func (f Frame) String() string {
	switch {
	case f.Func != "" && f.Offset == 0:
		return f.Func
	case f.Func != "":
		return fmt.Sprintf("%s+%#x", f.Func, f.Offset)
	case f.Module != "":
		return fmt.Sprintf("%s+%#x", filepath.Base(f.Module), f.Offset)
	}
	return fmt.Sprintf("%#x", f.PC)
}

// Threads stops the target once, unwinds every thread (and every goroutine
// of a Go target) and resumes it.
func (t *Target) Threads() ([]Task, error) {
	snap, err := t.snapshot()
	if err != nil {
		return nil, err
	}
	return publicTasks(t.syms, snap.Tasks), nil
}

func publicTasks(syms *elfsym.Table, in []consistency.Task) []Task {
	out := make([]Task, 0, len(in))
	for _, c := range in {
		out = append(out, Task{Kind: TaskKind(c.Kind), ID: c.ID, Status: c.Status, Wait: c.Wait,
			Thread: c.Thread, Key: c.Key, Stack: publicStack(syms, c.Stack)})
	}
	return out
}

// publicStack names the frames of an unwound stack.
func publicStack(syms *elfsym.Table, s unwind.Stack) Stack {
	out := Stack{Reliable: s.Reliable, Why: s.Reason, Frames: make([]Frame, 0, len(s.Frames))}
	for i, f := range s.Frames {
		fr := Frame{PC: f.PC}
		if syms != nil {
			at := f.PC
			if i > 0 && !s.Frames[i-1].Signal {
				at-- // a return address: the call is before it
			}
			fr.File, fr.Line, _ = syms.LineAt(at)
			if sym, ok := syms.SymbolAt(f.PC); ok {
				fr.Func, fr.Offset = sym.Name, f.PC-sym.Addr
			}
			if m, ok := syms.ModuleAt(f.PC); ok {
				fr.Module = m.Path
				if fr.Func == "" {
					fr.Offset = f.PC - m.Bias
				}
			}
		}
		out.Frames = append(out.Frames, fr)
	}
	return out
}

// unwinderOf returns the stack walker of a target's modules.
func unwinderOf(syms *elfsym.Table) *unwind.Unwinder { return unwind.ForTable(syms) }
