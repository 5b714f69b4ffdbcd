package consistency

import (
	"cmp"
	"fmt"
	"io"

	"github.com/hotpatch-dev/hotpatch/internal/goruntime"
	"github.com/hotpatch-dev/hotpatch/internal/unwind"
)

// g0Frames completes the stack of a thread that ended at runtime.mcall's
// switch to its system stack: mcall ran on g0 from the frame g0's saved
// registers describe, where the thread's own start frames are (mstart0,
// mstart and, on a thread created through cgo, the C frames it returns
// into when its m exits: crosscall1, threadentry, start_thread). key is
// the g the thread runs (its g0 here); mem reads the stopped target (the
// snapshot's pages).
func (src Source) g0Frames(mem io.ReaderAt, st unwind.Stack, key uint64) unwind.Stack {
	if key == 0 {
		st.Reliable, st.Reason = false, "ends at runtime.mcall and the thread's g0 is unknown"
		return st
	}
	g0, err := src.Go.ReadG(mem, key)
	if err != nil || g0.SP < g0.StackLo || g0.SP >= g0.StackHi {
		if name, _ := src.Unwinder.GoFunc(g0.PC); err == nil && name != "runtime.mstart0" {
			return st // an m C created for a callback: see below
		}
		st.Reliable, st.Reason = false, fmt.Sprintf("ends at runtime.mcall and g0 %#x does not read as a g with saved registers", key)
		return st
	}
	tail, ok := src.mstartFrames(mem, g0, g0.SP)
	if !ok {
		// g0's registers were not saved by mstart1 (an m C created for a
		// callback), or its stack pointer moved since: a cgo callback
		// runs on this m (cgocallback keeps its own system-stack frame
		// there), whose frames are walked from that goroutine.
		return st
	}
	tail.Frames = append(st.Frames, tail.Frames...)
	return tail
}

// mstartFrames walks g0's start frames, saved by mstart1 (its pc in
// mstart0), from stack pointer sp, reading mem; false when they are not
// there.
func (src Source) mstartFrames(mem io.ReaderAt, g0 goruntime.G, sp uint64) (unwind.Stack, bool) {
	u := src.Unwinder
	if !isFunc(u, g0.PC, "runtime.mstart0") || sp < g0.StackLo || sp >= g0.StackHi {
		return unwind.Stack{}, false
	}
	regs := make([]uint64, u.Arch.RAReg+1)
	regs[u.Arch.RAReg], regs[u.Arch.SPReg] = g0.PC, sp
	tail := u.Unwind(mem, regs)
	if len(tail.Frames) < 2 || !isFunc(u, tail.Frames[1].PC-1, "runtime.mstart") {
		return unwind.Stack{}, false
	}
	return tail, true
}

func isFunc(u *unwind.Unwinder, pc uint64, name string) bool {
	n, ok := u.GoFunc(pc)
	return ok && n == name
}

// callbackFrames adds to the stack of goroutine g, which went through a
// cgo callback, the frames on its m's system stack: cgocallback's frame
// there (g0's saved stack pointer while the callback runs), crosscall2, the
// C code that called back, and below it either a C thread's start routine
// or asmcgocall — a goroutine that called C, whose earlier frames are on
// its own stack, walked already, and above which the m's start frames lie
// (at the stack pointer cgocallback saved, as the runtime's unwindm reads
// it). Nested callbacks, or anything it cannot follow, leave the stack
// unreliable.
func (src Source) callbackFrames(st unwind.Stack, g goruntime.G) unwind.Stack {
	if !st.Reliable {
		return st
	}
	fail := func(format string, args ...any) unwind.Stack {
		st.Reliable, st.Reason = false, fmt.Sprintf("in a cgo callback: "+format, args...)
		return st
	}
	if len(st.Callbacks) > 1 {
		return fail("%d nested callbacks", len(st.Callbacks))
	}
	m := cmp.Or(g.LockedM, g.M)
	if m == 0 {
		return fail("the goroutine has no m")
	}
	g0addr, err := src.Go.G0(src.Proc, m)
	if err != nil {
		return fail("read m %#x: %v", m, err)
	}
	g0, err := src.Go.ReadG(src.Proc, g0addr)
	if err != nil || g0.SP < g0.StackLo || g0.SP >= g0.StackHi {
		return fail("g0 %#x of m %#x has no saved stack pointer on its stack", g0addr, m)
	}
	u := src.Unwinder
	regs := make([]uint64, u.Arch.RAReg+1)
	regs[u.Arch.RAReg], regs[u.Arch.SPReg] = st.Frames[st.Callbacks[0]].PC, g0.SP
	c := u.UnwindReturn(onDemandPages(src.Proc), regs)
	if !c.Reliable && c.SwitchedAt != "runtime.asmcgocall" {
		return fail("system stack of m %#x: %s", m, c.Reason)
	}
	st.Frames = append(st.Frames, c.Frames[1:]...)
	st.Reason = "cgo callback: " + c.Reason
	if c.SwitchedAt == "" {
		return st // a thread C created: its start routine ends the walk
	}
	st.Reason = "cgo callback from a goroutine; " + st.Reason
	saved, err := src.Go.CallbackSavedSP(src.Proc, g0.SP)
	if err != nil {
		return fail("read the system stack pointer cgocallback saved: %v", err)
	}
	if tail, ok := src.mstartFrames(onDemandPages(src.Proc), g0, saved); ok {
		st.Frames = append(st.Frames, tail.Frames...)
		if !tail.Reliable {
			return fail("start frames of m %#x: %s", m, tail.Reason)
		}
	} else {
		return fail("the start frames of m %#x are not at the system stack pointer cgocallback saved", m)
	}
	return st
}

// startFrames walks the start frames of the thread that runs m, saved on
// its g0 by mstart1; false for an m whose g0 holds none (an m C created
// for a callback, whose C frames the callback's walk covers). An m whose g0
// cannot be read gives an unreliable stack.
func (src Source) startFrames(m uint64) (unwind.Stack, bool) {
	if m == 0 {
		return unwind.Stack{Reason: "the goroutine's m is unknown: its thread's start frames cannot be read"}, true
	}
	addr, err := src.Go.G0(src.Proc, m)
	if err != nil || addr == 0 {
		return unwind.Stack{Reason: fmt.Sprintf("the g0 of m %#x cannot be read: its thread's start frames are unknown", m)}, true
	}
	g0, err := src.Go.ReadG(src.Proc, addr)
	if err != nil {
		return unwind.Stack{Reason: fmt.Sprintf("g0 %#x of m %#x cannot be read: %v", addr, m, err)}, true
	}
	return src.mstartFrames(onDemandPages(src.Proc), g0, g0.SP)
}
