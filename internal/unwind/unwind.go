// Package unwind walks a stopped thread's stack: Go frames with the pclntab's
// pc→sp-delta tables, C frames with .eh_frame call frame information. A frame
// it cannot be sure of ends the walk and marks the stack unreliable; it never
// guesses (there is no blind frame-pointer walk).
//
// Unwinder.Unwind returns a whole Stack; Unwinder.Frames walks it one frame
// at a time (Next, Frame, Err), each step finding the caller by the first
// way that applies to the frame (walk.go).
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
