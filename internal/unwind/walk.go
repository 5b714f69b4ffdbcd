package unwind

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/hotpatch-dev/hotpatch/internal/cfi"
	"github.com/hotpatch-dev/hotpatch/internal/gopcln"
)

// ErrUnreliable is the error of a walk that could not be proven complete
// (Frames.Err wraps it with the reason).
var ErrUnreliable = errors.New("unreliable stack")

// Frames walks a stack one frame at a time, innermost first, as delve's
// stack iterator does:
//
//	it := u.Frames(mem, regs)
//	for it.Next() {
//		fr := it.Frame()
//	}
//	if err := it.Err(); err != nil { // errors.Is(err, ErrUnreliable)
//	}
//
// Each Next adds the frame at the current registers and finds its caller
// (the frame's CFA and Method then say how). The walk ends at a root, or
// at the first frame it cannot be sure of; Stack says how it ended.
type Frames struct {
	u     *Unwinder
	a     Arch
	mem   io.ReaderAt
	read  func(uint64) (uint64, error) // a word of the target's memory
	buf   [8]byte
	cur   []uint64 // registers by DWARF number (pc at RAReg)
	valid []bool
	n     int // len(cur)
	// The first registers' room (a walk's later ones are allocated per
	// CFI step).
	curArr   [34]uint64
	validArr [34]bool
	// first: the walk starts at an exact pc (a stopped thread's), not a
	// return address. exact: the next frame's pc is exact (the innermost,
	// or one a signal or an injected call interrupted). injected: the last
	// frame was a call the runtime injected (asyncPreempt, sigpanic).
	// crosscall1: the last step went over runtime/cgo's crosscall1.
	first, exact, injected, crosscall1 bool
	s                                  Stack
	ended                              bool
}

// Frames starts a walk from regs (as Unwind).
func (u *Unwinder) Frames(mem io.ReaderAt, regs []uint64) *Frames {
	return u.frames(mem, regs, true)
}

func (u *Unwinder) frames(mem io.ReaderAt, regs []uint64, exact bool) *Frames {
	a := u.Arch
	n := max(len(regs), a.RAReg+1, a.SPReg+1, 34)
	w := &Frames{u: u, a: a, mem: mem, n: n, first: exact, exact: exact, s: Stack{Frames: make([]Frame, 0, 16)}}
	w.cur, w.valid = w.curArr[:], w.validArr[:]
	if n > len(w.curArr) {
		w.cur, w.valid = make([]uint64, n), make([]bool, n)
	}
	w.read = w.readWord
	w.setRegs(regs)
	return w
}

// Next adds the next frame; false when the walk has ended.
func (w *Frames) Next() bool {
	if w.ended {
		return false
	}
	before := len(w.s.Frames)
	w.ended = !w.step()
	return len(w.s.Frames) > before
}

// Frame is the frame the last Next added.
func (w *Frames) Frame() Frame { return w.s.Frames[len(w.s.Frames)-1] }

// Err is nil while the walk goes on and when it ended at a root; it
// wraps ErrUnreliable with the reason otherwise.
func (w *Frames) Err() error {
	if !w.ended || w.s.Reliable {
		return nil
	}
	return fmt.Errorf("unwind: %w: %s", ErrUnreliable, w.s.Reason)
}

// Stack is the walk so far: its frames, and once it has ended, how.
func (w *Frames) Stack() Stack { return w.s }

func (u *Unwinder) walk(mem io.ReaderAt, regs []uint64, exact bool) Stack {
	w := u.frames(mem, regs, exact)
	for w.Next() {
	}
	return w.s
}

func (w *Frames) readWord(addr uint64) (uint64, error) {
	b := w.buf[:w.a.PtrSize]
	if _, err := w.mem.ReadAt(b, int64(addr)); err != nil {
		return 0, fmt.Errorf("read stack at %#x: %w", addr, err)
	}
	if w.a.PtrSize == 4 {
		return uint64(binary.LittleEndian.Uint32(b)), nil
	}
	return binary.LittleEndian.Uint64(b), nil
}

func (w *Frames) readSize(addr uint64, size int) (uint64, error) {
	var b [8]byte
	if _, err := w.mem.ReadAt(b[:size], int64(addr)); err != nil {
		return 0, fmt.Errorf("read %d bytes at %#x: %w", size, addr, err)
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// unreliable ends the walk: it could not be proven complete.
func (w *Frames) unreliable(format string, args ...any) bool {
	w.s.Reliable, w.s.Reason = false, fmt.Sprintf(format, args...)
	return false
}

// reliable ends the walk at a root.
func (w *Frames) reliable(reason, root string) bool {
	w.s.Reliable, w.s.Reason, w.s.Root = true, reason, root
	return false
}

// setRegs makes regs the caller's registers, every other one unknown.
func (w *Frames) setRegs(regs []uint64) {
	for i := range w.valid {
		w.cur[i], w.valid[i] = 0, false
	}
	copy(w.cur, regs)
	for i := range regs {
		w.valid[i] = true
	}
}

// setRegMap is setRegs for registers by number.
func (w *Frames) setRegMap(regs map[int]uint64) {
	for i := range w.valid {
		w.cur[i], w.valid[i] = 0, false
	}
	for r, v := range regs {
		w.cur[r], w.valid[r] = v, true
	}
}

// top is the frame being stepped over.
func (w *Frames) top() *Frame { return &w.s.Frames[len(w.s.Frames)-1] }

// at is where a step starts: the frame's pc and sp, its module and where
// the pc is in it (link), and what is known of its registers.
type at struct {
	pc, sp, link uint64
	m            *Module
	// innermost: the first frame of a walk from a stopped thread;
	// interrupted: every register is known (innermost, or a frame a
	// signal or an injected call interrupted); afterCrosscall1: the
	// frame called runtime/cgo's crosscall1.
	innermost, interrupted, afterCrosscall1 bool
}

// step adds the frame at the current registers and finds its caller, by
// the first of: the pclntab (Go code), the kernel's signal return
// trampoline, known assembly, a leaf module's link register, the CFI. It
// returns false when the walk has ended (w.s says how).
func (w *Frames) step() bool {
	a := w.a
	c := at{innermost: len(w.s.Frames) == 0 && w.first, afterCrosscall1: w.crosscall1}
	w.crosscall1 = false
	c.pc, c.sp = w.cur[a.RAReg], w.cur[a.SPReg]
	if len(w.s.Frames) >= MaxFrames {
		return w.unreliable("more than %d frames", MaxFrames)
	}
	w.s.Frames = append(w.s.Frames, Frame{PC: c.pc, SP: c.sp})
	// A return address points after the call: look up the call itself.
	// The first frame's pc, and a pc a signal interrupted, are exact.
	lookup := c.pc
	if !w.exact {
		lookup--
	}
	// A frame a signal (or an injected call) interrupted has all its
	// registers, the link register included.
	c.interrupted, w.exact = w.exact, false
	if c.m = w.u.moduleAt(lookup); c.m == nil {
		return w.unreliable("no module maps pc %#x", c.pc)
	}
	goTab, cfiTab, err := c.m.tables(a)
	if err != nil {
		return w.unreliable("unwind tables of %s: %v", c.m.Name, err)
	}
	c.link = lookup - c.m.Bias
	if goTab != nil {
		if f, ok := goTab.FuncAt(c.link); ok && !f.External() {
			return w.goStep(c, goTab, f)
		}
	}
	// The signal return trampoline, returned to by a handler, or a
	// thread stopped on its svc.
	if a.SigframeContext != nil && (isSigreturn(a, w.read, c.pc) || c.interrupted && isSigreturn(a, w.read, c.pc-4)) {
		regs, err := a.SigframeContext(w.read, c.sp)
		if err != nil {
			return w.unreliable("signal frame at %#x: %v", c.sp, err)
		}
		w.signalFrame(regs)
		return true
	}
	if !c.interrupted && a.Handwritten != nil && c.m.Pclntab != nil {
		// Assembly without unwind tables whose code we know
		// (runtime/cgo's crosscall1 on amd64), recognised by its code
		// read back — only in a module with Go code: runtime/cgo is
		// linked with it, so plain C code, every frame of which would
		// otherwise have its code read, cannot hold it.
		if regs, cfa, ok := a.Handwritten(w.read, c.pc, c.sp); ok {
			w.crosscall1 = true
			return w.handwritten(regs, cfa, "return address unknown above %#x in %s", c.pc, c.m.Name)
		}
	}
	if cfiTab == nil && a.LinkRegister && c.m.leafAt(a, c.link) {
		return w.leafStep(c)
	}
	return w.cfiStep(c, cfiTab)
}

// signalFrame makes the top frame a signal frame whose caller, interrupted
// at its pc, had registers regs.
func (w *Frames) signalFrame(regs []uint64) {
	fr := w.top()
	fr.Method, fr.Signal = "signal", true
	w.setRegs(regs)
	w.exact = true
}

// handwritten steps over known assembly: the caller's registers and the
// frame's CFA; a zero return address ends the walk with the message.
func (w *Frames) handwritten(regs map[int]uint64, cfa uint64, zero string, args ...any) bool {
	fr := w.top()
	fr.CFA, fr.Method = cfa, "handwritten"
	w.setRegMap(regs)
	if w.cur[w.a.RAReg] == 0 {
		return w.unreliable(zero, args...)
	}
	return true
}

// goStep steps over a frame of Go function f: a root ends the walk, the
// runtime's signal trampoline and Go assembly it knows are crossed, a
// function that switches stacks ends it unreliable; any other frame is
// found by the pclntab's sp delta (goFrame).
func (w *Frames) goStep(c at, goTab *gopcln.Table, f *gopcln.Func) bool {
	a := w.a
	topFrameToC := false
	if why, ok := goRoots[f.Name]; ok {
		if !w.goRoot(c, goTab, f, why) {
			return false
		}
		// A thread created through cgo: mstart returns into C
		// (crosscall1, threadentry, start_thread) when its m exits, so
		// those frames count.
		topFrameToC = true
	}
	if f.Name == "runtime.sigtramp" {
		lr := uint64(0) // arm64: the handler's LR, known here only in an interrupted frame
		if a.LinkRegister && c.interrupted && w.valid[a.LRReg] {
			lr = w.cur[a.LRReg]
		}
		regs, err := w.u.crossGoSignal(goTab, c.m, f, c.link, c.sp, lr, w.read)
		if err != nil {
			return w.unreliable("%v", err)
		}
		w.signalFrame(regs)
		return true
	}
	if !c.interrupted && a.GoHandwritten != nil {
		// Go assembly whose frame the pclntab does not describe for
		// unwinding (crosscall2 on arm64).
		if regs, cfa, ok := a.GoHandwritten(w.read, f.Name, f.Entry+c.m.Bias, c.pc, c.sp); ok {
			return w.handwritten(regs, cfa, "%s has a zero return address", f.Name)
		}
	}
	spWrite := f.Flag&gopcln.FlagSPWrite != 0
	if f.Name == "runtime.cgocallback" && !c.interrupted {
		// Like the runtime's traceback: cgocallback switched stacks, but
		// keeps a frame valid for unwinding on both (on the goroutine's
		// stack its return address is where the goroutine called C).
		spWrite = false
		w.s.Callbacks = append(w.s.Callbacks, len(w.s.Frames)-1)
	}
	if spWrite || f.Flag&gopcln.FlagTopFrame != 0 && !topFrameToC {
		w.s.SwitchedAt = f.Name
		return w.unreliable("%s switches stacks (the goroutine's frames continue on another stack)", f.Name)
	}
	return w.goFrame(c, goTab, f)
}

// goRoot handles a frame of a Go root function (goRoots): it ends the walk
// there (false), or, for runtime.mstart on a thread created through cgo
// whose C frames can be walked, goes on (true).
func (w *Frames) goRoot(c at, goTab *gopcln.Table, f *gopcln.Func, why string) bool {
	if f.Name == "runtime.mcall" && c.interrupted {
		// Stopped inside mcall itself, not returned to by the function
		// it called on g0: it may not have saved the goroutine's state
		// or switched stacks yet, so the frames above may be the
		// goroutine's own (gopark, its caller, ...), which a root here
		// would hide. Like any stack switch: the goroutine's frames are
		// checked from its g, or, if the thread is still on its stack,
		// it blocks.
		w.s.SwitchedAt = f.Name
		return w.unreliable("stopped inside runtime.mcall at %#x while it switches to the system stack", c.pc)
	}
	walk, intoC := false, false
	if f.Name == "runtime.mstart" {
		walk, intoC = w.u.returnsToC(goTab, c.m, f, c.link, c.sp, w.read)
	}
	if walk {
		return true
	}
	w.reliable(why, f.Name)
	if intoC {
		// A thread created through cgo whose C frames above mstart
		// cannot be walked (no unwind tables): it returns into C code,
		// all of which counts as on its stack.
		w.s.Reason += "; it returns into C code without unwind tables, which counts as on its stack"
		w.s.Unwalked = w.u.cCode()
	}
	return false
}

// goFrame finds the caller of an ordinary Go frame: its CFA is the sp plus
// the pclntab's sp delta at the pc, and the return address is below it
// (amd64), saved at 0(RSP) (arm64), or still in LR (arm64, no frame yet).
func (w *Frames) goFrame(c at, goTab *gopcln.Table, f *gopcln.Func) bool {
	a := w.a
	sp := c.sp
	lrKnown := c.innermost || c.interrupted // a signal frame restored every register
	if a.LinkRegister && w.injected {
		// Above asyncPreempt or sigpanic: the signal handler pushed the
		// interrupted LR in a 16-byte slot below the interrupted SP
		// before faking the call (the runtime's sigctxt.pushCall), so LR
		// is known here too.
		x, err := w.read(sp)
		if err != nil {
			return w.unreliable("%v", err)
		}
		sp += 16
		w.top().SP = sp
		w.cur[a.LRReg], w.valid[a.LRReg], lrKnown = x, true, true
	}
	w.injected = false
	delta, err := c.m.spDelta(goTab, f, c.link)
	if err != nil {
		return w.unreliable("%v", err)
	}
	var cfa, ra uint64
	inLR := false
	switch {
	case !a.LinkRegister:
		// The call pushed the return address just above the frame.
		cfa = sp + uint64(delta) + uint64(a.PtrSize)
		ra, err = w.read(cfa - uint64(a.PtrSize))
	case delta == 0:
		// No frame yet (or a frameless leaf): the return address is
		// still in LR, known only in the innermost frame.
		if !lrKnown || !w.valid[a.LRReg] {
			return w.unreliable("%s has no frame at %#x and the link register is unknown above the innermost frame", f.Name, c.pc)
		}
		cfa, ra, inLR = sp, w.cur[a.LRReg], true
	default:
		// The prologue stored LR at 0(RSP) as it allocated the frame
		// (MOVD.W R30, -size(RSP)); the caller's SP is sp+delta.
		cfa = sp + uint64(delta)
		ra, err = w.read(sp)
	}
	if err != nil {
		return w.unreliable("%v", err)
	}
	fr := w.top()
	fr.CFA, fr.Method = cfa, "pclntab"
	// Go frames keep no C callee-saved registers we can trust.
	for i := range w.valid {
		w.valid[i] = false
	}
	w.cur[a.SPReg], w.valid[a.SPReg] = cfa, true
	w.cur[a.RAReg], w.valid[a.RAReg] = ra, true
	// arm64: the caller's frame pointer, which C code above a Go frame
	// (crosscall1, a cgo callback's caller) may define its CFA by.
	if fp, ok := w.u.goCallerFP(c.m, f, c.link, sp, delta, w.read); ok {
		w.cur[a.FPReg], w.valid[a.FPReg] = fp, true
	}
	if ra == 0 {
		return w.unreliable("%s has a zero return address", f.Name)
	}
	if cfa < sp || cfa == sp && !inLR {
		return w.unreliable("stack pointer does not grow at %s", f.Name)
	}
	// The runtime injects calls of these at an interrupted instruction:
	// the "return address" is that instruction.
	w.exact = f.Name == "runtime.asyncPreempt" || f.Name == "runtime.sigpanic"
	w.injected = w.exact
	return true
}

// leafStep steps over leaf code (the arm64 vDSO has no unwind tables): the
// caller's pc is in LR, known in the innermost or an interrupted frame
// only; nothing else moved.
func (w *Frames) leafStep(c at) bool {
	a := w.a
	if !c.interrupted || !w.valid[a.LRReg] {
		return w.unreliable("leaf code at %#x in %s above the innermost frame", c.pc, c.m.Name)
	}
	ra := w.cur[a.LRReg]
	if a.StripPAC != nil {
		ra = a.StripPAC(ra)
	}
	if ra == 0 {
		return w.unreliable("return address unknown above %#x in %s", c.pc, c.m.Name)
	}
	fr := w.top()
	fr.CFA, fr.Method = c.sp, "leaf"
	for i := range w.valid {
		if i != a.SPReg && !isCalleeSaved(a, i) {
			w.valid[i] = false
		}
	}
	w.cur[a.RAReg], w.valid[a.RAReg] = ra, true
	return true
}

// cfiStep steps over a frame by its call frame information: the row at
// the pc gives the CFA and where each of the caller's registers is.
func (w *Frames) cfiStep(c at, cfiTab *cfi.Table) bool {
	var row cfi.Row
	ok := false
	if cfiTab != nil {
		var err error
		if row, ok, err = cfiTab.RowAt(c.link); err != nil {
			return w.unreliable("CFI of %s at %#x: %v", c.m.Name, c.pc, err)
		}
	}
	if !ok {
		return w.noCFI(c)
	}
	// Expressions read this frame's registers and the process's memory.
	mach := cfi.Machine{
		Reg: func(r int) (uint64, bool) {
			if r < 0 || r >= w.n || !w.valid[r] {
				return 0, false
			}
			return w.cur[r], true
		},
		Mem:     w.readSize,
		PtrSize: w.a.PtrSize,
	}
	cfa, err := w.cfa(c, row, mach)
	if err != nil {
		return w.unreliable("%v", err)
	}
	fr := w.top()
	fr.CFA, fr.Method, fr.Signal = cfa, "cfi", row.Signal
	return w.cfiCaller(c, row, mach, cfa)
}

// noCFI ends a walk at a pc without unwind information: reliably at the
// thread start of a cgo binary the Go linker linked (which keeps no unwind
// tables for C code) right above crosscall1, unreliably anywhere else.
func (w *Frames) noCFI(c at) bool {
	if !c.afterCrosscall1 {
		return w.unreliable("no unwind info for pc %#x in %s", c.pc, c.m.Name)
	}
	// runtime/cgo's thread start routine, which called crosscall1: the
	// walk ends here, as the runtime's does at mstart.
	w.reliable(fmt.Sprintf("ends at the C caller of crosscall1 at %#x (thread start of a cgo binary without unwind tables for C)", c.pc), "crosscall1")
	// What called it is not walked: the C library's thread start, in
	// another module.
	for _, o := range w.u.Modules {
		if o != c.m {
			w.s.Unwalked = append(w.s.Unwalked, CodeSpan{o.Start, o.End})
		}
	}
	return false
}

// cfa evaluates a CFI row's canonical frame address.
func (w *Frames) cfa(c at, row cfi.Row, mach cfi.Machine) (uint64, error) {
	if row.CFA.Expr != nil {
		cfa, err := cfi.Eval(row.CFA.Expr, mach)
		if err != nil {
			return 0, fmt.Errorf("CFA expression at %#x in %s: %v", c.pc, c.m.Name, err)
		}
		return cfa, nil
	}
	if row.CFA.Reg >= w.n || !w.valid[row.CFA.Reg] {
		return 0, fmt.Errorf("CFA register %d unknown at %#x in %s", row.CFA.Reg, c.pc, c.m.Name)
	}
	return uint64(int64(w.cur[row.CFA.Reg]) + row.CFA.Offset), nil
}

// cfiCaller computes the caller's registers from a CFI row, and checks
// that its return address is known and its stack pointer above.
func (w *Frames) cfiCaller(c at, row cfi.Row, mach cfi.Machine, cfa uint64) bool {
	a := w.a
	next, nextValid := make([]uint64, w.n), make([]bool, w.n)
	if !row.Signal {
		// A signal frame's CFI restores every register it knows; the
		// others are not preserved across a signal.
		for _, r := range a.CalleeSaved {
			next[r], nextValid[r] = w.cur[r], w.valid[r]
		}
	}
	raRule, hasRA := row.Regs[row.RA]
	inLR := false
	if !hasRA && a.LinkRegister && row.RA == a.LRReg && (c.innermost || c.interrupted) && w.valid[a.LRReg] {
		// No rule for the link register: it still holds the return
		// address (function entry, leaf functions). Only the innermost
		// frame's LR, or that of a frame a signal interrupted, is known:
		// above a call, the LR a callee's CFI recovers is the caller's
		// own pc, not its return address.
		raRule, hasRA, inLR = cfi.Rule{Kind: cfi.RuleSameValue}, true, true
		next[row.RA], nextValid[row.RA] = w.cur[row.RA], w.valid[row.RA]
	}
	if hasRA && raRule.Kind == cfi.RuleUndefined {
		w.s.Reliable, w.s.Reason = true, "outermost frame (return address undefined by CFI)"
		return false
	}
	if !w.applyRules(c, row, mach, cfa, next, nextValid) {
		return false
	}
	if !hasRA {
		return w.unreliable("no return-address rule at %#x in %s", c.pc, c.m.Name)
	}
	if row.RA != a.RAReg {
		next[a.RAReg], nextValid[a.RAReg] = next[row.RA], nextValid[row.RA]
	}
	if a.StripPAC != nil {
		// Code built with branch protection saved a signed LR.
		next[a.RAReg] = a.StripPAC(next[a.RAReg])
	}
	if _, ok := row.Regs[a.SPReg]; !ok || !nextValid[a.SPReg] {
		// The caller's stack pointer is the CFA unless the CFI (a signal
		// frame) says where the interrupted one was saved.
		next[a.SPReg], nextValid[a.SPReg] = cfa, true
	}
	if !nextValid[a.RAReg] || next[a.RAReg] == 0 {
		return w.unreliable("return address unknown above %#x in %s", c.pc, c.m.Name)
	}
	// A frame's stack pointer grows towards the caller (on arm64 a frame
	// still in LR may not have moved it); a signal frame may come from
	// another stack (sigaltstack), and MaxFrames bounds a loop through it.
	if !row.Signal && (cfa < c.sp || cfa == c.sp && !inLR) {
		return w.unreliable("stack pointer does not grow at %#x in %s", c.pc, c.m.Name)
	}
	w.exact = row.Signal // the caller of a signal frame was interrupted at its pc
	w.cur, w.valid = next, nextValid
	return true
}

// applyRules recovers the caller's registers by the row's rules into
// next; false when the walk ended (a register it needs cannot be read).
func (w *Frames) applyRules(c at, row cfi.Row, mach cfi.Machine, cfa uint64, next []uint64, nextValid []bool) bool {
	cur, valid, n := w.cur, w.valid, w.n
	for r, rule := range row.Regs {
		if r >= n {
			continue
		}
		switch rule.Kind {
		case cfi.RuleOffset:
			v, err := w.read(uint64(int64(cfa) + rule.Offset))
			if err != nil {
				return w.unreliable("%v", err)
			}
			next[r], nextValid[r] = v, true
		case cfi.RuleValOffset:
			next[r], nextValid[r] = uint64(int64(cfa)+rule.Offset), true
		case cfi.RuleSameValue:
			next[r], nextValid[r] = cur[r], valid[r]
		case cfi.RuleRegister:
			if rule.Reg < n {
				next[r], nextValid[r] = cur[rule.Reg], valid[rule.Reg]
			}
		case cfi.RuleUndefined:
			nextValid[r] = false
		case cfi.RuleExpression, cfi.RuleValExpression:
			v, err := cfi.Eval(rule.Expr, mach, cfa)
			if err == nil && rule.Kind == cfi.RuleExpression {
				v, err = w.read(v)
			}
			if err != nil {
				if r == row.RA || r == w.a.SPReg {
					return w.unreliable("register %d at %#x in %s: %v", r, c.pc, c.m.Name, err)
				}
				nextValid[r] = false
				continue
			}
			next[r], nextValid[r] = v, true
		}
	}
	return true
}
