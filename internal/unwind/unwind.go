// Package unwind walks a stopped thread's stack: Go frames with the pclntab's
// pc→sp-delta tables, C frames with .eh_frame call frame information. A frame
// it cannot be sure of ends the walk and marks the stack unreliable; it never
// guesses (there is no blind frame-pointer walk).
package unwind

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/hotpatch-dev/hotpatch/internal/arch"
	"github.com/hotpatch-dev/hotpatch/internal/cfi"
	"github.com/hotpatch-dev/hotpatch/internal/gopcln"
)

// Arch describes what the unwinder needs to know about an architecture:
// the target's description (Target) and the unwinder's own code for it.
type Arch struct {
	// Target is the architecture's description; the register numbers below
	// are its own.
	Target  *arch.Arch
	PtrSize int
	// SPReg and RAReg are DWARF register numbers of the stack pointer and of
	// the return address column (the pc). On an arch whose CFI keeps the
	// return address in the link register (arm64), RAReg is a pseudo column
	// past the DWARF registers that holds the pc.
	SPReg, RAReg int
	// FPReg is the DWARF number of the frame pointer register.
	FPReg int
	// CalleeSaved lists the DWARF registers a call preserves; the others are
	// unknown in a caller's frame unless CFI recovers them.
	CalleeSaved []int
	// LinkRegister is true on arm64: a call leaves the return address in
	// register LRReg, not on the stack. A Go function that has not stored LR
	// yet (sp delta 0), or a C function whose CFI has no rule for LRReg,
	// returns to the value still in LRReg — which is known only in the
	// innermost frame.
	LinkRegister bool
	// LRReg is the DWARF number of the link register (with LinkRegister).
	LRReg int
	// SignalContext reads the registers (indexed by DWARF number, pc at
	// RAReg) a signal interrupted, given the address of the kernel's
	// ucontext. nil: signal frames are not crossed (the stack is
	// unreliable there).
	SignalContext func(read func(addr uint64) (uint64, error), uc uint64) ([]uint64, error)
	// Sigreturn is the code (8-byte little-endian words) of the kernel's
	// signal return trampoline where it has no unwind tables (the arm64
	// vDSO), and SigframeContext reads the interrupted registers from the
	// signal frame at the stack pointer a walk reaches it with.
	Sigreturn       []uint64
	SigframeContext func(read func(addr uint64) (uint64, error), sp uint64) ([]uint64, error)
	// LeafOnly reports whether code (a module without unwind tables, given
	// as Module.Code) holds only leaf functions: no instruction calls,
	// moves the stack pointer, or writes the frame pointer or the link
	// register. A pc there returns to the link register with the stack as
	// it was. nil: such modules are unreliable.
	LeafOnly func(code []byte) bool
	// StripPAC removes a pointer authentication code from a return address
	// (arm64 code built with -mbranch-protection signs LR before saving
	// it); nil where there is none.
	StripPAC func(uint64) uint64
	// Handwritten recognizes a return address pc (with the stack pointer
	// sp) inside assembly code that has no unwind tables but whose code is
	// known, and returns the caller's registers (DWARF numbers, the pc at
	// RAReg) and the frame's CFA; nil or false: not recognized. Asked only
	// in modules with Go code (a pclntab), where runtime/cgo lives.
	Handwritten func(read func(addr uint64) (uint64, error), pc, sp uint64) (map[int]uint64, uint64, bool)
	// GoHandwritten is Handwritten for Go assembly function name (live
	// entry address entry) that the pclntab lists but whose frame it does
	// not describe for unwinding.
	GoHandwritten func(read func(addr uint64) (uint64, error), name string, entry, pc, sp uint64) (map[int]uint64, uint64, bool)
}

// AMD64 is the x86-64 description (System V psABI register numbers).
var AMD64 = Arch{Target: arch.AMD64, PtrSize: arch.AMD64.PtrSize, SPReg: arch.AMD64.SP, RAReg: 16, FPReg: arch.AMD64.FP,
	CalleeSaved:   []int{3, 6, 12, 13, 14, 15},
	SignalContext: amd64SignalContext, Handwritten: amd64Crosscall1}

// ForTarget returns the unwinder's description of a target architecture
// (the zero Arch, which unwinds nothing, for one it does not know).
func ForTarget(a *arch.Arch) Arch {
	for _, u := range []Arch{AMD64, ARM64} {
		if u.Target == a {
			return u
		}
	}
	return Arch{}
}

// amd64SignalContext reads a Linux x86-64 ucontext: uc_flags, uc_link and
// uc_stack (40 bytes), then uc_mcontext, whose general registers are r8-r15,
// rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip (arch/x86/include/uapi/asm/
// sigcontext.h).
func amd64SignalContext(read func(uint64) (uint64, error), uc uint64) ([]uint64, error) {
	// DWARF numbers of the mcontext's registers, in its order.
	order := [...]int{8, 9, 10, 11, 12, 13, 14, 15, 5, 4, 6, 3, 1, 0, 2, 7, 16}
	regs := make([]uint64, 17)
	for i, r := range order {
		v, err := read(uc + 40 + 8*uint64(i))
		if err != nil {
			return nil, err
		}
		regs[r] = v
	}
	return regs, nil
}

// ARM64 is the AArch64 description (DWARF for AArch64: x0-x30 are 0-30, sp
// is 31; the CFI return address column is 30, the link register). The pc
// lives in pseudo column 32.
var ARM64 = Arch{Target: arch.ARM64, PtrSize: arch.ARM64.PtrSize, SPReg: arch.ARM64.SP, RAReg: 32, FPReg: arch.ARM64.FP,
	CalleeSaved: []int{19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29}, LinkRegister: true, LRReg: arch.ARM64.LR,
	// The arm64 vDSO has no unwind tables, and a signal handler returns to
	// its __kernel_rt_sigreturn: mov x8, #139 (rt_sigreturn); svc #0.
	Sigreturn:       []uint64{0xd4000001_d2801168},
	SigframeContext: arm64SigframeContext,
	LeafOnly:        arm64LeafOnly,
	StripPAC:        arm64StripPAC,
	GoHandwritten:   arm64Crosscall2,
}

// arm64StripPAC clears the pointer authentication code of a user-space
// code address: the bits above the 48-bit virtual address (and the tag
// byte). A kernel address (bit 55 set) is returned as is. A value stripped
// wrongly lands in no module, which makes the stack unreliable, never
// wrongly clean.
func arm64StripPAC(a uint64) uint64 {
	if a&(1<<55) != 0 {
		return a
	}
	return a & (1<<48 - 1)
}

// arm64SigframeContext reads the registers a signal interrupted from the
// kernel's rt_sigframe at sp (the handler's stack pointer at entry): the
// 128-byte siginfo, then the ucontext, whose uc_mcontext (16-byte aligned,
// at offset 176) holds fault_address, x0-x30, sp, pc
// (arch/arm64/include/uapi/asm/{ucontext,sigcontext}.h).
func arm64SigframeContext(read func(uint64) (uint64, error), sp uint64) ([]uint64, error) {
	const mcontext = 128 + 176
	regs := make([]uint64, 33)
	for i := range regs { // x0-x30, sp, pc: consecutive after fault_address
		v, err := read(sp + mcontext + 8 + 8*uint64(i))
		if err != nil {
			return nil, err
		}
		regs[i] = v
	}
	return regs, nil
}

// Module is one mapped object with its unwind tables.
type Module struct {
	Name       string
	Start, End uint64 // live address range of its code
	Bias       uint64 // live address = link-time address + Bias
	// Refused, when set, says why the module's code must not be unwound (a
	// Go release hotpatch does not read): every walk into it is unreliable.
	Refused error
	// Pclntab is the Go pclntab section's bytes (nil unless a Go binary).
	Pclntab []byte
	// GoTextStart is the link-time address the pclntab's function entry
	// offsets are relative to (Go 1.26 writes 0 in the pclntab header, so
	// it comes from the ELF file: runtime.text or the module data).
	GoTextStart uint64
	// EHFrame is the .eh_frame section's bytes (nil when absent), whose
	// first byte lies at link-time address EHFrameAddr.
	EHFrame     []byte
	EHFrameAddr uint64
	// EHFrameHdr is the .eh_frame_hdr section's bytes (nil when absent: a
	// sorted index of .eh_frame is then built once), whose first byte lies
	// at link-time address EHFrameHdrAddr.
	EHFrameHdr     []byte
	EHFrameHdrAddr uint64
	// Code is the module's executable code, by link-time address, given
	// when it has no unwind tables at all (the arm64 vDSO) for
	// Arch.LeafOnly to prove it frameless.
	Code []CodeRange

	leafOnce sync.Once
	leaf     bool

	once   sync.Once
	goTab  *gopcln.Table
	cfiTab *cfi.Table
	err    error
	// deltas memoizes SPDelta by pc: thousands of parked goroutines stop
	// at the same few return addresses.
	deltasMu sync.RWMutex
	deltas   map[uint64]int64
	// frames memoizes goFrame by function entry (arm64).
	frames map[uint64]goFrame
}

func (m *Module) spDelta(t *gopcln.Table, f *gopcln.Func, pc uint64) (int64, error) {
	m.deltasMu.RLock()
	d, ok := m.deltas[pc]
	m.deltasMu.RUnlock()
	if ok {
		return d, nil
	}
	d, err := t.SPDelta(f, pc)
	if err == nil {
		m.deltasMu.Lock()
		if m.deltas == nil {
			m.deltas = map[uint64]int64{}
		}
		m.deltas[pc] = d
		m.deltasMu.Unlock()
	}
	return d, err
}

func (m *Module) tables(a Arch) (*gopcln.Table, *cfi.Table, error) {
	m.once.Do(func() {
		if m.Refused != nil {
			m.err = m.Refused
			return
		}
		var errs []error
		if m.Pclntab != nil {
			t, err := gopcln.Parse(m.Pclntab, m.GoTextStart)
			if err != nil {
				// Go code has no other unwind info: a table refused
				// (another release's format) or broken leaves the whole
				// module unwalkable, whatever CFI covers.
				m.err = fmt.Errorf("Go function table: %w", err)
				return
			}
			m.goTab = t
		}
		if m.EHFrame != nil {
			t, err := cfi.ParseWithHdr(m.EHFrame, m.EHFrameAddr, m.EHFrameHdr, m.EHFrameHdrAddr, a.PtrSize, binary.LittleEndian)
			m.cfiTab = t
			if err != nil {
				errs = append(errs, err)
			}
		}
		if len(errs) > 0 && m.goTab == nil && m.cfiTab == nil {
			m.err = errs[0]
		}
	})
	return m.goTab, m.cfiTab, m.err
}

// CodeRange is a run of code at a link-time address.
type CodeRange struct {
	Addr  uint64
	Bytes []byte
}

// leafAt reports whether link-time pc lies in code Arch.LeafOnly proved
// frameless.
func (m *Module) leafAt(a Arch, pc uint64) bool {
	if a.LeafOnly == nil || len(m.Code) == 0 {
		return false
	}
	m.leafOnce.Do(func() {
		m.leaf = true
		for _, c := range m.Code {
			if !a.LeafOnly(c.Bytes) {
				m.leaf = false
			}
		}
	})
	if !m.leaf {
		return false
	}
	for _, c := range m.Code {
		if pc >= c.Addr && pc < c.Addr+uint64(len(c.Bytes)) {
			return true
		}
	}
	return false
}

// GoTable returns the module's parsed Go function table (nil for a module
// without a pclntab).
func (m *Module) GoTable(a Arch) (*gopcln.Table, error) {
	t, _, err := m.tables(a)
	return t, err
}

// Frame is one frame of a stack, innermost first.
type Frame struct {
	PC  uint64 // for callers: the return address
	SP  uint64 // stack pointer in this frame
	CFA uint64 // canonical frame address (SP of the caller after the return)
	// Method says how the caller of this frame was found: "pclntab", "cfi",
	// "signal", "leaf" (frameless code: the link register), or "" for the
	// outermost frame.
	Method string
	// Signal is set on a signal trampoline's frame (__restore_rt): its
	// caller is the interrupted code, whose PC is not a return address.
	Signal bool
}

// Stack is the result of a walk.
type Stack struct {
	Frames   []Frame
	Reliable bool
	// Reason explains why the stack is unreliable ("no unwind info for pc
	// 0x...", ...), or how a reliable one ended.
	Reason string
	// SwitchedAt names the Go runtime function at which an unreliable walk
	// stopped because the thread switched from a goroutine's stack to its
	// system stack there (runtime.systemstack, runtime.morestack, ...). The
	// frames above it are the goroutine's, which the runtime saved in its
	// g: a caller that walks every goroutine from its g may count such a
	// thread's stack as complete.
	SwitchedAt string
	// Callbacks are the indexes of the runtime.cgocallback frames the walk
	// went through, on a goroutine's stack, to the goroutine's frames
	// before it called C (as the runtime's own traceback does). The C
	// frames that called back are on the system stack of the goroutine's
	// m: a caller that walks goroutines must add them.
	Callbacks []int
	// Root names the Go runtime function a reliable walk ended at
	// (runtime.goexit, runtime.mstart, runtime.rt0_go, runtime.mcall), ""
	// otherwise.
	Root string
	// Unwalked are code ranges the frames above the last one may be in
	// although the walk could not name them: a reliable stack that ends at
	// the C thread start of a cgo binary without unwind tables for C still
	// returns into the C library's thread start (start_thread, clone3).
	// Code there counts as on the stack.
	Unwalked []CodeSpan
}

// CodeSpan is a range of code addresses, [Start, End).
type CodeSpan struct{ Start, End uint64 }

// Unwinder walks stacks of one process.
type Unwinder struct {
	Arch    Arch
	Modules []*Module // any order

	cOnce  sync.Once
	cSpans []CodeSpan // cCode
}

// Prepare parses every module's unwind tables now (they are otherwise parsed
// on first use), so that no walk made while the target is stopped pays for
// it. Modules whose tables are broken are reported, and stacks through them
// are unreliable.
func (u *Unwinder) Prepare() error {
	var errs []error
	for _, m := range u.Modules {
		if _, _, err := m.tables(u.Arch); err != nil {
			errs = append(errs, fmt.Errorf("unwind tables of %s: %w", m.Name, err))
		}
	}
	return errors.Join(errs...)
}

// MaxFrames bounds a walk; a deeper stack is reported unreliable.
const MaxFrames = 1024

// Go runtime functions where a thread's stack legitimately ends, with the
// reason a stack that ends there gives.
var goRoots = map[string]string{
	"runtime.goexit": "ends at runtime.goexit (goroutine root)",
	"runtime.mstart": "ends at runtime.mstart (thread root)",
	"runtime.rt0_go": "ends at runtime.rt0_go (main thread root)",
	// mcall switched to the system stack after saving the goroutine's
	// state in its g: the g0 frames end here, and the goroutine is parked
	// (goroutine stacks are walked from the g, not from the thread).
	"runtime.mcall": "ends at runtime.mcall (system stack root, goroutine parked)",
}

// Unwind walks from regs, which are indexed by DWARF register number and
// include the pc at index Arch.RAReg, reading stack memory from mem.
func (u *Unwinder) Unwind(mem io.ReaderAt, regs []uint64) Stack { return u.walk(mem, regs, true) }

// UnwindReturn is Unwind from a frame whose pc is a return address (a
// frame a callee saved, not one the thread stopped in): its callee-saved
// registers and link register are not known.
func (u *Unwinder) UnwindReturn(mem io.ReaderAt, regs []uint64) Stack {
	return u.walk(mem, regs, false)
}

func (u *Unwinder) walk(mem io.ReaderAt, regs []uint64, exact bool) Stack {
	first := exact
	a := u.Arch
	n := max(len(regs), a.RAReg+1, a.SPReg+1, 34)
	var curArr [34]uint64
	var validArr [34]bool
	cur, valid := curArr[:], validArr[:]
	if n > len(curArr) {
		cur, valid = make([]uint64, n), make([]bool, n)
	}
	copy(cur, regs)
	for i := range regs {
		valid[i] = true
	}
	s := Stack{Frames: make([]Frame, 0, 16)}
	buf := make([]byte, a.PtrSize)
	read := func(addr uint64) (uint64, error) {
		if _, err := mem.ReadAt(buf, int64(addr)); err != nil {
			return 0, fmt.Errorf("read stack at %#x: %w", addr, err)
		}
		if a.PtrSize == 4 {
			return uint64(binary.LittleEndian.Uint32(buf)), nil
		}
		return binary.LittleEndian.Uint64(buf), nil
	}
	unreliable := func(format string, args ...any) Stack {
		s.Reliable, s.Reason = false, fmt.Sprintf(format, args...)
		return s
	}
	readSize := func(addr uint64, size int) (uint64, error) {
		var b [8]byte
		if _, err := mem.ReadAt(b[:size], int64(addr)); err != nil {
			return 0, fmt.Errorf("read %d bytes at %#x: %w", size, addr, err)
		}
		return binary.LittleEndian.Uint64(b[:]), nil
	}
	injected := false
	// crosscall1 is set after a step over Arch.Handwritten code (crosscall1),
	// whose caller is a thread's start routine; not after crosscall2, whose
	// caller is any C code that calls back into Go.
	crosscall1 := false
	for depth := 0; ; depth++ {
		innermost := depth == 0 && first
		afterCrosscall1 := crosscall1
		crosscall1 = false
		topFrameToC := false
		pc, sp := cur[a.RAReg], cur[a.SPReg]
		if depth >= MaxFrames {
			return unreliable("more than %d frames", MaxFrames)
		}
		s.Frames = append(s.Frames, Frame{PC: pc, SP: sp})
		fr := &s.Frames[len(s.Frames)-1]
		// A return address points after the call: look up the call itself.
		// The first frame's pc, and a pc a signal interrupted, are exact.
		lookup := pc
		if !exact {
			lookup--
		}
		// A frame a signal (or an injected call) interrupted has all its
		// registers, the link register included.
		interrupted := exact
		exact = false
		m := u.moduleAt(lookup)
		if m == nil {
			return unreliable("no module maps pc %#x", pc)
		}
		goTab, cfiTab, err := m.tables(a)
		if err != nil {
			return unreliable("unwind tables of %s: %v", m.Name, err)
		}
		link := lookup - m.Bias
		if goTab != nil {
			if f, ok := goTab.FuncAt(link); ok && !f.External() {
				if why, ok := goRoots[f.Name]; ok {
					if f.Name == "runtime.mcall" && interrupted {
						// Stopped inside mcall itself, not returned to by
						// the function it called on g0: it may not have
						// saved the goroutine's state or switched stacks
						// yet, so the frames above may be the goroutine's
						// own (gopark, its caller, ...), which a root here
						// would hide. Like any stack switch: the
						// goroutine's frames are checked from its g, or,
						// if the thread is still on its stack, it blocks.
						s.SwitchedAt = f.Name
						return unreliable("stopped inside runtime.mcall at %#x while it switches to the system stack", pc)
					}
					walk, intoC := false, false
					if f.Name == "runtime.mstart" {
						walk, intoC = u.returnsToC(goTab, m, f, link, sp, read)
					}
					if !walk {
						s.Reliable, s.Reason, s.Root = true, why, f.Name
						if intoC {
							// A thread created through cgo whose C
							// frames above mstart cannot be walked
							// (no unwind tables): it returns into C
							// code, all of which counts as on its stack.
							s.Reason += "; it returns into C code without unwind tables, which counts as on its stack"
							s.Unwalked = u.cCode()
						}
						return s
					}
					// A thread created through cgo: mstart returns
					// into C (crosscall1, threadentry, start_thread)
					// when its m exits, so those frames count.
					topFrameToC = true
				}
				if f.Name == "runtime.sigtramp" {
					lr := uint64(0) // arm64: the handler's LR, known here only in an interrupted frame
					if a.LinkRegister && interrupted && valid[a.LRReg] {
						lr = cur[a.LRReg]
					}
					regs, err := u.crossGoSignal(goTab, m, f, link, sp, lr, read)
					if err != nil {
						return unreliable("%v", err)
					}
					fr.Method, fr.Signal = "signal", true
					for i := range valid {
						cur[i], valid[i] = 0, false
					}
					copy(cur, regs)
					for i := range regs {
						valid[i] = true
					}
					exact = true
					continue
				}
				if !interrupted && a.GoHandwritten != nil {
					// Go assembly whose frame the pclntab does not
					// describe for unwinding (crosscall2 on arm64).
					if regs, cfa, ok := a.GoHandwritten(read, f.Name, f.Entry+m.Bias, pc, sp); ok {
						fr.CFA, fr.Method = cfa, "handwritten"
						for i := range valid {
							cur[i], valid[i] = 0, false
						}
						for r, v := range regs {
							cur[r], valid[r] = v, true
						}
						if cur[a.RAReg] == 0 {
							return unreliable("%s has a zero return address", f.Name)
						}
						continue
					}
				}
				spWrite := f.Flag&gopcln.FlagSPWrite != 0
				if f.Name == "runtime.cgocallback" && !interrupted {
					// Like the runtime's traceback: cgocallback
					// switched stacks, but keeps a frame valid for
					// unwinding on both (on the goroutine's stack its
					// return address is where the goroutine called C).
					spWrite = false
					s.Callbacks = append(s.Callbacks, len(s.Frames)-1)
				}
				if spWrite || f.Flag&gopcln.FlagTopFrame != 0 && !topFrameToC {
					s.SwitchedAt = f.Name
					return unreliable("%s switches stacks (the goroutine's frames continue on another stack)", f.Name)
				}
				lrKnown := innermost || interrupted // a signal frame restored every register
				if a.LinkRegister && injected {
					// Above asyncPreempt or sigpanic: the signal handler
					// pushed the interrupted LR in a 16-byte slot below the
					// interrupted SP before faking the call (the runtime's
					// sigctxt.pushCall), so LR is known here too.
					x, err := read(sp)
					if err != nil {
						return unreliable("%v", err)
					}
					sp += 16
					fr.SP = sp
					cur[a.LRReg], valid[a.LRReg], lrKnown = x, true, true
				}
				injected = false
				delta, err := m.spDelta(goTab, f, link)
				if err != nil {
					return unreliable("%v", err)
				}
				var cfa, ra uint64
				inLR := false
				switch {
				case !a.LinkRegister:
					// The call pushed the return address just above the frame.
					cfa = sp + uint64(delta) + uint64(a.PtrSize)
					ra, err = read(cfa - uint64(a.PtrSize))
				case delta == 0:
					// No frame yet (or a frameless leaf): the return address
					// is still in LR, known only in the innermost frame.
					if !lrKnown || !valid[a.LRReg] {
						return unreliable("%s has no frame at %#x and the link register is unknown above the innermost frame", f.Name, pc)
					}
					cfa, ra, inLR = sp, cur[a.LRReg], true
				default:
					// The prologue stored LR at 0(RSP) as it allocated the
					// frame (MOVD.W R30, -size(RSP)); the caller's SP is
					// sp+delta.
					cfa = sp + uint64(delta)
					ra, err = read(sp)
				}
				if err != nil {
					return unreliable("%v", err)
				}
				fr.CFA, fr.Method = cfa, "pclntab"
				// Go frames keep no C callee-saved registers we can trust.
				for i := range valid {
					valid[i] = false
				}
				cur[a.SPReg], valid[a.SPReg] = cfa, true
				cur[a.RAReg], valid[a.RAReg] = ra, true
				// arm64: the caller's frame pointer, which C code above
				// a Go frame (crosscall1, a cgo callback's caller) may
				// define its CFA by.
				if fp, ok := u.goCallerFP(m, f, link, sp, delta, read); ok {
					cur[a.FPReg], valid[a.FPReg] = fp, true
				}
				if ra == 0 {
					return unreliable("%s has a zero return address", f.Name)
				}
				if cfa < sp || cfa == sp && !inLR {
					return unreliable("stack pointer does not grow at %s", f.Name)
				}
				// The runtime injects calls of these at an interrupted
				// instruction: the "return address" is that instruction.
				exact = f.Name == "runtime.asyncPreempt" || f.Name == "runtime.sigpanic"
				injected = exact
				continue
			}
		}
		// The signal return trampoline, returned to by a handler, or a
		// thread stopped on its svc.
		if a.SigframeContext != nil && (isSigreturn(a, read, pc) || interrupted && isSigreturn(a, read, pc-4)) {
			regs, err := a.SigframeContext(read, sp)
			if err != nil {
				return unreliable("signal frame at %#x: %v", sp, err)
			}
			fr.Method, fr.Signal = "signal", true
			for i := range valid {
				cur[i], valid[i] = 0, false
			}
			copy(cur, regs)
			for i := range regs {
				valid[i] = true
			}
			exact = true
			continue
		}
		if !interrupted && a.Handwritten != nil && m.Pclntab != nil {
			// Assembly without unwind tables whose code we know
			// (runtime/cgo's crosscall1 on amd64), recognised by its
			// code read back — only in a module with Go code: runtime/cgo
			// is linked with it, so plain C code, every frame of which
			// would otherwise have its code read, cannot hold it.
			if regs, cfa, ok := a.Handwritten(read, pc, sp); ok {
				fr.CFA, fr.Method = cfa, "handwritten"
				for i := range valid {
					cur[i], valid[i] = 0, false
				}
				for r, v := range regs {
					cur[r], valid[r] = v, true
				}
				if cur[a.RAReg] == 0 {
					return unreliable("return address unknown above %#x in %s", pc, m.Name)
				}
				crosscall1 = true
				continue
			}
		}
		if cfiTab == nil && a.LinkRegister && m.leafAt(a, link) {
			// Leaf code (the arm64 vDSO has no unwind tables): the
			// caller's pc is in LR, known in the innermost or an
			// interrupted frame only; nothing else moved.
			if !interrupted || !valid[a.LRReg] {
				return unreliable("leaf code at %#x in %s above the innermost frame", pc, m.Name)
			}
			ra := cur[a.LRReg]
			if a.StripPAC != nil {
				ra = a.StripPAC(ra)
			}
			if ra == 0 {
				return unreliable("return address unknown above %#x in %s", pc, m.Name)
			}
			fr.CFA, fr.Method = sp, "leaf"
			for i := range valid {
				if i != a.SPReg && !isCalleeSaved(a, i) {
					valid[i] = false
				}
			}
			cur[a.RAReg], valid[a.RAReg] = ra, true
			continue
		}
		var row cfi.Row
		ok := false
		if cfiTab != nil {
			if row, ok, err = cfiTab.RowAt(link); err != nil {
				return unreliable("CFI of %s at %#x: %v", m.Name, pc, err)
			}
		}
		if !ok {
			if afterCrosscall1 {
				// runtime/cgo's thread start routine, which called
				// crosscall1, in a binary the Go linker linked itself:
				// it keeps no unwind tables for C code, so the walk
				// ends here, as the runtime's does at mstart.
				s.Reliable, s.Reason, s.Root = true, fmt.Sprintf("ends at the C caller of crosscall1 at %#x (thread start of a cgo binary without unwind tables for C)", pc), "crosscall1"
				// What called it is not walked: the C library's
				// thread start, in another module.
				for _, o := range u.Modules {
					if o != m {
						s.Unwalked = append(s.Unwalked, CodeSpan{o.Start, o.End})
					}
				}
				return s
			}
			return unreliable("no unwind info for pc %#x in %s", pc, m.Name)
		}
		// Expressions read this frame's registers and the process's memory.
		mach := cfi.Machine{
			Reg: func(r int) (uint64, bool) {
				if r < 0 || r >= n || !valid[r] {
					return 0, false
				}
				return cur[r], true
			},
			Mem:     readSize,
			PtrSize: a.PtrSize,
		}
		var cfa uint64
		if row.CFA.Expr != nil {
			if cfa, err = cfi.Eval(row.CFA.Expr, mach); err != nil {
				return unreliable("CFA expression at %#x in %s: %v", pc, m.Name, err)
			}
		} else {
			if row.CFA.Reg >= n || !valid[row.CFA.Reg] {
				return unreliable("CFA register %d unknown at %#x in %s", row.CFA.Reg, pc, m.Name)
			}
			cfa = uint64(int64(cur[row.CFA.Reg]) + row.CFA.Offset)
		}
		fr.CFA, fr.Method, fr.Signal = cfa, "cfi", row.Signal
		next := make([]uint64, n)
		nextValid := make([]bool, n)
		if !row.Signal {
			// A signal frame's CFI restores every register it knows; the
			// others are not preserved across a signal.
			for _, r := range a.CalleeSaved {
				next[r], nextValid[r] = cur[r], valid[r]
			}
		}
		raRule, hasRA := row.Regs[row.RA]
		inLR := false
		if !hasRA && a.LinkRegister && row.RA == a.LRReg && (innermost || interrupted) && valid[a.LRReg] {
			// No rule for the link register: it still holds the return
			// address (function entry, leaf functions). Only the innermost
			// frame's LR, or that of a frame a signal interrupted, is
			// known: above a call, the LR a callee's CFI recovers is the
			// caller's own pc, not its return address.
			raRule, hasRA, inLR = cfi.Rule{Kind: cfi.RuleSameValue}, true, true
			next[row.RA], nextValid[row.RA] = cur[row.RA], valid[row.RA]
		}
		if hasRA && raRule.Kind == cfi.RuleUndefined {
			s.Reliable, s.Reason = true, "outermost frame (return address undefined by CFI)"
			return s
		}
		for r, rule := range row.Regs {
			if r >= n {
				continue
			}
			switch rule.Kind {
			case cfi.RuleOffset:
				v, err := read(uint64(int64(cfa) + rule.Offset))
				if err != nil {
					return unreliable("%v", err)
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
					v, err = read(v)
				}
				if err != nil {
					if r == row.RA || r == a.SPReg {
						return unreliable("register %d at %#x in %s: %v", r, pc, m.Name, err)
					}
					nextValid[r] = false
					continue
				}
				next[r], nextValid[r] = v, true
			}
		}
		if !hasRA {
			return unreliable("no return-address rule at %#x in %s", pc, m.Name)
		}
		if row.RA != a.RAReg {
			next[a.RAReg], nextValid[a.RAReg] = next[row.RA], nextValid[row.RA]
		}
		if a.StripPAC != nil {
			// Code built with branch protection saved a signed LR.
			next[a.RAReg] = a.StripPAC(next[a.RAReg])
		}
		if _, ok := row.Regs[a.SPReg]; !ok || !nextValid[a.SPReg] {
			// The caller's stack pointer is the CFA unless the CFI (a
			// signal frame) says where the interrupted one was saved.
			next[a.SPReg], nextValid[a.SPReg] = cfa, true
		}
		if !nextValid[a.RAReg] || next[a.RAReg] == 0 {
			return unreliable("return address unknown above %#x in %s", pc, m.Name)
		}
		// A frame's stack pointer grows towards the caller (on arm64 a
		// frame still in LR may not have moved it); a signal frame may
		// come from another stack (sigaltstack), and MaxFrames bounds a
		// loop through it.
		if !row.Signal && (cfa < sp || cfa == sp && !inLR) {
			return unreliable("stack pointer does not grow at %#x in %s", pc, m.Name)
		}
		exact = row.Signal // the caller of a signal frame was interrupted at its pc
		cur, valid = next, nextValid
	}
}

func isCalleeSaved(a Arch, r int) bool {
	for _, c := range a.CalleeSaved {
		if c == r {
			return true
		}
	}
	return false
}

// isSigreturn reports whether the code at pc is the arch's signal return
// trampoline.
func isSigreturn(a Arch, read func(uint64) (uint64, error), pc uint64) bool {
	for i, w := range a.Sigreturn {
		v, err := read(pc + 8*uint64(i))
		if err != nil || v != w {
			return false
		}
	}
	return len(a.Sigreturn) > 0
}

// crossGoSignal steps over the Go runtime's signal trampoline and returns
// the interrupted registers. On x86-64 the kernel called runtime.sigtramp
// with the return address runtime.sigreturn__sigaction (the sa_restorer) on
// top of its signal frame, and the ucontext follows that slot. On arm64 it
// called it with LR = its own sigreturn trampoline (the vDSO's; sigtramp
// stores LR at 0(RSP) as it allocates its frame, or LR still holds it, lr)
// and SP at the rt_sigframe, which is sigtramp's entry SP.
func (u *Unwinder) crossGoSignal(goTab *gopcln.Table, m *Module, f *gopcln.Func, link, sp, lr uint64, read func(uint64) (uint64, error)) ([]uint64, error) {
	a := u.Arch
	delta, err := goTab.SPDelta(f, link)
	if err != nil {
		return nil, err
	}
	if a.SignalContext == nil && a.SigframeContext != nil {
		ra := lr
		if delta > 0 {
			if ra, err = read(sp); err != nil {
				return nil, err
			}
		}
		if ra == 0 || !isSigreturn(a, read, ra) {
			return nil, fmt.Errorf("signal frame at %s: return address %#x is not the kernel's signal return trampoline", f.Name, ra)
		}
		return a.SigframeContext(read, sp+uint64(delta))
	}
	if a.SignalContext == nil {
		return nil, fmt.Errorf("signal frame at %s: not supported on this architecture yet", f.Name)
	}
	cfa := sp + uint64(delta) + uint64(a.PtrSize)
	ra, err := read(cfa - uint64(a.PtrSize))
	if err != nil {
		return nil, err
	}
	if r, ok := goTab.FuncAt(ra - m.Bias); !ok || r.Name != "runtime.sigreturn__sigaction" {
		return nil, fmt.Errorf("signal frame at %s: return address %#x is not runtime.sigreturn__sigaction", f.Name, ra)
	}
	return a.SignalContext(read, cfa)
}

func (u *Unwinder) moduleAt(pc uint64) *Module {
	for _, m := range u.Modules {
		if pc >= m.Start && pc < m.End {
			return m
		}
	}
	return nil
}

// GoFunc returns the name of the Go function (by the pclntab) at pc, and
// false for code that is not Go's (C code of a cgo binary, libraries).
func (u *Unwinder) GoFunc(pc uint64) (string, bool) {
	m := u.moduleAt(pc)
	if m == nil {
		return "", false
	}
	goTab, _, _ := m.tables(u.Arch)
	if goTab == nil {
		return "", false
	}
	f, ok := goTab.FuncAt(pc - m.Bias)
	if !ok || f.External() {
		return "", false
	}
	return f.Name, true
}
